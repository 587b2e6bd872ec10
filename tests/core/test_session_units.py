"""``SandboxSession`` without a sandbox service: timeouts and a closed session."""

from __future__ import annotations

import asyncio

import pytest

from e2b_kernel.config import SessionConfig
from e2b_kernel.core import SandboxSession
from e2b_kernel.core.quick_create import CreatedSandbox
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


def _created(sandbox_id: str) -> CreatedSandbox:
    """A sandbox as the kernel creates it without the SDK (no request is sent here)."""
    return CreatedSandbox(sandbox_id, "http://127.0.0.1:9", None, "0.2.0", None, None)


def test_a_loss_seen_by_the_keepalive_and_a_cell_at_once_is_reported_once(monkeypatch) -> None:
    session = SandboxSession(SessionConfig(backend="local", idle="keepalive"))
    session._created = _created("expired")

    async def start() -> None:
        session._created = _created("new")

    monkeypatch.setattr(session, "start", start)
    session._gone("expired")  # the keep-alive's refresh found it gone, while no cell ran
    session._mark_lost("expired")  # and the cell that just failed on it said so
    # The next cell runs in a new sandbox and says so; it is not told of the old loss again.
    assert asyncio.run(session.ready()) is True
    assert session.sandbox_id == "new"
