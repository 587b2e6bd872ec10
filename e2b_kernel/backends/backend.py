"""Where a session's sandboxes come from: the user's E2B settings, or a private local service.

Both are reached through the unmodified SDK; the local service is only other URLs and a key.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from ..config import SessionConfig
from ..errors import ConfigurationError, SandboxUnavailable
from .handles import InProcessService, ServiceHandle

__all__ = ["CLOUD_ISOLATION", "Backend"]

CLOUD_ISOLATION = "E2B cloud microVM"
# Seconds a service that broke a connection may take to be seen dead, where that is not seen
# at once (see ServiceHandle.death_seen_at_once).
_DYING_GRACE = 2.0


class Backend:
    """The resolved backend ("cloud" or "local") and, for local, its running service."""

    def __init__(
        self,
        config: SessionConfig,
        log: logging.Logger,
        service_factory: Callable[..., ServiceHandle] | None = None,
    ) -> None:
        self.config = config
        self.log = log
        self.name: str = config.resolved_backend()
        self.isolation: str = CLOUD_ISOLATION if self.name == "cloud" else "(starting)"
        self.service: ServiceHandle | None = None
        # Called as factory(isolation=...); default: a service on a thread of this process.
        self._factory = service_factory or InProcessService.start

    async def ensure_started(self) -> None:
        """Start the private local service when the backend is local (no-op otherwise)."""
        if self.name != "local" or self.service is not None:
            return
        try:  # starting blocks until the server listens; keep the event loop free meanwhile
            service = await asyncio.to_thread(self._factory, isolation=self.config.local_isolation)
        except Exception as exc:
            raise SandboxUnavailable(
                f"The private local E2B service could not start: {exc}"
            ) from None
        self.attach(service)
        self.log.info(
            "private local E2B service at %s (isolation: %s)", service.url, self.isolation
        )

    def attach(self, service: ServiceHandle) -> None:
        """Use an already running local service."""
        self.service = service
        self.isolation = service.isolation

    def sdk_opts(self) -> dict[str, Any]:
        """SDK keyword arguments that pick the backend (never log them: they hold the key)."""
        if self.service is not None:
            return dict(self.service.sdk_options())
        if not os.environ.get("E2B_API_KEY"):
            raise ConfigurationError(
                "E2B_API_KEY is not set, so the cloud backend cannot create a sandbox. Set "
                "E2B_API_KEY to your E2B API key, or set E2B_KERNEL_BACKEND=local to run "
                "sandboxes on this machine."
            )
        return {"domain": self.config.domain} if self.config.domain else {}

    async def service_lost(self) -> bool:
        """True when the local service has died; it is then forgotten, so that the next
        ``ensure_started`` starts a fresh one."""
        service = self.service
        if service is None:
            return False
        # Asked because a connection to it just broke. Where a service that is being killed
        # can still look alive for a moment, give it that moment before believing it; on
        # Linux a live answer is final at once (a Jupyter Server that cannot be reached cost
        # every request that moment).
        grace = 0.0 if service.death_seen_at_once() else _DYING_GRACE
        deadline = time.monotonic() + grace
        while await asyncio.to_thread(service.alive):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        self.log.warning("the private local E2B service (pid %d) has stopped", service.pid)
        self.service = None
        await asyncio.to_thread(service.stop)  # reaps it and removes its lease file
        return True

    @property
    def outlives_process(self) -> bool:
        """Whether sandboxes can outlive this process (false for an in-process service)."""
        return self.service is None or self.service.survives_process

    def hand_over(self) -> dict[str, Any] | None:
        """Let go of the service without stopping it; return how to adopt it."""
        service, self.service = self.service, None
        if service is None:
            return None
        state = service.to_state()
        service.release()
        return state

    async def stop(self) -> None:
        """Stop the private service (it kills its sandboxes); idempotent."""
        service, self.service = self.service, None
        if service is not None:
            await asyncio.to_thread(service.stop)
