"""A warm pool's refill starts its sandbox on CPU time nothing else wants (cgroup ``cpu.idle``),
so that it never slows what the machine does meanwhile (the start of the kernel whose create
set it off, for one); a sandbox handed to a caller runs at its normal share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from e2b_code_interpreter import Sandbox
from local_helpers import sdk_options, wait_for

from e2b_kernel.local import RunningService, start_in_thread


def _registry(service: RunningService):  # type: ignore[no-untyped-def]
    return service._core.registry  # type: ignore[attr-defined]


@pytest.fixture
def refilling() -> Iterator[RunningService]:
    """A service of its own (in this process, so its pool can be looked at) with a pool of one."""
    service = start_in_thread(pool_size=1)
    if _registry(service).policy.cgroup_version is None:
        service.stop()
        pytest.skip("no cgroups here: sandboxes have no CPU group to lower")
    try:
        yield service
    finally:
        service.stop()


def test_a_refill_boots_at_idle_priority_and_a_taken_sandbox_at_normal(
    refilling: RunningService,
) -> None:
    pool = _registry(refilling).pool
    # At idle priority a boot gets only CPU time nothing else wants: other test workers busy
    # on every core hold it back for as long as they are (more than 30 s was seen at -n 4).
    wait_for(lambda: pool.ready_count == 1, timeout=120, what="the pool's sandbox")
    pooled = pool._ready[0][0]
    if pooled.cgroups.cpu_idle() is None:
        pytest.skip("this kernel has no cpu.idle (Linux 5.15 or later has)")
    assert pooled.cgroups.cpu_idle() is True

    sandbox = Sandbox.create(timeout=60, **sdk_options(refilling))
    try:
        assert sandbox.sandbox_id == pooled.sandbox_id  # served from the pool
        assert pooled.cgroups.cpu_idle() is False
        assert sandbox.run_code("6 * 7").text == "42"
        # The refill that the create set off starts its sandbox at idle priority again.
        wait_for(lambda: pool.ready_count == 1, timeout=120, what="the refill")
        assert pool._ready[0][0].cgroups.cpu_idle() is True
    finally:
        sandbox.kill()


def test_a_pool_that_does_not_refill_starts_its_sandbox_at_normal_priority() -> None:
    # A kernel's private service: the kernel waits for that sandbox.
    service = start_in_thread(pool_size=1, pool_refill=False)
    try:
        pool = _registry(service).pool
        wait_for(lambda: pool.ready_count == 1, what="the pool's sandbox")
        assert pool._ready[0][0].cgroups.cpu_idle() in (False, None)
    finally:
        service.stop()
