"""envd's Process service through the unmodified SDK: run, background, stdin, kill, timeouts."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from e2b import AsyncSandbox, Sandbox
from e2b.exceptions import InvalidArgumentException, TimeoutException
from e2b.sandbox.commands.command_handle import CommandExitException
from local_helpers import host_pids_with, marker, sdk_options, wait_for

from e2b_kernel.local import RunningService


@pytest.fixture(scope="module")
def sbx(local_service: RunningService) -> Iterator[Sandbox]:
    sandbox = Sandbox.create(
        timeout=600, envs={"SANDBOX_VAR": "from-create"}, **sdk_options(local_service)
    )
    try:
        yield sandbox
    finally:
        sandbox.kill()


def test_foreground_output_exit_code_and_cwd(sbx: Sandbox) -> None:
    result = sbx.commands.run("echo out; echo err >&2; pwd")
    assert result.stdout == "out\n/home/user\n"
    assert result.stderr == "err\n"
    assert result.exit_code == 0
    with pytest.raises(CommandExitException) as failed:
        sbx.commands.run("echo partial; exit 3")
    assert failed.value.exit_code == 3
    assert failed.value.stdout == "partial\n"


def test_envs_layering_and_no_service_secrets(sbx: Sandbox) -> None:
    result = sbx.commands.run(
        'echo "$SANDBOX_VAR|$CALL_VAR|$HOME|${E2B_API_KEY-unset}"', envs={"CALL_VAR": "per-call"}
    )
    assert result.stdout.strip() == "from-create|per-call|/home/user|unset"
    overridden = sbx.commands.run("echo $SANDBOX_VAR", envs={"SANDBOX_VAR": "override"})
    assert overridden.stdout.strip() == "override"


def test_cwd_option_and_missing_cwd(sbx: Sandbox) -> None:
    assert sbx.commands.run("pwd", cwd="/tmp").stdout.strip() == "/tmp"
    with pytest.raises(InvalidArgumentException, match="does not exist"):
        sbx.commands.run("pwd", cwd="/home/user/not-a-dir")


def test_streaming_callbacks(sbx: Sandbox) -> None:
    seen: list[str] = []
    sbx.commands.run("for i in 1 2 3; do echo line$i; done", on_stdout=seen.append)
    assert "".join(seen) == "line1\nline2\nline3\n"


def test_background_list_connect_and_kill(sbx: Sandbox) -> None:
    handle = sbx.commands.run("echo started; sleep 600", background=True, timeout=0)
    assert handle.pid in [p.pid for p in sbx.commands.list()]
    listed = next(p for p in sbx.commands.list() if p.pid == handle.pid)
    assert listed.cmd == "/bin/bash"
    again = sbx.commands.connect(handle.pid, timeout=0)
    assert sbx.commands.kill(handle.pid) is True
    with pytest.raises(CommandExitException):
        again.wait()
    wait_for(lambda: handle.pid not in [p.pid for p in sbx.commands.list()], what="kill")
    assert sbx.commands.kill(handle.pid) is False  # NOT_FOUND


def test_stdin_send_and_close(sbx: Sandbox) -> None:
    handle = sbx.commands.run("cat; echo done", background=True, stdin=True)
    sbx.commands.send_stdin(handle.pid, "first\n")
    sbx.commands.send_stdin(handle.pid, "second\n")
    sbx.commands.close_stdin(handle.pid)
    result = handle.wait()
    assert result.stdout == "first\nsecond\ndone\n"


def test_server_enforced_timeout_kills_the_process_async(local_service: RunningService) -> None:
    """The async SDK does not enforce commands.run(timeout=) itself; the server must."""
    tag = marker()

    async def run() -> None:
        sandbox = await AsyncSandbox.create(timeout=120, **sdk_options(local_service))
        try:
            with pytest.raises(TimeoutException):
                await sandbox.commands.run(f"exec -a {tag} sleep 600", timeout=2)
            wait_for(lambda: not host_pids_with(tag), what="the timed-out process to be killed")
            result = await sandbox.commands.run("echo still usable")
            assert result.stdout == "still usable\n"
        finally:
            await sandbox.kill()

    asyncio.run(run())


def test_async_background_and_stdin(local_service: RunningService) -> None:
    async def run() -> None:
        sandbox = await AsyncSandbox.create(timeout=120, **sdk_options(local_service))
        try:
            chunks: list[str] = []
            handle = await sandbox.commands.run(
                "read x; echo got:$x", background=True, stdin=True, on_stdout=chunks.append
            )
            await sandbox.commands.send_stdin(handle.pid, "value\n")
            result = await handle.wait()
            assert result.stdout == "got:value\n"
            assert "".join(chunks) == "got:value\n"
        finally:
            await sandbox.kill()

    asyncio.run(run())


def test_large_and_non_utf8_output(sbx: Sandbox) -> None:
    result = sbx.commands.run("head -c 5000000 /dev/zero | tr '\\0' a; printf '\\377\\n'")
    assert result.stdout.startswith("a" * 1000)
    assert len(result.stdout) >= 5_000_000


def test_process_exit_by_signal(sbx: Sandbox) -> None:
    with pytest.raises(CommandExitException) as killed:
        sbx.commands.run("kill -9 $$")
    assert killed.value.exit_code != 0


def test_disconnected_client_does_not_stall_the_process(sbx: Sandbox) -> None:
    # 8 MB: twice what a stream's queue holds (64 chunks of 64 KiB), read by the service at its
    # pace for output no one streams (1 MB/s, see sandbox_output.UNREAD_OUTPUT_RATE).
    handle = sbx.commands.run(
        "head -c 8000000 /dev/zero | tr '\\0' x; echo; touch /home/user/finished; sleep 600",
        background=True,
        timeout=0,
    )
    handle.disconnect()
    # The process keeps running without a client, and its output no longer holds it back.
    wait_for(lambda: sbx.files.exists("/home/user/finished"), timeout=60, what="the writer")
    assert handle.pid in [p.pid for p in sbx.commands.list()]
    assert sbx.commands.kill(handle.pid)


def test_pty_session_async(local_service: RunningService) -> None:
    from e2b import PtySize

    async def run() -> None:
        sandbox = await AsyncSandbox.create(timeout=120, **sdk_options(local_service))
        output = bytearray()

        async def seen(text: bytes) -> None:
            deadline = asyncio.get_running_loop().time() + 30
            while text not in output:
                assert asyncio.get_running_loop().time() < deadline, f"no {text!r} in {output!r}"
                await asyncio.sleep(0.05)

        try:
            handle = await sandbox.pty.create(
                PtySize(cols=100, rows=30), on_data=output.extend, timeout=0
            )
            await sandbox.pty.send_stdin(handle.pid, b"stty size; echo pty-$((6*7))\n")
            await seen(b"pty-42")
            assert b"30 100" in output
            assert b"user@sandbox:~$ " in output  # an interactive shell prompt, as user (E2B)
            await sandbox.pty.resize(handle.pid, PtySize(cols=120, rows=40))
            await sandbox.pty.send_stdin(handle.pid, b"stty size\n")
            await seen(b"40 120")
            await sandbox.pty.send_stdin(handle.pid, b"exit\n")
            result = await handle.wait()
            assert result.exit_code == 0
        finally:
            await sandbox.kill()

    asyncio.run(run())


def test_kill_during_a_command_breaks_its_stream(local_service: RunningService) -> None:
    from e2b.exceptions import SandboxNotRunningException

    sandbox = Sandbox.create(timeout=120, **sdk_options(local_service))
    handle = sandbox.commands.run("echo ready; sleep 600", background=True, timeout=0)
    wait_for(lambda: handle.pid in [p.pid for p in sandbox.commands.list()], what="the command")
    assert sandbox.kill()
    with pytest.raises(SandboxNotRunningException, match="killed"):
        handle.wait()
