"""A local, offline, E2B-compatible sandbox service (``e2b-kernel local``).

The unmodified E2B SDK talks to it when ``E2B_API_URL`` and ``E2B_SANDBOX_URL`` point at it.
Entry points: :func:`start_in_thread` (in-process, for the kernel's ``local`` backend) and
:func:`start_subprocess` (a child process, for tests). Nothing here imports the rest of
e2b_kernel.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .running import START_TIMEOUT, RunningService, ServiceOptions, ServiceRecord
from .sandbox.isolation import IsolationUnavailable

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing's own from Python 3.11

__all__ = ["IsolationUnavailable", "RunningService", "start_in_thread", "start_subprocess"]

ISOLATION_UNAVAILABLE_EXIT = 3


class _SubprocessService(ServiceRecord):
    """The service as a child process (`python -m e2b_kernel.local --port 0`)."""

    def __init__(
        self,
        host: str,
        port: int,
        options: ServiceOptions,
        lease: str | None = None,
    ) -> None:
        argv = [sys.executable, "-m", "e2b_kernel.local", "--host", host]
        argv += ["--port", str(port)]
        # Tied to this process, or (with a lease) to whoever holds the lease, in a session of
        # its own so that a SIGINT for this process's group never reaches it.
        argv += ["--lease", lease] if lease else ["--die-with-parent"]
        flags = ("isolation", "api_key", "pool_refill")
        limits = {k: v for k, v in options.items() if k not in flags}
        for name, value in limits.items():  # the others keep the command line's defaults
            argv += [f"--{name.replace('_', '-')}", str(value)]
        if options.get("pool_refill") is False:
            argv.append("--no-pool-refill")
        isolation = options.get("isolation", "auto")
        api_key = options.get("api_key")
        if isolation == "none":
            argv.append("--no-isolation")
        elif isolation not in ("auto", "namespaces"):
            raise ValueError(f"unknown isolation {isolation!r}: use 'auto' or 'none'")
        # The caller's cloud key is no business of the service's.
        env = {k: v for k, v in os.environ.items() if k != "E2B_API_KEY"}
        if api_key is not None:
            env["E2B_KERNEL_LOCAL_API_KEY"] = api_key  # not on argv, where `ps` shows it
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=None,
            env=env,
            text=True,
            start_new_session=lease is not None,
        )
        self.pid = self._proc.pid
        self._stopped = False
        found = self._read_banner()
        self.url = found["E2B_API_URL"]
        self.api_key = found["E2B_API_KEY"]
        self.isolation = found["isolation"]
        if lease:
            self._close_banner()  # nobody reads it any more; the service must not block on it

    def _read_banner(self) -> dict[str, str]:
        assert self._proc.stdout is not None
        timer = threading.Timer(START_TIMEOUT, self._proc.kill)
        timer.start()
        try:
            found = read_banner(self._proc.stdout)
            if "isolation" in found:
                return found
        finally:
            timer.cancel()
        code = self._proc.wait()
        if code == ISOLATION_UNAVAILABLE_EXIT:
            raise IsolationUnavailable(found.get("error", "sandbox isolation is unavailable"))
        if "error" in found:
            raise RuntimeError(f"the local E2B service could not start: {found['error']}")
        raise RuntimeError(f"the local E2B service exited with status {code} before listening")

    def stop(self) -> None:
        """Terminate the child (it kills its sandboxes); idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._close_banner()

    def _close_banner(self) -> None:
        if self._proc.stdout is not None:
            self._proc.stdout.close()


def read_banner(lines: Iterable[str]) -> dict[str, str]:
    """What a starting service prints, read up to its last banner line: its ``export``
    settings (``E2B_API_URL``, ``E2B_API_KEY``...), then ``isolation`` once it serves, or
    ``error`` when it could not start (the lines then end)."""
    found: dict[str, str] = {}
    for line in lines:
        if match := re.match(r"export (E2B_\w+)=(\S+)", line):
            found[match.group(1)] = match.group(2)
        elif line.startswith("# isolation: "):
            found["isolation"] = line[len("# isolation: ") :].strip()
            break
        elif line.startswith("# error: "):
            found["error"] = line[len("# error: ") :].strip()
    return found


def start_in_thread(
    host: str = "127.0.0.1", port: int = 0, **options: Unpack[ServiceOptions]
) -> RunningService:
    """Start the service in this process on a daemon thread; returns once it listens.

    ``options``: see :class:`ServiceOptions`. Raises IsolationUnavailable when isolation is
    "auto" and namespaces are impossible here.
    """
    from .thread_service import ThreadService  # asyncio and the service's modules: not before

    return ThreadService(host, port, options)


def start_subprocess(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    lease: str | None = None,
    **options: Unpack[ServiceOptions],
) -> RunningService:
    """Start the service as a child process that dies with this one; returns once it listens.

    With ``lease`` (a file the caller holds an exclusive ``flock`` on) it lives instead until
    nobody has held the lease for ``lease.GRACE`` seconds, then removes the file.
    ``options``: see :class:`ServiceOptions`. Raises IsolationUnavailable when isolation is
    "auto" and namespaces are impossible here.
    """
    return _SubprocessService(host, port, options, lease)
