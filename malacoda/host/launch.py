"""The command lines of the Python processes Malacoda starts: none takes modules from its
current folder.

``python -m pkg.mod`` puts the current folder first on ``sys.path``: ``cd /tmp && malacodactl
start X`` would run a ``json.py`` that another user left in ``/tmp`` as whoever started X, and
the daemon runner would do the same with a unit's ``workdir``. So every Python process Malacoda
starts (the host supervisor, the daemon runner, the lookup and ``malacodactl`` it runs on a remote host
over SSH, the ``ExecStart=`` line ``malacodactl systemd`` prints when no ``malacodactl`` script
is installed) runs ``python -c BOOTSTRAP MODULE ARGS...``: :data:`BOOTSTRAP` removes the
current folder's entry (``''``, which ``-c`` puts first) before anything is imported, then runs
``MODULE`` as ``-m`` would (:func:`runpy.run_module`). ``site`` and its ``.pth`` files ran
before that entry was added, so nothing was read from the current folder before it goes.

Not ``-P`` (``PYTHONSAFEPATH``): Python 3.11 and later only, and Malacoda supports 3.9. Not
``-I``: it also drops ``PYTHONPATH`` and the user's site-packages, which users rely on to point
a daemon at their code, and which is how :func:`malacoda.supervisor.monitor.package_env` makes the children
run this same Malacoda. An empty or relative ``PYTHONPATH`` entry also means "the current
folder": :func:`malacoda.supervisor.monitor.package_env` drops empty ones and makes relative ones absolute.
"""

from __future__ import annotations

import sys
from typing import List, Sequence

#: Python code run with ``-c``: the current folder off ``sys.path``, then ``-m``'s behaviour.
BOOTSTRAP = ("import sys; sys.path[:] = [p for p in sys.path if p != '']; import runpy; "
             "runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)")


def python_command(module: str, args: Sequence[str] = (), python: str = sys.executable) -> List[str]:
    """The argv that runs ``python -m module args`` without the current folder on ``sys.path``."""
    return [python, "-c", BOOTSTRAP, module, *args]
