"""Fixtures for kernel integration tests: both backends, real kernel processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from e2b_kernel.local import RunningService

from .harness import Kernel, clean_env

BACKENDS = ["private-local", "service"]


@pytest.fixture
def backend_env(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., dict[str, str]]:
    """Build a kernel environment for the parametrized backend, plus overrides."""
    backend = getattr(request, "param", "private-local")

    def build(**overrides: str) -> dict[str, str]:
        env = clean_env(JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
        if backend == "service":
            service: RunningService = request.getfixturevalue("local_service")
            env.update(service.sdk_env())
            env["E2B_KERNEL_BACKEND"] = "cloud"
        else:
            env["E2B_KERNEL_BACKEND"] = "local"
        env.update(overrides)
        return env

    return build


@pytest.fixture
def start_kernel(tmp_path: Path) -> Iterator[Callable[..., Kernel]]:
    """Start kernels that are always stopped at the end of the test."""
    kernels: list[Kernel] = []

    def start(env: dict[str, str], interrupt_mode: str = "signal") -> Kernel:
        folder = tmp_path / f"k{len(kernels)}"
        kernel = Kernel(folder, env, interrupt_mode)
        kernels.append(kernel)
        return kernel

    yield start
    for kernel in kernels:
        try:
            kernel.close()
        except Exception:  # already closed by the test
            pass
