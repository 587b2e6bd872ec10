"""The Jupyter Server every sandbox runs on port 8888, as E2B's code-interpreter template does.

Like every sandbox process it is started by the agent, as user 1000, with the sandbox's own
environment: root dir /home/user, no token, no browser, no XSRF check, any origin (API
clients and browsers reach it through the service's proxy, which already checks the traffic
token when the sandbox is restricted). Its kernels use ``ipc`` transport with their
connection files and sockets in the sandbox's sockets dir (``JUPYTER_RUNTIME_DIR``), where
the service can open them safely (``interpreter/server_kernel.py``) and make one of them the
default ``python`` context of ``/execute``, so both share one namespace, as on E2B.

The server starts in the background: ``create`` does not wait for it; callers that need it
(the code interpreter's first context) wait for ``ready()``. Without namespace isolation the
sandbox has no network of its own, so there is no server (it would take the host's 8888).
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import shutil
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h11

from .agent_client import AgentCallError
from .file_ops import FileOps
from .process import DEVNULL, PIPE, AgentProcess
from .sandbox_output import DIAGNOSTICS_RATE, ReadRate, quoted

if TYPE_CHECKING:
    from .runtime import LocalSandbox

log = logging.getLogger("e2b_kernel.local")

JUPYTER_PORT = 8888
# The line jupyter_server logs once it listens (its readiness, read rather than polled).
_READY_MARK = b"is running at"
READY_TIMEOUT = 90.0  # a loaded shared machine can be slow to import jupyter_server
# Server extensions the shared Python environment may hold that E2B's template has not.
_NOT_ON_E2B = ("jupyterlab", "jupyter_lsp", "notebook_shim", "notebook", "nbclassic", "voila")
# jupyter_server -> jupyter_events -> jsonschema's format checkers import every optional
# format library that is installed: rfc3987_syntax alone builds a grammar parser at import
# (about a second, over half of the server's start), and the others (arrow among them) cost
# another 85 ms. Only jsonschema's optional format checks need them (each is skipped when its
# import fails), and the event schemas the server validates use none of those formats.
# Nothing else the server imports uses them (checked against the shared environment), and
# its kernels are processes of their own, untouched by this.
_FORMAT_CHECK_ONLY = (
    "rfc3987_syntax", "fqdn", "jsonpointer", "rfc3339_validator", "rfc3986_validator",
    "uri_template", "isoduration", "webcolors",
)  # fmt: skip
# The kernelspec dir is first on the server's sys.path (not on its kernels'): it holds the
# provisioner that adopts the kernel the service starts beside the server, and a dist-info
# that registers it as an entry point (see jupyter_provisioner.py).
_SERVER_MAIN = (
    "import sys; sys.modules.update(dict.fromkeys({blocked!r})); "
    "sys.path.insert(0, {kernel_path!r}); "
    "from jupyter_server.serverapp import main; sys.exit(main())"
)
PROVISIONER_NAME = "e2b-prestarted"
_PROVISIONER_MODULE = "e2b_prestarted_provisioner"
_PROVISIONER_SOURCE = Path(__file__).with_name("jupyter_provisioner.py")
# The server's kernel manager with a cheaper activity watch (see jupyter_activity.py); a module
# beside the provisioner.
_KERNEL_MANAGER_MODULE = "e2b_quick_activity"
_KERNEL_MANAGER_SOURCE = Path(__file__).with_name("jupyter_activity.py")
KERNEL_MANAGER_CLASS = f"{_KERNEL_MANAGER_MODULE}.QuickActivityKernelManager"


# Bounds on one REST answer from port 8888 (see JupyterServer.request): the real server's
# are a few KiB (a kernel list, a session) and come in milliseconds.
_MAX_ANSWER = 4 << 20
# Parsing costs the service's shared loop per HTTP event, whatever its size: a server in the
# sandbox sending endless "102 Processing" heads or one-byte chunks kept it busy for 30 s.
_MAX_EVENTS = 1000
_ANSWER_TIMEOUT = 30.0


class JupyterUnavailable(RuntimeError):
    """The sandbox's Jupyter Server exited or did not come up in time."""


class JupyterServer:
    """One sandbox's Jupyter Server process and a small REST client for it."""

    provisioner_name = PROVISIONER_NAME  # adopts a kernel started beside the server

    def __init__(self, sandbox: LocalSandbox, runtime_dir: str, kernel_path: str) -> None:
        self.sandbox = sandbox
        self.runtime_dir = runtime_dir  # as the sandbox sees it: connection files, ipc sockets
        self.kernel_path = kernel_path  # JUPYTER_PATH entry with the kernelspecs the service writes
        self.process: AgentProcess | None = None
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._log_tail: deque[bytes] = deque(maxlen=30)
        self._listening = False
        self.prestarted: Any = None  # a kernel started beside the server, until adopted

    def argv(self) -> list[str]:
        main = _SERVER_MAIN.format(blocked=_FORMAT_CHECK_ONLY, kernel_path=self.kernel_path)
        return [
            self.sandbox.python, "-c", main,
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={JUPYTER_PORT}",
            "--ServerApp.port_retries=0",
            "--ServerApp.root_dir=/home/user",
            "--ServerApp.open_browser=False",
            "--IdentityProvider.token=",
            "--ServerApp.password=",
            "--ServerApp.disable_check_xsrf=True",
            "--ServerApp.allow_origin=*",
            # Reached through the proxy with the caller's Host (e.g. 8888-<id>.localhost).
            "--ServerApp.allow_remote_access=True",
            "--KernelManager.transport=ipc",
            f"--ServerApp.kernel_manager_class={KERNEL_MANAGER_CLASS}",
            "--FileContentsManager.delete_to_trash=False",
            # As E2B's template: heavy output must not be cut by the server's rate limit.
            "--ServerApp.iopub_data_rate_limit=1000000000",
            # E2B's template installs jupyter-server alone; the front-end extensions that the
            # shared Python environment may hold (JupyterLab...) would cost ~40 MiB and a
            # second of start-up per sandbox, for nothing E2B serves.
            *[f"--ServerApp.jpserver_extensions={name}=False" for name in _NOT_ON_E2B],
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        """The server's environment, which its kernels inherit."""
        env = self.sandbox.base_env()
        env["JUPYTER_RUNTIME_DIR"] = self.runtime_dir
        env["JUPYTER_PATH"] = self.kernel_path
        env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
        return env

    async def start(self) -> None:
        """Spawn the server through the agent; readiness is reported by ``ready()``."""
        self._install_provisioner()
        self.process = await self.sandbox.spawn(
            self.argv(), env=self.env(), stdin=DEVNULL, stdout=DEVNULL, stderr=PIPE
        )
        task = asyncio.ensure_future(self._watch(self.process))

        def stop_watching() -> None:
            task.cancel()
            # Else its waiters (requests proxied to it) would wait READY_TIMEOUT.
            self._never_ready("the sandbox was killed before its Jupyter Server started")

        self.sandbox.on_kill(stop_watching)

    async def _watch(self, process: AgentProcess) -> None:
        """Read the server's log: its ready line, and a tail for error messages."""
        assert process.stderr is not None
        pending = b""
        rate = ReadRate(DIAGNOSTICS_RATE)  # the sandbox's user can write here too
        while chunk := await process.stderr.read(65536):
            self._log_tail.append(chunk[-2000:])
            if not self._ready.done():
                pending = (pending + chunk)[-4096:]
                if _READY_MARK in pending:
                    self._ready.set_result(None)
            await rate.took(len(chunk))  # after the ready line is looked for, not before
        code = await process.wait()
        if not self._ready.done():
            self._never_ready(f"the Jupyter Server exited ({code}): {self.diagnostics()}")
        elif not self.sandbox.killed.is_set():
            log.warning("sandbox %s: its Jupyter Server exited (%s)", self.sandbox.sandbox_id, code)

    def _never_ready(self, why: str) -> None:
        """Answer ``ready()``'s waiters, now and later, with ``JupyterUnavailable(why)``."""
        if self._ready.done():
            return
        self._ready.set_exception(JupyterUnavailable(why))
        # Marked as seen: ready() raises it to whoever asks, and when the sandbox ended first
        # nobody does (asyncio would log "exception was never retrieved").
        self._ready.exception()

    def diagnostics(self) -> str:
        return quoted(b"".join(self._log_tail).decode("utf-8", "replace")[-1500:])

    async def ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Wait until the server listens; JupyterUnavailable if it died or took too long."""
        try:
            await asyncio.wait_for(self._wait_listening(), timeout)
        except asyncio.TimeoutError:
            raise JupyterUnavailable(
                f"the Jupyter Server did not start within {timeout:.0f} s: {self.diagnostics()}"
            ) from None

    async def _wait_listening(self) -> None:
        await asyncio.shield(self._ready)
        if self._listening:
            return
        # jupyter_server logs its URL just before its io loop runs the callback that binds
        # the port, so the line is followed by a brief window where connecting is refused:
        # probe until a connection is accepted (backing off; normally once or twice).
        delay = 0.005
        while True:
            try:
                stream = await self.sandbox.agent.connect_port(JUPYTER_PORT)
            except AgentCallError as exc:
                if exc.errno != errno.ECONNREFUSED or self.process is None:
                    raise
                if self.process.returncode is not None:
                    message = f"the Jupyter Server exited: {self.diagnostics()}"
                    raise JupyterUnavailable(message) from None
                await asyncio.sleep(delay)  # the probe's back-off, inside ready()'s deadline
                delay = min(delay * 2, 0.2)
                continue
            await stream.close()
            self._listening = True
            return

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One REST call through the agent's tunnel; (status, parsed JSON or None).

        Whatever listens on port 8888 answers, and sandbox code can end the real server and
        listen there itself: an answer over ``_MAX_ANSWER`` bytes, one that takes over
        ``_ANSWER_TIMEOUT`` seconds, or one that is not JSON raises ``ConnectionError``
        instead of filling the service's memory or holding the caller for ever."""
        try:
            return await asyncio.wait_for(self._request(method, path, body), _ANSWER_TIMEOUT)
        except h11.RemoteProtocolError as exc:
            raise ConnectionError(
                f"port {JUPYTER_PORT} answered {method} {path} with broken HTTP ({exc})"
            ) from None
        except asyncio.TimeoutError:
            raise ConnectionError(
                f"port {JUPYTER_PORT} did not answer {method} {path} within {_ANSWER_TIMEOUT:.0f} s"
            ) from None

    async def _request(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        stream = await self.sandbox.agent.connect_port(JUPYTER_PORT)
        async with stream:
            conn = h11.Connection(h11.CLIENT)
            data = b"" if body is None else json.dumps(body).encode()
            headers = [("host", f"127.0.0.1:{JUPYTER_PORT}"), ("connection", "close")]
            headers += [("content-type", "application/json"), ("content-length", str(len(data)))]
            out = conn.send(h11.Request(method=method, target=path, headers=headers)) or b""
            out += (conn.send(h11.Data(data=data)) or b"") if data else b""
            await stream.write(out + (conn.send(h11.EndOfMessage()) or b""))
            status, payload, received = 0, bytearray(), 0
            for _ in range(_MAX_EVENTS):
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    chunk = await stream.read_chunk()
                    received += len(chunk)
                    if received > _MAX_ANSWER:  # wire bytes: 1xx heads and chunk framing too
                        raise ConnectionError(
                            f"port {JUPYTER_PORT} answered {method} {path} with over "
                            f"{_MAX_ANSWER >> 20} MiB; the Jupyter Server's answers are small"
                        )
                    conn.receive_data(chunk)
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    payload += event.data
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    break
            else:
                raise ConnectionError(
                    f"port {JUPYTER_PORT} answered {method} {path} in over {_MAX_EVENTS} pieces "
                    "(1xx answers, tiny chunks); the Jupyter Server answers in a few"
                )
        if not payload.strip():
            return status, None
        try:
            return status, json.loads(payload)
        except (ValueError, RecursionError):
            raise ConnectionError(
                f"port {JUPYTER_PORT} answered {method} {path} with something that is not JSON"
            ) from None

    def _install_provisioner(self) -> None:
        """The provisioner module and a dist-info naming it as a ``jupyter_client`` entry point,
        in the kernelspec dir: written by the service, read-only inside, and written before the
        server starts, so it is registered whenever the server first looks."""
        root = self.sandbox.kernelspec_dir
        module = root / f"{_PROVISIONER_MODULE}.py"
        shutil.copyfile(_PROVISIONER_SOURCE, module)
        manager = root / f"{_KERNEL_MANAGER_MODULE}.py"
        shutil.copyfile(_KERNEL_MANAGER_SOURCE, manager)
        info = root / f"{_PROVISIONER_MODULE}-1.0.dist-info"
        info.mkdir(exist_ok=True)
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {_PROVISIONER_MODULE}\nVersion: 1.0\n"
        )
        (info / "entry_points.txt").write_text(
            "[jupyter_client.kernel_provisioners]\n"
            f"{PROVISIONER_NAME} = {_PROVISIONER_MODULE}:PrestartedProvisioner\n"
        )
        for path in (module, manager, info / "METADATA", info / "entry_points.txt"):
            path.chmod(0o644)
        info.chmod(0o755)

    async def write_runtime_file(self, name: str, data: bytes) -> None:
        """Write a file of the runtime dir as the sandbox's user, through the agent (so a
        symlink planted there leads nowhere outside the sandbox)."""
        async with FileOps(self.sandbox.agent).writer(f"{self.runtime_dir}/{name}") as writer:
            await writer.write(data)
            await writer.finish()

    async def read_runtime_file(self, name: str, limit: int) -> bytes:
        """A file of the runtime dir (a kernel's connection file), read by the agent inside,
        so symlinks resolve as the sandbox sees them; refused past ``limit`` bytes."""
        read = await FileOps(self.sandbox.agent).read(f"{self.runtime_dir}/{name}")
        if read.size > limit:
            await read.close()
            raise ValueError(f"{name} is larger than {limit} bytes")
        data = bytearray()
        async for chunk in read.chunks:  # read to the end, so the agent's stream is closed
            if len(data) <= limit:
                data += chunk
        if len(data) > limit:
            raise ValueError(f"{name} is larger than {limit} bytes")
        return bytes(data)

    def live_pids(self) -> list[int]:
        """Host pids of the sandbox's processes (a server kernel finds its process here)."""
        return self.sandbox.live_pids()
