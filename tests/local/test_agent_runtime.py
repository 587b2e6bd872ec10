"""The sandbox runtime: the agent's protocol, and what a process inside gets (ids, caps, view).

The agent is first driven directly on the host (as with isolation "none"), then the claims of
the isolated runtime are checked from inside sandboxes through the unmodified SDK.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from e2b import Sandbox
from e2b.exceptions import SandboxException
from e2b.sandbox.commands.command_handle import CommandExitException
from local_helpers import sandbox_host_dir, sdk_options, wait_for

import e2b_kernel
from e2b_kernel.local import RunningService, start_in_thread
from e2b_kernel.local.sandbox.agent_client import AgentCallError, AgentClient, AgentGone
from e2b_kernel.local.sandbox.bwrap import RUNTIME_ROOT
from e2b_kernel.local.sandbox.process import AgentProcess

AGENT_PARENT = Path(e2b_kernel.__file__).parent / "local"


# ----- the agent on the host -----


@contextlib.asynccontextmanager
async def host_agent(tmp_path: Path) -> AsyncIterator[AgentClient]:
    """A host agent listening on an inherited socket, as the service starts it."""
    path = tmp_path / "agent.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    boot = (
        f"import sys, runpy; sys.path.insert(0, {str(AGENT_PARENT)!r}); "
        "runpy.run_module('agent', run_name='__main__', alter_sys=True)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", boot, "--listen-fd", str(listener.fileno())],
        pass_fds=[listener.fileno()],
    )
    listener.close()
    try:
        yield AgentClient(str(path))
    finally:
        proc.kill()
        proc.wait()


def _run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


def test_agent_ping_spawn_exit_and_errors(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with host_agent(tmp_path) as client:
            reply = await client.request("ping")
            assert reply["uid"] == os.getuid()
            proc = AgentProcess(client)
            request = {"argv": ["sh", "-c", "echo $X; pwd; exit 3"], "env": {"X": "x"}}
            await proc.start({**request, "cwd": str(tmp_path)}, None, -1, -1)
            assert proc.stdout is not None
            assert await proc.stdout.read() == f"x\n{tmp_path}\n".encode()
            assert await proc.wait() == 3
            with pytest.raises(AgentCallError) as missing:
                await client.request("spawn", [0, 1, 2], argv=["no-such-program-here"])
            assert missing.value.errno == errno.ENOENT
            with pytest.raises(AgentCallError) as bad_env:
                await client.request("spawn", [0, 1, 2], argv=["true"], env={"A=B": "1"})
            assert bad_env.value.errno == errno.EINVAL
            with pytest.raises(AgentCallError) as unknown:
                await client.request("no-such-op")
            assert unknown.value.errno == errno.ENOSYS
            with pytest.raises(AgentCallError) as foreign:  # only its own children
                await client.request("signal", pid=1, signal=9)
            assert foreign.value.errno == errno.ESRCH

    _run(scenario())


def test_agent_signals_a_process_group_and_reports_the_signal(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with host_agent(tmp_path) as client:
            proc = AgentProcess(client)
            await proc.start({"argv": ["sleep", "600"], "env": {}}, None, None, None)
            await proc.signal(15)
            assert await proc.wait() == -15

    _run(scenario())


def test_connect_hands_the_port_connection_itself_to_the_service(tmp_path: Path) -> None:
    """The agent opens the port and hands the socket over: once it has answered, nothing of
    the agent is in the path (a killed agent leaves the connection working), and a closed
    port is refused with its errno."""

    async def scenario() -> None:
        accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
        accepted = asyncio.Queue()

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await accepted.put((reader, writer))

        server = await asyncio.start_server(on_client, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with host_agent(tmp_path) as client:
            stream = await client.connect_port(port)
            server_reader, server_writer = await asyncio.wait_for(accepted.get(), 10)
            agent_pid = (await client.request("ping"))["pid"]
            os.kill(agent_pid, 9)
            await stream.write(b"ping")
            assert await asyncio.wait_for(server_reader.readexactly(4), 10) == b"ping"
            server_writer.write(b"pong")
            await server_writer.drain()
            assert await asyncio.wait_for(stream.read_chunk(), 10) == b"pong"
            await stream.close()
            assert await asyncio.wait_for(server_reader.read(), 10) == b""
        server.close()
        (tmp_path / "again").mkdir()
        async with host_agent(tmp_path / "again") as client:
            with pytest.raises(AgentCallError) as closed:
                await client.connect_port(port)
            assert closed.value.errno == errno.ECONNREFUSED

    _run(scenario())


def _fake_agent(path: Path, handed_over: list[int]) -> tuple[socket.socket, threading.Thread]:
    """A listener that answers one request ok, with ``handed_over`` as its fds (an agent
    taken over by the code in its sandbox could send anything), and the thread that answers:
    join it before counting fds, since its own end of the connection is open until it ends."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def answer() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            socket.send_fds(conn, [b'{"ok":true}\n'], handed_over)

    answering = threading.Thread(target=answer, daemon=True)
    answering.start()
    return listener, answering


@pytest.mark.parametrize("what", ["pipe", "unix socket", "two sockets", "nothing"])
def test_the_service_takes_only_one_tcp_socket_from_an_agent(tmp_path: Path, what: str) -> None:
    """Whatever a subverted agent hands over instead of one TCP connection is refused with
    EPROTO, and every fd it sent is closed (none leaks into the service)."""
    pipe_r, pipe_w = os.pipe()
    unix_a, unix_b = socket.socketpair()
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sent = {
        "pipe": [pipe_r],
        "unix socket": [unix_a.fileno()],
        "two sockets": [tcp.fileno(), tcp.fileno()],
        "nothing": [],
    }[what]
    listener, answering = _fake_agent(tmp_path / "fake.sock", sent)

    async def scenario() -> None:
        with pytest.raises(AgentCallError) as refused:
            await AgentClient(str(tmp_path / "fake.sock")).connect_port(8888)
        assert refused.value.errno == errno.EPROTO

    before = len(os.listdir("/proc/self/fd"))
    try:
        _run(scenario())
        answering.join(10)
        assert not answering.is_alive()
        assert len(os.listdir("/proc/self/fd")) <= before
    finally:
        for closing in (listener, unix_a, unix_b, tcp):
            closing.close()
        os.close(pipe_r)
        os.close(pipe_w)


def test_a_dead_agent_is_gone_for_the_client(tmp_path: Path) -> None:
    async def scenario() -> None:
        with pytest.raises(AgentGone):
            await AgentClient(str(tmp_path / "nothing.sock")).request("ping")

    _run(scenario())


# ----- inside isolated sandboxes -----


def _status(sbx: Sandbox, user: str) -> dict[str, str]:
    text = sbx.commands.run("cat /proc/self/status", user=user).stdout  # type: ignore[arg-type]
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


@pytest.mark.parametrize("user", ["user", "root"])
def test_commands_have_no_capabilities_no_new_privs_and_seccomp(sbx: Sandbox, user: str) -> None:
    status = _status(sbx, user)
    for field in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[field].strip(), 16) == 0, (field, status[field])
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2"


def test_identity_user_and_root(sbx: Sandbox) -> None:
    assert sbx.commands.run("id -u; id -un; echo $HOME").stdout.split() == [
        "1000",
        "user",
        "/home/user",
    ]
    assert sbx.commands.run("id -u", user="root").stdout.strip() == "0"
    # Inside ids map to an unprivileged host range, never to host root.
    uid_map = sbx.commands.run("cat /proc/self/uid_map").stdout.split()
    assert uid_map[0] == "0" and int(uid_map[1]) >= 1_000_000 and uid_map[2] == "65536"


@pytest.mark.parametrize(
    "command",
    [
        "unshare -U true",
        "unshare -m true",
        "mount -t tmpfs x /mnt",
        "mount -o remount,rw /",
        "umount -l /home/user",
    ],
)
@pytest.mark.parametrize("user", ["user", "root"])
def test_namespaces_and_mounts_are_refused(sbx: Sandbox, command: str, user: str) -> None:
    with pytest.raises(CommandExitException):
        sbx.commands.run(command, user=user)  # type: ignore[arg-type]


def test_host_secrets_and_project_are_invisible(sbx: Sandbox) -> None:
    project = Path(e2b_kernel.__file__).resolve().parents[1]
    for path in [project / "pyproject.toml", Path("/work/main/pyproject.toml")]:
        assert os.path.exists(path)
        with pytest.raises(CommandExitException):
            sbx.commands.run(f"test -e {path}", user="root")
    # Masked (an unreadable device node on a nodev mount, or empty): never the host file.
    assert sbx.commands.run("cat /etc/shadow 2>/dev/null; true", user="root").stdout == ""
    listed = sbx.commands.run("ls -A /root", user="root").stdout.split()
    assert listed in ([], [".pyenv"])  # at most the service's Python, bound back read-only
    assert RUNTIME_ROOT.parent.name not in sbx.commands.run("ls -A /tmp").stdout
    assert sbx.commands.run("getent passwd user").stdout.startswith("user:x:1000:1000:")
    with pytest.raises(CommandExitException):
        sbx.commands.run("touch /usr/x /etc/x /opt/e2b/x", user="root")


@pytest.fixture(scope="module")
def small_disk_service() -> Iterator[RunningService]:
    service = start_in_thread(disk_mb=64)
    try:
        yield service
    finally:
        service.stop()


def test_disk_cap_holds_and_df_shows_it(small_disk_service: RunningService) -> None:
    if os.geteuid() != 0:
        pytest.skip("the disk cap needs a service running as root")
    sandbox = Sandbox.create(timeout=120, **sdk_options(small_disk_service))
    try:
        size_kb = int(sandbox.commands.run("df -k --output=size /home/user").stdout.split()[-1])
        assert 60 * 1024 <= size_kb <= 68 * 1024
        with pytest.raises(CommandExitException) as full:
            sandbox.commands.run("head -c 100M /dev/zero > /tmp/big")
        assert "No space left on device" in full.value.stderr
        # /home/user and /tmp share the one cap.
        with pytest.raises(CommandExitException):
            sandbox.commands.run("head -c 10M /dev/zero > /home/user/more")
    finally:
        sandbox.kill()


def test_a_dead_agent_means_a_gone_sandbox(local_service: RunningService) -> None:
    sandbox = Sandbox.create(timeout=120, **sdk_options(local_service))
    sandbox_id = sandbox.sandbox_id
    host_dir = sandbox_host_dir(sandbox_id)
    assert host_dir is not None
    state = [str(host_dir)]
    # Root inside may signal every process with its uid, the agent included.
    with pytest.raises(Exception):  # noqa: B017  # the command dies with the sandbox
        sandbox.commands.run("kill -9 -1", user="root")
    wait_for(lambda: not any(os.path.exists(p) for p in state), 2.0, "the sandbox's cleanup")
    with pytest.raises(SandboxException):
        sandbox.commands.run("true")
    listed = [info.sandbox_id for info in Sandbox.list(**sdk_options(local_service)).next_items()]
    assert sandbox_id not in listed


def test_a_full_agent_backlog_is_a_busy_agent_not_an_internal_error(tmp_path: Path) -> None:
    """Past the agent's accept backlog, asyncio reports the connect done and the send then
    fails with ENOTCONN: a burst of 1,500 port connections logged 1,169 tracebacks and
    answered 500s. It is a busy agent (E2B's closed-port answer upstream)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "busy.sock"))
    listener.listen(0)  # and never accepts

    async def one(client: AgentClient) -> BaseException | None:
        try:
            await asyncio.wait_for(client.request("ping"), 2)
        except BaseException as exc:  # each outcome is examined below
            return exc
        return None

    async def scenario() -> list[BaseException | None]:
        client = AgentClient(str(tmp_path / "busy.sock"))
        return list(await asyncio.gather(*(one(client) for _ in range(20))))

    try:
        outcomes = asyncio.run(scenario())
    finally:
        listener.close()
    busy = [e for e in outcomes if isinstance(e, AgentCallError) and e.errno == errno.EAGAIN]
    others = [e for e in outcomes if not isinstance(e, (AgentCallError, asyncio.TimeoutError))]
    assert busy and not others, outcomes
