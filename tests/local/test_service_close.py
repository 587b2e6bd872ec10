"""A service's close: every sandbox teardown ends before it returns, whoever began it.

A stopping service closes its registry from three places (the stop signal, uvicorn's lifespan
and the end of ``serve``). When one of them returned while a sandbox was still being torn
down, the event loop ended under that teardown and the sandbox's disk (a tmpfs) stayed
mounted on the host: ``test_a_stopped_service_leaves_no_mount_behind`` failed about one run
in ten under load (``-n 4``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
from local_helpers import wait_for

from e2b_kernel.local.sandbox import LocalSandbox
from e2b_kernel.local.sandbox.disk import can_cap_disk, unmount_disk
from e2b_kernel.local.service.pool import WarmPool
from e2b_kernel.local.service.sandboxes import ServiceSandboxes


def _mounted(path: Path) -> bool:
    return f" {path} " in Path("/proc/self/mounts").read_text()


def _needs_isolation() -> None:
    if shutil.which("bwrap") is None or not can_cap_disk():
        pytest.skip("needs bubblewrap and host root: the disk is a tmpfs the service mounts")


async def _yield_to_the_loop() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_a_second_pool_close_waits_for_the_teardown_the_first_began() -> None:
    """The fill was cancelled again by the second close while it waited for the teardown of
    the sandbox it had been warming; both closes then returned with that teardown running."""

    async def scenario() -> None:
        warming, tearing_down, torn_down = asyncio.Event(), asyncio.Event(), asyncio.Event()

        class _Sandbox:
            killed = asyncio.Event()

            async def kill(self) -> None:
                tearing_down.set()
                await torn_down.wait()

        class _Interpreter:
            async def warm(self) -> None:
                warming.set()
                await asyncio.Event().wait()  # until cancelled by close

        async def make() -> Any:
            return _Sandbox(), _Interpreter()

        pool = WarmPool(1, make)
        pool.start()
        await asyncio.wait_for(warming.wait(), 5)
        first = asyncio.ensure_future(pool.close())
        await asyncio.wait_for(tearing_down.wait(), 5)
        second = asyncio.ensure_future(pool.close())
        await _yield_to_the_loop()
        assert not first.done() and not second.done(), "a close returned mid-teardown"
        torn_down.set()
        await asyncio.wait_for(asyncio.gather(first, second), 5)

    asyncio.run(scenario())


def test_a_close_waits_for_the_teardown_of_a_sandbox_whose_agent_died() -> None:
    """Such a sandbox leaves the registry at once ("not found", as on E2B) and tears itself
    down; the close that follows must still wait for that teardown."""
    _needs_isolation()
    sandboxes = ServiceSandboxes(pool_size=0)

    async def scenario() -> None:
        entry = await sandboxes.registry.create(
            template_id="base", timeout=60, metadata={}, envs={}
        )
        sandbox = entry.sandbox
        assert _mounted(sandbox.disk_dir)
        for pid in sandbox.live_pids():  # its agent among them
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        while not sandbox.killed.is_set():
            await asyncio.sleep(0)  # close as soon as the sandbox knows, not later
        await sandboxes.registry.close()
        assert not _mounted(sandbox.disk_dir), "close returned before the teardown ended"
        assert not sandbox.disk_dir.exists()

    try:
        asyncio.run(scenario())
    finally:
        asyncio.run(sandboxes.close())


def test_a_teardown_cut_short_still_unmounts_the_disk() -> None:
    """The loop ends while a kill is under way (what a close that returned early led to):
    the disk is unmounted all the same."""
    _needs_isolation()
    sandboxes = ServiceSandboxes(pool_size=0)

    async def kill_as_the_loop_ends() -> LocalSandbox:
        sandbox = sandboxes.registry.new_sandbox({})
        await sandbox.start()
        assert _mounted(sandbox.disk_dir)
        killing = asyncio.ensure_future(sandbox.kill())
        for _ in range(3):  # the kill begins its teardown, which reaches its first wait
            await asyncio.sleep(0)
        assert not killing.done()
        return sandbox  # and the loop ends (cancelling it) there

    sandbox = asyncio.run(kill_as_the_loop_ends())
    try:
        assert not _mounted(sandbox.disk_dir)
    finally:
        # What the cut-short teardown did not get to: its processes and cgroups.
        for pid in sandbox.live_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not sandbox.cgroups.remove_or_kill(), what="its cgroups to go")
        unmount_disk(sandbox.disk_dir)
        shutil.rmtree(sandboxes.state_dir, ignore_errors=True)
