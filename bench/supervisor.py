"""Supervisor measurements: placeholder until the CLI lands."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict


def measure(daemons: int, runs: int, env: Dict[str, str], root: Path) -> Dict[str, Any]:
    return {"rows": [], "notes": []}
