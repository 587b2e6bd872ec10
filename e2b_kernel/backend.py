"""Where a session's sandboxes come from: the user's E2B settings, or a private local service.

Both are reached through the unmodified SDK; the local service is only other URLs and a key.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

from .config import SessionConfig
from .errors import ConfigurationError, SandboxUnavailable

__all__ = ["CLOUD_ISOLATION", "Backend"]

CLOUD_ISOLATION = "E2B cloud microVM"


class Backend:
    """The resolved backend ("cloud" or "local") and, for local, its running service."""

    def __init__(
        self,
        config: SessionConfig,
        log: logging.Logger,
        service_factory: Callable[..., Any] | None = None,
    ) -> None:
        self.config = config
        self.log = log
        self.name: str = config.resolved_backend()
        self.isolation: str = CLOUD_ISOLATION if self.name == "cloud" else "(starting)"
        self.service: Any = None
        # Called as factory(isolation=...); default: e2b_kernel.local.start_in_thread.
        self._factory = service_factory

    async def ensure_started(self) -> None:
        """Start the private local service when the backend is local (no-op otherwise)."""
        if self.name != "local" or self.service is not None:
            return
        factory = self._factory
        if factory is None:
            from .local import start_in_thread  # type: ignore[attr-defined,unused-ignore]

            factory = start_in_thread
        try:  # starting blocks until the server listens; keep the event loop free meanwhile
            service = await asyncio.to_thread(factory, isolation=self.config.local_isolation)
        except Exception as exc:
            raise SandboxUnavailable(
                f"The private local E2B service could not start: {exc}"
            ) from None
        self.attach(service)
        self.log.info(
            "private local E2B service at %s (isolation: %s)", service.url, self.isolation
        )

    def attach(self, service: Any) -> None:
        """Use an already running local service."""
        self.service = service
        self.isolation = str(service.isolation)

    def sdk_opts(self) -> dict[str, Any]:
        """SDK keyword arguments that pick the backend (never log them: they hold the key)."""
        if self.service is not None:
            url = self.service.url
            return {"api_key": self.service.api_key, "api_url": url, "sandbox_url": url}
        if not os.environ.get("E2B_API_KEY"):
            raise ConfigurationError(
                "E2B_API_KEY is not set, so the cloud backend cannot create a sandbox. Set "
                "E2B_API_KEY to your E2B API key, or set E2B_KERNEL_BACKEND=local to run "
                "sandboxes on this machine."
            )
        return {"domain": self.config.domain} if self.config.domain else {}

    @property
    def outlives_process(self) -> bool:
        """Whether sandboxes can outlive this process (false for an in-process service)."""
        return self.service is None or bool(getattr(self.service, "survives_process", False))

    def hand_over(self) -> dict[str, Any] | None:
        """Let go of the service without stopping it; return how to adopt it."""
        service, self.service = self.service, None
        if service is None:
            return None
        state: dict[str, Any] = service.to_state()
        service.release()
        return state

    async def stop(self) -> None:
        """Stop the private service (it kills its sandboxes); idempotent."""
        service, self.service = self.service, None
        if service is not None:
            await asyncio.to_thread(service.stop)
