"""host/pool.py: the one pool of shared resources (tunnels, SSH connections, watches, context)."""

from __future__ import annotations

import os

from malacoda.host.pool import Pool


def test_the_last_release_closes_once_and_a_second_release_does_nothing() -> None:
    closed = []
    pool: Pool[str, list] = Pool(close=closed.append)
    a, release_a = pool.acquire("k", lambda: ["made"])
    b, release_b = pool.acquire("k", lambda: ["other"])
    assert a is b and pool.find("k") is a
    release_a()
    release_a()
    assert closed == [] and pool.find("k") is a
    release_b()
    assert closed == [a] and pool.find("k") is None


def test_one_that_does_not_fit_is_made_anew_and_its_holders_keep_it() -> None:
    closed = []
    pool: Pool[str, dict] = Pool(close=closed.append)
    old, release_old = pool.acquire("k", lambda: {"v": 1})
    new, release_new = pool.acquire("k", lambda: {"v": 2}, fits=lambda value: value["v"] == 2)
    assert new is not old and pool.find("k") is new
    release_old()
    assert closed == []  # not the pool's any more
    release_new()
    assert closed == [new]


def test_get_does_not_count_and_close_all_closes_everything() -> None:
    closed = []
    pool: Pool[int, object] = Pool(close=closed.append)
    one = pool.get(1, object)
    assert pool.get(1, object) is one
    two, _ = pool.acquire(2, object)
    assert pool.close_all() == [one, two] and closed == [one, two]
    assert pool.find(1) is None


def test_a_per_process_resource_is_made_anew_in_a_forks_child() -> None:
    pool: Pool[None, object] = Pool(per_process=True)
    parent = pool.get(None, object)
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 when it got a resource of its own
        os._exit(0 if pool.get(None, object) is not parent and pool.get(None, object) is
                 pool.get(None, object) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert pool.get(None, object) is parent
