"""The parts of ``malacodactl`` that reach other hosts, and ``malacodactl keys``.

``stop``, ``status`` and ``logs`` act on a host's processes and files, so for ``NAME:HOST`` (or
``--host HOST``) they run ``malacodactl`` on that host over SSH (:class:`~malacoda.remote.host.RemoteHost`)
and show its answer here: status rows from several hosts are merged into one table or one JSON
list, and error lines are prefixed with the host. ``call``, ``get``, ``set`` and ``describe``
need nothing from here: their proxy reaches ``NAME:HOST`` by itself.
"""

from __future__ import annotations

import json
import sys
from typing import Dict, List, Tuple

import click

from malacoda.address import parse
from malacoda.cli.terminal import visible
from malacoda.errors import ConfigError
from malacoda.host.paths import check_host, known_fields
from malacoda.supervisor import supervise as supervise


def split_names(names: Tuple[str, ...],
                hosts: Tuple[str, ...] = ()) -> Tuple[List[str], Dict[str, List[str]]]:
    """``(local NAMEs, {host: [NAME, ...]})`` from ``NAME`` / ``NAME:HOST`` arguments.

    With ``--host`` options, a bare NAME means that NAME on each of those hosts.
    """
    local: List[str] = []
    remote: Dict[str, List[str]] = {check_host(host, "--host"): [] for host in hosts}
    for text in names:
        spec = parse(text)
        if spec.port is not None:
            raise ConfigError(f"{text!r}: give NAME or NAME:HOST here, not a port")
        if spec.host is not None:
            remote.setdefault(spec.host, []).append(spec.name)
        elif hosts:
            for host in hosts:
                remote[host].append(spec.name)
        else:
            local.append(spec.name)
    return local, remote


def run_there(host: str, args: List[str], stream: bool = False,
              raw: bool = False) -> Tuple[int, bytes]:
    """Run ``malacodactl args`` on ``host``; print its stderr here (prefixed with the host).

    Returns its exit status and stdout (empty when ``stream``: stdout was printed as it came,
    with control characters made visible unless ``raw``: that host's malacodactl may be an
    older one that prints them as they are).
    """
    import codecs

    from malacoda.remote.host import RemoteHost

    out = sys.stdout.buffer
    decoder = codecs.getincrementaldecoder("utf-8")("replace")  # a character cut between chunks

    def echo(chunk: bytes) -> None:
        out.write(chunk if raw else visible(decoder.decode(chunk), newlines=True).encode())
        out.flush()

    status, stdout, stderr = RemoteHost(host).malacodactl(
        args, timeout=None if stream else 120.0, on_output=echo if stream else None)
    for line in stderr.decode(errors="replace").split("\n"):  # not at \r: see logfile._line
        if line.strip():
            message = line[len("malacodactl: "):] if line.startswith("malacodactl: ") else line
            click.echo(visible(f"malacodactl: {host}: {message}", newlines=False), err=True)
    return status, stdout


def remote_statuses(host: str, names: List[str],
                    ping_timeout: float) -> Tuple[List[supervise.UnitStatus], int]:
    """The status rows of ``names`` (all, when empty) on ``host``, and its exit status."""
    status, out = run_there(host, ["status", "--json", "--ping-timeout", str(ping_timeout), *names])
    try:
        rows = json.loads(out.decode() or "null")
    except ValueError:
        rows = None
    if not isinstance(rows, list):
        return [], status if status else 4
    return [supervise.UnitStatus(**known_fields(supervise.UnitStatus, row)) for row in rows
            if isinstance(row, dict)], status


def stop_there(host: str, names: List[str]) -> int:
    """``malacodactl stop NAMEs`` on ``host``; its output is shown here."""
    status, out = run_there(host, ["stop", *names])
    click.echo(visible(out.decode(errors="replace"), newlines=True), nl=False)
    return status


def logs_there(host: str, name: str, lines: int, follow: bool, raw: bool = False) -> int:
    """``malacodactl logs NAME -n LINES [-f] [--raw]`` on ``host``, printed here as it comes."""
    args = ["logs", name, "-n", str(lines)] + (["-f"] if follow else []) + (["--raw"] if raw else [])
    try:
        status, _ = run_there(host, args, stream=True, raw=raw)
    except KeyboardInterrupt:
        return 0
    return status

