"""Shared fixtures: a local E2B-compatible service for the whole session, and SDK settings."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from e2b_kernel.local import RunningService, start_subprocess


@pytest.fixture(scope="session")
def local_service() -> Iterator[RunningService]:
    """The local service in a child process (isolated sandboxes); stopped at session end."""
    service = start_subprocess()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture
def sdk_env(local_service: RunningService, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point the unmodified E2B SDK at the local service for one test."""
    env = local_service.sdk_env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("E2B_DEBUG", raising=False)
    monkeypatch.delenv("E2B_DOMAIN", raising=False)
    return env
