"""How ``status`` prints its rows: durations, sizes, last exits, the table.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from malacoda.cli.common import Context, supervise
from malacoda.supervisor.states import UnitState


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _size(n: Optional[int]) -> str:
    if n is None:
        return "-"
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n = n / 1024  # type: ignore[assignment]
    return str(n)


def _exit_text(last: Optional[Dict[str, Any]]) -> str:
    if not last:
        return "-"
    return ", ".join(f"{k} {v}" if k == "code" else str(v) for k, v in last.items())


def status_table(c: Context, results: List[Tuple[supervise.UnitStatus, Optional[str]]]) -> None:
    """The status table; a HOST column when the rows carry hosts (``--cluster``). Names, hosts
    and messages may come from etcd or another host: each cell is shown on one line."""
    hosts = any(host is not None for _, host in results)
    rows = [("NAME", *(("HOST",) if hosts else ()), "STATE", "PID", "PORT", "UPTIME", "CPU%", "RSS",
             "RESTARTS", "LAST EXIT")]
    for r, host in results:
        rows.append(tuple(c.shown(str(cell), newlines=False) for cell in (
            r.name, *((host or "-",) if hosts else ()), r.state, str(r.pid or "-"),
            str(r.port or "-"), _duration(r.uptime), "-" if r.cpu is None else f"{r.cpu:.1f}",
            _size(r.rss), "-" if r.restarts is None else str(r.restarts),
            _exit_text(r.last_exit))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        c.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip(), newlines=False)
    for r, host in results:
        if r.message and (c.verbose or r.state in (UnitState.INVALID, UnitState.UNREACHABLE) or r.changed):
            c.echo(f"{r.name}{':' + host if host else ''}: {r.message}", False)
        if r.pst:  # always: state that a restart would lose
            c.echo(f"{r.name}{':' + host if host else ''}: {r.pst}", False)
