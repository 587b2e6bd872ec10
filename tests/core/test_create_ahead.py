"""The create request ``python -m e2b_kernel`` sends as its process starts, against a running
service (``backends/early_sandbox.py``, ``core/create_ahead.py``): the session whose request it
is adopts its sandbox; a sandbox asked for under other settings, or that no session claims, is
deleted; and nothing is asked for where the kernel will not create its sandbox that way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from e2b_kernel.backends import create_early
from e2b_kernel.backends.restart_state import state_path
from e2b_kernel.config import SessionConfig
from e2b_kernel.core import SandboxSession, create_ahead, jupyter_server, quick_create
from e2b_kernel.core.remote_kernel import pick_remote_kernel
from e2b_kernel.local import RunningService, start_in_thread

Tagged = Callable[..., dict[str, dict[str, str]]]  # the tagged_sandboxes fixture


@pytest.fixture(scope="module")
def pooled() -> Iterator[RunningService]:
    """A service of its own, in this process so that its warm pool can be waited for: a
    sandbox from the pool runs its default context's kernel by the time create answers."""
    service = start_in_thread(pool_size=1)
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture
def tagged(pooled: RunningService, tagged_sandboxes: Tagged) -> Tagged:
    """``tagged_sandboxes`` of the ``pooled`` service."""
    return lambda probe: tagged_sandboxes(probe, pooled)


def _pool_ready(service: RunningService) -> None:
    pool = service._core.registry.pool  # type: ignore[attr-defined]
    # A refill boots at idle priority: other test workers busy on every core hold it back for
    # as long as they are (more than 30 s was seen at -n 4 on two cores).
    _wait_for(lambda: pool.ready_count == 1, "the warm pool's sandbox", timeout=120)


@pytest.fixture
def probe(pooled: RunningService, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """The environment of a kernel started against ``pooled``, with metadata unique to the
    test (so that its sandboxes are told from others), once a pooled sandbox is ready;
    yields that metadata's value."""
    _pool_ready(pooled)
    value = uuid.uuid4().hex
    for name, setting in pooled.sdk_env().items():
        monkeypatch.setenv(name, setting)
    for name in ("E2B_DEBUG", "E2B_DOMAIN", "E2B_KERNEL_TRANSPORT", "E2B_KERNEL_FORWARD_ENV"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("E2B_KERNEL_BACKEND", "cloud")
    monkeypatch.setenv("E2B_KERNEL_METADATA", f"probe={value}")
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    yield value
    create_ahead.discard()  # a test that failed half-way leaves nothing behind


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.05)  # polled: the service's list is the only way to see a sandbox go


def _answered_ahead_for() -> set[str]:
    """The sandboxes for whose endpoints answers asked for ahead are kept now."""
    return {dict(headers)["E2b-Sandbox-Id"] for _, headers, _ in jupyter_server._answered_ahead}


@contextlib.asynccontextmanager
async def _started_session(config: SessionConfig) -> AsyncIterator[SandboxSession]:
    """A session started as the kernel starts it (deferring the SDK), closed on leaving."""
    session = SandboxSession(config)
    session.defer_sdk = True
    try:
        await session.start()
        yield session
    finally:
        await session.close()


def _started_sandbox_id(config: SessionConfig) -> str:
    """Start a deferred session as the kernel does, and return its sandbox's id (killed)."""

    async def start() -> str:
        async with _started_session(config) as session:
            return session.sandbox_id

    return asyncio.run(start())


def _create_ahead_keeps_alive() -> bool:
    return any(t.name == "e2b-create-ahead-keepalive" for t in threading.enumerate())


def test_the_session_adopts_the_sandbox_asked_for_at_launch(
    tagged: Tagged, probe: str, tmp_path: Path
) -> None:
    create_early(str(tmp_path / "kernel-1.json"))
    _wait_for(lambda: len(tagged(probe)) == 1, "the sandbox asked for")
    (asked_for,) = tagged(probe)

    assert _started_sandbox_id(SessionConfig()) == asked_for
    assert _answered_ahead_for() == set()  # what was kept for it went with its close
    _wait_for(lambda: not _create_ahead_keeps_alive(), "no refresh of a closed session's")
    _wait_for(lambda: not tagged(probe), "the session's close killed it")


def test_what_the_kernel_asks_first_is_asked_with_the_create(
    tagged: Tagged, probe: str, tmp_path: Path
) -> None:
    create_early(str(tmp_path / "kernel-1.json"))

    async def start() -> None:
        async with _started_session(SessionConfig()) as session:
            # Whether the Jupyter Server answers, the code contexts and the kernels: kept for
            # the kernel's first requests, which then cost no round trip.
            assert _answered_ahead_for() == {session.sandbox_id}
            endpoint = session.jupyter_endpoint()
            assert await endpoint.probe() is None
            log = logging.getLogger("test")
            kernel_id, started = await pick_remote_kernel(session, endpoint, log)
            assert _answered_ahead_for() == set()  # each given once
            assert (kernel_id, started) == ((await session.code_context_ids())[0], False)
            assert kernel_id in {k["id"] for k in await endpoint.list_kernels()}

    asyncio.run(start())


def test_a_sandbox_claimed_before_its_reply_lives_until_the_claimer_takes_over(
    tagged: Tagged, probe: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a busy machine the session claims the request before its reply (the create and the
    first look) is in, and its own keep-alive starts only after that reply: the thread must
    keep the sandbox alive across both, until told to stop. (It stopped at the claim, and a
    2 s sandbox expired before the kernel's first cell.)"""
    monkeypatch.setenv("E2B_KERNEL_SANDBOX_TIMEOUT", "2")
    config = SessionConfig()
    target = quick_create.quick_target({})
    assert target is not None
    settings = quick_create.create_settings(config)
    body = quick_create.create_body(
        **settings, allow_public_traffic=quick_create.ALLOW_PUBLIC_TRAFFIC
    )
    create_ahead.send(target, body)
    claimed = create_ahead.claim(target, body)  # at once: its reply is not in yet
    assert claimed is not None
    created = claimed.reply.result(timeout=60)
    assert created is not None
    time.sleep(6)  # three of its timeouts, with no refresh of the claimer's
    assert created.sandbox_id in tagged(probe)
    claimed.settle()
    _wait_for(lambda: created.sandbox_id not in tagged(probe), "its timeout once settled")
    for endpoint in create_ahead._endpoints(created):  # as a session's drop does
        endpoint.forget_answers_ahead()


def test_the_sessions_keepalive_takes_over_from_the_thread(
    tagged: Tagged, probe: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("E2B_KERNEL_SANDBOX_TIMEOUT", "3")
    create_early(str(tmp_path / "kernel-1.json"))

    async def run() -> None:
        async with _started_session(SessionConfig()) as session:
            assert _create_ahead_keeps_alive()  # the session has not refreshed yet
            deadline = time.monotonic() + 30
            while _create_ahead_keeps_alive():  # until the session's first refresh
                assert time.monotonic() < deadline, "the thread still refreshes"
                await asyncio.sleep(0.05)
            await asyncio.sleep(7)  # over two of its timeouts: the session's keep-alive alone
            assert session.sandbox_id in await asyncio.to_thread(tagged, probe)

    asyncio.run(run())


def test_a_sandbox_asked_for_under_other_settings_is_deleted(
    tagged: Tagged, probe: str, tmp_path: Path
) -> None:
    create_early(str(tmp_path / "kernel-1.json"))
    _wait_for(lambda: len(tagged(probe)) == 1, "the sandbox asked for")
    (asked_for,) = tagged(probe)
    _wait_for(lambda: _answered_ahead_for() == {asked_for}, "the answers asked for with it")

    # As a config file would say it: the kernel's full configuration wants other metadata.
    config = SessionConfig(metadata={"probe": probe, "from": "a config file"})

    async def start() -> None:
        async with _started_session(config) as session:
            assert session.sandbox_id != asked_for
            running = await asyncio.to_thread(tagged, probe)
            assert running.get(session.sandbox_id) == config.metadata
            await asyncio.to_thread(
                _wait_for,
                lambda: asked_for not in tagged(probe),
                "the unclaimed sandbox deleted",
            )
            assert asked_for not in _answered_ahead_for()

    asyncio.run(start())


def test_a_sandbox_no_session_claims_is_deleted(tagged: Tagged, probe: str, tmp_path: Path) -> None:
    create_early(str(tmp_path / "kernel-1.json"))
    _wait_for(lambda: len(tagged(probe)) == 1, "the sandbox asked for")
    _wait_for(lambda: len(_answered_ahead_for()) == 1, "the answers asked for with it")
    create_ahead.discard()  # as the kernel does once its start ended without claiming it
    _wait_for(lambda: not tagged(probe), "the unclaimed sandbox deleted")
    assert _answered_ahead_for() == set()


@pytest.mark.parametrize(
    "setting",
    [
        {"E2B_KERNEL_TRANSPORT": "execute"},  # that transport creates it through the SDK
        {"E2B_KERNEL_BACKEND": "local"},  # the private service's pool holds it already
        {"E2B_DEBUG": "true"},  # the SDK creates it
        {"E2B_KERNEL_SANDBOX_TIMEOUT": "0"},  # a bad setting: the kernel reports it
    ],
    ids=["execute", "local", "sdk-debug", "bad-setting"],
)
def test_nothing_is_asked_for_where_the_kernel_will_not_create_it_so(
    probe: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    setting: dict[str, str],
) -> None:
    for name, value in setting.items():
        monkeypatch.setenv(name, value)
    # The private backend's service is launched by launch_early, never by create_early.
    create_early(str(tmp_path / "kernel-1.json"))
    assert not create_ahead.pending()


def test_nothing_is_asked_for_by_a_restarted_kernel(probe: str, tmp_path: Path) -> None:
    connection_file = str(tmp_path / "kernel-1.json")
    state_path(connection_file).parent.mkdir(parents=True, exist_ok=True)
    state_path(connection_file).write_text("{}")  # the previous process's hand-over
    create_early(connection_file)
    assert not create_ahead.pending()
