"""Commands and pty as E2B answers them, through the unmodified SDK (sync and async): kill
by pid (also from another connection), env vars scoped to one command, list, connect, and
pty input and resize."""

from __future__ import annotations

import asyncio

import pytest
from e2b import AsyncSandbox, CommandExitException, PtySize, Sandbox

pytestmark = pytest.mark.usefixtures("sdk_env")


def test_kill_list_connect_envs_and_pty_sync() -> None:
    sbx = Sandbox.create(timeout=120)
    try:
        other = Sandbox.connect(sbx.sandbox_id)
        sleeper = sbx.commands.run("sleep 600", background=True, envs={"ONLY": "here"}, cwd="/tmp")
        listed = {p.pid: p for p in other.commands.list()}
        assert listed[sleeper.pid].envs == {"ONLY": "here"} and listed[sleeper.pid].cwd == "/tmp"
        assert other.commands.kill(sleeper.pid) is True
        with pytest.raises(CommandExitException) as ended:
            sleeper.wait()
        assert ended.value.exit_code == -1
        assert other.commands.kill(sleeper.pid) is False  # gone: E2B's NotFound -> False
        assert sleeper.pid not in {p.pid for p in sbx.commands.list()}

        assert sbx.commands.run("echo $ONLY", envs={"ONLY": "x"}).stdout == "x\n"
        assert sbx.commands.run("echo [$ONLY]").stdout == "[]\n"  # scoped to that command

        counter = sbx.commands.run("for i in 1 2 3; do echo $i; sleep 0.2; done", background=True)
        assert other.commands.connect(counter.pid).wait().stdout.split()[-1] == "3"

        terminal = sbx.pty.create(PtySize(rows=24, cols=80))
        other.pty.resize(terminal.pid, PtySize(rows=33, cols=101))
        other.pty.send_stdin(terminal.pid, b"stty size; exit 4\n")
        seen: list[bytes] = []
        with pytest.raises(CommandExitException) as shell:
            terminal.wait(on_pty=seen.append)
        assert shell.value.exit_code == 4 and b"33 101" in b"".join(seen)
    finally:
        sbx.kill()


def test_kill_envs_and_pty_async() -> None:
    async def scenario() -> None:
        sbx = await AsyncSandbox.create(timeout=120)
        try:
            other = await AsyncSandbox.connect(sbx.sandbox_id)
            sleeper = await sbx.commands.run("sleep 600", background=True)
            assert await other.commands.kill(sleeper.pid) is True
            with pytest.raises(CommandExitException):
                await sleeper.wait()
            assert await other.commands.kill(sleeper.pid) is False
            assert await sbx.commands.kill(999_999) is False

            scoped = await sbx.commands.run("echo $V", envs={"V": "1"})
            assert scoped.stdout == "1\n"
            assert (await sbx.commands.run("echo [$V]")).stdout == "[]\n"

            seen: list[bytes] = []
            terminal = await sbx.pty.create(PtySize(rows=24, cols=80), on_data=seen.append)
            await other.pty.resize(terminal.pid, PtySize(rows=40, cols=120))
            await other.pty.send_stdin(terminal.pid, b"stty size; exit 0\n")
            assert (await terminal.wait()).exit_code == 0
            assert b"40 120" in b"".join(seen)
        finally:
            await sbx.kill()

    asyncio.run(scenario())
