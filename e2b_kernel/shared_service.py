"""One private local E2B service shared by all the named sandboxes of the ``%%e2b`` extension.

Each ``SandboxSession`` on the local backend would otherwise start a service of its own, so
``%e2b connect`` and ``%e2b list`` could not see the sandboxes of other names. Sessions get a
view of the shared service whose ``stop()`` does nothing; the extension stops the real one
after closing every session.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["SharedLocalService"]


class _View:
    """What a session sees: the service's address and key; stopping is left to the owner."""

    def __init__(self, service: Any) -> None:
        self.url: str = service.url
        self.api_key: str = service.api_key
        self.isolation: str = service.isolation

    def stop(self) -> None:
        """Leave the shared service running for the other sessions."""


class SharedLocalService:
    """Starts the local service on first use (from any thread) and stops it once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._service: Any = None

    def factory(self, *, isolation: str = "auto") -> _View:
        """A ``service_factory`` for ``SandboxSession``: start (once) and hand out a view.

        The first session's ``isolation`` decides; all sessions share that one service.
        """
        with self._lock:
            if self._service is None:
                from .local import start_in_thread

                self._service = start_in_thread(isolation=isolation)
            return _View(self._service)

    def stop(self) -> None:
        """Stop the service, killing any sandbox still on it; idempotent."""
        with self._lock:
            service, self._service = self._service, None
        if service is not None:
            service.stop()
