"""Kept at this path: running monitors are recognised by ``malacoda.monitor`` in their
command lines, and each runs this path. The code is :mod:`malacoda.supervisor.monitor`.
"""

import sys

if __name__ == "__main__":  # run as a program: the module below runs as ``__main__``
    import runpy

    runpy.run_module("malacoda.supervisor.monitor", run_name="__main__", alter_sys=True)
else:  # the same module object under both names, private names included
    import malacoda.supervisor.monitor as _module

    sys.modules[__name__] = _module
