"""malacoda.aio follows the synchronous proxy's access rules: owner-only by default (another
user is refused; the owner and root need no configuration), an open daemon's owner token, and
NAME:HOST over SSH. The throwaway users are test_owner_only's."""

from __future__ import annotations

import asyncio
import concurrent.futures.thread  # noqa: F401 - imported before the fork (the children cannot read /root)
import os
from typing import Any, Dict, Optional

import pytest

import malacoda
import malacoda.aio
from malacoda.client.aiochannel import AsyncChannel
from malacoda.host.registry import Registry
from malacoda.wire import protocol as p
from tests.integration.test_owner_only import (  # noqa: F401 - the fixtures, by name
    ALICE,
    MALLORY,
    ROOT_ONLY,
    as_user,
    ok,
    users,
    vault,
)


def _ask_raw(port: int, plain: Optional[bytes]) -> Dict[str, Any]:
    """As another user: an AsyncChannel to ``port`` with no credentials, or a guessed secret."""

    async def ask() -> Dict[str, Any]:
        channel = AsyncChannel(f"tcp://127.0.0.1:{port}", plain=plain)
        try:
            frames = p.request_frames(b"mallory-1", p.CALL, "echo", [["x"], {}], 3000)
            reply = await channel.request(frames, b"mallory-1", 3.0)
            return {"reply": [reply.status, reply.value()]}
        except malacoda.MalacodaError as exc:
            return {"refused": type(exc).__name__, "message": str(exc)}
        finally:
            channel.close()

    return asyncio.run(ask())


@ROOT_ONLY
def test_another_user_is_refused_the_owner_and_root_are_not(users, vault):  # noqa: F811
    v = vault()
    for plain in (None, b"guess"):
        answer = ok(as_user(users[MALLORY], lambda plain=plain: _ask_raw(v.port, plain)))
        assert "reply" not in answer, f"mallory got a reply: {answer}"
        assert answer["refused"] in ("ConnectionLost", "NotSent", "CallTimeout"), answer
    # by name she finds nothing of her own
    by_name = as_user(users[MALLORY], lambda: asyncio.run(
        malacoda.aio.get(f"Vault:{v.port}", timeout=2).echo("hi")))
    assert by_name.get("error") == "LookupFailed", by_name

    async def owner() -> Any:
        async with malacoda.aio.get("Vault", timeout=10) as d:
            await d.set("pst_counter", 5)
            return [await d.echo("a"), await d.bump(),
                    await asyncio.gather(*(d.echo(i) for i in range(100)))]

    assert ok(as_user(users[ALICE], lambda: asyncio.run(owner()))) == ["a", 6, list(range(100))]

    async def root() -> Any:
        async with malacoda.aio.get("Vault", timeout=10) as d:
            return await d.get("pst_counter")

    assert asyncio.run(root()) == 6  # root reaches another user's daemon, as the sync proxy


@ROOT_ONLY
def test_open_daemon_owner_gets_tracebacks_others_do_not(users, vault):  # noqa: F811
    v = vault(open=True)

    def traceback_of() -> Any:
        async def go() -> Any:
            try:
                await malacoda.aio.get(f"Vault:{v.port}" if os.geteuid() else "Vault",
                                       timeout=10).fail_value()
            except ValueError as exc:
                return exc.remote_traceback  # type: ignore[attr-defined]
            return None

        return asyncio.run(go())

    assert "fail_value" in ok(as_user(users[ALICE], traceback_of))


@pytest.mark.asyncio
async def test_name_host_over_ssh(start_daemon, web1):
    proc = start_daemon()
    async with malacoda.aio.get("TestDaemon:web1", timeout=30) as d:
        assert await d.echo("over ssh") == "over ssh"
        assert await d.pid() == proc.pid
        assert d._target.endpoint.startswith("ipc://")
        assert await asyncio.gather(*(d.echo(i) for i in range(200))) == list(range(200))
        port = Registry().lookup("TestDaemon").port
    async with malacoda.aio.get(f"TestDaemon:web1:{port}", timeout=30) as by_port:
        assert await by_port.add(2, b=3) == 5
    await malacoda.aio.stop("TestDaemon:web1")
    assert proc.wait(10) == 0
