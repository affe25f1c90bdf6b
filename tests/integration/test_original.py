"""The original Malacoda's own unit test (``tests/test_malacoda.py``, Python 2, 2014), ported.

Kept as it was: a ``unittest.TestCase`` whose ``SimpleMalacoda(daemonize=False)`` passes
python-daemon's ``stdout``, ``stderr`` and ``files_preserve`` to the base class, started in a
``multiprocessing.Process``; the same calls and the same assertions. Changed, and only because
they cannot be kept:

- ``cPickle``: the state file is seeded through ``PstFileStorage`` (our file format), and the
  final pickle read of the state file is replaced by a restart that reads ``pst_list`` back;
- ``/tmp/pst_test.p``, ``/tmp/stdout`` and port 51001 are a temporary folder's files and a free
  port (several test runs share this machine), with a private ``MALACODA_HOME``;
- ``malacoda.get`` right after ``p.start()`` raced the daemon's start: it waits for the daemon
  to register first; the ``time.sleep(5)`` before ``stop()`` (for the periodic save) is not
  needed, since a stop saves; ``p.join()`` has a timeout and the process is killed at the end.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
import unittest
from datetime import timedelta
from multiprocessing import Process
from pathlib import Path

import malacoda
from malacoda.host.paths import Paths
from malacoda.host.registry import Registry
from malacoda.storage import PstFileStorage
from tests.support import free_port, wait_for

PST_FILE = ""  # set by setUp, before the daemon's process is forked
STDOUT_FILE = ""


class TestMalacoda(unittest.TestCase):
    def setUp(self):
        global PST_FILE, STDOUT_FILE
        self.folder = tempfile.mkdtemp(prefix="malacoda-original-")
        self.saved_home = os.environ.get("MALACODA_HOME")
        os.environ["MALACODA_HOME"] = os.path.join(self.folder, "home")
        PST_FILE = os.path.join(self.folder, "pst_test.p")
        STDOUT_FILE = os.path.join(self.folder, "stdout")
        storage = PstFileStorage("SimpleMalacoda", Paths.default(), file_path=PST_FILE)
        storage.save({"pst_list": [1]})
        self.processes = []

    def tearDown(self):
        for p in self.processes:
            if p.is_alive():
                p.kill()
            p.join(10)
        if self.saved_home is None:
            os.environ.pop("MALACODA_HOME", None)
        else:
            os.environ["MALACODA_HOME"] = self.saved_home
        shutil.rmtree(self.folder, ignore_errors=True)

    def start(self, **kwargs):
        p = Process(target=start_malacoda, kwargs=kwargs)
        p.start()
        self.processes.append(p)

        def registered():
            self.assertTrue(p.is_alive(), "the daemon's process exited")
            entry, state = Registry().read("SimpleMalacoda")
            return state == "running" and entry is not None and entry.pid == p.pid

        wait_for(registered, timeout=30, what="SimpleMalacoda to register")
        return p

    def stopped(self, zp, p):
        zp.stop()
        p.join(30)
        self.assertFalse(p.is_alive())
        self.assertEqual(p.exitcode, 0)

    def saved_pst_list(self):
        """What replaces the pickle read of the state file: a restart reads pst_list back."""
        p = self.start()
        zp = malacoda.get("SimpleMalacoda")
        try:
            return zp.pst_list
        finally:
            self.stopped(zp, p)

    def test_malacoda(self):
        p = self.start()
        zp = malacoda.get("SimpleMalacoda")
        self.assertEqual(zp.pst_list, [1])
        zp.update_pst_list([1, 2, 3])
        self.assertEqual(zp.constant, 5)
        zp.constant = 10
        self.assertEqual(zp.constant, 10)
        self.assertTrue(callable(zp.echo))
        self.assertEqual(zp.echo("hello"), "hello")
        with self.assertRaises(AttributeError):
            zp.unknown()
        with self.assertRaises(socket.timeout):
            zp.timeout(1, timeout=0.1)
        self.stopped(zp, p)
        self.assertEqual(self.saved_pst_list(), [1, 2, 3])
        self.assertTrue(Path(STDOUT_FILE).exists())

    def test_get_by_port(self):
        port = free_port()
        p = self.start(port=port)
        zp = malacoda.get(f"SimpleMalacoda:{port}")
        self.assertEqual(zp.pst_list, [1])
        zp.update_pst_list([1, 2, 3])
        self.stopped(zp, p)
        self.assertEqual(self.saved_pst_list(), [1, 2, 3])


def start_malacoda(port=None):
    SimpleMalacoda(daemonize=False, port=port)


class SimpleMalacoda(malacoda.Malacoda):
    def __init__(self, daemonize=False, port=None):
        self.constant = 5
        self.pst_list = None
        stdout = open(STDOUT_FILE, "w+")
        pst_config = {"class_name": "PstFileStorage", "frequency": timedelta(seconds=2),
                      "file_path": PST_FILE}
        super().__init__(pst_config=pst_config, daemonize=daemonize, stdout=stdout,
                         stderr=stdout, files_preserve=[stdout], port=port)

    def _run(self):
        while self.running:
            time.sleep(5)

    def update_pst_list(self, new_list):
        self.pst_list = new_list

    def echo(self, text):
        return text

    def timeout(self, t=10):
        time.sleep(t)

    def fn(self):
        return self.echo


# ---------------------------------------------------------------------- the keywords themselves

FOREGROUND = """
import os, sys
from tests.support.daemons import TestDaemon

class Here(TestDaemon):
    def where(self):
        print("out of the daemon", flush=True)
        os.write(2, b"err of the daemon\\n")
        mask = os.umask(0); os.umask(mask)
        return [os.getcwd(), mask]

out = open({out!r}, "w")
Here(stdout=out, stderr=out, files_preserve=[out], pidfile=None, signal_map={{}},
     working_directory={folder!r}, umask=0o027, **{extra})
print("after, in", os.getcwd(), flush=True)
"""


def test_daemon_context_keywords_in_the_foreground(home, processes, tmp_path) -> None:
    from tests.conftest import _env
    from tests.support import DaemonProcess

    out, folder = tmp_path / "out", tmp_path / "work"
    folder.mkdir()
    code = FOREGROUND.format(out=str(out), folder=str(folder), extra="{}")
    proc = processes.add(DaemonProcess(code, _env(home)))
    wait_for(lambda: Registry().read("Here")[0] is not None or not proc.alive(),
             what="Here to register")
    d = malacoda.get("Here")
    assert d.where() == [str(folder), 0o027]
    d.stop()
    assert proc.wait(30) == 0
    after = proc.output()
    assert "after, in" in after and str(folder) not in after  # cwd and output given back
    assert "out of the daemon\nerr of the daemon\n" in out.read_text()
    assert "after" not in out.read_text()


def test_an_unknown_keyword_is_still_an_error(home, processes, tmp_path) -> None:
    from tests.conftest import _env
    from tests.support import DaemonProcess

    code = FOREGROUND.format(out=str(tmp_path / "out"), folder=str(tmp_path),
                             extra="{'colour': 1}")
    proc = processes.add(DaemonProcess(code, _env(home)))
    assert proc.wait(30) == 1
    assert ("ConfigError: unknown keyword argument(s) colour: neither a Malacoda keyword nor a "
            "daemon.DaemonContext option") in proc.output()
