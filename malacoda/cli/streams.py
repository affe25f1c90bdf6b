"""``malacodactl`` for streams: a streamed call's items as they come, and ``watch``.

Each item is one line (``--json``: one JSON document per line), written and flushed as it
arrives. Ctrl-C leaves the stream cleanly — the daemon closes its generator — and exits 130,
as a shell expects of an interrupted command.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import click

from malacoda.cli.terminal import visible, visible_json
from malacoda.client import control
from malacoda.client.streaming import RemoteIterator

INTERRUPTED = 130  # 128 + SIGINT


def follow(stream: RemoteIterator, as_json: bool, raw: bool,
           remote: Callable[[Callable[[], Any]], Any]) -> None:
    """Print the items of ``stream`` one per line until it ends; Ctrl-C cancels it (exit 130).
    ``remote`` runs the loop and turns an exception the daemon raised into the CLI's exit."""

    def loop() -> None:
        for item in stream:
            text = control.as_text(item, as_json)
            if raw:
                pass
            elif as_json:
                text = visible_json(text)
            else:
                text = visible(text)
            click.echo(text)
            sys.stdout.flush()

    try:
        remote(loop)
    except KeyboardInterrupt:
        stream.close()
        sys.exit(INTERRUPTED)
    finally:
        stream.close()
