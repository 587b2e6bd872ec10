"""Fixtures for kernel integration tests: both backends, real kernel processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from e2b_kernel.local import RunningService

from .harness import Kernel, clean_env

BACKENDS = ["private-local", "service"]
# How cells reach the sandbox. Both backends serve Jupyter on port 8888, so ``auto`` (a test
# that does not ask for a transport) is ``jupyter``; a test for behaviour of one transport only
# pins it with ``pytest.mark.parametrize("transport", [...], indirect=True)``.
TRANSPORTS = ["execute", "jupyter"]


@pytest.fixture
def transport(request: pytest.FixtureRequest) -> str:
    """``E2B_KERNEL_TRANSPORT`` of the kernels a test starts (``auto`` unless parametrized)."""
    return str(getattr(request, "param", "auto"))


def with_transport(env: dict[str, str], transport: str) -> dict[str, str]:
    """``env`` with ``E2B_KERNEL_TRANSPORT`` set (left to its default for ``auto``)."""
    if transport != "auto":
        env.setdefault("E2B_KERNEL_TRANSPORT", transport)
    return env


@pytest.fixture
def backend_env(
    request: pytest.FixtureRequest, tmp_path: Path, transport: str
) -> Callable[..., dict[str, str]]:
    """Build a kernel environment for the parametrized backend and transport, plus overrides."""
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
        return with_transport(env, transport)

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
