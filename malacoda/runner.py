"""Kept at this path: monitors start daemons as ``malacoda.runner UNIT_FILE FD UNIT_FD``,
and one started by an older monitor still runs this path. The code is
:mod:`malacoda.supervisor.runner`.
"""

import sys

if __name__ == "__main__":  # run as a program: the module below runs as ``__main__``
    import runpy

    runpy.run_module("malacoda.supervisor.runner", run_name="__main__", alter_sys=True)
else:  # the same module object under both names, private names included
    import malacoda.supervisor.runner as _module

    sys.modules[__name__] = _module
