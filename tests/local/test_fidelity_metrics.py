"""Metrics over a time range through the unmodified SDK, sampled from the sandbox's cgroups."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from e2b import AsyncSandbox, Sandbox
from e2b.exceptions import SandboxException
from local_helpers import wait_for

pytestmark = pytest.mark.usefixtures("sdk_env")


def test_metrics_are_sampled_over_time_and_filtered_by_range() -> None:
    sbx = Sandbox.create(timeout=120)
    try:
        # Busy for a few seconds, so the cpu share of a sample is above zero.
        sbx.commands.run("timeout 5 sh -c 'while :; do :; done'", background=True, timeout=0)
        sbx.files.write("/home/user/blob.bin", b"x" * (4 * 1024 * 1024))
        wait_for(lambda: len(sbx.get_metrics()) >= 3, timeout=30, what="three samples")
        samples = sbx.get_metrics()
        stamps = [s.timestamp for s in samples]
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
        assert all(s.mem_total > 0 and s.mem_used > 0 and s.cpu_count >= 1 for s in samples)
        assert all(0 <= s.cpu_used_pct <= 100 for s in samples)
        wait_for(
            lambda: any(s.cpu_used_pct > 0 for s in sbx.get_metrics()),
            what="a sample with cpu use",
        )
        last = sbx.get_metrics()[-1]
        assert last.disk_total > 0 and last.disk_used >= 4 * 1024 * 1024
        # A range holding only the middle sample's second.
        middle = samples[1].timestamp
        only = sbx.get_metrics(start=middle, end=middle + timedelta(microseconds=1))
        assert only and all(
            s.timestamp.replace(microsecond=0) == middle.replace(microsecond=0) for s in only
        )
        assert sbx.get_metrics(end=samples[0].timestamp - timedelta(seconds=1)) == []
        later = sbx.get_metrics(start=samples[-1].timestamp)
        assert later and all(
            s.timestamp >= samples[-1].timestamp.replace(microsecond=0) for s in later
        )
        with pytest.raises(SandboxException, match="400"):
            sbx.get_metrics(start=middle, end=middle - timedelta(seconds=5))
    finally:
        sbx.kill()


def test_metrics_async_and_not_found() -> None:
    async def scenario() -> None:
        sbx = await AsyncSandbox.create(timeout=60)
        try:
            first = await sbx.get_metrics()
            assert first and first[0].mem_total > 0
        finally:
            await sbx.kill()
        with pytest.raises(SandboxException):
            await AsyncSandbox.get_metrics(sbx.sandbox_id)

    asyncio.run(scenario())
