"""What a started service looks like to its starter (``start_in_thread``, ``start_subprocess``)."""

from __future__ import annotations

from typing import Protocol, TypedDict

__all__ = ["START_TIMEOUT", "RunningService", "ServiceOptions", "ServiceRecord"]

START_TIMEOUT = 60.0  # seconds a service may take to listen


class RunningService(Protocol):
    """A started service: where it listens, its key, its isolation, and how to stop it."""

    url: str
    api_key: str
    isolation: str
    pid: int  # the process serving it (this one for start_in_thread)

    def sdk_env(self) -> dict[str, str]: ...

    def stop(self) -> None: ...


class ServiceOptions(TypedDict, total=False):
    """What both start functions accept; defaults are ``ServiceCore``'s (``service.settings``).

    - ``isolation``: "auto" (Linux namespaces; refuse where impossible) or "none";
    - ``api_key``: the key clients must send (a random one, ``.api_key``, when not given);
    - ``memory_mb``, ``max_pids``: per-sandbox limits (where cgroups are writable);
    - ``disk_mb``: the cap of each sandbox's /home/user + /tmp;
    - ``header_timeout`` (s), ``max_connections``: bound idle and half-open connections;
    - ``pool_size``: ready sandboxes kept warm (0: none);
    - ``pool_refill``: False starts the pool's sandboxes once and never replaces them (see
      ``service.pool``).
    """

    isolation: str
    api_key: str | None
    memory_mb: int
    max_pids: int
    header_timeout: float
    max_connections: int
    disk_mb: int
    pool_size: int
    pool_refill: bool


class ServiceRecord:
    """Shared parts of both service handles: where it listens, its key and isolation."""

    url: str
    api_key: str
    isolation: str
    pid: int

    def sdk_env(self) -> dict[str, str]:
        """The three variables that point the unmodified SDK at this service."""
        return {"E2B_API_URL": self.url, "E2B_SANDBOX_URL": self.url, "E2B_API_KEY": self.api_key}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url} isolation={self.isolation!r}>"
