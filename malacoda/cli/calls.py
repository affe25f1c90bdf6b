"""``malacodactl call``, ``watch``, ``get``, ``set`` and ``describe``: a daemon's methods and
attributes through a proxy, its answer printed.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Callable, Dict, Optional, Tuple

import click

from malacoda.cli.common import (
    FAILED,
    JSON,
    NAME,
    RAW,
    TIMEOUT,
    Context,
    cli_streams,
    complain,
    control,
    pass_ctx,
    target,
)
from malacoda.cli.terminal import visible, visible_json
from malacoda.cli.values import ValueArgs
from malacoda.errors import (
    ConfigError,
    MalacodaError,
    RemoteError,
)

# ---------------------------------------------------------------------- talking to a daemon

def _remote(c: Context, action: Callable[[], Any]) -> Any:
    """Run ``action``; an exception the daemon raised exits 1 with its type and message."""
    try:
        return action()
    except MalacodaError as exc:
        if not isinstance(exc, RemoteError):
            raise
        detail = exc.remote_traceback
        message = f"{exc.remote_type}: {exc.remote_message}"
    except Exception as exc:  # the remote method's own built-in exception, re-raised here
        detail = getattr(exc, "remote_traceback", "")
        message = f"{type(exc).__name__}: {exc}"
    complain(f"remote {visible(message)}")  # one line, whatever the message holds
    if c.verbose and detail:
        click.echo(visible(detail.rstrip(), newlines=True), err=True)
    sys.exit(FAILED)


def public_name(name: str) -> str:
    """METHOD or ATTR of call/get/set: a public name of the daemon's, checked before anything
    is sent (``__class__`` would otherwise be the local proxy's own)."""
    if name.startswith("_") or not name.isidentifier():
        raise ConfigError(f"{name!r} is private or not a name: only public names (no leading "
                          "'_', no dots) are reachable; see 'malacodactl describe NAME'")
    return name


def _proxy(name: str, timeout: Optional[float]) -> Any:
    from malacoda.client.proxy import Proxy

    return Proxy(str(target(name)), timeout=timeout)


@click.command(cls=ValueArgs)
@NAME
@click.argument("method")
@click.argument("args", nargs=-1)
@click.option("--kw", "kwargs", multiple=True, metavar="K=V", help="A keyword argument (repeat).")
@TIMEOUT
@JSON
@RAW
@pass_ctx
def call(c: Context, name: str, method: str, args: Tuple[str, ...], kwargs: Tuple[str, ...],
         timeout: Optional[float], as_json: bool) -> None:
    """Call METHOD of the daemon NAME with ARGs (Python literals, else strings); print the result.

    Exit 0, 1 the method raised (type and message printed), 2 bad input, 3 not running,
    4 no answer in time.
    """
    public_name(method)
    values = [control.parse_value(a) for a in args]
    keywords: Dict[str, Any] = {}
    for item in kwargs:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise ConfigError(f"--kw {item!r}: write it as NAME=VALUE")
        keywords[key] = control.parse_value(value)
    with _proxy(name, timeout) as proxy:
        try:
            result = _remote(c, lambda: getattr(proxy, method)(*values, **keywords))
        except KeyboardInterrupt:
            sys.exit(cli_streams.INTERRUPTED)
        if isinstance(result, cli_streams.RemoteIterator):  # a generator: items as they come
            cli_streams.follow(result, as_json, c.raw, lambda loop: _remote(c, loop))
            return
    _print_value(c, result, as_json)


@click.command()
@NAME
@click.argument("what", metavar="TOPIC|ATTR")
@TIMEOUT
@JSON
@RAW
@pass_ctx
def watch(c: Context, name: str, what: str, timeout: Optional[float], as_json: bool) -> None:
    """Print the events of the daemon NAME as they come: the new value of its attribute ATTR
    at each change (its value now first), or else the events published under TOPIC (a prefix:
    each as a map of topic, value and missed). Ctrl-C ends it (exit 130)."""
    if what.startswith("_"):
        raise ConfigError(f"{what!r} is private: topics and attributes starting with '_' are "
                          "not reachable")
    with _proxy(name, timeout) as proxy:
        try:
            attributes = proxy._describe().get("attributes", [])
            if what.isidentifier() and what in attributes:
                stream = _remote(c, lambda: proxy.watch(what))
            else:
                stream = _remote(c, lambda: proxy.subscribe(what))
        except KeyboardInterrupt:
            sys.exit(cli_streams.INTERRUPTED)
        cli_streams.follow(stream, as_json, c.raw, lambda loop: _remote(c, loop))


def _print_value(c: Context, value: Any, as_json: bool) -> None:
    text = control.as_text(value, as_json)
    if as_json and not c.raw:
        text = visible_json(text)  # then nothing is left for visible() to change
    c.echo(text)


@click.command()
@NAME
@click.argument("attr")
@TIMEOUT
@JSON
@RAW
@pass_ctx
def get(c: Context, name: str, attr: str, timeout: Optional[float], as_json: bool) -> None:
    """Print the attribute ATTR of the daemon NAME. Exit codes as for call."""
    from malacoda.client.proxy import request
    from malacoda.wire import protocol as p

    public_name(attr)
    with _proxy(name, timeout) as proxy:
        result = _remote(c, lambda: request(proxy, p.GET, attr, None, timeout))
    _print_value(c, result, as_json)


@click.command(name="set", cls=ValueArgs)
@NAME
@click.argument("attr")
@click.argument("value")
@TIMEOUT
@pass_ctx
def set_(c: Context, name: str, attr: str, value: str, timeout: Optional[float]) -> None:
    """Set the attribute ATTR of the daemon NAME to VALUE (a literal, else a string).

    Exit codes as for call.
    """
    public_name(attr)
    parsed = control.parse_value(value)
    with _proxy(name, timeout) as proxy:
        _remote(c, lambda: setattr(proxy, attr, parsed))


@click.command()
@NAME
@TIMEOUT
@JSON
@RAW
@pass_ctx
def describe(c: Context, name: str, timeout: Optional[float], as_json: bool) -> None:
    """List the methods (signatures, docstrings) and attributes of the daemon NAME.

    Exit codes as for call.
    """
    import inspect

    with _proxy(name, timeout) as proxy:
        info = control.describe(proxy)
        if as_json:
            click.echo(json.dumps(info, indent=2))
            return
        c.echo(f"{info['name']}  ({info['class']}, malacoda {info['version']})", False)
        if info.get("doc"):
            c.echo("    " + str(info["doc"]).replace("\n", "\n    "))
        click.echo("\nmethods:")
        for method in info["methods"]:
            signature = inspect.signature(getattr(proxy, method))
            doc = info["methods"][method].get("doc") or ""
            c.echo(f"  {method}{signature}", False)
            if doc:
                c.echo("      " + str(doc).replace("\n", "\n      "))
        click.echo("\nattributes:")
        for attr in info["attributes"]:
            c.echo(f"  {attr}", False)
