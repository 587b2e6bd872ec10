"""Commands and pty as E2B answers them, through the unmodified SDK (sync and async): kill
by pid (also from another connection), env vars scoped to one command, list, connect, and
pty input and resize."""

from __future__ import annotations

import asyncio

import pytest
from e2b import AsyncSandbox, CommandExitException, PtySize, Sandbox, TimeoutException
from local_helpers import wait_for

pytestmark = pytest.mark.usefixtures("sdk_env")


def test_kill_list_connect_envs_and_pty_sync() -> None:
    sbx = Sandbox.create(timeout=120)
    try:
        other = Sandbox.connect(sbx.sandbox_id)
        sleeper = sbx.commands.run("sleep 600", background=True, envs={"ONLY": "here"}, cwd="/tmp")
        listed = {p.pid: p for p in other.commands.list()}
        assert listed[sleeper.pid].envs == {"ONLY": "here"} and listed[sleeper.pid].cwd == "/tmp"
        assert listed[sleeper.pid].tag is None  # commands.run sends none: envd lists none
        assert other.commands.kill(sleeper.pid) is True
        with pytest.raises(CommandExitException) as ended:
            sleeper.wait()
        assert ended.value.exit_code == -1
        assert other.commands.kill(sleeper.pid) is False  # gone: E2B's NotFound -> False
        assert sleeper.pid not in {p.pid for p in sbx.commands.list()}

        assert sbx.commands.run("echo $ONLY", envs={"ONLY": "x"}).stdout == "x\n"
        assert sbx.commands.run("echo [$ONLY]").stdout == "[]\n"  # scoped to that command

        # The counter waits for a file written after the connection, so it cannot end first.
        counter = sbx.commands.run(
            "until [ -e /tmp/go ]; do sleep 0.05; done; for i in 1 2 3; do echo $i; done",
            background=True,
        )
        attached = other.commands.connect(counter.pid)
        sbx.files.write("/tmp/go", "")
        assert attached.wait().stdout.split()[-1] == "3"

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


def test_a_connect_deadline_ends_the_stream_and_leaves_the_process_running() -> None:
    """envd's Connect only ends its stream at the deadline (the SDK's default is 60 s); only
    Start's deadline kills. A process or terminal someone attached to was killed here."""
    sbx = Sandbox.create(timeout=120)
    try:
        sleeper = sbx.commands.run("sleep 600", background=True, timeout=0)
        with pytest.raises(TimeoutException):
            sbx.commands.connect(sleeper.pid, timeout=1).wait()
        terminal = sbx.pty.create(PtySize(rows=24, cols=80), timeout=0)
        with pytest.raises(TimeoutException):
            sbx.pty.connect(terminal.pid, timeout=1).wait()
        alive = {p.pid for p in sbx.commands.list()}
        assert {sleeper.pid, terminal.pid} <= alive
        # The terminal still answers: a later connection sees its output.
        again = sbx.pty.connect(terminal.pid, timeout=30)
        sbx.pty.send_stdin(terminal.pid, b"exit 7\n")
        with pytest.raises(CommandExitException) as shell:
            again.wait()
        assert shell.value.exit_code == 7
    finally:
        sbx.kill()


def test_a_command_ends_when_it_exits_though_a_child_it_left_holds_its_output() -> None:
    """``cmd &`` leaves a child with the command's stdout: envd ends the command when the shell
    exits (Go's Wait closes the pipes); here it waited for the child, so starting a server
    with ``&`` cost the whole timeout and raised TimeoutException. Output written before the
    exit is kept; the child goes on running (what it writes there later gets EPIPE, as on
    E2B: start servers with ``background=True`` or their output redirected)."""
    sbx = Sandbox.create(timeout=120)
    try:
        result = sbx.commands.run("echo before; sleep 600 & echo after", timeout=20)
        assert result.exit_code == 0 and result.stdout == "before\nafter\n"
        listed = [" ".join([p.cmd, *p.args]) for p in sbx.commands.list()]
        assert not any("sleep 600" in line for line in listed)  # a child, not a command
        assert sbx.commands.run("pgrep -x sleep").stdout.strip()  # ... and still running

        # The handle create returns carries the terminal's events: connecting after the input
        # was sent could come after the shell ended and was forgotten (not_found, as on E2B).
        terminal = sbx.pty.create(PtySize(rows=24, cols=80), timeout=20)
        sbx.pty.send_stdin(terminal.pid, b"sleep 600 &\nexit 3\n")
        with pytest.raises(CommandExitException) as shell:
            terminal.wait()
        assert shell.value.exit_code == 3
    finally:
        sbx.kill()


def test_a_command_with_a_background_child_ends_async() -> None:
    async def scenario() -> None:
        sbx = await AsyncSandbox.create(timeout=120)
        try:
            result = await sbx.commands.run("sleep 600 & echo started", timeout=20)
            assert result.exit_code == 0 and result.stdout == "started\n"
            sleeper = await sbx.commands.run("sleep 600", background=True, timeout=0)
            with pytest.raises(TimeoutException):
                await (await sbx.commands.connect(sleeper.pid, timeout=1)).wait()
            assert sleeper.pid in {p.pid for p in await sbx.commands.list()}
        finally:
            await sbx.kill()

    asyncio.run(scenario())


def test_an_unknown_user_is_refused_as_envd_refuses_it() -> None:
    """envd's authentication middleware answers every service alike: the SDK raises
    AuthenticationException for commands and ptys as for files (commands raised
    InvalidArgumentException here)."""
    from e2b import AuthenticationException

    sandbox = Sandbox.create(timeout=120)
    try:
        calls = [
            lambda: sandbox.commands.run("whoami", user="alice"),
            lambda: sandbox.pty.create(PtySize(rows=24, cols=80), user="alice"),
            lambda: sandbox.files.read("x", user="alice"),
        ]
        for call in calls:
            with pytest.raises(AuthenticationException, match="invalid username: 'alice'"):
                call()
    finally:
        sandbox.kill()


def test_a_commands_timeout_kills_it_though_no_one_reads_it_any_more() -> None:
    """envd runs a command under its Start deadline, streamed or not: a background server a
    script started with the default 60 s and left behind dies then on E2B. Here the deadline
    was kept only by the stream, so a command whose caller disconnected ran for ever."""
    sbx = Sandbox.create(timeout=120)
    try:
        other = Sandbox.connect(sbx.sandbox_id)  # before the deadline starts to run
        detached = sbx.commands.run("sleep 301", background=True, timeout=3)
        detached.disconnect()
        attached = other.commands.connect(detached.pid, timeout=0)  # a reader, not its deadline
        with pytest.raises(TimeoutException):
            sbx.commands.run("sleep 302", timeout=2)

        def running() -> set[str]:
            return {" ".join([p.cmd, *p.args]) for p in sbx.commands.list()}

        wait_for(lambda: not any("sleep 30" in line for line in running()), 30, "the deadlines")
        with pytest.raises(CommandExitException) as ended:
            attached.wait()
        assert ended.value.exit_code == -1  # killed
        assert not sbx.commands.run("pgrep -x sleep || true").stdout.strip()
    finally:
        sbx.kill()


def test_multiprocessing_and_shared_memory_work_as_in_an_e2b_sandbox() -> None:
    """E2B's VM has a /dev/shm anyone may write: multiprocessing's locks, queues and pools
    (POSIX semaphores) and shared memory need it. Here it was root's, so ``Lock()`` failed
    with EACCES, and with it ProcessPoolExecutor, joblib and PyTorch's DataLoader workers."""
    code = (
        "import multiprocessing as mp\n"
        "from multiprocessing import shared_memory\n"
        "if __name__ == '__main__':\n"
        "    with mp.Pool(2) as pool: squares = pool.map(abs, [-1, -2, -3])\n"
        "    lock, queue = mp.Lock(), mp.Queue(); queue.put(squares)\n"
        "    block = shared_memory.SharedMemory(create=True, size=16); block.buf[0] = 7\n"
        "    print(queue.get(), block.buf[0]); block.close(); block.unlink()\n"
    )
    sbx = Sandbox.create(timeout=120)
    try:
        sbx.files.write("/home/user/pool.py", code)
        assert sbx.commands.run("python3 pool.py").stdout == "[1, 2, 3] 7\n"
    finally:
        sbx.kill()


def test_kill_signals_the_process_alone_as_envd_does() -> None:
    """envd's SendSignal (and a deadline) signals the command's process, not its group: what
    the command started goes on in E2B's VM. Here the whole group died, so code that left a
    child running on E2B found it gone locally."""
    sbx = Sandbox.create(timeout=120)
    try:
        shell = sbx.commands.run("sleep 303; echo done", background=True)
        wait_for(lambda: "sleep 303" in sbx.commands.run("ps -eo args").stdout, 30, "the sleep")
        assert sbx.commands.kill(shell.pid) is True
        with pytest.raises(CommandExitException) as ended:
            shell.wait()
        assert ended.value.exit_code == -1 and "done" not in ended.value.stdout
        assert "sleep 303" in sbx.commands.run("ps -eo args").stdout  # the child lives on
    finally:
        sbx.kill()
