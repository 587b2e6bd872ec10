"""The kernel's private local service, in a helper process that outlives a kernel restart.

``jupyter_client`` restarts a kernel by starting a new kernel process, but a restart must keep
the sandbox (its files and installed packages), so the service cannot live inside the kernel
process. The kernel starts ``e2b-kernel local --lease FILE`` and holds an exclusive ``flock`` on
that lease file for its whole life: the service stops, killing its sandboxes, once nobody has
held the lease for a few seconds (see ``e2b_kernel.local.service.lease``). On restart the old
process exits and the new one takes the same lease, found through the restart state
(``restart_state``). So a SIGKILLed kernel leaves nothing behind for long.

The service removes its lease file when it stops, and ``stop()`` does too. Only a service that
was itself SIGKILLed leaves one: each launch sweeps those (free lease, dead service).

``early.launch_early`` starts the service as the kernel process starts, before its imports,
when the environment alone says the kernel will need one; ``launch`` then claims it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Any

import psutil

from . import early
from .handles import ServiceHandle

__all__ = ["HostedService", "sweep_stale_leases"]

_STOP_TIMEOUT = 20.0
_UNCLAIMED_AGE = 120.0  # a lease file with no service pid yet is still being launched


class HostedService(ServiceHandle):
    """A local service in a helper process, kept alive by this process's lease."""

    survives_process = True

    def __init__(self, info: dict[str, Any], lease_path: str, lease_fd: int) -> None:
        super().__init__(info["url"], info["api_key"], info["isolation"], int(info["pid"]))
        self.lease_path = lease_path
        self._lease_fd: int | None = lease_fd
        self._child: Any = None  # the start_subprocess handle, when this process started it

    @classmethod
    def launch(cls, *, isolation: str = "auto") -> HostedService:
        """Take a new lease and start a helper that serves while it is held (or claim the
        one ``launch_early`` started, when its isolation is the one asked for)."""
        leased = None
        launched = early.take_early()
        if launched is not None:
            if launched.isolation == isolation:
                leased = launched.future.result()
            else:
                early.stop_when_started(launched)
        if leased is None:
            leased = early.start_leased(isolation)
        sweep_stale_leases()  # those of services that were SIGKILLed (ours is held)
        child = leased.child
        info = {"url": child.url, "api_key": child.api_key, "isolation": child.isolation}
        hosted = cls({**info, "pid": child.pid}, leased.lease_path, leased.lease_fd)
        hosted._child = child
        return hosted

    @classmethod
    def adopt(cls, state: dict[str, Any], timeout: float = 10.0) -> HostedService:
        """Take over the lease of a helper started by a previous kernel process."""
        lease_path = state["lease_path"]
        fd = os.open(lease_path, os.O_RDWR)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise RuntimeError(
                        "the previous kernel process still holds the service"
                    ) from None
                time.sleep(0.05)  # the previous process is exiting; its lock goes with it
        if not psutil.pid_exists(int(state["pid"])):
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(lease_path)  # it died without removing its lease
            raise RuntimeError("the local service of the previous kernel process has exited")
        return cls(state, lease_path, fd)

    def to_state(self) -> dict[str, Any]:
        """What a restarted kernel process needs to adopt this service."""
        return {
            "url": self.url,
            "api_key": self.api_key,
            "isolation": self.isolation,
            "pid": self.pid,
            "lease_path": self.lease_path,
        }

    def stop(self) -> None:
        """Stop the helper (it kills its sandboxes) and wait for it; idempotent."""
        if self._child is not None:
            self._child.stop()  # our own child: terminate and reap it
        else:
            with contextlib.suppress(psutil.NoSuchProcess):
                helper = psutil.Process(self.pid)
                helper.terminate()
                try:
                    helper.wait(_STOP_TIMEOUT)
                except psutil.TimeoutExpired:
                    helper.kill()
        self.release()
        with contextlib.suppress(OSError):
            os.unlink(self.lease_path)

    def release(self) -> None:
        """Let go of the lease without stopping the helper (the next process adopts it)."""
        if self._lease_fd is not None:
            os.close(self._lease_fd)
            self._lease_fd = None


def sweep_stale_leases() -> list[Path]:
    """Remove lease files that nobody holds and whose service is dead; return them."""
    removed = []
    for path in early.lease_dir().glob("lease-*.lock"):
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held: a kernel still lives
            text = os.read(fd, 32).decode(errors="replace").strip()
            if text.isdigit():
                stale = not psutil.pid_exists(int(text))
            else:
                stale = time.time() - os.fstat(fd).st_mtime > _UNCLAIMED_AGE
            if stale:
                path.unlink()
                removed.append(path)
        except (BlockingIOError, OSError):
            pass
        finally:
            os.close(fd)
    return removed
