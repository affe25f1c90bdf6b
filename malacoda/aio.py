"""asyncio: ``malacoda.aio.get(name)`` gives an :class:`AsyncProxy` whose calls are awaited.

The public path of :mod:`malacoda.client.aio` (the code, with its docs): the same module
object under both names.
"""

import sys

import malacoda.client.aio as _module

sys.modules[__name__] = _module
