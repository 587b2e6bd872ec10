"""Helpers for tests of kernels on the default private backend (a service per kernel)."""

from __future__ import annotations

from pathlib import Path

import psutil

from e2b_kernel.backends.early import LEASE_DIR

from .harness import Kernel, clean_env


def private_service(kernel: Kernel) -> psutil.Process:
    """The kernel's private local service: its `python -m e2b_kernel.local` child."""
    for child in psutil.Process(kernel.pid).children():
        if "e2b_kernel.local" in " ".join(child.cmdline()):
            return child
    raise AssertionError("the kernel has no private local service")


def leases_naming(pids: set[int]) -> list[Path]:
    """Lease files that name one of these service pids."""
    found = []
    for path in LEASE_DIR.glob("lease-*.lock"):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) in pids:
            found.append(path)
    return found


def private_env(tmp_path: Path, transport: str = "auto") -> dict[str, str]:
    return clean_env(
        E2B_KERNEL_BACKEND="local",
        E2B_KERNEL_TRANSPORT=transport,
        JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"),
    )
