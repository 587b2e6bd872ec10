"""A warm pool of ready sandboxes, so `create` answers in E2B's time rather than a cold start.

Every local template is the same runtime (the service's own Python, bound read-only), so one
pool serves them all: each pooled sandbox has its namespaces, its agent and its code
interpreter's python kernel already running, and has never been handed to anyone. `create`
takes one (never reused: a sandbox leaves the pool once and dies with its caller), gives it the
caller's env vars (also inside the running kernel), and a background task starts a
replacement. A network is started later in any sandbox that needs one (set_egress), so only
sandboxes with their own disk size are started cold.

A pool that does not refill (a kernel's private service: it needs exactly one sandbox) starts
its sandboxes once, with the service, so that the kernel's sandbox starts while the kernel
process is still starting. A create that finds none ready yet waits for the one being started,
which is further along than a cold start. Such a sandbox's processes (its Jupyter Server) were
started before the caller was known, so it only serves a create without env vars.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..sandbox import LocalSandbox

log = logging.getLogger("e2b_kernel.local")


Ready = tuple[LocalSandbox, Any]  # a started sandbox and its started CodeInterpreter


class WarmPool:
    """Up to `size` ready sandboxes; `take` is instant, the refill runs in the background."""

    def __init__(
        self, size: int, make: Callable[[], Awaitable[Ready]], *, refill: bool = True
    ) -> None:
        if size < 0:
            raise ValueError(f"--pool-size must be 0 or more, got {size}")
        self.size = size
        self.refill = refill
        self._make = make
        self._ready: list[Ready] = []
        self._filling: asyncio.Task[None] | None = None
        self._arrived: asyncio.Event | None = None  # set whenever a sandbox joins the pool
        self._begun: asyncio.Event | None = None  # set once the first start got its processes going
        self._waiter = False  # a create waits for the sandbox being started
        self._started = False
        self._closed = False

    @property
    def ready_count(self) -> int:
        """How many sandboxes wait in the pool now."""
        return len(self._ready)

    def start(self) -> None:
        """Begin filling (call on the service's loop)."""
        self._refill()

    async def begun(self) -> None:
        """Until the first sandbox's processes are launched (its agent, Jupyter Server and
        code interpreter started, not yet ready), or its start failed; at once without a
        fill. The service imports its web stack only then: until then it would take the CPU
        (and this thread's GIL) from that start."""
        if self._begun is not None and self._filling_now():
            assert self._filling is not None
            begun = asyncio.ensure_future(self._begun.wait())
            try:
                await asyncio.wait([begun, self._filling], return_when=asyncio.FIRST_COMPLETED)
            finally:
                begun.cancel()

    async def take(self, envs: dict[str, str]) -> Ready | None:
        """A ready sandbox, or None (pool off, empty, or closed); a refill follows.

        A pool that does not refill serves only a create without ``envs``, and its first
        such create waits for a sandbox still being started instead of starting another.
        """
        if not self.refill:
            if envs:
                return None
            if not self._ready and not self._waiter and self._filling_now():
                self._waiter = True
                try:
                    await self._wait_arrival()
                finally:
                    self._waiter = False
        while self._ready:
            sandbox, interpreter = self._ready.pop(0)
            if not sandbox.killed.is_set():  # its agent may have died while it waited
                self._refill()
                return sandbox, interpreter
        self._refill()
        return None

    def _filling_now(self) -> bool:
        return self._filling is not None and not self._filling.done()

    async def _wait_arrival(self) -> None:
        """Until a sandbox joins the pool or the fill ends (failed, or closed)."""
        assert self._filling is not None and self._arrived is not None
        arrived = asyncio.ensure_future(self._arrived.wait())
        try:
            await asyncio.wait([arrived, self._filling], return_when=asyncio.FIRST_COMPLETED)
        finally:
            arrived.cancel()

    def _refill(self) -> None:
        if self._closed or self.size == 0 or (self._started and not self.refill):
            return
        self._started = True
        if self._arrived is None:
            self._arrived, self._begun = asyncio.Event(), asyncio.Event()
        if self._filling is None or self._filling.done():
            self._filling = asyncio.ensure_future(self._fill())

    async def _fill(self) -> None:
        # One at a time: a pool start must not compete with the caller's own creates for
        # the machine's few cores more than one sandbox start does.
        while not self._closed and len(self._ready) < self.size:
            try:
                ready = await self._make()
            except Exception:
                log.exception("the warm pool could not start a sandbox; it stays short")
                return
            finally:
                assert self._begun is not None
                self._begun.set()
            try:
                await ready[1].warm()
            except BaseException:  # closed (cancelled) while its kernel started: no leftover
                await asyncio.shield(ready[0].kill())
                raise
            if self._closed:
                await ready[0].kill()
                return
            self._ready.append(ready)
            assert self._arrived is not None
            self._arrived.set()

    async def close(self) -> None:
        """Stop refilling and kill every pooled sandbox; every caller waits for the fill's end.

        The fill is cancelled once: a second cancel would interrupt it while it waits for the
        teardown of the sandbox it was starting, and close would return with that sandbox
        still being torn down (its disk outlived the service when the loop ended then)."""
        if not self._closed and self._filling is not None:
            self._filling.cancel()
        self._closed = True
        if self._filling is not None:
            # Shielded: a cancelled caller would otherwise pass its cancel on to the fill.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.shield(self._filling)
        ready, self._ready = self._ready, []
        await asyncio.gather(*(sandbox.kill() for sandbox, _ in ready), return_exceptions=True)
