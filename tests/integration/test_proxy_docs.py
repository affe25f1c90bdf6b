"""A proxy shows the daemon's own docs (issue 12): its class docstring in ``__doc__`` and
``help()``, annotations as text in remote signatures, and ``dir()`` as the daemon is now."""

from __future__ import annotations

import inspect
import pydoc

import malacoda
from malacoda.client.proxy import request
from malacoda.wire import protocol as p

DOC = "A daemon with one of everything the tests need."


def test_doc_and_help_show_the_daemons_class_docstring(start_daemon):
    start_daemon()
    with malacoda.get("TestDaemon") as d:
        assert d.__doc__ == DOC
        assert inspect.getdoc(d) == DOC
        page = pydoc.render_doc(d, renderer=pydoc.plaintext)
        assert DOC in page
        assert "A stand-in for the daemon" not in page
        # The class keeps its own docs, for help(malacoda.Proxy).
        assert malacoda.Proxy.__doc__.startswith("A stand-in for the daemon")
        assert "A stand-in for the daemon" in pydoc.render_doc(malacoda.Proxy)


def test_annotations_are_kept_as_text_in_remote_signatures(start_daemon):
    start_daemon()
    with malacoda.get("TestDaemon") as d:
        signature = inspect.signature(d.add)
        assert str(signature) == "(a: int, b: int = 2, *, timeout=None) -> int"
        assert signature.parameters["a"].annotation == "int"
        assert signature.return_annotation == "int"
        assert str(inspect.signature(d.echo)) == "(value, *rest, timeout=None, **kw)"
        # An older client reads the description as before: rows of three, one key more.
        description = request(d, p.DESCRIBE, None, None, 10)
        add = description["methods"]["add"]
        assert add["params"] == [["a", 1, None], ["b", 1, "2"]]
        assert add["annotations"] == {"a": "int", "b": "int", "return": "int"}
        assert "annotations" not in description["methods"]["echo"]


def test_dir_shows_attributes_created_after_the_proxy_was_made(start_daemon):
    start_daemon()
    with malacoda.get("TestDaemon") as d, malacoda.get("TestDaemon") as other:
        assert "constant" in dir(d) and "add" in dir(d) and "born_later" not in dir(d)
        other.born_later = 1
        assert "born_later" in dir(d)
        assert d.born_later == 1


def test_doc_of_a_hung_daemon_is_none_soon(start_daemon):
    """help(proxy) and IPython's ``proxy?`` read ``__doc__``: a daemon that cannot answer (here
    stopped with SIGSTOP) gives None within DOC_WAIT, not after the proxy's whole wait (20 s
    for a proxy without a timeout)."""
    import os
    import signal
    import time

    from malacoda.client import proxy as proxy_module

    proc = start_daemon()
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        with malacoda.get("TestDaemon") as d:
            began = time.monotonic()
            assert d.__doc__ is None
            assert time.monotonic() - began < proxy_module.DOC_WAIT + 3
    finally:
        os.kill(proc.pid, signal.SIGCONT)
