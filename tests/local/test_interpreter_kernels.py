"""Kernel-level cases the HTTP API cannot provoke (the context lock prevents queued requests)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from e2b_kernel.local.interpreter.contexts import Context, Execution


class HostSandbox:
    """The part of LocalSandbox that kernels use, running processes directly on this host."""

    def __init__(self, root: Path) -> None:
        self.socket_dir = root
        self.kernel_socket_dir = root / "sockets"
        self.kernel_socket_dir.mkdir(exist_ok=True)
        self.sandbox_socket_dir = str(root)
        self.python = sys.executable
        self.envs: dict[str, str] = {}
        self.killed = asyncio.Event()

    def base_env(self) -> dict[str, str]:
        return {"PATH": "/usr/bin:/bin", "HOME": str(self.socket_dir), "LANG": "C.UTF-8"}

    async def spawn(
        self,
        argv: list[str],
        *,
        env: dict[str, str],
        cwd: str = "/",
        stdin: int | None = asyncio.subprocess.DEVNULL,
        stdout: int | None = asyncio.subprocess.PIPE,
        stderr: int | None = asyncio.subprocess.PIPE,
    ) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            cwd=self.socket_dir,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )

    async def start_beside(
        self, argv: list[str], pass_fds: tuple[int, ...]
    ) -> tuple[asyncio.subprocess.Process, Path, int]:
        folder = self.socket_dir / "beside"
        folder.mkdir(exist_ok=True)
        process = await asyncio.create_subprocess_exec(
            *argv,
            pass_fds=pass_fds,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        return process, folder, -1


@pytest.mark.timeout(120)
def test_a_request_aborted_by_stop_on_error_ends_with_execution_aborted(tmp_path: Path) -> None:
    async def scenario() -> list[list[dict]]:
        context = Context(HostSandbox(tmp_path), "python", str(tmp_path))
        await context.start()
        try:
            stop = asyncio.Event()
            failing = Execution(context, "import time; time.sleep(1); 1/0", stop)
            queued = Execution(context, "'never runs'", stop)

            failing_lines = failing.lines()
            started = await failing_lines.__anext__()  # execute_input: the kernel is running it
            assert started["type"] == "number_of_executions"

            async def rest_of_failing() -> list[dict]:
                return [started] + [line async for line in failing_lines]

            async def all_of_queued() -> list[dict]:
                return [line async for line in queued.lines()]

            return list(await asyncio.gather(rest_of_failing(), all_of_queued()))
        finally:
            await context.close()

    failed, aborted = asyncio.run(scenario())
    assert [line["type"] for line in failed][-2:] == ["error", "end_of_execution"]
    assert aborted == [
        {
            "type": "error",
            "name": "ExecutionAborted",
            "value": "Execution was aborted",
            "traceback": "",
        },
        {"type": "end_of_execution"},
    ]


@pytest.mark.timeout(120)
def test_a_reply_that_comes_after_idle_still_fails_the_cell(tmp_path: Path) -> None:
    """IPython shows an exception group as stderr text: only the shell reply says the cell
    failed. ipykernel sends that reply before 'idle', but on another socket (through the
    kernel bridge); on a loaded CI machine it came more than 1 s after 'idle', and the cell
    was reported ok. Here the reply is held back 1.5 s after it arrives."""
    code = "raise ExceptionGroup('g', [ValueError(1)])"

    async def scenario() -> list[dict]:
        loop = asyncio.get_running_loop()
        context = Context(HostSandbox(tmp_path), "python", str(tmp_path))
        await context.start()
        try:
            kernel = context.kernel
            assert kernel is not None
            arriving = kernel.reply_for

            def held_back(msg_id: str) -> asyncio.Future | None:
                real = arriving(msg_id)
                if real is None:
                    return None
                late: asyncio.Future = loop.create_future()

                def pass_on(arrived: asyncio.Future) -> None:
                    if not arrived.cancelled() and not late.done():
                        late.set_result(arrived.result())

                real.add_done_callback(lambda arrived: loop.call_later(1.5, pass_on, arrived))
                return late

            kernel.reply_for = held_back  # type: ignore[method-assign]
            return [line async for line in Execution(context, code, asyncio.Event()).lines()]
        finally:
            await context.close()

    lines = asyncio.run(scenario())
    assert [line["type"] for line in lines][-2:] == ["error", "end_of_execution"], lines
    assert lines[-2]["name"] == "ExceptionGroup"


class SpawnFailingSandbox(HostSandbox):
    """A sandbox whose kernel cannot be spawned (its agent refused, say); it keeps the
    bridge process it started beside, to be looked at afterwards."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.bridges: list[asyncio.subprocess.Process] = []
        self.bridge_started = asyncio.Event()

    async def spawn(self, argv: list[str], **kwargs: object) -> asyncio.subprocess.Process:
        await asyncio.wait_for(self.bridge_started.wait(), 30)  # it was started first
        raise OSError("the agent refused the spawn")

    async def start_beside(
        self, argv: list[str], pass_fds: tuple[int, ...]
    ) -> tuple[asyncio.subprocess.Process, Path, int]:
        process, folder, uid = await super().start_beside(argv, pass_fds)
        self.bridges.append(process)
        self.bridge_started.set()
        return process, folder, uid


@pytest.mark.timeout(60)
def test_a_kernel_that_fails_to_start_leaves_no_bridge_running(tmp_path: Path) -> None:
    """The bridge process starts before the kernel (so its start costs the first cell
    nothing); when the kernel then cannot start, the bridge must end too."""
    sandbox = SpawnFailingSandbox(tmp_path)

    async def scenario() -> None:
        context = Context(sandbox, "python", str(tmp_path))
        with pytest.raises(Exception, match="the agent refused the spawn"):
            await context.start()
        await context.close()

    asyncio.run(scenario())
    assert len(sandbox.bridges) == 1
    assert sandbox.bridges[0].returncode is not None, "the bridge still runs"
