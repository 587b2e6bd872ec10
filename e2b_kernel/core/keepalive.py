"""Keep a sandbox from dying of its timeout while the session that owns it lives."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from ..config import SessionConfig
from .sdk_errors import is_sandbox_gone

__all__ = ["KeepAlive"]


class KeepAlive:
    """Refresh the sandbox timeout every ``keepalive_interval`` seconds.

    It refreshes while a cell runs, and while idle too unless idle mode is ``pause`` (then the
    sandbox pauses at its timeout and the next cell resumes it). When the sandbox turns out to
    be gone, ``on_gone(sandbox_id)`` is called once and the loop ends. ``refresh`` sets the
    sandbox's timeout again (``SandboxSession`` does it without the SDK until the SDK's object
    is built: the SDK's import can outlast a short timeout).
    """

    def __init__(
        self,
        sandbox_id: str,
        refresh: Callable[[], Awaitable[None]],
        config: SessionConfig,
        *,
        busy: Callable[[], bool],
        on_gone: Callable[[str], None],
        log: logging.Logger,
    ) -> None:
        self.sandbox_id = sandbox_id
        self._refresh = refresh
        self.config = config
        self._busy = busy
        self._on_gone = on_gone
        self.log = log
        self._task: asyncio.Task | None = asyncio.create_task(self._loop(), name="e2b-keepalive")

    def stop(self) -> None:
        """Stop refreshing (the sandbox is closed, handed over or lost)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.keepalive_interval)
            if self.config.idle == "pause" and not self._busy():
                continue
            try:
                await self._refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if is_sandbox_gone(exc):
                    self.log.warning("sandbox %s is gone: %s", self.sandbox_id, exc)
                    self._task = None
                    self._on_gone(self.sandbox_id)
                    return
                self.log.warning("could not refresh the sandbox timeout: %s", exc)
