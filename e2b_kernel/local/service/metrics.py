"""Sandbox metrics sampled over time, as E2B's ``GET /sandboxes/{id}/metrics?start=&end=``.

E2B collects a sample of each sandbox every few seconds and answers a time range from that
history. Here one light task per sandbox does the same: it reads the sandbox's cgroups (memory,
cpu time; tiny files, read off the event loop) and asks the sandbox's own agent for its disk
use, then keeps the sample in a bounded ring buffer. A paused sandbox is not sampled (its agent
is frozen and would not answer), as a paused E2B VM reports nothing either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from datetime import datetime, timezone
from typing import Any, Protocol

from ..sandbox.file_ops import FileOps

log = logging.getLogger("e2b_kernel.local")

SAMPLE_INTERVAL = 2.0  # seconds between samples (E2B's own cadence is a few seconds)
KEEP_SAMPLES = 3600  # two hours at the default interval; older samples fall off


class _Sandbox(Protocol):
    agent: Any
    cgroups: Any
    paused: bool
    killed: asyncio.Event


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


class MetricsSampler:
    """The metric history of one sandbox, filled by a background task."""

    def __init__(self, sandbox: _Sandbox, memory_total: int, interval: float = SAMPLE_INTERVAL):
        self.sandbox = sandbox
        self.memory_total = memory_total
        self.interval = interval
        self.samples: deque[dict[str, Any]] = deque(maxlen=KEEP_SAMPLES)
        self._last_cpu: tuple[float, int] | None = None  # (monotonic s, cpu ns)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin sampling now and then every `interval` seconds until `stop`."""
        self._task = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        """Stop sampling (the sandbox is gone); the history stays readable."""
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while not self.sandbox.killed.is_set():
            if not self.sandbox.paused:
                try:
                    await self.sample()
                except Exception:  # a sample lost is not worth the task
                    log.debug("metrics sample failed", exc_info=True)
            await asyncio.sleep(self.interval)  # the sampling period itself, not a wait

    async def sample(self) -> dict[str, Any]:
        """Take one sample now, keep it and return it."""
        memory, cpu_ns = await asyncio.to_thread(self._read_cgroups)
        disk_used, disk_total = await self._disk()
        now = datetime.now(timezone.utc)
        sample = {
            "timestamp": _rfc3339(now),
            "timestampUnix": int(now.timestamp()),
            "cpuCount": os.cpu_count() or 1,
            "cpuUsedPct": self._cpu_percent(cpu_ns),
            "memUsed": memory,
            "memTotal": self.memory_total,
            "memCache": 0,
            "diskUsed": disk_used,
            "diskTotal": disk_total,
        }
        self.samples.append(sample)
        return sample

    def _read_cgroups(self) -> tuple[int, int | None]:
        return self.sandbox.cgroups.memory_used(), self.sandbox.cgroups.cpu_usage_ns()

    async def _disk(self) -> tuple[int, int]:
        with contextlib.suppress(OSError, ConnectionError, asyncio.TimeoutError):
            return await asyncio.wait_for(FileOps(self.sandbox.agent).disk_usage(), 10.0)
        return 0, 0  # the sandbox is going away; the sample still answers

    def _cpu_percent(self, cpu_ns: int | None) -> float:
        """Share of all host cpus used since the previous sample, in percent (E2B's unit)."""
        if cpu_ns is None:
            return 0.0
        now = time.monotonic()
        last, self._last_cpu = self._last_cpu, (now, cpu_ns)
        if last is None or now <= last[0]:
            return 0.0
        busy = (cpu_ns - last[1]) / 1e9 / (now - last[0]) / (os.cpu_count() or 1)
        return round(max(0.0, min(busy, 1.0)) * 100, 2)

    async def between(self, start: int | None, end: int | None) -> list[dict[str, Any]]:
        """Samples with start <= timestampUnix <= end (Unix seconds; either may be None).

        With no history yet (a sandbox created a moment ago) one sample is taken at once,
        so a caller never sees an empty answer for a running sandbox.
        """
        if not self.samples and not self.sandbox.paused:
            await self.sample()
        return [
            s
            for s in self.samples
            if (start is None or s["timestampUnix"] >= start)
            and (end is None or s["timestampUnix"] <= end)
        ]
