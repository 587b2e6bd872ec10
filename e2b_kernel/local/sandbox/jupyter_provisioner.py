"""The kernel provisioner of a sandbox's Jupyter Server: it adopts the kernel the service started
beside the server. Copied into the sandbox and imported only by that server (stdlib and
``jupyter_client`` only; the sandbox may not see this package at all).

Why: a kernel of the server is its child, so a fresh sandbox's first kernel could start only
once the server had imported and started (~0.35 s), and then took ~0.4 s itself; the first
cell waited for both, one after the other. The service now starts that kernel through the
agent at the moment it starts the server, with the connection file the server would have
written (``kernel-<id>.json`` in the runtime dir) and, next to it, ``kernel-<id>.prestarted``
naming the process. When the server is asked for a kernel under that id (the service's
``POST /api/sessions`` names it), this provisioner takes the running process instead of
launching a new one. Every other launch (other ids, restarts, a marker whose process is gone)
is jupyter_client's ``LocalProvisioner``, with one mend to the server's kernel list (see
``_mark_active``).

An adopted kernel is the agent's child, not the server's: its exit is seen through a pidfd,
its exit status is the agent's to reap (it reads as -1 here), and it has no ``JPY_PARENT_PID``
(ipykernel would take the agent for a dead parent); it dies with the sandbox like every
sandbox process.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning import LocalProvisioner
from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase

__all__ = ["PrestartedProvisioner"]

MARKER_SUFFIX = ".prestarted"
_EXEC_RETRIES = 100  # x 10 ms


class _AdoptedProcess:
    """Enough of ``Popen`` for ``LocalProvisioner``, for a process that is not our child."""

    stdin = stdout = stderr = None

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._pidfd = pidfd

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self._pidfd], [], [], 0)[0]:
            self._exited()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not select.select([self._pidfd], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired(f"kernel {self.pid}", timeout or 0)
            self._exited()
        assert self.returncode is not None
        return self.returncode

    def _exited(self) -> None:
        os.close(self._pidfd)
        self.returncode = -1  # reaped by its parent, the agent

    def send_signal(self, signum: int) -> None:
        """As ``Popen.send_signal``: nothing once the process has ended, even just now."""
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def claim(connection_file: str) -> _AdoptedProcess | None:
    """The prestarted kernel of ``connection_file``, if its marker names a live process whose
    command line is that kernel's; the marker is consumed either way (one adoption)."""
    marker = Path(connection_file).with_suffix(MARKER_SUFFIX)
    try:
        text = marker.read_text()
        marker.unlink()
        pid = int(text)
        pidfd = os.pidfd_open(pid)
    except (OSError, ValueError):
        return None
    # Checked after the pidfd pins the process: a reused pid cannot pass for the kernel.
    if os.fsencode(connection_file) not in _command_line(pid, pidfd).split(b"\0"):
        os.close(pidfd)
        return None
    return _AdoptedProcess(pid, pidfd)


def _command_line(pid: int, pidfd: int) -> bytes:
    """``/proc/<pid>/cmdline``; it reads empty for a moment while an exec completes (the
    marker is written as the exec begins), so an empty one is read again, briefly, unless
    the process has ended (a zombie's reads empty too)."""
    for _ in range(_EXEC_RETRIES):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return b""
        if cmdline or select.select([pidfd], [], [], 0)[0]:
            return cmdline
        time.sleep(0.01)
    return b""


def _mark_active(km: Any) -> None:
    """Give a starting kernel the ``last_activity`` the server gives it only after listing it.

    jupyter_server (2.21) adds a new kernel to its list one event-loop step before it sets
    ``last_activity``; a ``GET /api/kernels`` or ``/api/status`` served in that step formats
    nothing and answers 500 to every caller. Set here, during the start, the list is whole from
    the moment it holds the kernel; the server then sets its own value as before."""
    has_value = getattr(km, "trait_has_value", None)  # a traitlets object (the server's)
    if has_value is not None and km.has_trait("last_activity") and not has_value("last_activity"):
        km.last_activity = datetime.now(timezone.utc)
        if km.has_trait("execution_state") and km.execution_state is None:
            km.execution_state = "starting"


class PrestartedProvisioner(LocalProvisioner):
    """``LocalProvisioner`` that adopts a prestarted kernel on the launch it was made for."""

    _adopted: _AdoptedProcess | None = None

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        km: Any = self.parent
        _mark_active(km)
        adopted = claim(km.connection_file) if km is not None and km.connection_file else None
        if adopted is None:
            return dict(await super().pre_launch(**kwargs))
        try:
            km.load_connection_file()  # the file the service wrote; the kernel bound to it
        except (OSError, ValueError):
            adopted.kill()
            return dict(await super().pre_launch(**kwargs))
        self._adopted = adopted
        self.connection_info = km.get_connection_info()
        kwargs.pop("extra_arguments", None)
        kwargs.pop("transport_encryption", None)
        cmd = km.format_kernel_cmd()
        return dict(await KernelProvisionerBase.pre_launch(self, cmd=cmd, **kwargs))

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        adopted, self._adopted = self._adopted, None
        if adopted is None:
            return await super().launch_kernel(cmd, **kwargs)
        self.process = adopted  # type: ignore[assignment]  # duck-typed as Popen
        self.pid = adopted.pid
        try:  # the agent starts every process in a session of its own
            self.pgid = adopted.pid if os.getpgid(adopted.pid) == adopted.pid else None
        except OSError:
            self.pgid = None
        self.cwd = kwargs.get("cwd")
        return self.connection_info
