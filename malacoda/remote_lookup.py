"""Kept at this path: other hosts run ``python3 -m malacoda.remote_lookup NAME`` over SSH,
and a newer host asks an older one (and the reverse) by this path. The code is
:mod:`malacoda.remote.lookup`.
"""

import sys

if __name__ == "__main__":  # run as a program: the module below runs as ``__main__``
    import runpy

    runpy.run_module("malacoda.remote.lookup", run_name="__main__", alter_sys=True)
else:  # the same module object under both names, private names included
    import malacoda.remote.lookup as _module

    sys.modules[__name__] = _module
