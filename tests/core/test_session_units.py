"""``SandboxSession`` without a sandbox service: timeouts and a closed session."""

from __future__ import annotations

import asyncio

import pytest

from e2b_kernel.config import SessionConfig
from e2b_kernel.core import SandboxSession
from e2b_kernel.errors import SandboxUnavailable


class _RefusingSandbox:
    sandbox_id = "refusing"

    async def set_timeout(self, seconds: int) -> None:
        raise ValueError(f"timeout {seconds} exceeds the plan's maximum")


def test_a_refused_timeout_is_not_kept_for_refreshes() -> None:
    session = SandboxSession(SessionConfig(backend="local", sandbox_timeout=300))
    session.sandbox = _RefusingSandbox()  # type: ignore[assignment]
    with pytest.raises(ValueError, match="maximum"):
        asyncio.run(session.set_timeout(10**9))
    assert session.config.sandbox_timeout == 300


def test_without_a_sandbox_the_timeout_applies_to_the_next_one() -> None:
    session = SandboxSession(SessionConfig(backend="local", sandbox_timeout=300))
    asyncio.run(session.set_timeout(42))
    assert session.config.sandbox_timeout == 42


def test_a_closed_session_says_how_to_go_on() -> None:
    session = SandboxSession(SessionConfig(backend="local"), name="executor")
    asyncio.run(session.close())
    with pytest.raises(SandboxUnavailable, match=r"'executor'.* is closed.*new SandboxExecutor"):
        asyncio.run(session.start())
