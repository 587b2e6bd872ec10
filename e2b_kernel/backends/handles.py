"""``ServiceHandle``: a running local E2B service, however it was started.

Three ways run one, and all return this one type:

- :class:`InProcessService`: on a daemon thread of this process (``%%e2b``, ``SandboxExecutor``);
- :class:`~.hosted.HostedService`: in a helper process that outlives a kernel restart;
- :class:`SharedLocalService` hands out :class:`SharedView` handles, so that every named
  ``%%e2b`` sandbox lives on one service and ``%e2b connect``/``list`` see them all.

The SDK reaches any of them with the same three settings (:meth:`ServiceHandle.sdk_options`).
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Any
from urllib.parse import urlsplit

import psutil

__all__ = ["InProcessService", "ServiceHandle", "SharedLocalService", "SharedView"]

# Linux's task flag PF_EXITING (include/linux/sched.h): set as a process begins to exit, before
# it frees its memory and closes its files, so before any peer sees its connections break.
_PF_EXITING = 0x4


def begun_to_exit(pid: int) -> bool | None:
    """Whether process ``pid`` has begun to exit, is a zombie or is gone; None where there is
    no Linux ``/proc`` to tell."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # "pid (comm) state ppid pgrp session tty_nr tpgid flags ...": comm may hold spaces
            fields = stat.read().rsplit(b")", 1)[1].split()
    except FileNotFoundError:
        return True if os.path.isdir("/proc/self") else None
    except OSError:
        return None
    return fields[0] in (b"Z", b"X") or bool(int(fields[6]) & _PF_EXITING)


class ServiceHandle:
    """Where a local service listens, its API key and isolation, and how to let go of it."""

    #: True when sandboxes can outlive this process (the service runs in another process).
    survives_process = False

    def __init__(self, url: str, api_key: str, isolation: str, pid: int) -> None:
        self.url = url
        self.api_key = api_key
        self.isolation = isolation
        self.pid = pid  # the process serving it

    def sdk_options(self) -> dict[str, str]:
        """SDK keyword arguments that point at this service (they hold the key: never log)."""
        return {"api_key": self.api_key, "api_url": self.url, "sandbox_url": self.url}

    def sdk_env(self) -> dict[str, str]:
        """The same, as the SDK's environment variables."""
        return {"E2B_API_URL": self.url, "E2B_SANDBOX_URL": self.url, "E2B_API_KEY": self.api_key}

    def alive(self) -> bool:
        """Whether the service still runs and accepts connections.

        A killed service closes its sockets before its process turns into a zombie, so a
        zombie check alone can still say "running" for a moment after a connection broke;
        Linux's exit flag is set before the sockets close (see :meth:`death_seen_at_once`).
        """
        begun = begun_to_exit(self.pid)
        if begun:
            return False
        if begun is None:
            try:
                if psutil.Process(self.pid).status() == psutil.STATUS_ZOMBIE:
                    return False
            except psutil.NoSuchProcess:
                return False
        address = urlsplit(self.url)
        try:
            with socket.create_connection((address.hostname, address.port or 80), timeout=2):
                return True
        except OSError:
            return False

    def death_seen_at_once(self) -> bool:
        """Whether :meth:`alive` is False as soon as a connection broke by the service's
        death: on Linux, whose exit flag is set before the dying process closes its sockets.
        Elsewhere the process may still look alive, with its port open, for a moment."""
        return begun_to_exit(self.pid) is not None

    def stop(self) -> None:
        """Stop the service; it kills its sandboxes. Idempotent."""

    def release(self) -> None:
        """Let go of the service without stopping it (a successor adopts it)."""

    def to_state(self) -> dict[str, Any] | None:
        """How a successor process adopts this service, or None when it cannot."""
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url} isolation={self.isolation!r}>"


class InProcessService(ServiceHandle):
    """The service on a daemon thread of this process; it dies with the process."""

    def __init__(self, running: Any) -> None:
        super().__init__(running.url, running.api_key, running.isolation, running.pid)
        self._running = running

    @classmethod
    def start(cls, *, isolation: str = "auto") -> InProcessService:
        """Start a service in this process; returns once it listens."""
        from ..local import start_in_thread

        return cls(start_in_thread(isolation=isolation))

    def stop(self) -> None:
        """Kill every sandbox and stop serving; idempotent."""
        self._running.stop()


class SharedView(ServiceHandle):
    """A session's view of the shared service: stopping it is left to the owner."""


class SharedLocalService:
    """One in-process service for all the sessions of ``%%e2b``: started once, stopped once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._service: InProcessService | None = None

    def factory(self, *, isolation: str = "auto") -> SharedView:
        """A ``service_factory`` for ``SandboxSession``: start (once) and hand out a view.

        The first session's ``isolation`` decides; all sessions share that one service.
        """
        with self._lock:
            if self._service is None:
                self._service = InProcessService.start(isolation=isolation)
            service = self._service
            return SharedView(service.url, service.api_key, service.isolation, service.pid)

    def stop(self) -> None:
        """Stop the service, killing any sandbox still on it; idempotent."""
        with self._lock:
            service, self._service = self._service, None
        if service is not None:
            service.stop()
