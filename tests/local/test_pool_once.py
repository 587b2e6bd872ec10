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


async def _yield_to_the_loop() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def test_begun_is_the_first_start_launched_not_warm() -> None:
    """The service imports its web stack once the first sandbox's processes run (begun), not
    before (it would slow their start) and not after they are ready (it would add its time)."""

    async def scenario() -> None:
        launched, warmed = asyncio.Event(), asyncio.Event()

        class _Warming(_Fake):
            async def warm(self) -> None:
                await warmed.wait()

        async def make() -> Any:
            await launched.wait()
            return _Fake(), _Warming()

        pool = WarmPool(1, make, refill=False)
        pool.start()
        begun = asyncio.ensure_future(pool.begun())
        await _yield_to_the_loop()
        assert not begun.done()
        launched.set()
        await asyncio.wait_for(begun, 5)
        assert pool.ready_count == 0  # still warming
        warmed.set()
        await pool.close()

    asyncio.run(scenario())


def test_begun_does_not_wait_without_a_fill_or_after_a_failed_start() -> None:
    async def scenario() -> None:
        async def failing() -> Any:
            raise OSError("no bwrap")

        off = WarmPool(0, failing)
        off.start()
        await asyncio.wait_for(off.begun(), 5)  # pool off
        await asyncio.wait_for(WarmPool(1, failing).begun(), 5)  # never started
        broken = WarmPool(1, failing, refill=False)
        broken.start()
        await asyncio.wait_for(broken.begun(), 5)
        await broken.close()

    asyncio.run(scenario())
