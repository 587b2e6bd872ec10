"""Benchmark the local E2B-compatible service through the unmodified SDK.

Prints, measured in one run on this machine:
- create -> first ``run_code`` result, median of 10;
- the same with the warm pool on (size 1, refilled between creates) and off, side by side;
- ``run_code("1+1")`` round trip against a bare jupyter_client ``execute`` in a plain ipykernel;
- latency from ``print`` inside the sandbox to the SDK's ``on_stdout`` callback;
- throughput of 50 MB of stdout and the service's peak memory while streaming it;
- host memory per idle sandbox (a started Python context, nothing running): the growth of the
  host's used memory over several such sandboxes, divided by their number.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    FIFTY_MB_CODE,
    median_seconds,
    ms,
    peak_rss_mib,
    print_times_code,
    quiet,
    reset_peak_rss,
)
from jupyter_client.manager import start_new_kernel

from e2b_kernel.local import start_in_thread, start_subprocess

MB = 1024 * 1024


def bare_ipykernel_round_trip(repeat: int) -> float:
    manager, client = start_new_kernel(kernel_name="python3")
    try:
        return median_seconds(
            lambda: client.execute_interactive("1+1", timeout=30, output_hook=quiet), repeat
        )
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def settled(sample: Callable[[], int], limit_s: float = 10.0) -> int:
    """A reading once two in a row, 0.2 s apart, differ by less than 1 MiB (start-up is over)."""
    previous = sample()
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        time.sleep(0.2)
        current = sample()
        if abs(current - previous) < MB:
            return current
        previous = current
    return previous


def idle_sandbox_memory_mib(sandbox_class: type, count: int = 5) -> float:
    """Host memory (MiB) that one idle sandbox with a started Python context costs."""
    import psutil

    def used() -> int:
        os.sync()
        return psutil.virtual_memory().total - psutil.virtual_memory().available

    before = used()
    sandboxes = [sandbox_class.create(timeout=300) for _ in range(count)]
    try:
        for sandbox in sandboxes:
            sandbox.run_code("1+1")
        after = settled(used)
    finally:
        for sandbox in sandboxes:
            sandbox.kill()
    return (after - before) / count / MB


def pool_on_off(repeat: int = 5) -> tuple[float, float]:
    """Median create -> first result with the pool (waiting for its refill between creates,
    as a service between requests would be) and without it. Both services run in this
    process, so both pay the same client-side costs."""
    from e2b_code_interpreter import Sandbox

    medians = []
    for size in (1, 0):
        service = start_in_thread(pool_size=size)
        pool = service._core.registry.pool  # type: ignore[attr-defined]
        opts = {"api_key": service.api_key, "api_url": service.url, "sandbox_url": service.url}
        try:
            times = []
            for _ in range(repeat):
                deadline = time.monotonic() + 60
                while pool.ready_count < size and time.monotonic() < deadline:
                    time.sleep(0.05)  # polling the refill, a wait condition with a deadline
                start = time.perf_counter()
                sandbox = Sandbox.create(timeout=120, envs={"BENCH": "1"}, **opts)
                sandbox.run_code("1+1")
                times.append(time.perf_counter() - start)
                sandbox.kill()
            medians.append(statistics.median(times))
        finally:
            service.stop()
    return medians[0], medians[1]


def main() -> None:
    pooled, cold = pool_on_off()
    service = start_subprocess()
    os.environ.update(service.sdk_env())
    from e2b_code_interpreter import Sandbox

    try:
        create_to_result = []
        for _ in range(10):
            start = time.perf_counter()
            sandbox = Sandbox.create(timeout=120)
            sandbox.run_code("1+1")
            create_to_result.append(time.perf_counter() - start)
            sandbox.kill()

        idle_mib = idle_sandbox_memory_mib(Sandbox)

        sandbox = Sandbox.create(timeout=600)
        sdk_rt = median_seconds(lambda: sandbox.run_code("1+1"), repeat=50, warmup=3)
        bare_rt = bare_ipykernel_round_trip(repeat=50)

        latencies: list[float] = []

        def on_stdout(message) -> None:
            latencies.append(time.time() - float(message.line))

        code = print_times_code(20)
        sandbox.run_code(code, on_stdout=on_stdout)

        received = 0

        def count(message) -> None:
            nonlocal received
            received += len(message.line)

        pid = service.pid
        reset_peak_rss(pid)
        rss_before = peak_rss_mib(pid)
        big = FIFTY_MB_CODE
        start = time.perf_counter()
        sandbox.run_code(big, on_stdout=count, timeout=600)
        stream_s = time.perf_counter() - start
        rss_peak = peak_rss_mib(pid)
        sandbox.kill()
    finally:
        service.stop()

    print(f"# local service benchmark, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(
        f"# machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, isolation: {service.isolation}"
    )
    print(
        f"create -> first result, 10 back to back (pool of 1 drained): "
        f"{ms(statistics.median(create_to_result))}"
    )
    print(f"create -> first result, pool on  (median of 5):   {ms(pooled)}  (target <= 150 ms)")
    print(f"create -> first result, pool off (median of 5):   {ms(cold)}")
    print(f"ratio pool off / pool on: {cold / pooled:.1f}x")
    print(f"run_code('1+1') round trip (median of 50):       {ms(sdk_rt)}")
    print(f"bare ipykernel execute round trip (median of 50): {ms(bare_rt)}")
    print(f"ratio run_code / bare ipykernel: {sdk_rt / bare_rt:.2f}x (target <= 1.5x)")
    print(
        f"print -> on_stdout latency (median of 20):        {ms(statistics.median(latencies))}"
        "  (target < 50 ms)"
    )
    print(
        f"50 MB stdout: {received / MB:.1f} MB received in {stream_s:.2f} s = "
        f"{received / MB / stream_s:.1f} MB/s"
    )
    print(f"service peak RSS while streaming: {rss_peak:.1f} MiB (before: {rss_before:.1f} MiB)")
    print(f"host memory per idle sandbox (mean of 5): {idle_mib:.1f} MiB")


if __name__ == "__main__":
    main()
