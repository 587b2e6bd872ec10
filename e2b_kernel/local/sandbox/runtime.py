"""The sandbox runtime: one agent per sandbox, the parent of every sandbox process.

With isolation, bubblewrap starts exactly one process, the agent, in new user, pid, mount,
ipc, uts and net namespaces, as an unprivileged host uid range, with few (namespace-scoped)
capabilities, ``no_new_privs`` and a seccomp filter. Commands, ptys and kernels are started
by the agent (see ``local/agent``), so nothing enters the sandbox from outside. When the agent
exits, bwrap's init exits and the kernel kills the pid namespace: the sandbox is gone, and the
service notices because it watches the bwrap process. Cgroups (when writable) hold bwrap and
everything under it for memory, process-count and cpu limits and for pausing.

With isolation ``none`` the agent is a plain child of the service on the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path

from . import bwrap, completion_seed, disk, egress, network, seccomp, staging
from .agent_client import AgentClient
from .isolation import (
    REMOVE_TRIES,
    REMOVE_WAIT,
    CgroupSet,
    Isolation,
    open_files_limit,
    sandbox_process_argv,
)
from .jupyter import JupyterServer
from .paths import SandboxPaths
from .process import DEVNULL, PIPE, AgentProcess
from .sandbox_output import DIAGNOSTICS_RATE, ReadRate, quoted
from .subprocesses import HELPER_ENV, SYSTEM_PATH, start_process

log = logging.getLogger("e2b_kernel.local")

SANDBOX_HOME = "/home/user"
ID_FILE = "sandbox-id"  # in the sandbox's host dir: which sandbox it is (root only, 0600)
# The sandbox's Python is the service's own environment, mounted read-only. Packages a user
# installs (`%pip install`, `pip install` in a command) go to a folder in the writable home
# instead, first on the import path, so they survive a kernel restart like on E2B.
_USER_PACKAGES = f".local/lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"
_START_TIMEOUT = 30.0
# E2B sets these in every sandbox ("Default environment variables" in its docs), for commands
# and the code interpreter, and writes each to a dot file in /run/e2b. The local service has
# one team; its id has the shape of E2B's team ids.
LOCAL_TEAM_ID = "00000000-0000-0000-0000-000000000000"
_STOP_TIMEOUT = 10.0
# Pausing: how long every process may take to stop, and how often we look (a few ms usually).
PAUSE_TIMEOUT = 10.0
_PAUSE_POLL = 0.002
AGENT_DIR = Path(__file__).resolve().parent.parent / "agent"
# Runs the agent package by path, with no site-packages and no environment influence (-I -S).
_BOOT = "import sys, runpy; sys.path.insert(0, {parent!r}); runpy.run_module({name!r}, "
_BOOT += "run_name='__main__', alter_sys=True)"


class SandboxKilled(Exception):
    """Raised into a response stream when its sandbox is killed (aborts the connection)."""


class SandboxStartError(RuntimeError):
    """The sandbox's agent could not be started."""


class LocalSandbox:
    """One sandbox: its directories, its agent, its cgroups and its processes."""

    def __init__(
        self,
        sandbox_id: str,
        *,
        policy: Isolation,
        state_dir: Path,
        envs: dict[str, str] | None = None,
        disk_mb: int | None = None,
    ) -> None:
        self.sandbox_id = sandbox_id
        self.envs = dict(envs or {})
        # E2B's default env vars; E2B_TEMPLATE_ID comes with name_template() at create.
        self.e2b_env = {
            "E2B_SANDBOX": "true",
            "E2B_SANDBOX_ID": sandbox_id,
            "E2B_TEAM_ID": LOCAL_TEAM_ID,
        }
        self.policy = policy
        self.isolated = policy.mode == "namespaces"
        self.disk_mb = disk_mb or policy.disk_mb
        # On the host the sandbox goes by a random name of its own, never by its id: its
        # dir shows in every process's /proc/<pid>/mountinfo, its cgroups and its processes'
        # command lines to every host user, and the id alone opens its ports (as on E2B, where
        # it is not published). The id is kept in a root-only file (ID_FILE) for operators.
        self.host_name = secrets.token_hex(10)
        self._root = state_dir / self.host_name
        self.disk_dir = self._root / "disk"
        self.home_dir = self.disk_dir / "home"
        self.tmp_dir = self.disk_dir / "tmp"
        # Kernel connection files, written by the service only (root-owned, read-only inside),
        # and sockets/, where the kernels bind their ipc sockets and the Jupyter Server keeps
        # its runtime files. Writable inside, so with isolation it is on the capped disk (at
        # /run/e2b/sockets inside): on the host's disk it would let code fill the host's.
        self.socket_dir = self._root / "run"
        self.kernel_socket_dir = (self.disk_dir if self.isolated else self.socket_dir) / "sockets"
        self.sandbox_socket_dir = bwrap.SOCKETS_INSIDE if self.isolated else str(self.socket_dir)
        self.agent = AgentClient(str(self._root / "agent.sock"))
        self.python = sys.executable
        self.paths = SandboxPaths(
            self.home_dir, self.tmp_dir, None if self.isolated else self.socket_dir
        )
        self.killed = asyncio.Event()
        self.paused = False
        self.disk_capped = False
        self.cgroups = CgroupSet(policy, self.host_name)
        self._uids: bwrap.UidRange | None = None
        self._agent_proc: asyncio.subprocess.Process | None = None
        self._init_pid: int | None = None
        self._stderr_tail: deque[bytes] = deque(maxlen=20)
        self._network: network.Network | None = None
        self._egress: egress.EgressTable | None = None
        self._network_lock = asyncio.Lock()  # one rule swap or network start at a time
        self._kill_callbacks: list[Callable[[], Awaitable[None] | None]] = []
        self._gone_callbacks: list[Callable[[], None]] = []
        self._children: set[AgentProcess] = set()
        self._teardown: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # The Jupyter Server on port 8888 (sandbox/jupyter.py); None without isolation.
        self.jupyter: JupyterServer | None = None
        # Kernelspecs the service writes for that server (read-only inside, on JUPYTER_PATH).
        self.kernelspec_dir = self.socket_dir / "jupyter"

    # ----- start -----

    async def start(self, *, in_background: bool = False) -> None:
        """Create the disk, dirs and cgroups and start the agent; ``in_background``: on CPU
        time nothing else wants, until :meth:`to_foreground` (a warm pool's refill)."""
        try:
            self._root.mkdir(mode=0o700, parents=True)
            id_file = os.open(self._root / ID_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with open(id_file, "w") as written:
                written.write(self.sandbox_id)
            if self.isolated:
                self._uids = bwrap.UidRange(bwrap.runtime_root() / "uid-slots")
                # bwrap runs as the sandbox's uid and must reach the disk and run dirs by path:
                # the dirs above let anyone through but list nothing (0711); the sandbox's own
                # dir lets only the sandbox's group through (0710), so no other host user
                # reaches its files, whose path every /proc/<pid>/mountinfo shows.
                for path in (bwrap.RUNTIME_ROOT, self._root.parent):
                    if path == bwrap.RUNTIME_ROOT or path.is_relative_to(bwrap.RUNTIME_ROOT):
                        path.chmod(0o711)
                os.chown(self._root, -1, self._uids.base)
                self._root.chmod(0o710)
                if not staging.reachable_by_anyone(str(self._root)):
                    raise SandboxStartError(
                        f"the state dir {self._root.parent} must be under a path every user "
                        f"can pass through (such as {bwrap.RUNTIME_ROOT})"
                    )
            self.disk_dir.mkdir(mode=0o755)
            if self.isolated:
                self.disk_capped = disk.mount_disk(self.disk_dir, self.disk_mb)
            self._make_dirs()
            if self.cgroups.version is not None:
                self.cgroups.create()
                if in_background:  # a new group is at the normal share already
                    self.cgroups.set_cpu_idle(True)
            await asyncio.wait_for(self._start_agent(), _START_TIMEOUT)
            await self.start_jupyter()
        except BaseException:
            await self.kill()  # leave no directories, cgroups or processes behind
            raise

    def to_foreground(self) -> None:
        """Give the sandbox its normal share of the CPU (see :meth:`start`)."""
        self.cgroups.set_cpu_idle(False)  # nothing where it has no cpu group

    async def start_jupyter(self) -> None:
        """Start (again, after its processes were dropped) the sandbox's Jupyter Server.

        In the background: the caller does not wait for it to listen (``jupyter.ready()``
        does). None without isolation, where it would take the host's port 8888.
        """
        if not self.isolated:
            return
        self.jupyter = JupyterServer(
            self,
            runtime_dir=f"{self.sandbox_socket_dir}/{self.kernel_socket_dir.name}",
            kernel_path=f"{self.sandbox_socket_dir}/{self.kernelspec_dir.name}",
        )
        await self.jupyter.start()

    async def set_egress(self, rules: egress.EgressRules, *, reach: bool) -> None:
        """Install (or replace) the allowOut/denyOut rules in the sandbox's network namespace;
        ``reach`` says whether anything may go out at all (internet, or an allowed entry).

        The namespace has only its loopback until something may go out: the user-mode
        network is started then, at create or at a later update, after the rules and the
        host fence are in place, so they hold from its first packet.
        """
        if not self.isolated:
            if rules.filters:
                raise egress.EgressError(
                    "without isolation the sandbox uses the host's network, which the local"
                    " service does not filter"
                )
            return
        assert self._init_pid is not None
        async with self._network_lock:
            if self._network is None and not reach:
                return  # no network, and none needed: nothing goes out, as asked
            if self._egress is None:
                self._egress = egress.EgressTable(f"/proc/{self._init_pid}/ns/net", self.sandbox_id)
            await self._egress.apply(rules)
            if self._network is None:
                self._network = await network.connect(self._init_pid, self.cgroups.adopt)
                if self.killed.is_set():  # killed meanwhile: its teardown missed this one
                    await self._network.close()

    async def start_beside(
        self, argv: list[str], pass_fds: tuple[int, ...]
    ) -> tuple[asyncio.subprocess.Process, Path, int]:
        """Start a host process that is charged to this sandbox: it joins the sandbox's
        cgroups before it execs (its memory and pids count against the sandbox's limits, and
        the sandbox's kill ends it), outside its namespaces. Returns it, a folder for its
        sockets that only it and the service enter, and the host uid (and gid) it must drop
        to: the sandbox user's, which owns the sockets the sandbox's kernels bind (-1 without
        isolation). stdin, stdout and stderr are pipes."""
        helper_uid = self._owner(1000)
        folder = self._beside_dir
        folder.mkdir(mode=0o700, exist_ok=True)
        os.chown(folder, helper_uid, helper_uid)
        process = await self._start_in_cgroups(argv, pass_fds, stdio=PIPE)
        return process, folder, helper_uid

    @property
    def _beside_dir(self) -> Path:
        """start_beside's folder: outside the state dir, which the helper's uid cannot enter."""
        return self._root.parent / f"{self.host_name}.beside"

    def _owner(self, inside_uid: int) -> int:
        """The host uid of an inside uid (-1: leave as is, without isolation)."""
        return self._uids.host(inside_uid) if self._uids is not None else -1

    def _make_dirs(self) -> None:
        user, root = self._owner(1000), self._owner(0)
        dirs = [
            (self.home_dir, 0o755, user),
            (self.tmp_dir, 0o1777, root),
            (self.disk_dir / "root", 0o711, root),  # uid 1000 passes to a Python in /root
            (self.socket_dir, 0o755, -1),
            (self.kernel_socket_dir, 0o700, user),
            (self.kernelspec_dir, 0o755, -1),
        ]
        mount_point = self.socket_dir / self.kernel_socket_dir.name
        if mount_point != self.kernel_socket_dir:  # where bwrap binds it, inside
            dirs.append((mount_point, 0o755, -1))
        for path, mode, owner in dirs:
            path.mkdir()
            path.chmod(mode)  # not through mkdir's mode, which the umask trims
            os.chown(path, owner, owner)
        self._write_e2b_files()
        self._prepare_home(user)

    def name_template(self, template_id: str) -> None:
        """Say which template the sandbox was created from (E2B_TEMPLATE_ID), for the
        processes it starts from now on and in /run/e2b; a pooled sandbox learns it at create
        (its running kernels are told by the caller)."""
        self.e2b_env["E2B_TEMPLATE_ID"] = template_id
        if self.socket_dir.is_dir():
            self._write_e2b_files()

    def _write_e2b_files(self) -> None:
        """/run/e2b/.E2B_SANDBOX and the others, as E2B writes them (read-only inside)."""
        if not self.isolated:
            return  # /run/e2b is the sandbox's own only with isolation
        for name, value in self.e2b_env.items():
            target = self.socket_dir / f".{name}"
            staged = target.with_name(f"{target.name}.new")
            staged.write_text(value)
            staged.chmod(0o644)
            staged.replace(target)

    def _prepare_home(self, owner: int) -> None:
        """Create the user package folder and a profile that puts the sandbox's Python first,
        and copy in a warm completion cache (``completion_seed``) when the service has one.

        The folder must exist before Python starts: a missing sys.path entry is cached as
        absent, and a package installed there later would not import until a restart.
        Debian's /etc/profile resets PATH for login shells (``commands.run`` uses ``bash -l``),
        which would hide the sandbox's python and pip; E2B's template also ships a profile.
        """
        packages = self.home_dir / _USER_PACKAGES
        packages.mkdir(parents=True)
        bin_dir = os.path.dirname(self.python)
        profile = self.home_dir / ".profile"
        profile.write_text(
            "# Written by the local E2B service: the sandbox's Python comes first.\n"
            f'export PATH="{bin_dir}:$PATH"\n'
            # An if, not `[ ... ] && ...`: the profile's last status is that of every empty
            # command (`bash -l -c ""` must exit 0, as on E2B, with or without a .bashrc).
            'if [ -f "$HOME/.bashrc" ]; then . "$HOME/.bashrc"; fi\n'
        )
        # Still only the service writes here: the sandbox does not run yet.
        for path in [profile, *packages.parents]:
            if path == self.home_dir:
                break
            os.chown(path, owner, owner)
        os.chown(packages, owner, owner)
        completion_seed.copy_into(self.home_dir, owner)

    async def _start_agent(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(self.agent.socket_path)
            os.chmod(self.agent.socket_path, 0o600)  # the service's alone (connect needs w)
            listener.listen(128)
            if self.isolated:
                await self._start_bwrap(listener.fileno())
            else:
                await self._start_host_agent(listener.fileno())
        finally:
            # Only the agent may hold it: once the agent is gone, connecting is refused at once.
            listener.close()
        try:
            await self.agent.request("ping")
        except OSError as exc:
            raise SandboxStartError(
                f"the sandbox agent did not start: {exc}; {self._diagnostics()}"
            ) from None
        self._watch(self._watch_agent())

    def _agent_argv(self, listen_fd: int, parent: str, name: str, flag: str) -> list[str]:
        boot = _BOOT.format(parent=parent, name=name)
        return [self.python, "-I", "-S", "-c", boot, "--listen-fd", str(listen_fd), flag]

    async def _start_host_agent(self, listen_fd: int) -> None:
        argv = self._agent_argv(listen_fd, str(AGENT_DIR.parent), AGENT_DIR.name, "--pdeathsig")
        # The agent maps the sandbox's paths onto the host dirs for file ops (FILES helper).
        argv += ["--path-map", f"{SANDBOX_HOME}={self.home_dir}"]
        argv += ["--path-map", f"/tmp={self.tmp_dir}"]
        setpriv = shutil.which("setpriv")
        if setpriv:  # without namespaces nothing else ties the agent to the service's life
            argv = [setpriv, "--pdeathsig", "KILL", "--", *argv]
        self._agent_proc = await self._exec(argv, (listen_fd,))

    async def _start_bwrap(self, listen_fd: int) -> None:
        assert self.policy.bwrap is not None and self._uids is not None
        seccomp_fd = seccomp.filter_fd(seccomp.build_filter())
        command, keep = bwrap.sandbox_command(
            self.policy.bwrap,
            uid_range=self._uids,
            disk=self.disk_dir,
            sockets=self.socket_dir,
            kernel_sockets=self.kernel_socket_dir,
            agent_dir=AGENT_DIR,
            seccomp_fd=seccomp_fd,
            stage_root=bwrap.RUNTIME_ROOT,
            shm_bytes=self.policy.memory_mb << 19,  # half the memory limit
        )
        agent = self._agent_argv(
            listen_fd, bwrap.AGENT_PARENT, bwrap.AGENT_PACKAGE, "--switch-user"
        )
        try:
            try:
                self._agent_proc = await self._exec(command.argv + agent, (*command.fds, listen_fd))
            finally:
                command.close()
            info = await asyncio.to_thread(_read_json_fd, keep["info"])
            if info is None:
                await self._agent_proc.wait()
                raise SandboxStartError(f"the sandbox did not start: {self._diagnostics()}")
            self._init_pid = int(info["child-pid"])
            # Inside ids 0..65535 become the sandbox's own host range, never host root.
            for name in ("uid_map", "gid_map"):
                with open(f"/proc/{self._init_pid}/{name}", "w") as id_map:
                    id_map.write(self._uids.id_map())
            os.write(keep["block"], b"1")
        finally:
            for fd in keep.values():
                os.close(fd)

    async def _exec(self, argv: list[str], fds: tuple[int, ...]) -> asyncio.subprocess.Process:
        proc = await self._start_in_cgroups(argv, fds, stdio=DEVNULL)
        assert proc.stderr is not None
        self._watch(self._drain(proc.stderr))
        return proc

    async def _start_in_cgroups(
        self, argv: list[str], fds: tuple[int, ...], *, stdio: int
    ) -> asyncio.subprocess.Process:
        """A host process that joins the sandbox's cgroups before it execs; ``stdio`` for its
        stdin and stdout, a pipe for its stderr."""
        return await start_process(
            *sandbox_process_argv(
                self.cgroups.procs_files(), argv, open_files_limit(self.policy.max_pids)
            ),
            pass_fds=fds,
            stdin=stdio,
            stdout=stdio,
            stderr=PIPE,
            env=HELPER_ENV,
            cwd="/",
            start_new_session=True,
        )

    async def _drain(self, stream: asyncio.StreamReader) -> None:
        # Root in the sandbox can write to this pipe too (see sandbox_output): read at a rate.
        rate = ReadRate(DIAGNOSTICS_RATE)
        while chunk := await stream.read(65536):
            self._stderr_tail.append(chunk[-2000:])
            await rate.took(len(chunk))

    def _diagnostics(self) -> str:
        text = b"".join(self._stderr_tail).decode(errors="replace").strip()
        return quoted(text[-1500:]) or "no output"

    def _watch(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch_agent(self) -> None:
        """The agent's end is the sandbox's end: report it gone, then clean up."""
        assert self._agent_proc is not None
        code = await self._agent_proc.wait()
        if self.killed.is_set():
            return
        log.warning(
            "sandbox %s: its agent exited (%s); the sandbox is gone. %s",
            self.sandbox_id, code, self._diagnostics(),
        )  # fmt: skip
        self.killed.set()
        for callback in self._gone_callbacks:
            try:
                callback()
            except Exception:
                log.exception("sandbox %s: a gone callback failed", self.sandbox_id)
        await self.kill()

    # ----- processes -----

    def base_env(self, user: str = "user") -> dict[str, str]:
        """The environment every sandbox process starts from; never the service's own."""
        home = SANDBOX_HOME if self.isolated else str(self.home_dir)
        if user == "root" and self.isolated:
            home = "/root"
        path = f"{os.path.dirname(self.python)}:{SYSTEM_PATH}"
        name = "root" if user == "root" else "user"
        env = {"PATH": path, "HOME": home, "USER": name, "LOGNAME": name}
        env.update({"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "SHELL": "/bin/bash"})
        packages = f"{SANDBOX_HOME if self.isolated else self.home_dir}/{_USER_PACKAGES}"
        env.update({"PYTHONPATH": packages, "PIP_TARGET": packages, "PIP_UPGRADE": "1"})
        env.update(self.e2b_env)
        env.update(self.envs)
        return env

    async def spawn(
        self,
        argv: list[str],
        *,
        env: dict[str, str],
        cwd: str = SANDBOX_HOME,
        stdin: int | None = DEVNULL,
        stdout: int | None = PIPE,
        stderr: int | None = PIPE,
        user: str = "user",
        pty: bool = False,
    ) -> AgentProcess:
        """Run argv inside the sandbox (through the agent) with exactly env; it dies with it.

        ``pty`` says stdin is a terminal slave that becomes the controlling tty.
        """
        if self.killed.is_set():
            raise ProcessLookupError(f"sandbox {self.sandbox_id} was killed")
        if not self.isolated:
            cwd = str(self.paths.to_host(cwd, follow=True).host)
        proc = AgentProcess(self.agent)
        request = {"argv": list(argv), "env": env, "cwd": cwd, "user": user, "pty": pty}
        await proc.start(request, stdin, stdout, stderr)
        self._children = {p for p in self._children if p.returncode is None}
        self._children.add(proc)
        return proc

    def sandbox_pid(self, proc: AgentProcess) -> int:
        """The pid a spawn() result has inside the sandbox."""
        return proc.pid

    # ----- lifecycle -----

    def on_kill(self, callback: Callable[[], Awaitable[None] | None]) -> None:
        """Register cleanup to run when the sandbox is killed or expires."""
        self._kill_callbacks.append(callback)

    def on_gone(self, callback: Callable[[], None]) -> None:
        """Register a call for when the sandbox ends by itself (its agent died)."""
        self._gone_callbacks.append(callback)

    async def pause(self) -> None:
        """Freeze every process of the sandbox (E2B pause keeps memory state); return once
        all have stopped, so that nothing in the sandbox runs after the pause is answered.
        OSError (and the sandbox runs on) if they cannot be stopped within PAUSE_TIMEOUT."""
        if self.cgroups.version is not None:
            self.cgroups.freeze(True)
            stopped = self.cgroups.is_frozen
        elif self.isolated:
            self._signal_all(signal.SIGSTOP)  # no freezer here: stop each process instead
            stopped = self._all_stopped
        else:
            raise OSError("pausing without isolation needs a writable cgroup freezer")
        self.paused = True  # from now on: a second pause meanwhile is told it is paused
        deadline = asyncio.get_running_loop().time() + PAUSE_TIMEOUT
        while True:
            if not self.paused or self.killed.is_set():
                return  # resumed or killed meanwhile (asking v1 again would freeze it anew)
            if stopped():
                return
            if asyncio.get_running_loop().time() > deadline:
                self.resume()
                raise OSError(f"its processes did not all stop within {PAUSE_TIMEOUT:.0f} s")
            await asyncio.sleep(_PAUSE_POLL)

    def _all_stopped(self) -> bool:
        """Whether every live process is stopped (state T) or gone."""
        for pid in self.live_pids():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{pid}/stat").read_text()
                if stat.rpartition(")")[2].split()[0] not in ("T", "t", "Z", "X"):
                    return False
        return True

    def resume(self) -> None:
        """Thaw a paused sandbox."""
        if self.cgroups.version is not None:
            self.cgroups.freeze(False)
        else:
            self._signal_all(signal.SIGCONT)
        self.paused = False

    def _signal_all(self, signum: int) -> None:
        for pid in self.live_pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)

    async def kill(self) -> None:
        """Kill the whole process tree, then remove the sandbox's disk and dirs; idempotent.

        Every caller waits for the one teardown; cancelling a caller does not interrupt it.
        """
        if self._teardown is None:
            self.killed.set()
            self._teardown = asyncio.ensure_future(self._kill())
        await asyncio.shield(self._teardown)

    async def _kill(self) -> None:
        try:
            await self._end_processes()
        finally:
            # Even when that was cut short (an error, or the loop ending under it): a
            # mounted disk would outlive the service, on the host.
            self._remove_disk_and_dirs()
        # Not when cut short: its processes may live on with these uids, which another
        # sandbox must not get.
        if self._uids is not None:
            self._uids.release()
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()

    async def _end_processes(self) -> None:
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
        if self._egress is not None:
            await self._egress.close()
        if self._network is not None:
            await self._network.close()
        await self._remove_cgroups()

    def _remove_disk_and_dirs(self) -> None:
        try:
            disk.unmount_disk(self.disk_dir)
        except OSError:
            log.exception("sandbox %s: its disk could not be unmounted", self.sandbox_id)
        shutil.rmtree(self._root, ignore_errors=True)
        shutil.rmtree(self._beside_dir, ignore_errors=True)

    async def _stop_processes(self) -> None:
        if self._init_pid is not None:
            # pid 1 of the namespace: SIGKILL makes the kernel kill everything in it.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._init_pid, signal.SIGKILL)
        elif self._agent_proc is not None and self._agent_proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._agent_proc.kill()
        if not self.isolated:
            # Each command leads its own session on the host: end the groups, too.
            for proc in self._children:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
        # Before waiting for bubblewrap: its child, killed before it could tie itself to
        # bubblewrap's life (a start cancelled early), would hold its stderr pipe open, and
        # the wait would last the whole timeout.
        self.cgroups.kill_all()
        if self._agent_proc is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._agent_proc.wait(), _STOP_TIMEOUT)
        self.cgroups.kill_all()
        for _ in range(200):
            if not self.cgroups.pids():
                return
            self.cgroups.kill_all()
            await asyncio.sleep(0.025)  # the kernel needs a moment to tear processes down
        log.error("sandbox %s: processes survived kill: %s", self.sandbox_id, self.cgroups.pids())

    async def _remove_cgroups(self) -> None:
        """Remove the sandbox's groups once they are empty.

        A process whose start was cancelled by this kill (``start_process`` kills it once it
        exists) can still join a group between the emptying above and the removal: that
        group's removal fails, and once the process is gone nothing would remove it (an empty
        group left for good, about one service stop in thirty while its pool started a
        sandbox). So the groups are emptied and removed again until they are gone."""
        for _ in range(REMOVE_TRIES):
            in_use = self.cgroups.remove_or_kill()
            if not in_use:
                return
            await asyncio.sleep(REMOVE_WAIT)
        log.error("sandbox %s: its cgroups stay in use: %s", self.sandbox_id, in_use)

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

    @property
    def agent_pid(self) -> int | None:
        """Host pid of the process the service started (bwrap, or the host agent)."""
        return self._agent_proc.pid if self._agent_proc is not None else None

    @property
    def network_pid(self) -> int | None:
        """Host pid of its slirp4netns (in its cgroups, as it pays for it), if it has one."""
        return self._network.pid if self._network is not None else None


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
