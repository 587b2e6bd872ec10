"""The sandbox runtime (LocalSandbox, interface B) used directly, without HTTP."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2b_kernel.local.sandbox import LocalSandbox
from e2b_kernel.local.sandbox.bwrap import runtime_root
from e2b_kernel.local.sandbox.isolation import Isolation, resolve_isolation


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A service-like state dir: bwrap's unprivileged uid must be able to pass through it."""
    path = Path(tempfile.mkdtemp(prefix="test-", dir=runtime_root()))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _state(pid: int) -> str:
    """The process state letter (R, S, T, Z...) or "gone"."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("State:"):
                    return line.split()[1]
    except FileNotFoundError:
        pass
    return "gone"


async def _until(condition, what: str) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def test_spawn_env_cwd_pid_and_kill(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("E2B_API_KEY", "must-not-leak")

    async def run() -> None:
        policy = resolve_isolation("auto")
        sandbox = LocalSandbox("runtimetest1", policy=policy, state_dir=state_dir)
        await sandbox.start()
        cleaned: list[str] = []
        sandbox.on_kill(lambda: cleaned.append("sync"))

        async def async_cleanup() -> None:
            cleaned.append("async")

        sandbox.on_kill(async_cleanup)
        env = {**sandbox.base_env(), "EXTRA": "1"}
        proc = await sandbox.spawn(
            ["/bin/sh", "-c", "echo $$; pwd; env | sort; exec sleep 600"], env=env, cwd="/tmp"
        )
        assert proc.stdout is not None
        pid_line = await proc.stdout.readline()
        assert int(pid_line) == sandbox.sandbox_pid(proc)
        assert await proc.stdout.readline() == b"/tmp\n"
        seen_env = []
        while b"=" in (line := await proc.stdout.readline()):
            seen_env.append(line.decode().split("=", 1)[0])
            if line.startswith(b"USER="):
                break
        assert "E2B_API_KEY" not in seen_env and "EXTRA" in seen_env
        live = sandbox.live_pids()
        assert live
        await sandbox.kill()
        assert sandbox.killed.is_set()
        assert sorted(cleaned) == ["async", "sync"]
        assert await proc.wait() != 0
        await _until(
            lambda: all(_state(host) in ("Z", "gone") for host in live),
            "the sandbox processes to die",
        )
        assert not sandbox.home_dir.exists() and not sandbox.socket_dir.exists()
        with pytest.raises(ProcessLookupError):
            await sandbox.spawn(["true"], env={})

    asyncio.run(run())


def test_pause_without_cgroups_stops_every_process(state_dir: Path) -> None:
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed")
    policy = Isolation("namespaces", shutil.which("bwrap"), None)
    assert "cgroups not writable" in policy.describe()

    async def run() -> None:
        sandbox = LocalSandbox("runtimetest2", policy=policy, state_dir=state_dir)
        await sandbox.start()
        try:
            await sandbox.spawn(["sleep", "600"], env=sandbox.base_env())
            live = sandbox.live_pids()  # the agent and the command
            assert len(live) >= 2
            await sandbox.pause()  # returns once they have stopped
            assert all(_state(p) == "T" for p in live)
            sandbox.resume()
            await _until(lambda: all(_state(p) == "S" for p in live), "the processes to go on")
        finally:
            await sandbox.kill()

    asyncio.run(run())


def test_a_failed_start_leaves_nothing_behind(state_dir: Path) -> None:
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed")
    # A bwrap that cannot run: the init never reports ready.
    policy = Isolation("namespaces", "/bin/false", None)

    async def run() -> None:
        sandbox = LocalSandbox("runtimetest3", policy=policy, state_dir=state_dir)
        with pytest.raises(Exception, match="did not start"):
            await sandbox.start()
        assert sandbox.killed.is_set()
        assert not sandbox.home_dir.exists() and not sandbox.socket_dir.exists()

    asyncio.run(run())
