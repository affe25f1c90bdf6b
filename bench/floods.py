"""Peak memory of a daemon under a flood of frames that never make a message it can read.

``python -m bench.floods PEERS FRAMES FINISH [MAX_MESSAGE_MIB [FRAME_MIB]]``: starts
``tests.support.daemons.HostileDaemon`` (``open``, the given ``max_message``, 8 MiB by default
as in the tests), then
``PEERS`` raw ZMTP connections each send ``FRAMES`` frames of ``FRAME_MIB`` (default
``max_message``) with MORE set, the last one without it if ``FINISH`` is 1, while an owner's
connection pings; prints what each sent before it was cut, the daemon's peak RSS growth
(VmHWM against the RSS before), the slowest ping, and the daemon's warnings. The tests
``test_bounds.py::test_a_message_of_many_frames_is_bounded_as_a_whole`` and
``::test_unfinished_messages_are_bounded`` are ``1 20 1`` and ``3 10 0``; the original
reports were ``1 20 1 64 32`` and ``3 10 0 64 32``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from typing import List

from bench.harness import ROOT


def main(argv: List[str]) -> int:
    if len(argv) < 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    peers, frames, finish = int(argv[0]), int(argv[1]), argv[2] == "1"
    max_message = (int(argv[3]) if len(argv) > 3 else 8) << 20
    frame = (int(argv[4]) << 20) if len(argv) > 4 else max_message
    home = tempfile.mkdtemp(prefix="malacoda-floods-")
    os.chmod(home, 0o700)
    os.environ["MALACODA_HOME"] = home
    import psutil

    from malacoda.host.registry import Registry
    from tests.integration.test_bounds import Flood
    from tests.support import (
        peak_rss,
        wait_for,
    )
    from tests.support.wire import Wire

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    log_path = os.path.join(home, "daemon.err")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from tests.support.daemons import HostileDaemon; "
             f"HostileDaemon(max_message={max_message}, open=True)"],
            cwd=str(ROOT), env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        wait_for(lambda: Registry().read("HostileDaemon")[1] == "running", what="the daemon")
        port = Registry().lookup("HostileDaemon").port
        daemon = psutil.Process(proc.pid)
        probe = Wire(port)
        assert probe.alive()
        before = daemon.memory_info().rss
        flood = Flood(port, daemon, peers, frames, frame, finish)
        try:
            slowest = flood.run(probe, timeout=120)
            dropped = flood.dropped(5)
            print(f"max_message {max_message >> 20} MiB, {peers} x {frames} frames of "
                  f"{frame >> 20} MiB{' (finished)' if finish else ''}: dropped {dropped}, "
                  f"sent MiB {[s >> 20 for s in flood.sent]}, peak RSS +"
                  f"{(peak_rss(daemon) - before) / 2**20:.1f} MiB (RSS before "
                  f"{before >> 20} MiB), slowest ping {slowest * 1000:.1f} ms")
        finally:
            flood.close()
            probe.close()
    finally:
        proc.terminate()
        proc.wait(10)
    with open(log_path) as f:
        for line in f:
            if "closed the" in line:
                print("  " + line.strip()[:200], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
