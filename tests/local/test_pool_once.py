"""A warm pool that does not refill (a kernel's private service): logic with fake sandboxes."""

from __future__ import annotations

import asyncio
from typing import Any

from e2b_kernel.local.service.pool import WarmPool


class _Fake:
    def __init__(self) -> None:
        self.killed = asyncio.Event()

    async def kill(self) -> None:
        self.killed.set()

    async def warm(self) -> None:
        return None


def _pool(release: asyncio.Event, made: list[Any]) -> WarmPool:
    async def make() -> Any:
        await release.wait()
        ready = (_Fake(), _Fake())
        made.append(ready)
        return ready

    return WarmPool(1, make, refill=False)


def test_create_waits_for_the_sandbox_being_started_and_none_replaces_it() -> None:
    async def scenario() -> None:
        release, made = asyncio.Event(), []
        pool = _pool(release, made)
        pool.start()
        taking = asyncio.ensure_future(pool.take({}))
        await asyncio.sleep(0.01)
        assert not taking.done()  # waits instead of answering "none ready"
        release.set()
        assert await taking == made[0]
        await asyncio.sleep(0.01)
        assert len(made) == 1 and pool.ready_count == 0  # no refill
        assert await pool.take({}) is None  # the next create starts cold
        await pool.close()

    asyncio.run(scenario())


def test_a_create_with_env_vars_is_not_served_and_does_not_wait() -> None:
    async def scenario() -> None:
        release, made = asyncio.Event(), []
        pool = _pool(release, made)
        pool.start()
        assert await pool.take({"NAME": "value"}) is None
        release.set()
        await asyncio.sleep(0.01)
        assert pool.ready_count == 1  # kept for a create without env vars
        await pool.close()
        assert made[0][0].killed.is_set()

    asyncio.run(scenario())


def test_a_failed_start_ends_the_wait() -> None:
    async def scenario() -> None:
        async def make() -> Any:
            raise OSError("no bwrap")

        pool = WarmPool(1, make, refill=False)
        pool.start()
        assert await asyncio.wait_for(pool.take({}), 5) is None
        await pool.close()

    asyncio.run(scenario())
