"""The proxy's own edges: its timeouts, forks, and the names it passes through."""

from __future__ import annotations

import pytest

import malacoda

BAD_TIMEOUTS = [float("nan"), 0, 0.0, -1, -0.5, -(10**400), "5", b"5", True, [1]]


@pytest.mark.parametrize("bad", BAD_TIMEOUTS, ids=lambda v: repr(v)[:12])
def test_a_bad_timeout_is_a_config_error_and_nothing_is_sent(start_daemon, bad):
    start_daemon()
    with pytest.raises(malacoda.ConfigError, match="timeout="):
        malacoda.get("TestDaemon", timeout=bad)
    d = malacoda.get("TestDaemon")
    with pytest.raises(malacoda.ConfigError, match="timeout=") as caught:
        d.bump(timeout=bad)
    assert repr(bad) in str(caught.value)
    assert d.pst_counter == 0  # the call never went out, so it never ran


@pytest.mark.parametrize("endless", [float("inf"), 1e300, 10**400], ids=["inf", "1e300", "10**400"])
def test_an_endless_timeout_waits_for_the_reply(start_daemon, endless):
    start_daemon()
    d = malacoda.get("TestDaemon", timeout=endless)
    assert d.slow(0.2) == "slept 0.2"
    assert d.slow(0.2, timeout=endless) == "slept 0.2"
    assert d.bump(timeout=endless) == 1
