"""`e2b-kernel sandboxes` against a real local service: list, filter, kill, and its errors."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from e2b import Sandbox

from e2b_kernel.local import RunningService, start_in_thread


@pytest.fixture(scope="module")
def service() -> Iterator[RunningService]:
    running = start_in_thread(pool_size=0)
    yield running
    running.stop()


def _command(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("E2B_")}
    return subprocess.run(
        [sys.executable, "-m", "e2b_kernel.cli", "sandboxes", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, **env},
    )


def _create(service: RunningService, **metadata: str) -> Sandbox:
    env = service.sdk_env()
    return Sandbox.create(
        timeout=120,
        metadata=metadata,
        api_key=env["E2B_API_KEY"],
        api_url=env["E2B_API_URL"],
        sandbox_url=env["E2B_SANDBOX_URL"],
    )


def test_lists_filters_and_kills(service: RunningService) -> None:
    env = service.sdk_env()
    mine, other = _create(service, owner="me"), _create(service, owner="you")
    try:
        listed = _command(env=env)
        assert listed.returncode == 0, listed.stderr
        assert mine.sandbox_id in listed.stdout and other.sandbox_id in listed.stdout
        assert "owner=me" in listed.stdout
        filtered = _command("--metadata", "owner=me", env=env)
        assert mine.sandbox_id in filtered.stdout and other.sandbox_id not in filtered.stdout
        killed = _command("--kill", other.sandbox_id, env=env)
        assert killed.returncode == 0, killed.stderr
        assert other.sandbox_id not in _command(env=env).stdout
        again = _command("--kill", other.sandbox_id, env=env)
        assert again.returncode == 1 and f"{other.sandbox_id}: not found" in again.stderr
        every = _command("--metadata", "owner=me", "--kill-all", env=env)
        assert every.returncode == 0 and f"killed {mine.sandbox_id}" in every.stdout
        assert "no sandboxes" in _command(env=env).stdout
    finally:
        for sandbox in (mine, other):
            sandbox.kill()


def test_bad_settings_are_named_with_the_fix(service: RunningService) -> None:
    no_key = _command(env={})
    assert no_key.returncode == 2 and "E2B_API_KEY is not set" in no_key.stderr
    bad_filter = _command("--metadata", "novalue", env=service.sdk_env())
    assert bad_filter.returncode == 2 and "--metadata" in bad_filter.stderr
    wrong_key = _command(env={**service.sdk_env(), "E2B_API_KEY": "e2b_wrong"})
    assert wrong_key.returncode == 1 and "Traceback" not in wrong_key.stderr
    nobody = "http://127.0.0.1:9"  # the discard port: nothing listens
    unreachable = _command(env={**service.sdk_env(), "E2B_API_URL": nobody})
    assert unreachable.returncode == 1, unreachable.stderr
    assert f"cannot reach the E2B API at {nobody}" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr
