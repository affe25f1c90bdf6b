"""``make bench``: Malacoda measured beside raw pyzmq REQ/REP, Pyro5 and RPyC in one run.

Not part of the package. Run from the repository root: ``python -m bench [--quick]``.
"""
