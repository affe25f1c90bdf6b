"""`make demo`: start the example MessageDaemon, talk to it through a proxy, stop it."""

import os
import subprocess
import sys
import tempfile
import time

import malacoda

here = os.path.dirname(os.path.abspath(__file__))
os.environ.setdefault("MALACODA_HOME", tempfile.mkdtemp(prefix="malacoda-demo-"))
print(f"MALACODA_HOME={os.environ['MALACODA_HOME']}")
daemon = subprocess.Popen([sys.executable, os.path.join(here, "message_daemon.py")])
try:
    deadline = time.monotonic() + 15
    while True:
        try:
            d = malacoda.get("MessageDaemon")
            break
        except malacoda.LookupFailed:
            if daemon.poll() is not None or time.monotonic() > deadline:
                sys.exit("the MessageDaemon did not start")
            time.sleep(0.05)
    print(">>> d.insert_message('hello world')")
    print(d.insert_message("hello world"))
    print(">>> d.pst_counter")
    print(d.pst_counter)
    print(">>> malacoda.stop('MessageDaemon')")
    malacoda.stop("MessageDaemon")
    print("exit status:", daemon.wait(15))
finally:
    if daemon.poll() is None:
        daemon.kill()
