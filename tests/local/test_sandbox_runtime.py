"""The sandbox runtime (LocalSandbox, interface B) used directly, without HTTP."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from e2b_kernel.local.isolation import Isolation, resolve_isolation
from e2b_kernel.local.sandbox import LocalSandbox


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


def test_spawn_env_cwd_pid_and_kill(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("E2B_API_KEY", "must-not-leak")

    async def run() -> None:
        sandbox = LocalSandbox("runtimetest1", policy=resolve_isolation("auto"), state_dir=tmp_path)
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
        host = await sandbox.host_pid(proc)
        assert host in sandbox.live_pids()
        await sandbox.kill()
        assert sandbox.killed.is_set()
        assert sorted(cleaned) == ["async", "sync"]
        assert await proc.wait() != 0
        await _until(lambda: _state(host) in ("Z", "gone"), "the sandbox process to die")
        assert not sandbox.home_dir.exists() and not sandbox.socket_dir.exists()
        with pytest.raises(ProcessLookupError):
            await sandbox.spawn(["true"], env={})

    asyncio.run(run())


def test_pause_without_cgroups_stops_every_process(tmp_path: Path) -> None:
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed")
    policy = Isolation("namespaces", shutil.which("bwrap"), None)
    assert "cgroups not writable" in policy.describe()

    async def run() -> None:
        sandbox = LocalSandbox("runtimetest2", policy=policy, state_dir=tmp_path)
        await sandbox.start()
        try:
            proc = await sandbox.spawn(["sleep", "600"], env=sandbox.base_env())
            host = await sandbox.host_pid(proc)
            assert host in sandbox.live_pids()
            sandbox.pause()
            await _until(lambda: _state(host) == "T", "the process to stop")
            sandbox.resume()
            await _until(lambda: _state(host) == "S", "the process to continue")
            # The host-side nsenter helper mirrors the stop; it must run again too.
            await _until(lambda: _state(proc.pid) == "S", "the nsenter helper to continue")
        finally:
            await sandbox.kill()

    asyncio.run(run())


def test_a_failed_start_leaves_nothing_behind(tmp_path: Path) -> None:
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed")
    # A bwrap that cannot run: the init never reports ready.
    policy = Isolation("namespaces", "/bin/false", None)

    async def run() -> None:
        sandbox = LocalSandbox("runtimetest3", policy=policy, state_dir=tmp_path)
        with pytest.raises(Exception, match="did not start"):
            await sandbox.start()
        assert sandbox.killed.is_set()
        assert not sandbox.home_dir.exists() and not sandbox.socket_dir.exists()

    asyncio.run(run())
