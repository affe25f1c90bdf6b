"""Kept at this path: the per-unit monitors before the host supervisor (issue 14) were this
module, and code of that time imports it by this name. The code is
:mod:`malacoda.supervisor.monitor` (one unit inside :mod:`malacoda.supervisor.host`).
"""

import sys

if __name__ == "__main__":  # run as a program: the module below runs as ``__main__``
    import runpy

    runpy.run_module("malacoda.supervisor.monitor", run_name="__main__", alter_sys=True)
else:  # the same module object under both names, private names included
    import malacoda.supervisor.monitor as _module

    sys.modules[__name__] = _module
