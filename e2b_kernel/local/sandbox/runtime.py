"""The sandbox runtime: one process tree per sandbox, in namespaces when isolation is on.

A namespaced sandbox is a ``bwrap`` init (pid 1 of its own pid namespace) holding the
sandbox's mounts; every sandbox process is started by ``nsenter`` into that init's namespaces,
so killing pid 1 makes the kernel kill the whole tree. Cgroups, when writable, hold every
sandbox process (including the host-side ``nsenter`` helpers) for limits, freezing and a final
sweep. With isolation ``none`` processes run on the host in their own sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from ..isolation import CgroupSet, Isolation, bwrap_argv, join_cgroups_argv
from ..paths import SandboxPaths

log = logging.getLogger("e2b_kernel.local")

SANDBOX_HOME = "/home/user"
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The sandbox's Python is the service's own environment, mounted read-only. Packages a user
# installs (`%pip install`, `pip install` in a command) go to a folder in the writable home
# instead, first on the import path, so they survive a kernel restart like on E2B.
_USER_PACKAGES = f".local/lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"
_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0
_CD_SCRIPT = r'eval "echo \$\$ >&$2; exec $2>&-"; cd -- "$1" || exit 1; shift 2; exec "$@"'


class SandboxKilled(Exception):
    """Raised into a response stream when its sandbox is killed (aborts the connection)."""


class SandboxStartError(RuntimeError):
    """The sandbox's init process could not be started."""


class LocalSandbox:
    """One sandbox: its directories, its init process, its cgroups and its processes."""

    def __init__(
        self,
        sandbox_id: str,
        *,
        policy: Isolation,
        state_dir: Path,
        envs: dict[str, str] | None = None,
        allow_internet: bool = False,
    ) -> None:
        self.sandbox_id = sandbox_id
        self.envs = dict(envs or {})
        self.allow_internet = allow_internet
        self.policy = policy
        self.isolated = policy.mode == "namespaces"
        self._root = state_dir / sandbox_id
        self.home_dir = self._root / "home"
        self.tmp_dir = self._root / "tmp"
        # Short, so that ipc socket paths inside stay well under the 108-byte limit.
        self.socket_dir = Path(tempfile.mkdtemp(prefix="e2bk-", dir="/tmp"))
        self.python = sys.executable
        self.paths = SandboxPaths(self.home_dir, self.tmp_dir, self.socket_dir)
        self.killed = asyncio.Event()
        self.paused = False
        self.cgroups = CgroupSet(policy, f"{sandbox_id}")
        self._init: asyncio.subprocess.Process | None = None
        self._init_pid: int | None = None
        self._kill_callbacks: list[Callable[[], Awaitable[None] | None]] = []
        self._children: set[asyncio.subprocess.Process] = set()
        self._sandbox_pids: dict[int, int] = {}
        self._teardown: asyncio.Future[None] | None = None

    async def start(self) -> None:
        """Create the directories and cgroups and start the sandbox's init process."""
        try:
            self.home_dir.mkdir(parents=True)
            self._prepare_home()
            self.tmp_dir.mkdir()
            # Lets a later service remove the socket dir if this one dies without cleaning up.
            (self._root / "socket_dir").write_text(str(self.socket_dir))
            self.tmp_dir.chmod(0o1777)
            self.socket_dir.chmod(0o700)
            if self.cgroups.version is not None:
                self.cgroups.create()
            if self.isolated:
                await asyncio.wait_for(self._start_init(), _START_TIMEOUT)
        except BaseException:
            await self.kill()  # leave no directories, cgroups or processes behind
            raise

    def _prepare_home(self) -> None:
        """Create the user package folder and a profile that puts the sandbox's Python first.

        The folder must exist before Python starts: a missing sys.path entry is cached as
        absent, and a package installed there later would not import until a restart.
        Debian's /etc/profile resets PATH for login shells (``commands.run`` uses ``bash -l``),
        which would hide the sandbox's python and pip; E2B's template also ships a profile.
        """
        (self.home_dir / _USER_PACKAGES).mkdir(parents=True)
        bin_dir = os.path.dirname(self.python)
        (self.home_dir / ".profile").write_text(
            "# Written by the local E2B service: the sandbox's Python comes first.\n"
            f'export PATH="{bin_dir}:$PATH"\n'
            '[ -f "$HOME/.bashrc" ] && . "$HOME/.bashrc"\n'
        )

    async def _start_init(self) -> None:
        read_fd, write_fd = os.pipe()
        argv = bwrap_argv(
            self.policy,
            home=self.home_dir,
            tmp=self.tmp_dir,
            socket_dir=self.socket_dir,
            allow_internet=self.allow_internet,
        )
        argv += ["--info-fd", str(write_fd), "/bin/sh", "-c", "echo ready; exec sleep infinity"]
        try:
            self._init = await asyncio.create_subprocess_exec(
                *join_cgroups_argv(self.cgroups.procs_files(), argv),
                pass_fds=(write_fd,),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={"PATH": _SYSTEM_PATH},
            )
        finally:
            os.close(write_fd)
        try:
            info = await asyncio.to_thread(_read_json_fd, read_fd)
        finally:
            os.close(read_fd)
        assert self._init.stdout is not None and self._init.stderr is not None
        ready = await self._init.stdout.readline()
        if info is None or ready.strip() != b"ready":
            err = (await self._init.stderr.read()).decode(errors="replace").strip()
            raise SandboxStartError(f"the sandbox init did not start: {err or 'no output'}")
        self._init_pid = int(info["child-pid"])

    def base_env(self) -> dict[str, str]:
        """The environment every sandbox process starts from; never the service's own."""
        home = SANDBOX_HOME if self.isolated else str(self.home_dir)
        path = f"{os.path.dirname(self.python)}:{_SYSTEM_PATH}"
        env = {"PATH": path, "HOME": home, "USER": "user", "LOGNAME": "user"}
        env.update({"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "SHELL": "/bin/bash"})
        packages = f"{home}/{_USER_PACKAGES}"
        env.update({"PYTHONPATH": packages, "PIP_TARGET": packages, "PIP_UPGRADE": "1"})
        env.update(self.envs)
        return env

    async def spawn(
        self,
        argv: list[str],
        *,
        env: dict[str, str],
        cwd: str = SANDBOX_HOME,
        stdin: int | None = asyncio.subprocess.DEVNULL,
        stdout: int | None = asyncio.subprocess.PIPE,
        stderr: int | None = asyncio.subprocess.PIPE,
    ) -> asyncio.subprocess.Process:
        """Run argv inside the sandbox with exactly env; it dies with the sandbox."""
        if self.killed.is_set():
            raise ProcessLookupError(f"sandbox {self.sandbox_id} was killed")
        pid_read = pid_write = -1
        if self.isolated:
            assert self._init_pid is not None
            # The in-sandbox shell reports its pid ($$ inside the pid namespace) on a pipe, then
            # changes directory there (nsenter's --wd would resolve on the host). bash, because
            # dash only redirects fds 0-9.
            pid_read, pid_write = os.pipe()
            full = ["nsenter", "-t", str(self._init_pid), "-U", "-m", "-p", "-n", "-i", "-u"]
            full += ["-r", "--preserve-credentials", "--", "/bin/bash", "-c", _CD_SCRIPT]
            full += ["e2bk-cd", cwd, str(pid_write), *argv]
            host_cwd = "/"
        else:
            # Without namespaces nothing else ties the process to the service's life.
            setpriv = shutil.which("setpriv")
            full = [setpriv, "--pdeathsig", "KILL", "--", *argv] if setpriv else list(argv)
            host_cwd = str(self.paths.to_host(cwd, follow=True).host)
        try:
            proc = await asyncio.create_subprocess_exec(
                *join_cgroups_argv(self.cgroups.procs_files(), full),
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                env=env,
                cwd=host_cwd,
                start_new_session=True,
                pass_fds=(pid_write,) if pid_write >= 0 else (),
            )
        except BaseException:
            if pid_read >= 0:
                os.close(pid_read)
            raise
        finally:
            if pid_write >= 0:
                os.close(pid_write)
        if pid_read >= 0:
            try:
                raw = await asyncio.to_thread(os.read, pid_read, 64)
            finally:
                os.close(pid_read)
            if raw.strip().isdigit():
                self._sandbox_pids[proc.pid] = int(raw)
        self._children = {p for p in self._children if p.returncode is None}
        self._children.add(proc)
        return proc

    def sandbox_pid(self, proc: asyncio.subprocess.Process) -> int:
        """The pid a spawn() result has inside the sandbox (its own pid without isolation)."""
        return self._sandbox_pids.get(proc.pid, proc.pid)

    async def host_pid(self, proc: asyncio.subprocess.Process) -> int:
        """Host pid of the real process behind a spawn() result (nsenter forks it)."""
        if not self.isolated:
            return proc.pid
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        for _ in range(500):
            with contextlib.suppress(OSError):
                found = children.read_text().split()
                if found:
                    return int(found[0])
            if proc.returncode is not None:
                break
            await asyncio.sleep(0.01)
        raise ProcessLookupError("the sandbox process exited before it could be found")

    def on_kill(self, callback: Callable[[], Awaitable[None] | None]) -> None:
        """Register cleanup to run when the sandbox is killed or expires."""
        self._kill_callbacks.append(callback)

    def pause(self) -> None:
        """Freeze every process of the sandbox (E2B pause keeps memory state)."""
        if self.cgroups.version is not None:
            self.cgroups.freeze(True)
        elif self.isolated:
            self._signal_all(signal.SIGSTOP)  # no freezer here: stop each process instead
        else:
            raise OSError("pausing without isolation needs a writable cgroup freezer")
        self.paused = True

    def resume(self) -> None:
        """Thaw a paused sandbox."""
        if self.cgroups.version is not None:
            self.cgroups.freeze(False)
        else:
            self._signal_all(signal.SIGCONT)
            # nsenter mirrors its child's stop onto itself; it lives outside the namespace.
            for proc in self._children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)
        self.paused = False

    def _signal_all(self, signum: int) -> None:
        for pid in self.live_pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)

    async def kill(self) -> None:
        """Kill the whole process tree, then remove the sandbox's directories; idempotent.

        Every caller waits for the one teardown; cancelling a caller does not interrupt it.
        """
        if self._teardown is None:
            self.killed.set()
            self._teardown = asyncio.ensure_future(self._kill())
        await asyncio.shield(self._teardown)

    async def _kill(self) -> None:
        if self.paused:
            with contextlib.suppress(OSError):
                self.resume()
        for callback in self._kill_callbacks:
            try:
                result = callback()
                if inspect.isawaitable(result):
                    await asyncio.wait_for(result, 5.0)
            except Exception:
                log.exception("cleanup of sandbox %s failed", self.sandbox_id)
        await self._stop_processes()
        self.cgroups.remove()
        shutil.rmtree(self._root, ignore_errors=True)
        shutil.rmtree(self.socket_dir, ignore_errors=True)

    async def _stop_processes(self) -> None:
        helpers = [p for p in self._children if p.returncode is None]
        if self._init is not None:
            helpers.append(self._init)

        async def helpers_exited() -> None:
            waits = [asyncio.ensure_future(p.wait()) for p in helpers]
            if waits:
                await asyncio.wait(waits, timeout=_STOP_TIMEOUT)
            for wait in waits:
                wait.cancel()

        if self._init_pid is not None:
            # pid 1 of the namespace ignores SIGTERM; SIGKILL makes the kernel kill the rest.
            # The host-side helpers (outer bwrap, nsenter) then reap their children and exit;
            # killing them first would leave zombies for the host's init to collect.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._init_pid, signal.SIGKILL)
            await helpers_exited()
        for proc in self._children:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
        self.cgroups.kill_all()
        await helpers_exited()
        for _ in range(200):
            if not self.cgroups.pids():
                return
            self.cgroups.kill_all()
            await asyncio.sleep(0.025)  # the kernel needs a moment to tear processes down
        log.error("sandbox %s: processes survived kill: %s", self.sandbox_id, self.cgroups.pids())

    def live_pids(self) -> list[int]:
        """Host pids of the sandbox's processes (its cgroups, else its pid namespace)."""
        if self.cgroups.version is not None or self._init_pid is None:
            return self.cgroups.pids()
        try:
            namespace = os.readlink(f"/proc/{self._init_pid}/ns/pid")
        except OSError:
            return []
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != self._init_pid:
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/ns/pid") == namespace:
                        found.append(int(entry))
        return found

    @property
    def init_pid(self) -> int | None:
        """Host pid of the namespace's pid 1 (None without isolation)."""
        return self._init_pid


def _read_json_fd(fd: int) -> dict | None:
    """Read bwrap's --info-fd JSON object; None if the fd closes before it is complete."""
    data = b""
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            return None
        data += chunk
        try:
            return json.loads(data)
        except ValueError:
            continue  # not complete yet
