"""A sandbox killed while its Jupyter Server starts: whoever waits for the server (a request
proxied to port 8888) is answered at once, not after ``READY_TIMEOUT``.

The sandbox is a stand-in: with a real one the kill cannot be timed reliably inside the
server's start (about a second), and the server under test here is the service's object that
watches it, not the sandbox.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from e2b_kernel.local.sandbox.jupyter import JupyterServer, JupyterUnavailable


class _StartingServerProcess:
    """A Jupyter Server process that has not logged its ready line yet."""

    def __init__(self) -> None:
        self.stderr = asyncio.StreamReader()
        self._ended = asyncio.Event()

    async def wait(self) -> int:
        await self._ended.wait()
        return -9


class _Sandbox:
    def __init__(self, kernelspec_dir: Path) -> None:
        self.kernelspec_dir = kernelspec_dir
        self.python = "python3"
        self.sandbox_id = "stand-in"
        self.killed = asyncio.Event()
        self._on_kill: list[Any] = []

    def base_env(self) -> dict[str, str]:
        return {}

    async def spawn(self, argv: list[str], **_: Any) -> _StartingServerProcess:
        return _StartingServerProcess()

    def on_kill(self, callback: Any) -> None:
        self._on_kill.append(callback)

    def kill(self) -> None:  # as LocalSandbox.kill runs its callbacks
        self.killed.set()
        for callback in self._on_kill:
            callback()


def test_waiters_for_the_server_of_a_killed_sandbox_are_answered_at_once(tmp_path: Path) -> None:
    async def run() -> None:
        sandbox = _Sandbox(tmp_path)
        server = JupyterServer(sandbox, "/run/jupyter", str(tmp_path))  # type: ignore[arg-type]
        await server.start()
        # Without the kill's answer it would end in "did not start within 10 s".
        waiter = asyncio.ensure_future(server.ready(timeout=10))
        await asyncio.sleep(0)  # it waits now
        assert not waiter.done()
        sandbox.kill()
        with pytest.raises(JupyterUnavailable, match="killed before its Jupyter Server started"):
            await waiter

    asyncio.run(run())
