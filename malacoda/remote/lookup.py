"""The remote end of ``NAME:HOST``: run over SSH on the daemon's host, prints one JSON line.

``python3 -m malacoda.remote_lookup NAME`` reads this host's registry for ``NAME`` with the
usual liveness checks (pid alive, same start time, same owner) and prints::

    {"malacoda": "<version>", "host": "<hostname>", "state": "running"|"stale"|"absent",
     "entry": {...registry entry...} | null}

It exits 0 whenever it could answer; the caller reads the state. Nothing else is written to
stdout. It is an internal command: its output format may change together with the caller's.
"""

from __future__ import annotations

import json
import socket
import sys
from dataclasses import asdict
from typing import Any, Dict, List, Optional

from malacoda.host.registry import EntryState


def main(argv: Optional[List[str]] = None) -> int:
    from malacoda.errors import MalacodaError
    from malacoda.host.registry import Registry
    from malacoda.version import __version__

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python3 -m malacoda.remote_lookup NAME", file=sys.stderr)
        return 2
    answer: Dict[str, Any] = {"malacoda": __version__, "host": socket.gethostname()}
    try:
        entry, state = Registry().read(args[0])
    except MalacodaError as exc:
        answer["error"] = str(exc)
        entry, state = None, EntryState.ABSENT
    answer["state"] = state
    answer["entry"] = asdict(entry) if entry is not None and state == EntryState.RUNNING else None
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
