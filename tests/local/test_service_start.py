"""Starting the service: the CLI's banner, in-process start, and explicit no-isolation mode."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2b import Sandbox, SandboxException
from e2b_code_interpreter import Sandbox as CodeSandbox
from local_helpers import host_pids_with, marker, sandbox_host_dir, wait_for

from e2b_kernel.local import read_banner, start_in_thread, start_subprocess
from e2b_kernel.local.sandbox.bwrap import runtime_root
from e2b_kernel.local.service.lease import GRACE


def test_cli_banner_and_sigterm_kills_sandboxes() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "e2b_kernel.cli", "local", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(4)]
        assert lines[0].startswith("export E2B_API_URL=http://127.0.0.1:")
        url = lines[0].split("=", 1)[1].strip()
        assert lines[1] == f"export E2B_SANDBOX_URL={url}\n"
        assert lines[2].startswith("export E2B_API_KEY=")
        assert lines[3].startswith("# isolation: bubblewrap namespaces")
        key = lines[2].split("=", 1)[1].strip()
        sandbox = Sandbox.create(api_key=key, api_url=url, sandbox_url=url, timeout=60)
        tag = marker()
        sandbox.commands.run(f"exec -a {tag} sleep 600", background=True, timeout=0)
        wait_for(lambda: bool(host_pids_with(tag)), what="the sandbox process")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        wait_for(lambda: not host_pids_with(tag), what="sandboxes to die with the service")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


GLIBC_RESERVED_SIGNALS = (1 << 31) | (1 << 32)


@contextlib.contextmanager
def _cli_service(argv: list[str]) -> Iterator[tuple[int, CodeSandbox]]:
    """Run ``argv`` (which execs ``e2b-kernel local``) until the block ends; yields its pid
    and a sandbox created through it (killed at the end)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        banner = read_banner(proc.stdout)
        assert "isolation" in banner, banner
        sandbox = CodeSandbox.create(
            api_key=banner["E2B_API_KEY"],
            api_url=banner["E2B_API_URL"],
            sandbox_url=banner["E2B_SANDBOX_URL"],
            timeout=60,
        )
        try:
            yield proc.pid, sandbox
        finally:
            sandbox.kill()
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_a_service_started_as_a_background_job_gives_sandboxes_default_signals() -> None:
    """``nohup e2b-kernel local &`` from a script ignores SIGINT, SIGQUIT and SIGHUP, and an
    ignored signal survives every fork and exec below. Sandbox processes start as on E2B:
    a command's Ctrl-C, a ``kill -HUP`` and ``signal.getsignal`` behave as anywhere else."""
    launcher = 'trap "" INT QUIT HUP; exec "$0" -m e2b_kernel.cli local --port 0'
    with _cli_service(["bash", "-c", launcher, sys.executable]) as (_, sandbox):
        ignored = sandbox.commands.run("grep SigIgn /proc/self/status").stdout
        # Bits 31 and 32 are signals 32 and 33, glibc's own (every glibc program sets them;
        # sigaction refuses them, and GNU make's recipes run with them ignored).
        assert int(ignored.split()[1], 16) & ~GLIBC_RESERVED_SIGNALS == 0, ignored
        # The kernel: ipykernel ignores SIGINT only between cells; the rest are the default.
        seen = sandbox.run_code(
            "import signal\n"
            "[signal.getsignal(s) is signal.SIG_DFL for s in (signal.SIGQUIT, signal.SIGHUP)]"
        )
        assert seen.text == "[True, True]", seen


def test_the_service_takes_its_open_files_limit_up_to_the_hard_limit() -> None:
    """Shells and systemd units start programs at a soft 1024 open files, for them to raise:
    every sandbox costs the service files, so it raises its own, and only its own."""
    service = [sys.executable, "-m", "e2b_kernel.cli", "local", "--port", "0", "--pool-size", "0"]
    with _cli_service(["prlimit", "--nofile=512:8192", *service]) as (pid, sandbox):
        limits = Path(f"/proc/{pid}/limits").read_text()
        assert re.search(r"Max open files\s+8192\s+8192", limits), limits
        assert sandbox.commands.run("ulimit -Sn").stdout == "1024\n"  # E2B's, as before


def test_cli_rejects_bad_arguments() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "e2b_kernel.cli", "local", "--port", "70000"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--port must be 0..65535" in done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "e2b_kernel.cli", "local", "--log-level", "loud"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--log-level: invalid choice: 'loud'" in done.stderr


def test_a_port_in_use_is_named_with_the_fix() -> None:
    """uvicorn exits the process when it cannot bind: the CLI says which port and what to do
    (exit status 2, as for other bad arguments), with no traceback, and an in-process start
    raises the same."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "e2b_kernel.cli", "local", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2, done.stderr
        assert f"cannot listen on 127.0.0.1 port {port}" in done.stderr
        assert "--port 0 picks a free one" in done.stderr and "Traceback" not in done.stderr
        with pytest.raises(RuntimeError, match=f"cannot listen on 127.0.0.1 port {port}"):
            start_in_thread(port=port)


def test_start_in_thread_and_stop_kills_sandboxes() -> None:
    service = start_in_thread()
    try:
        assert service.url.startswith("http://127.0.0.1:")
        assert service.sdk_env()["E2B_API_URL"] == service.url
        sandbox = Sandbox.create(timeout=60, **_opts(service.sdk_env()))
        tag = marker()
        sandbox.commands.run(f"exec -a {tag} sleep 600", background=True, timeout=0)
        wait_for(lambda: bool(host_pids_with(tag)), what="the sandbox process")
    finally:
        service.stop()
        service.stop()  # idempotent
    wait_for(lambda: not host_pids_with(tag), what="sandboxes to die with the service")


def test_no_isolation_is_explicit_and_shown() -> None:
    service = start_subprocess(isolation="none")
    try:
        assert service.isolation.startswith("NONE")
        sandbox = Sandbox.create(timeout=60, **_opts(service.sdk_env()))
        assert sandbox.get_info().metadata["e2b_kernel.isolation"] == "none"
        result = sandbox.commands.run("pwd; echo $HOME")
        cwd, home = result.stdout.split()
        assert cwd == home and os.path.isdir(cwd)  # a private host dir stands in for /home/user
        sandbox.files.write("/home/user/x.txt", "mapped")
        assert sandbox.commands.run("cat x.txt").stdout == "mapped"
        # No namespace to filter: rules that would refuse anything are refused, not ignored.
        with pytest.raises(SandboxException, match="does not filter") as refused:
            Sandbox.create(
                timeout=60, network={"deny_out": ["10.0.0.0/8"]}, **_opts(service.sdk_env())
            )
        assert "400" in str(refused.value)
        with pytest.raises(SandboxException, match="does not filter"):
            sandbox.update_network({"deny_out": ["10.0.0.0/8"]})
        sandbox.kill()
        assert not os.path.exists(cwd)
    finally:
        service.stop()


def test_unknown_isolation_value_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown isolation"):
        start_in_thread(isolation="chroot")


def _opts(env: dict[str, str]) -> dict[str, str]:
    return {
        "api_key": env["E2B_API_KEY"],
        "api_url": env["E2B_API_URL"],
        "sandbox_url": env["E2B_SANDBOX_URL"],
    }


def test_leftovers_of_a_killed_service_are_swept() -> None:
    """What a dead service left in its state dir goes; nothing that a file there names does
    (an older layout removed the folder named in a ``socket_dir`` file)."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = runtime_root() / f"svc-{dead.pid}-test"
    outside = Path(tempfile.mkdtemp(prefix="e2bk-"))
    (stale / "zzzzzzzzzzzzzzzzzzzz" / "home").mkdir(parents=True)
    (stale / "zzzzzzzzzzzzzzzzzzzz" / "socket_dir").write_text(str(outside))
    service = start_in_thread()
    try:
        assert not stale.exists()
        assert outside.is_dir()
    finally:
        service.stop()
        outside.rmdir()


def test_service_removes_its_state_when_stopped() -> None:
    from e2b_kernel.local.service import STATE_ROOT

    before = set(STATE_ROOT.glob(f"svc-{os.getpid()}-*"))
    service = start_in_thread()
    sandbox = Sandbox.create(timeout=60, **_opts(service.sdk_env()))
    [state] = set(STATE_ROOT.glob(f"svc-{os.getpid()}-*")) - before
    host_dir = sandbox_host_dir(sandbox.sandbox_id)
    assert host_dir is not None and host_dir.parent == state
    assert (host_dir / "disk" / "home").is_dir()
    service.stop()
    assert not state.exists()


def test_a_stopped_service_leaves_no_mount_behind() -> None:
    """Its sandboxes' capped disks and its staged copy of the Python are all unmounted, and
    the host's temp folder keeps its mode (the service makes its own folders passable)."""
    tmp_mode = os.stat(tempfile.gettempdir()).st_mode
    service = start_subprocess()
    sandbox = Sandbox.create(timeout=60, **_opts(service.sdk_env()))
    assert sandbox.commands.run("echo ok").stdout == "ok\n"
    mounts_before = Path("/proc/self/mounts").read_text()
    assert f"svc-{service.pid}-" in mounts_before  # the disk: the check below can see mounts
    service.stop()
    mounts = Path("/proc/self/mounts").read_text()
    assert f"svc-{service.pid}-" not in mounts
    assert f"stage-{service.pid}" not in mounts
    assert os.stat(tempfile.gettempdir()).st_mode == tmp_mode


def test_start_subprocess_without_bubblewrap_names_the_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from e2b_kernel.local import IsolationUnavailable

    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap anywhere on PATH
    with pytest.raises(IsolationUnavailable, match=r"install it .*--no-isolation"):
        start_subprocess()


def test_an_internal_error_is_a_500_and_the_service_keeps_serving() -> None:
    from e2b.exceptions import SandboxException

    service = start_in_thread()
    try:
        control = service._core.app.control  # type: ignore[attr-defined]

        async def broken(request: object) -> None:
            raise RuntimeError("a bug")

        control.get_info = broken
        sandbox = Sandbox.create(timeout=60, **_opts(service.sdk_env()))
        with pytest.raises(SandboxException, match="500: internal error"):
            sandbox.get_info()
        assert sandbox.commands.run("echo alive").stdout == "alive\n"
        sandbox.kill()
    finally:
        service.stop()


_ORPHANING_PARENT = """
import sys
from e2b import Sandbox, SandboxException
from e2b_code_interpreter import Sandbox as CodeSandbox
from e2b_kernel.local import start_subprocess
service = start_subprocess()
env = service.sdk_env()
sandbox = Sandbox.create(
    api_key=env["E2B_API_KEY"], api_url=env["E2B_API_URL"], sandbox_url=env["E2B_SANDBOX_URL"]
)
sandbox.commands.run("exec -a " + sys.argv[1] + " sleep 600", background=True, timeout=0)
print("ready", flush=True)
sys.stdin.read()  # wait to be killed
"""


def test_service_and_sandboxes_die_when_the_parent_is_killed() -> None:
    tag = marker()
    parent = subprocess.Popen(
        [sys.executable, "-c", _ORPHANING_PARENT, tag],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        assert parent.stdout.readline() == "ready\n"
        wait_for(lambda: bool(host_pids_with(tag)), what="the sandbox process")
        parent.kill()  # SIGKILL: no cleanup code runs in the parent
        parent.wait()
        wait_for(lambda: not host_pids_with(tag), what="the orphaned sandbox to die")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_a_lease_service_whose_launcher_died_before_its_banner_stops_cleanly(
    tmp_path: Path,
) -> None:
    """A kernel can die while its private service starts (before it reads the banner): the
    service then stops once the lease is free, as usual, instead of crashing mid-start."""
    lease = tmp_path / "lease.lock"
    lease.write_text("")
    proc = subprocess.Popen(
        [sys.executable, "-m", "e2b_kernel.local", "--port", "0", "--lease", str(lease),
         "--pool-size", "1", "--no-pool-refill"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the launcher is gone: nobody will read the banner
    try:
        code = proc.wait(timeout=GRACE + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read().decode()
    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert not lease.exists()  # removed by the service on its way out


def test_its_connections_have_nagle_off() -> None:
    """asyncio turns Nagle's algorithm off only on connections of an IPPROTO_TCP listening
    socket; with it on, each small request waits up to 40 ms for an acknowledgement (every
    cell's round trip went from 9 to 48 ms when a hand-made listening socket lacked it)."""
    service = start_in_thread(pool_size=0)
    try:
        listening = service._core.server.servers[0].sockets  # type: ignore[attr-defined]
        assert listening and all(sock.proto == socket.IPPROTO_TCP for sock in listening)
    finally:
        service.stop()
