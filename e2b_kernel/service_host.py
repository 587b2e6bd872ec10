"""The kernel's private local service, hosted in a helper process that outlives a restart.

Why a helper process: ``jupyter_client`` restarts a kernel by starting a new kernel process,
but a restart must keep the sandbox (its files and installed packages). A service inside the
kernel process would die with it. So the kernel runs ``python -m e2b_kernel.service_host``,
which serves ``e2b_kernel.local.start_in_thread()`` and stays alive while some kernel process
holds an exclusive ``flock`` on its *lease file*:

- the kernel takes the lease for its whole life; the OS drops it when the process exits,
  however it exits (SIGKILL included);
- on restart the old process exits and the new one takes the same lease (found through the
  restart state, see ``restart_state``);
- when nobody has held the lease for ``GRACE`` seconds the host stops the service, which
  kills its sandboxes, and exits. So a SIGKILLed kernel leaves nothing behind for long.

The host runs in its own session, so a SIGINT sent to the kernel's process group (signal
interrupt mode) never reaches it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

__all__ = ["GRACE", "HostedService", "main"]

GRACE = 10.0  # seconds without a lease holder before the host shuts down
_POLL = 0.25


class HostedService:
    """A local service in a helper process, reached like ``RunningService`` (url, api_key)."""

    survives_process = True

    def __init__(self, info: dict[str, Any], lease_path: str, lease_fd: int) -> None:
        self.url: str = info["url"]
        self.api_key: str = info["api_key"]
        self.isolation: str = info["isolation"]
        self.pid: int = int(info["pid"])
        self.lease_path = lease_path
        self._lease_fd: int | None = lease_fd

    @classmethod
    def launch(cls, timeout: float = 60.0, *, isolation: str = "auto") -> HostedService:
        """Start a helper process and hold its lease; blocks until the service listens."""
        fd, lease_path = tempfile.mkstemp(prefix="e2b-kernel-lease-", suffix=".lock")
        fcntl.flock(fd, fcntl.LOCK_EX)
        proc = subprocess.Popen(
            [sys.executable, "-m", "e2b_kernel.service_host", lease_path, isolation],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=None,
            start_new_session=True,
            env={k: v for k, v in os.environ.items() if k != "E2B_API_KEY"},
        )
        assert proc.stdout is not None
        line = _readline_with_timeout(proc, timeout)
        proc.stdout.close()
        try:
            info = json.loads(line)
        except ValueError:
            proc.kill()
            os.close(fd)
            raise RuntimeError(f"the local E2B service did not start: {line.strip()!r}") from None
        if "error" in info:
            os.close(fd)
            raise RuntimeError(info["error"])
        return cls(info, lease_path, fd)

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
                time.sleep(0.05)
        if not _alive(int(state["pid"])):
            os.close(fd)
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
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while _alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        self.release()
        with contextlib.suppress(OSError):
            os.unlink(self.lease_path)

    def release(self) -> None:
        """Let go of the lease without stopping the helper (the next process adopts it)."""
        if self._lease_fd is not None:
            os.close(self._lease_fd)
            self._lease_fd = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still "exists": reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def _readline_with_timeout(proc: subprocess.Popen, timeout: float) -> str:
    result: list[str] = []
    reader = threading.Thread(
        target=lambda: result.append(proc.stdout.readline().decode()),  # type: ignore[union-attr]
        daemon=True,
    )
    reader.start()
    reader.join(timeout)
    if not result:
        proc.kill()
        raise RuntimeError(f"the local E2B service did not start within {timeout:g} s")
    return result[0]


def _lease_is_free(lease_path: str) -> bool:
    try:
        fd = os.open(lease_path, os.O_RDWR)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing drops our probe lock at once
    return True


def main(argv: list[str] | None = None) -> int:
    """Serve the local service until the lease has been free for ``GRACE`` seconds."""
    args = sys.argv[1:] if argv is None else argv
    lease_path = args[0]
    isolation = args[1] if len(args) > 1 else "auto"
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from .local import start_in_thread  # type: ignore[attr-defined,unused-ignore]

    try:
        service = start_in_thread(isolation=isolation)
    except Exception as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    info = {
        "url": service.url,
        "api_key": service.api_key,
        "isolation": service.isolation,
        "pid": os.getpid(),
    }
    print(json.dumps(info), flush=True)
    sys.stdout.close()
    free_since: float | None = None
    while not stop.wait(_POLL):
        if _lease_is_free(lease_path):
            free_since = free_since or time.monotonic()
            if time.monotonic() - free_since > GRACE:
                break
        else:
            free_since = None
    service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
