"""One Jupyter kernel process inside a sandbox, driven over `ipc` sockets by jupyter_client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import socket
import stat
import sys
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import zmq
import zmq.asyncio
from jupyter_client.asynchronous.client import AsyncKernelClient
from jupyter_client.channels import AsyncZMQSocketChannel
from jupyter_client.connect import KernelConnectionInfo
from traitlets import Type

from . import kernel_bridge

log = logging.getLogger(__name__)

STARTUP_DIR = Path(__file__).parent / "kernel_startup"
# A slow shared machine starting several sandboxes at once can take a while to import ipykernel.
READY_TIMEOUT = 90.0
# Messages queued per tracked request before the iopub reader stops reading (backpressure).
ROUTE_QUEUE_SIZE = 16


class SandboxProcess(Protocol):
    """What kernels use of a spawned process (an AgentProcess, or asyncio's Process)."""

    pid: int
    returncode: int | None
    stderr: asyncio.StreamReader | None

    async def wait(self) -> int: ...

    def kill(self) -> None: ...


class SandboxLike(Protocol):
    """The part of `LocalSandbox` (interface B) that kernels need.

    ``socket_dir`` (host path) holds the connection files; only the service writes there.
    ``kernel_socket_dir`` (host path, under it) is where kernels bind their ipc sockets, and
    ``sandbox_socket_dir`` is ``socket_dir`` as the sandbox sees it.
    """

    socket_dir: Path
    kernel_socket_dir: Path
    sandbox_socket_dir: str
    python: str
    envs: dict[str, str]
    killed: asyncio.Event

    def base_env(self) -> dict[str, str]: ...

    async def spawn(
        self,
        argv: list[str],
        *,
        env: dict[str, str],
        cwd: str = ...,
        stdin: int | None = ...,
        stdout: int | None = ...,
        stderr: int | None = ...,
    ) -> SandboxProcess: ...

    async def start_beside(
        self, argv: list[str], pass_fds: tuple[int, ...]
    ) -> tuple[asyncio.subprocess.Process, Path, int]: ...


class KernelStartError(RuntimeError):
    """The kernel process exited or did not answer before the deadline."""


@dataclass(frozen=True)
class Language:
    """How one language's kernel is started and how code sets its cwd and env vars."""

    name: str
    module: str

    def chdir_code(self, cwd: str) -> str:
        """Silent cell that sets the working directory."""
        if self.name == "bash":
            return f"cd {_sh_quote(cwd)}"
        return f"__import__('os').chdir({cwd!r})"

    def set_env_code(self, env: dict[str, str]) -> str:
        """Code that sets env vars inside the kernel, one statement per line; in Python
        without ``import os``, which left ``os`` defined in a fresh namespace (and gone after
        a restart: a notebook that forgot the import worked once)."""
        if self.name == "bash":
            return "\n".join(f"export {key}={_sh_quote(value)}" for key, value in env.items())
        return "\n".join(
            f"__import__('os').environ[{key!r}] = {value!r}" for key, value in env.items()
        )

    def call_env_code(self, env: dict[str, str]) -> str:
        """Code that sets one call's env vars; in Python it first notes what each was and
        what it is set to (on the os module, leaving the user's namespace alone), so that
        :meth:`restore_env_code` can put back exactly what was there before, as E2B's
        template does (its ``E2BEnviron``)."""
        if self.name == "bash":
            return self.set_env_code(env)
        return (
            f"(lambda os, env: os.__dict__.__setitem__('_e2b_call_env', "
            f"{{k: (os.environ.get(k), v) for k, v in env.items()}}) or os.environ.update(env))"
            f"(__import__('os'), {env!r})"
        )

    def restore_env_code(self, keys: list[str], global_env: dict[str, str]) -> str:
        """Code that puts one call's env vars back. Python: to what each was before the
        call, unless the code itself changed it meanwhile (its value stays, as E2B's
        template keeps it). Bash: to the sandbox-level value, or unset."""
        if self.name != "bash":
            return (
                "(lambda os, noted: [os.environ.pop(k, None) if was is None "
                "else os.environ.__setitem__(k, was) for k, (was, set_to) in noted.items() "
                "if os.environ.get(k) == set_to])"
                "(__import__('os'), __import__('os').__dict__.pop('_e2b_call_env', {}))"
            )
        lines = []
        for key in keys:
            if key in global_env:
                lines.append(self.set_env_code({key: global_env[key]}))
            elif self.name == "bash":
                lines.append(f"unset {key}")
            else:
                lines.append(f"__import__('os').environ.pop({key!r}, None)")
        return "\n".join(lines)


def _sh_quote(value: str) -> str:
    return "'" + value.replace("'", "'\"'\"'") + "'"


LANGUAGES = {
    "python": Language("python", "ipykernel_launcher"),
    "bash": Language("bash", "bash_kernel"),
}
_ALIASES = {"js": "javascript", "ts": "typescript"}


def normalize_language(name: str | None) -> str:
    """Lowercase and trim like E2B; `js`/`ts` aliases; empty means python."""
    normalized = (name or "").strip().lower()
    return _ALIASES.get(normalized, normalized) or "python"


class Kernel:
    """A kernel process spawned in the sandbox plus its client and message routing."""

    def __init__(self, sandbox: SandboxLike, language: Language, prefix: str) -> None:
        self.sandbox = sandbox
        self.language = language
        self.prefix = prefix  # short unique name for the connection file and ipc sockets
        self.client: AsyncKernelClient | None = None
        self.process: SandboxProcess | None = None
        self._socket_fds: list[int] = []
        self.died = asyncio.Event()
        self._routes: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        # Replies to user cells not read yet, and whether one failed since the last settle: then
        # ipykernel's stop_on_error may still abort the next request (contexts.settle_aborts).
        self.user_replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.may_abort = False
        self._tasks: list[asyncio.Task[None]] = []
        self._stderr_tail: deque[bytes] = deque(maxlen=40)
        self._bridge: asyncio.subprocess.Process | None = None  # see kernel_bridge.py
        self._bridge_control: socket.socket | None = None  # its orders; closed: it ends

    @property
    def connection_file(self) -> Path:
        return self.sandbox.socket_dir / f"{self.prefix}.json"

    def _inside(self, name: str) -> str:
        """A file of the socket dir as the kernel (in the sandbox) sees it."""
        return f"{self.sandbox.sandbox_socket_dir}/{name}"

    def _write_connection_file(self) -> None:
        ports = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
        info: dict[str, Any] = {name: index + 1 for index, name in enumerate(ports)}
        info.update(
            ip=self._inside(f"{self.sandbox.kernel_socket_dir.name}/{self.prefix}"),
            key=secrets.token_hex(32),
            transport="ipc",
            signature_scheme="hmac-sha256",
            kernel_name=self.language.name,
        )
        # Root-owned in a dir only the service writes: the sandbox reads it, cannot replace it.
        self.connection_file.write_text(json.dumps(info))
        self.connection_file.chmod(0o644)

    def _argv(self, connection: str | None = None) -> list[str]:
        """The kernel's command line (``connection``: the connection file, as seen inside)."""
        connection = connection or self._inside(self.connection_file.name)
        argv = [self.sandbox.python, "-m", self.language.module, "-f", connection]
        if self.language.name == "python":
            # As E2B's template: no colours (its /execute clients want plain text), and the
            # history in the profile's sqlite file, so it outlives a kernel's restart.
            argv += ["--InteractiveShell.colors=nocolor"]
            startup = [self._inside(path.name) for path in self._startup_files()]
            argv += [f"--IPKernelApp.exec_files={path}" for path in startup]
        return argv

    def _startup_files(self) -> list[Path]:
        """The start-up files, copied into the socket dir, which the sandbox is sure to see."""
        copies = []
        for source in sorted(STARTUP_DIR.glob("*.py")):
            if source.name == "__init__.py":
                continue
            copy = self.sandbox.socket_dir / f"e2b_startup_{source.name}"
            if not copy.exists():
                shutil.copyfile(source, copy)
                copy.chmod(0o644)
            copies.append(copy)
        return copies

    async def start(self, cwd: str) -> None:
        """Start the kernel in the sandbox and wait until shell and iopub both answer."""
        # The bridge's process starts first, while the kernel does (for a kernel of the
        # sandbox's Jupyter Server, while that server still comes up): its own start then
        # costs the first cell nothing. It gets the kernel's sockets once they exist.
        bridge = asyncio.ensure_future(self._spawn_bridge())
        try:
            info = await self._launch(cwd)
        except BaseException:
            # Not cancelled: a process half started could be lost. Once it runs, it is ended.
            await asyncio.wait([bridge])
            if not bridge.cancelled() and bridge.exception() is None:
                await self._stop_bridge()
            raise
        self._spawn_task(self._watch_process())
        try:
            try:
                kernel_fds = await self._open_sockets()
            finally:
                await asyncio.wait([bridge])
            urls = await self._connect_bridge(*bridge.result(), kernel_fds, info["key"])
        except BaseException:
            await self.stop(polite=False)
            raise
        client = _PinnedKernelClient(urls)
        client.load_connection_info(cast(KernelConnectionInfo, info))
        client.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=True)
        client.iopub_channel.routed = self._routed_ids
        self.client = client
        self._spawn_task(self._read_iopub())
        self._spawn_task(self._read_replies(lambda: client.shell_channel.get_msg()))
        self._spawn_task(self._read_replies(lambda: client.control_channel.get_msg()))
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise

    async def _launch(self, cwd: str) -> dict[str, Any]:
        """Spawn the kernel process through the agent; its connection info."""
        self._write_connection_file()
        env = self.sandbox.base_env()
        env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
        self.process = await self.sandbox.spawn(
            self._argv(),
            env=env,
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        info: dict[str, Any] = json.loads(self.connection_file.read_text())
        return info

    def socket_names(self) -> dict[str, str]:
        """The kernel's ipc socket file names in the kernel socket dir, by channel."""
        return {channel: f"{self.prefix}-{port}" for channel, port in _CHANNEL_PORTS.items()}

    async def _open_sockets(self) -> dict[str, int]:
        """Open the kernel's sockets safely; their fds by channel (for its bridge, which
        reaches each at ``ipc:///proc/self/fd/N``).

        The socket dir is writable by sandbox code, which could put a symlink to a host socket
        where the kernel's socket should be. Each socket is opened with O_PATH|O_NOFOLLOW
        relative to the dir, checked to be a socket, and reached through /proc/self/fd/N, which
        names that very inode; the fds stay open for the kernel's life (zmq reconnects).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT
        names = self.socket_names()
        directory = os.open(self.sandbox.kernel_socket_dir, os.O_PATH | os.O_DIRECTORY)
        try:
            fds: dict[str, int] = {}
            for channel, name in names.items():
                while True:
                    fd = _open_socket(directory, name)
                    if fd is not None:
                        break
                    if self.died.is_set():
                        raise KernelStartError(
                            f"the kernel exited during start-up: {self.diagnostics()}"
                        )
                    if loop.time() > deadline:
                        raise KernelStartError(
                            f"the kernel did not open its sockets within {READY_TIMEOUT:.0f} s"
                        )
                    await asyncio.sleep(0.02)  # the kernel binds them as it starts
                self._socket_fds.append(fd)
                fds[channel] = fd
            return fds
        finally:
            os.close(directory)

    def _spawn_task(self, coro: Awaitable[None]) -> None:
        self._tasks.append(asyncio.ensure_future(coro))

    async def _spawn_bridge(self) -> tuple[Path, int]:
        """Start the kernel's bridge process (kernel_bridge.py), to be told about the kernel
        once its sockets exist; its folder for sockets and the uid it drops to."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            argv = [sys.executable, "-I", str(_BRIDGE_PROGRAM), "--control-fd"]
            bridge, folder, uid = await self.sandbox.start_beside(
                [*argv, str(theirs.fileno())], (theirs.fileno(),)
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._bridge, self._bridge_control = bridge, ours
        if bridge.stderr is not None:
            self._spawn_task(self._drain(bridge.stderr))
        return folder, uid

    async def _connect_bridge(
        self, folder: Path, uid: int, kernel_fds: dict[str, int], key: str
    ) -> dict[str, str]:
        """Hand the bridge the kernel's sockets; the URLs the service's own sockets connect
        to instead, by channel."""
        bridge, control = self._bridge, self._bridge_control
        assert bridge is not None and control is not None and bridge.stdout is not None
        ours = {channel: f"ipc://{folder}/{self.prefix}-{channel}" for channel in _CHANNEL_PORTS}
        fds = [kernel_fds[channel] for channel in _BRIDGED]
        config = {
            "kernel": {channel: index for index, channel in enumerate(_BRIDGED)},
            "service": {channel: ours[channel] for channel in _BRIDGED},
            "key": key,
            "uid": uid,
            "gid": uid,
        }
        socket.send_fds(control, [json.dumps(config).encode()], fds)
        try:
            answer = await asyncio.wait_for(bridge.stdout.readline(), READY_TIMEOUT)
        except asyncio.TimeoutError:
            answer = b""
        if answer.strip() != b"ready":
            raise KernelStartError(
                f"the kernel's bridge did not start: {self.diagnostics() or 'no reason given'}"
            )
        self._spawn_task(self._watch_bridge(bridge))
        return ours

    async def _watch_bridge(self, bridge: asyncio.subprocess.Process) -> None:
        """The bridge ended (killed at the sandbox's memory limit by what the kernel sent,
        say): the kernel cannot be reached any more, so it goes, and its cells end as the
        kernel's death ends them."""
        code = await bridge.wait()
        if self._bridge is not bridge or self.died.is_set():
            return  # stopped by us (stop() lets go of it first), or the kernel went before
        log.warning("kernel %s: its bridge exited (%s); killing the kernel", self.prefix, code)
        if self.process is not None:
            self._kill_process_group(self.process)
        self.died.set()

    async def _stop_bridge(self) -> None:
        bridge, self._bridge = self._bridge, None
        control, self._bridge_control = self._bridge_control, None
        if control is not None:
            control.close()  # its signal to end
        if bridge is None:
            return
        try:
            await asyncio.wait_for(bridge.wait(), 2.0)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                bridge.kill()
            await bridge.wait()

    async def _watch_process(self) -> None:
        # Only the process exit counts: a child the user left running may keep the pipe open.
        assert self.process is not None
        if self.process.stderr is not None:
            self._spawn_task(self._drain(self.process.stderr))
        await self.process.wait()
        self.died.set()

    async def _drain(self, stream: asyncio.StreamReader) -> None:
        """Keep the kernel's own stderr pipe empty so it never blocks on it."""
        while chunk := await stream.read(65536):
            self._stderr_tail.append(chunk[-2000:])

    def diagnostics(self) -> str:
        """The tail of the kernel process output, for start-up failure messages."""
        return b"".join(self._stderr_tail).decode("utf-8", "replace")[-2000:]

    async def _wait_ready(self) -> None:
        """Repeat kernel_info until a reply arrives and its status shows up on iopub."""
        assert self.client is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT
        while loop.time() < deadline:
            if self.died.is_set():
                raise KernelStartError(f"the kernel exited during start-up: {self.diagnostics()}")
            msg = self.client.session.msg("kernel_info_request", {})
            msg_id = msg["header"]["msg_id"]
            queue = self.track(msg_id)
            reply = self.expect_reply(msg_id)
            try:
                self.client.shell_channel.send(msg)
                await asyncio.wait_for(asyncio.shield(reply), 1.0)
                await asyncio.wait_for(queue.get(), 1.0)  # any status: iopub is connected
                return
            except asyncio.TimeoutError:
                continue
            finally:
                self.untrack(msg_id)
        raise KernelStartError(f"the kernel did not answer within {READY_TIMEOUT:.0f} s")

    def track(self, msg_id: str) -> asyncio.Queue[dict[str, Any]]:
        """Route iopub messages whose parent is `msg_id` to the returned bounded queue."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(ROUTE_QUEUE_SIZE)
        self._routes[msg_id] = queue
        return queue

    def _routed_ids(self) -> Iterable[bytes]:
        return [msg_id.encode() for msg_id in self._routes]

    def stop_routing(self, msg_id: str) -> None:
        """Drop `msg_id`'s later iopub messages instead of queueing them for a reader that is
        gone. A full queue holds the iopub reader (and the kernel bridge, one thread, with it:
        a shell reply behind them would never come), so what it holds is dropped too, which
        lets a reader waiting to put one go on."""
        queue = self._routes.pop(msg_id, None)
        while queue is not None and not queue.empty():
            queue.get_nowait()

    def untrack(self, msg_id: str) -> None:
        self.stop_routing(msg_id)
        future = self._replies.pop(msg_id, None)
        if future is not None and not future.done():
            future.cancel()

    def expect_reply(self, msg_id: str) -> asyncio.Future[dict[str, Any]]:
        """A future resolved with the shell/control reply to `msg_id`."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[msg_id] = future
        return future

    async def _read_iopub(self) -> None:
        assert self.client is not None
        client = self.client
        async with self._fatal_on_error("iopub"):
            while True:
                msg = await client.iopub_channel.get_msg()
                queue = self._routes.get(msg.get("parent_header", {}).get("msg_id", ""))
                if queue is not None:
                    # Waiting here stops reading iopub while the HTTP client is slower than the
                    # kernel, instead of buffering unbounded output in the service.
                    await queue.put(msg)

    async def _read_replies(self, get_msg: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        async with self._fatal_on_error("shell/control"):
            while True:
                msg = await get_msg()
                parent_id = msg.get("parent_header", {}).get("msg_id", "")
                user_reply = self.user_replies.pop(parent_id, None)
                if user_reply is not None and not user_reply.done():
                    failed = msg.get("content", {}).get("status") == "error"
                    self.may_abort = self.may_abort or failed
                    user_reply.set_result(msg)
                future = self._replies.pop(parent_id, None)
                if future is not None and not future.done():
                    future.set_result(msg)

    @contextlib.asynccontextmanager
    async def _fatal_on_error(self, channel: str) -> AsyncIterator[None]:
        """A reader that fails (e.g. a malformed message) makes the kernel unusable: kill it, so
        executions end with ContextRestarting and the context gets a fresh kernel."""
        try:
            yield
        except Exception:
            log.exception(
                "kernel %s: reading its %s channel failed; killing it", self.prefix, channel
            )
            if self.process is not None:
                self._kill_process_group(self.process)

    def send_execute(self, code: str, *, silent: bool) -> str:
        """Send an execute_request the way E2B's server does; returns its msg_id, tracked."""
        assert self.client is not None
        content = {
            "code": code,
            "silent": silent,
            "store_history": not silent,
            "user_expressions": {},
            "allow_stdin": False,  # E2B has no stdin: input() must fail at once
            "stop_on_error": True,
        }
        msg = self.client.session.msg("execute_request", content)
        msg_id: str = msg["header"]["msg_id"]
        self.track(msg_id)
        self.expect_reply(msg_id)
        if not silent:
            self.user_replies[msg_id] = asyncio.get_running_loop().create_future()
        self.client.shell_channel.send(msg)
        return msg_id

    def reply_for(self, msg_id: str) -> asyncio.Future[dict[str, Any]] | None:
        return self._replies.get(msg_id)

    def queue_for(self, msg_id: str) -> asyncio.Queue[dict[str, Any]] | None:
        return self._routes.get(msg_id)

    def interrupt(self) -> None:
        """Jupyter interrupt over the control channel; ipykernel SIGINTs itself."""
        if self.client is not None and not self.died.is_set():
            self.client.control_channel.send(self.client.session.msg("interrupt_request", {}))

    async def run_silent(self, code: str, timeout: float = 30.0) -> None:
        """Run an internal cell (no history, no output to anyone) and wait for it to finish."""
        msg_id = self.send_execute(code, silent=True)
        queue = self._routes[msg_id]
        try:
            await asyncio.wait_for(self._until_idle(queue), timeout)
        finally:
            self.untrack(msg_id)

    async def _until_idle(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        while True:
            msg = await next_message(queue, self.died, timeout=None)
            if msg is None or is_idle(msg):
                return

    async def stop(self, *, polite: bool = True) -> None:
        """Ask the kernel to shut down, then kill the process if it lingers."""
        if polite and self.client is not None and not self.died.is_set():
            with contextlib.suppress(Exception):
                msg = self.client.session.msg("shutdown_request", {"restart": False})
                self.client.control_channel.send(msg)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.died.wait(), 3.0)
        if self.process is not None:
            self._kill_process_group(self.process)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.died.wait(), 5.0 if polite else 1.0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.client is not None:
            self.client.stop_channels()
            self.client = None
        await self._stop_bridge()
        for future in self._replies.values():
            future.cancel()
        self._replies.clear()
        self._cleanup_files()

    @staticmethod
    def _kill_process_group(process: SandboxProcess) -> None:
        """SIGKILL the kernel; an agent process's kill() ends its whole process group."""
        with contextlib.suppress(ProcessLookupError):
            process.kill()

    def _cleanup_files(self) -> None:
        for fd in self._socket_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._socket_fds.clear()
        with contextlib.suppress(OSError):
            self.connection_file.unlink()
        directory = self.sandbox.kernel_socket_dir
        for port in range(1, 6):
            with contextlib.suppress(OSError):  # unlink never follows a symlink
                (directory / f"{self.prefix}-{port}").unlink()


# Every channel: stop_channels() touches stdin and hb too, which makes their sockets.
_CHANNEL_PORTS = {"shell": 1, "iopub": 2, "stdin": 3, "control": 4, "hb": 5}
_BRIDGED = ("shell", "control", "iopub")  # the channels the service uses
_BRIDGE_PROGRAM = Path(__file__).with_name("kernel_bridge.py")


def _open_socket(directory: int, name: str) -> int | None:
    """An O_PATH fd on the unix socket ``name`` in ``directory``; None while it is absent."""
    try:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory)
    except FileNotFoundError:
        return None
    if not stat.S_ISSOCK(os.fstat(fd).st_mode):
        os.close(fd)
        raise KernelStartError(f"{name} in the kernel socket dir is not a socket")
    return fd


class _BoundedChannel(AsyncZMQSocketChannel):
    """A channel to the kernel's bridge, which passes on no message over
    ``kernel_bridge.MAX_BYTES`` or ``MAX_PARTS`` (it sends a short one that says so instead:
    print's pieces are 1 MiB, but code can send anything through its kernel's session, or make
    IPython fill a reply). Should one come anyway, it is dropped here, never decoded."""

    async def _recv(self, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        assert self.socket is not None
        while True:
            frames = await self.socket.recv_multipart(copy=False)
            _, parts = self.session.feed_identities(frames, copy=False)
            if not self._wanted(parts):
                continue
            size = sum(len(part) for part in parts)
            if size <= kernel_bridge.MAX_BYTES and len(parts) <= kernel_bridge.MAX_PARTS:
                return self.session.deserialize(parts, copy=False)
            log.warning("dropped an oversized kernel message (%d bytes)", size)

    def _wanted(self, parts: list[Any]) -> bool:
        return True


class _BoundedIOPubChannel(_BoundedChannel):
    """IOPub carries every client's messages: with the jupyter transport the notebook's cells
    run in this very kernel, and decoding all of theirs cost the service more CPU per cell
    than relaying them. Only messages whose parent header names a request in ``routed`` (a
    byte search, no parsing) are decoded (the bridge already drops most of the others)."""

    routed: Callable[[], Iterable[bytes]] = staticmethod(lambda: ())  # set by Kernel.start

    def _wanted(self, parts: list[Any]) -> bool:
        if len(parts) < 3:
            return True  # malformed: deserialize says so
        parent = parts[2].bytes if hasattr(parts[2], "bytes") else bytes(parts[2])
        return any(msg_id in parent for msg_id in self.routed())


class _PinnedKernelClient(AsyncKernelClient):
    """A kernel client that connects to given URLs (sockets pinned by fd), not to paths."""

    iopub_channel_class = Type(_BoundedIOPubChannel)
    shell_channel_class = Type(_BoundedChannel)
    control_channel_class = Type(_BoundedChannel)

    def __init__(self, urls: dict[str, str]) -> None:
        super().__init__()
        self._pinned_urls = urls

    def _make_url(self, channel: str) -> str:
        return self._pinned_urls[channel]

    def _bridge_socket(self, channel: str, kind: int) -> zmq.asyncio.Socket:
        """A socket to the kernel's bridge: it blocks when full rather than dropping (see
        kernel_bridge.py), so only a few messages of bounded size ever wait here."""
        sock = self.context.socket(kind)
        sock.linger = 1000
        sock.setsockopt(zmq.RCVHWM, kernel_bridge.HIGH_WATER)
        sock.setsockopt(zmq.MAXMSGSIZE, kernel_bridge.MAX_BYTES)
        sock.connect(self._make_url(channel))
        return sock

    def connect_shell(self, identity: bytes | None = None) -> zmq.asyncio.Socket:
        return self._bridge_socket("shell", zmq.DEALER)

    def connect_control(self, identity: bytes | None = None) -> zmq.asyncio.Socket:
        return self._bridge_socket("control", zmq.DEALER)

    def connect_iopub(self, identity: bytes | None = None) -> zmq.asyncio.Socket:
        return self._bridge_socket("iopub", zmq.PAIR)


def is_idle(msg: dict[str, Any]) -> bool:
    return msg["header"]["msg_type"] == "status" and msg["content"].get("execution_state") == "idle"


async def next_message(
    queue: asyncio.Queue[dict[str, Any]], *events: asyncio.Event, timeout: float | None
) -> dict[str, Any] | None:
    """The next routed message; None when one of `events` is set first; TimeoutError if silent."""
    if not queue.empty():
        return queue.get_nowait()
    getter = asyncio.ensure_future(queue.get())
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        done, _ = await asyncio.wait(
            {getter, *waiters}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for task in (getter, *waiters):
            if not task.done():
                task.cancel()
    if getter in done:
        return getter.result()
    if not done:
        raise asyncio.TimeoutError
    return None
