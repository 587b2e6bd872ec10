"""A context kernel that belongs to the sandbox's Jupyter Server (port 8888), as on E2B.

E2B's ``/execute`` server is a client of the Jupyter Server in its sandbox, so a variable set
with ``Sandbox.run_code`` is seen by any client of port 8888's kernel, and back. Here the
service asks that server for the kernel (``POST /api/kernels``, through the agent's tunnel)
and then drives it exactly as it drives a kernel it spawned itself: over ZMQ ``ipc`` sockets.

Why ZMQ and not the server's WebSocket: the routing, interrupt and stop_on_error logic of
``kernels.py`` stays one code path, and the safety argument stays the same. The server runs
its kernels with ``ipc`` transport in the sandbox's sockets dir (``JUPYTER_RUNTIME_DIR``);
the connection file there is written by sandbox code, so it is trusted for nothing but the
key and socket numbers: names are rebuilt from the kernel id, and each socket is opened with
O_PATH|O_NOFOLLOW in that dir (``Kernel._open_sockets``), so a symlink can never lead the
service to a host socket.

The kernel process is the server's child, not the agent's: the service finds it among the
sandbox's processes by its connection file and watches it with a pidfd, so a kernel that dies
(``os._exit``) ends the running cell with ContextRestarting as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .kernels import Kernel, KernelStartError, Language, SandboxLike

KERNEL_NAME = "python3"
_KERNEL_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_CHANNELS = ("shell", "iopub", "stdin", "control", "hb")


class JupyterServerLike(Protocol):
    """What a server kernel needs of ``sandbox/jupyter.py``'s JupyterServer."""

    runtime_dir: str
    prestarted: Prestarted | None

    def env(self) -> dict[str, str]: ...

    async def ready(self, timeout: float = ...) -> None: ...

    async def write_runtime_file(self, name: str, data: bytes) -> None: ...

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]: ...

    async def read_runtime_file(self, name: str, limit: int) -> bytes: ...

    def live_pids(self) -> list[int]: ...

    def diagnostics(self) -> str: ...


def _template(sandbox: SandboxLike) -> Kernel:
    return Kernel(sandbox, Language("python", "ipykernel_launcher"), "spec")


def write_kernelspec(sandbox: SandboxLike, spec_root: Path, provisioner: str | None) -> None:
    """The server's ``python3`` kernelspec: the same kernel command line /execute uses.

    Written by the service in a dir that is read-only inside (first on JUPYTER_PATH), so the
    server's kernels, a notebook's included, get E2B's start-up files, as on E2B.
    ``provisioner`` names the server's provisioner that adopts a prestarted kernel.
    """
    metadata: dict[str, Any] = {"debugger": True}
    if provisioner:
        metadata["kernel_provisioner"] = {"provisioner_name": provisioner}
    spec = {
        "argv": _template(sandbox)._argv("{connection_file}"),
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
        "metadata": metadata,
    }
    folder = spec_root / "kernels" / KERNEL_NAME
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kernel.json").write_text(json.dumps(spec, indent=1))
    for path in (spec_root / "kernels", folder, folder / "kernel.json"):
        path.chmod(0o755 if path.is_dir() else 0o644)


@dataclass(frozen=True)
class Prestarted:
    """A kernel started beside the Jupyter Server, for the server to adopt under this id."""

    kernel_id: str
    session_path: str


async def prestart_kernel(sandbox: SandboxLike, server: JupyterServerLike) -> None:
    """Start the default context's kernel now, beside the server, instead of after it.

    It is the kernel the server itself would start (its kernelspec's command line, the
    server's environment, the session name the server would give it, /home/user), with the
    connection file the server would write; the marker next to it names its pid, and the
    server's provisioner (``sandbox/jupyter_provisioner.py``) adopts it when the session that
    names its id is created. So the first cell waits for the slower of the two, not for both.
    """
    kernel_id, session_path = str(uuid.uuid4()), str(uuid.uuid4())
    name = f"kernel-{kernel_id}"
    connection = {
        **{f"{channel}_port": port for port, channel in enumerate(_CHANNELS, start=1)},
        "ip": f"{server.runtime_dir}/{name}-ipc",
        "key": str(uuid.uuid4()),
        "transport": "ipc",
        "signature_scheme": "hmac-sha256",
        "kernel_name": KERNEL_NAME,
    }
    await server.write_runtime_file(f"{name}.json", json.dumps(connection).encode())
    env = {**server.env(), "JPY_SESSION_NAME": session_path}
    argv = _template(sandbox)._argv(f"{server.runtime_dir}/{name}.json")
    quiet = asyncio.subprocess.DEVNULL
    process = await sandbox.spawn(
        argv, env=env, cwd="/home/user", stdin=quiet, stdout=quiet, stderr=quiet
    )
    try:
        await server.write_runtime_file(f"{name}.prestarted", str(process.pid).encode())
    except BaseException:
        process.kill()  # nothing would adopt it: the server starts its own kernel instead
        raise
    server.prestarted = Prestarted(kernel_id, session_path)


class ServerKernel(Kernel):
    """A kernel started by the sandbox's Jupyter Server and driven over its ipc sockets."""

    def __init__(
        self,
        sandbox: SandboxLike,
        language: Language,
        prefix: str,
        server: JupyterServerLike,
        kernel_id: str | None = None,
        *,
        attach: bool = False,
    ) -> None:
        """``kernel_id``: restart that kernel of the server (same id) instead of a new one;
        with ``attach``, first take it as it runs if it has a live process (it was restarted
        by a client of port 8888, e.g. a notebook's restart)."""
        super().__init__(sandbox, language, prefix)
        self.server = server
        self.kernel_id = kernel_id
        self.attach = attach
        self.forget = True  # stop() removes the kernel from the server (not when restarting)
        self._names: dict[str, str] = {}

    async def _launch(self, cwd: str) -> dict[str, Any]:
        # cwd: kernels of the server start in its root, /home/user, as on E2B.
        await self.server.ready()
        if self.attach and self.kernel_id:
            attached = await self._attach(self.kernel_id)
            if attached is not None:
                return attached
        kernel_id = await self._restart() if self.kernel_id else None
        kernel_id = kernel_id or await self._new_session()
        self.kernel_id = kernel_id
        info = await self._connection_info(kernel_id)
        self.process = _PidfdProcess.find(self.server.live_pids(), f"kernel-{kernel_id}.json")
        return info

    async def _attach(self, kernel_id: str) -> dict[str, Any] | None:
        """The running kernel's connection info, if the server has it with a live process."""
        status, _ = await self._call("GET", f"/api/kernels/{kernel_id}")
        if status != 200:
            return None
        try:
            self.process = _PidfdProcess.find(self.server.live_pids(), f"kernel-{kernel_id}.json")
        except KernelStartError:
            return None  # dead and not restarted (yet): restart it ourselves
        return await self._connection_info(kernel_id)

    async def _new_session(self) -> str:
        """A kernel in a new session, as E2B's server makes a context (random path and name);
        the kernel prestarted beside the server, when there is one."""
        prestarted, self.server.prestarted = self.server.prestarted, None
        wanted = {"name": KERNEL_NAME}
        path = str(uuid.uuid4())
        if prestarted is not None:
            wanted["id"], path = prestarted.kernel_id, prestarted.session_path
        body = {"path": path, "name": str(uuid.uuid4()), "type": "notebook", "kernel": wanted}
        status, model = await self._call("POST", "/api/sessions", body)
        kernel = model.get("kernel") if isinstance(model, dict) else None
        kernel_id = kernel.get("id") if isinstance(kernel, dict) else None
        if status != 201 or not isinstance(kernel_id, str) or not _KERNEL_ID.match(kernel_id):
            raise KernelStartError(f"the Jupyter Server did not start a kernel: {status} {model}")
        return kernel_id

    async def _restart(self) -> str | None:
        """Restart our kernel under its id (E2B restarts a context so); None if it is gone."""
        assert self.kernel_id is not None
        status, _ = await self._call("POST", f"/api/kernels/{self.kernel_id}/restart")
        return self.kernel_id if status == 200 else None

    async def _call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        try:
            return await self.server.request(method, path, body)
        except OSError as exc:
            raise KernelStartError(
                f"the Jupyter Server did not answer: {exc}; {self.server.diagnostics()}"
            ) from None

    async def _connection_info(self, kernel_id: str) -> dict[str, Any]:
        """The kernel's connection file, read through the agent as the sandbox sees it."""
        data = await self.server.read_runtime_file(f"kernel-{kernel_id}.json", 64 * 1024)
        info = json.loads(data)
        ports = {channel: info.get(f"{channel}_port") for channel in _CHANNELS}
        if (
            info.get("transport") != "ipc"
            or info.get("ip") != f"{self.server.runtime_dir}/kernel-{kernel_id}-ipc"
            or not all(isinstance(p, int) and 0 < p < 65536 for p in ports.values())
            or not isinstance(info.get("key"), str)
        ):
            raise KernelStartError("the kernel's connection file is not what the server writes")
        self._names = {c: f"kernel-{kernel_id}-ipc-{port}" for c, port in ports.items()}
        return {
            **{f"{channel}_port": port for channel, port in ports.items()},
            "transport": "ipc",
            "ip": info["ip"],
            "key": info["key"],
            "signature_scheme": "hmac-sha256",
            "kernel_name": KERNEL_NAME,
        }

    def socket_names(self) -> dict[str, str]:
        return self._names

    async def stop(self, *, polite: bool = True) -> None:
        """End the kernel as for our own kernels, then have the server forget it.

        The kernel is shut down over its control channel (and killed if it lingers) before
        the REST call: jupyter_client's shutdown interrupts a busy kernel first, which would
        end a running cell with KeyboardInterrupt instead of E2B's ContextRestarting.
        """
        await super().stop(polite=polite)
        kernel_id = self.kernel_id
        if self.forget and kernel_id is not None and not self.sandbox.killed.is_set():
            with contextlib.suppress(Exception):
                request = self.server.request("DELETE", f"/api/kernels/{kernel_id}")
                await asyncio.wait_for(request, 10.0 if polite else 2.0)

    def _cleanup_files(self) -> None:
        # The server owns the connection file and the sockets; only our fds are ours.
        for fd in self._socket_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._socket_fds.clear()


class _PidfdProcess:
    """A sandbox process the agent did not start, watched from the host through a pidfd."""

    stderr: asyncio.StreamReader | None = None  # the kernel's log goes to the server's

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid  # host pid
        self.returncode: int | None = None
        self._pidfd = pidfd
        self._exited = asyncio.Event()
        asyncio.get_running_loop().add_reader(pidfd, self._on_exit)

    @classmethod
    def find(cls, pids: list[int], marker: str) -> _PidfdProcess:
        """The process among ``pids`` (host pids of the sandbox's processes) whose command
        line names ``marker`` (the kernel's connection file)."""
        for pid in pids:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                pidfd = os.pidfd_open(pid)
            except OSError:
                continue
            if marker.encode() in cmdline:
                return cls(pid, pidfd)
            os.close(pidfd)
        raise KernelStartError(f"the kernel process ({marker}) was not found in the sandbox")

    def _on_exit(self) -> None:
        asyncio.get_running_loop().remove_reader(self._pidfd)
        os.close(self._pidfd)
        self.returncode = -1  # not our child: its status goes to the server, its parent
        self._exited.set()

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        """SIGKILL the kernel and its process group (it leads one, as jupyter_client starts it)."""
        if self._exited.is_set():
            return
        signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)  # the pidfd above was live: the pid is its own
