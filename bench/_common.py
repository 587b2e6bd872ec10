"""Small helpers shared by the benchmarks: timing, medians and peak memory from /proc."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path


def median_seconds(run: Callable[[], object], repeat: int, warmup: int = 1) -> float:
    """Median wall time of ``run()`` over ``repeat`` calls, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        run()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def tree_cpu_seconds(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system) used so far by a process and its live descendants, and
    how many processes that is."""
    import psutil

    root = psutil.Process(pid)
    total, count = 0.0, 0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue  # gone meanwhile
        total += times.user + times.system
        count += 1
    return total, count


def cpu_by_process(pid: int) -> dict[int, tuple[float, list[str]]]:
    """CPU seconds (user + system) used so far by a process and each live descendant, with
    its command line, by pid."""
    import psutil

    root = psutil.Process(pid)
    found: dict[int, tuple[float, list[str]]] = {}
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
            found[process.pid] = (times.user + times.system, process.cmdline())
        except psutil.Error:
            continue  # gone meanwhile
    return found


def peak_rss_mib(pid: int) -> float:
    """Peak resident memory (VmHWM) of a live process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def reset_peak_rss(pid: int) -> None:
    """Reset VmHWM (Linux >= 4.0) so the next peak reflects only what follows."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass


def quiet(_msg: object) -> None:
    """An output hook that swallows outputs (execute_interactive prints them by default)."""


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def print_times_code(samples: int) -> str:
    """Cell code printing ``time.time()`` ``samples`` times, 50 ms apart (for latency)."""
    return (
        "import time\n"
        f"for _ in range({samples}):\n"
        "    print(time.time(), flush=True)\n"
        "    time.sleep(0.05)"
    )


# Cell code writing 50 MiB of stdout in 1 KiB lines.
FIFTY_MB_CODE = (
    "import sys\nline = 'x' * 1023 + '\\n'\nfor _ in range(50 * 1024):\n    sys.stdout.write(line)"
)
