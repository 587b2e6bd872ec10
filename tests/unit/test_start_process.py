"""``start_process``: a cancelled start never hangs and leaves no process behind."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from e2b_kernel.local.sandbox.subprocesses import start_process


def _running(marker: str) -> bool:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker.encode() in cmdline.read_bytes():
                return True
        except OSError:
            continue
    return False


@pytest.mark.parametrize("yields", [0, 1, 2, 3, 5, 8])
def test_a_start_cancelled_at_any_point_ends_and_its_process_is_killed(yields: int) -> None:
    marker = f"e2b-start-process-{uuid.uuid4().hex}"

    async def scenario() -> None:
        argv = ("sh", "-c", "sleep 60", marker)
        pipes = {"stdout": asyncio.subprocess.PIPE, "stderr": asyncio.subprocess.PIPE}
        task = asyncio.ensure_future(start_process(*argv, **pipes))
        for _ in range(yields):
            await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=30)
        assert done and task.cancelled()
        # The start itself finishes in the background, then its process is killed.
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if others:
            await asyncio.wait(others, timeout=30)
        for _ in range(300):
            if not _running(marker):
                return
            await asyncio.sleep(0.01)  # reaping by asyncio's child watcher, within a moment
        raise AssertionError("the cancelled start's process still runs")

    asyncio.run(scenario())


def test_an_uncancelled_start_is_create_subprocess_exec() -> None:
    async def scenario() -> bytes:
        proc = await start_process("echo", "hello", stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        assert proc.returncode == 0
        return out

    assert asyncio.run(scenario()) == b"hello\n"
