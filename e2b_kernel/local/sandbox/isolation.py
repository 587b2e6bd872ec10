"""What isolation a sandbox gets: the bubblewrap probe, its command line and cgroup limits.

Two modes exist. ``namespaces`` runs every sandbox in its own user, pid, mount, ipc, uts and
net namespaces with ``bwrap``; ``none``
runs sandbox processes directly on the host and says so everywhere. Cgroups (v1 or v2) add
memory and process-count limits and the freezer used by pause, where the host lets us write
them; where it does not, the description says so instead of pretending.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("e2b_kernel.local")

DEFAULT_MEMORY_MB = 2048
DEFAULT_MAX_PIDS = 256
# A sandbox's TCP buffers may take this fraction of its memory limit again (cgroup v1 only).
TCP_BUFFER_SHARE = 4
DEFAULT_DISK_MB = 2048  # /home/user + /tmp + /root of one sandbox (a tmpfs, so RAM-backed)
# cpu.shares of the group holding every sandbox, against 1024 for each of the service's own
# threads at the top: a busy sandbox cannot starve the service.
SANDBOXES_CPU_SHARES = 512
_V1_ROOT = Path("/sys/fs/cgroup")
_V2_MARKER = _V1_ROOT / "cgroup.controllers"
_GROUP_PARENT = "e2b-kernel"


class IsolationUnavailable(RuntimeError):
    """Sandbox isolation was asked for (the default) but this machine cannot provide it."""


@dataclass(frozen=True)
class Isolation:
    """The isolation policy of one service: mode, limits and whether cgroups can be used."""

    mode: str  # "namespaces" | "none"
    bwrap: str | None
    cgroup_version: int | None  # 1, 2, or None when cgroups are not writable
    memory_mb: int = DEFAULT_MEMORY_MB
    max_pids: int = DEFAULT_MAX_PIDS
    disk_mb: int = DEFAULT_DISK_MB

    def describe(self) -> str:
        """Human description shown on start lines, in logs and in RunningService.isolation."""
        if self.cgroup_version is None:
            limits = "no memory/process limits (cgroups not writable here)"
        else:
            limits = f"memory {self.memory_mb} MiB, {self.max_pids} processes (cgroup v"
            limits += f"{self.cgroup_version})"
        if self.mode == "none":
            return f"NONE (--no-isolation: sandbox code runs on this host as this user); {limits}"
        disk = f"disk {self.disk_mb} MiB" if os.geteuid() == 0 else "no disk cap (not root)"
        return (
            "bubblewrap namespaces (user, pid, mount, ipc, uts, net), unprivileged ids, "
            f"no capabilities, seccomp; {limits}; {disk}"
        )


def resolve_isolation(
    isolation: str,
    *,
    memory_mb: int = DEFAULT_MEMORY_MB,
    max_pids: int = DEFAULT_MAX_PIDS,
    disk_mb: int = DEFAULT_DISK_MB,
) -> Isolation:
    """Turn the requested isolation ("auto", "namespaces" or "none") into a checked policy."""
    if memory_mb < 64 or max_pids < 16 or disk_mb < 16:
        raise ValueError(
            "sandbox limits must be at least 64 MiB of memory, 16 processes and 16 MiB of disk"
        )
    cgroup_version = _writable_cgroup_version()
    limits = {"memory_mb": memory_mb, "max_pids": max_pids, "disk_mb": disk_mb}
    if isolation == "none":
        return Isolation("none", None, cgroup_version, **limits)
    if isolation not in ("auto", "namespaces"):
        raise ValueError(f"unknown isolation {isolation!r}: use 'auto' or 'none'")
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise IsolationUnavailable(
            "sandbox isolation needs bubblewrap, which is not installed: install it "
            "(Debian/Ubuntu: apt-get install bubblewrap) or run without isolation with "
            "--no-isolation (isolation='none')"
        )
    problem = _probe_bwrap(bwrap)
    if problem:
        raise IsolationUnavailable(
            f"bubblewrap cannot create namespaces on this machine ({problem}); allow "
            "unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1) or run "
            "without isolation with --no-isolation (isolation='none')"
        )
    return Isolation("namespaces", bwrap, cgroup_version, **limits)


def _probe_bwrap(bwrap: str) -> str:
    """Run a trivial command in the same namespaces a sandbox uses; return the error or ''."""
    argv = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    argv += ["--unshare-all", "--die-with-parent", "true"]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if done.returncode != 0:
        return done.stderr.decode(errors="replace").strip() or f"exit {done.returncode}"
    return ""


def _writable_cgroup_version() -> int | None:
    """Which cgroup hierarchy we may create groups in: 2, 1, or None."""
    if _V2_MARKER.exists():
        return 2 if os.access(_V1_ROOT, os.W_OK) else None
    wanted = ("memory", "pids", "freezer")
    if all(os.access(_V1_ROOT / name, os.W_OK) for name in wanted):
        return 1
    return None


# Removing a sandbox's groups while killed processes leave them: tries, and seconds between.
REMOVE_TRIES = 80
REMOVE_WAIT = 0.025


class CgroupSet:
    """The cgroups of one sandbox: limits, membership, freezing and teardown."""

    def __init__(self, policy: Isolation, name: str) -> None:
        self.version = policy.cgroup_version
        self._policy = policy
        if self.version == 1:
            self._dirs = {c: _V1_ROOT / c / _GROUP_PARENT / name for c in ("memory", "pids")}
            self._dirs["freezer"] = _V1_ROOT / "freezer" / _GROUP_PARENT / name
            if os.access(_V1_ROOT / "cpu", os.W_OK):
                self._dirs["cpu"] = _V1_ROOT / "cpu" / _GROUP_PARENT / name
            # cpuacct may be its own hierarchy: its usage counter feeds the cpuUsedPct metric.
            if os.access(_V1_ROOT / "cpuacct", os.W_OK) and not _same_mount("cpu", "cpuacct"):
                self._dirs["cpuacct"] = _V1_ROOT / "cpuacct" / _GROUP_PARENT / name
        elif self.version == 2:
            self._dirs = {"unified": _V1_ROOT / _GROUP_PARENT / name}
        else:
            self._dirs = {}

    def create(self) -> None:
        """Create the groups and write the memory and process limits."""
        if self.version == 2:
            parent = _V1_ROOT / _GROUP_PARENT
            parent.mkdir(exist_ok=True)
            with contextlib.suppress(OSError):
                (parent / "cgroup.subtree_control").write_text("+memory +pids +cpu")
            with contextlib.suppress(OSError):  # weight 1..10000, 100 is a normal group's
                (parent / "cpu.weight").write_text(str(SANDBOXES_CPU_SHARES * 100 // 1024))
        for directory in self._dirs.values():
            directory.mkdir(parents=True, exist_ok=True)
        memory = self._policy.memory_mb * 1024 * 1024
        if self.version == 1:
            (self._dirs["memory"] / "memory.limit_in_bytes").write_text(str(memory))
            # cgroup v1 charges socket buffers to no group unless this is set (v2 charges them
            # to memory.max): a sandbox held 604 MiB of TCP buffers under a 256 MiB limit,
            # towards the host's one tcp_mem, past which TCP fails machine-wide.
            tcp = self._dirs["memory"] / "memory.kmem.tcp.limit_in_bytes"
            try:
                tcp.write_text(str(memory // TCP_BUFFER_SHARE))
            except OSError as exc:
                log.warning("no TCP buffer limit for sandboxes (%s): %s", tcp.name, exc)
            (self._dirs["pids"] / "pids.max").write_text(str(self._policy.max_pids))
            if "cpu" in self._dirs:
                shares = self._dirs["cpu"].parent / "cpu.shares"
                with contextlib.suppress(OSError):
                    shares.write_text(str(SANDBOXES_CPU_SHARES))
        elif self.version == 2:
            (self._dirs["unified"] / "memory.max").write_text(str(memory))
            (self._dirs["unified"] / "pids.max").write_text(str(self._policy.max_pids))

    def set_cpu_idle(self, idle: bool) -> None:
        """Let the sandbox's processes run only on CPU time nothing else wants (``cpu.idle``),
        or end that. Where the kernel has no ``cpu.idle`` (before Linux 5.15), nothing."""
        for key in ("cpu", "unified"):
            if key in self._dirs:
                with contextlib.suppress(OSError):
                    (self._dirs[key] / "cpu.idle").write_text("1" if idle else "0")

    def cpu_idle(self) -> bool | None:
        """Whether :meth:`set_cpu_idle` holds the sandbox at idle priority now (None: the
        kernel has no ``cpu.idle``, or the sandbox no cpu group)."""
        for key in ("cpu", "unified"):
            if key in self._dirs:
                with contextlib.suppress(OSError, ValueError):
                    return int((self._dirs[key] / "cpu.idle").read_text()) == 1
        return None

    def memory_used(self) -> int:
        """Bytes charged to the sandbox's memory group (0 when there is none)."""
        for key, name in (("memory", "memory.usage_in_bytes"), ("unified", "memory.current")):
            if key in self._dirs:
                with contextlib.suppress(OSError, ValueError):
                    return int((self._dirs[key] / name).read_text())
        return 0

    def cpu_usage_ns(self) -> int | None:
        """CPU time used by every process of the sandbox so far, in ns (None: not counted)."""
        for key in ("cpuacct", "cpu"):
            if key in self._dirs:
                with contextlib.suppress(OSError, ValueError):
                    return int((self._dirs[key] / "cpuacct.usage").read_text())
        if "unified" in self._dirs:
            with contextlib.suppress(OSError, ValueError):
                for line in (self._dirs["unified"] / "cpu.stat").read_text().splitlines():
                    if line.startswith("usage_usec "):
                        return int(line.split()[1]) * 1000
        return None

    def procs_files(self) -> list[str]:
        """The cgroup.procs files a new process writes its pid to before it execs."""
        return [str(d / "cgroup.procs") for d in self._dirs.values()]

    def adopt(self, pid: int) -> None:
        """Move a running host process into the sandbox's groups (it pays from now on; in a
        frozen group it freezes too, and thaws with the sandbox)."""
        for procs in self.procs_files():
            Path(procs).write_text(str(pid))

    def pids(self) -> list[int]:
        """Every host pid currently in the sandbox's groups."""
        found: set[int] = set()
        for procs in self.procs_files():
            with contextlib.suppress(OSError):
                found.update(int(x) for x in Path(procs).read_text().split())
        return sorted(found)

    def freeze(self, frozen: bool) -> None:
        """Freeze (pause) or thaw (resume) every process of the sandbox."""
        if self.version == 1:
            state = "FROZEN" if frozen else "THAWED"
            (self._dirs["freezer"] / "freezer.state").write_text(state)
        elif self.version == 2:
            (self._dirs["unified"] / "cgroup.freeze").write_text("1" if frozen else "0")
        else:
            raise OSError("pausing needs a writable cgroup freezer")

    def is_frozen(self) -> bool:
        """Whether every process of the groups has stopped. Freezing is asynchronous: for a
        few milliseconds after :meth:`freeze` the processes run on (v1 reads FREEZING), and a
        process that forks or execs meanwhile is caught later. A v1 group that is still
        freezing is asked again, as the kernel's documentation advises."""
        if self.version == 1:
            state_file = self._dirs["freezer"] / "freezer.state"
            if state_file.read_text().strip() == "FROZEN":
                return True
            state_file.write_text("FROZEN")
            return False
        if self.version == 2:
            events = (self._dirs["unified"] / "cgroup.events").read_text().split("\n")
            return "frozen 1" in events
        return False

    def kill_all(self) -> None:
        """SIGKILL every process still in the groups (thawing first so they can die)."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            self.freeze(False)

    def remove(self) -> list[Path]:
        """Remove the (empty) groups; the ones still in use, for the caller to report."""
        in_use = []
        for directory in self._dirs.values():
            try:
                directory.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                in_use.append(directory)
        return in_use

    def remove_or_kill(self) -> list[Path]:
        """:meth:`remove`; what is still in a group that stays in use is SIGKILLed, for the
        caller to try again after ``REMOVE_WAIT`` seconds (up to ``REMOVE_TRIES`` times): a
        process that joined late, or killed just now, leaves it in a moment."""
        in_use = self.remove()
        if in_use:
            self.kill_all()
        return in_use


def _same_mount(first: str, second: str) -> bool:
    """Whether two v1 controllers share one hierarchy (cpu,cpuacct mounted together)."""
    try:
        return os.path.samefile(_V1_ROOT / first, _V1_ROOT / second)
    except OSError:
        return False


# E2B's sandboxes: 1024 open files a process, raisable to 524288 (each in a kernel of its own).
_OPEN_FILES_SOFT = 1024
_OPEN_FILES_HARD = 524288
# A sandbox may hold at most this share of the host's one file table (fs.file-max) through
# RLIMIT_NOFILE x its process limit. The memory cgroup does not bound it: a file costs ~256 B,
# so a 2 GiB sandbox could hold 8 M, where a host without systemd's setting has RAM/10 KiB.
_FILE_TABLE_SHARE = 8


def open_files_limit(max_pids: int) -> tuple[int, int]:
    """(soft, hard) RLIMIT_NOFILE of a sandbox's processes: E2B's, with the hard limit cut to
    what keeps ``max_pids`` processes within 1/8 of the host's file table (never below the
    soft 1024, never above what this process may give)."""
    try:
        file_max = int(Path("/proc/sys/fs/file-max").read_text())
    except (OSError, ValueError):
        file_max = _OPEN_FILES_HARD * max_pids * _FILE_TABLE_SHARE
    share = file_max // (_FILE_TABLE_SHARE * max_pids)
    own_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if own_hard == resource.RLIM_INFINITY:
        own_hard = _OPEN_FILES_HARD
    hard = min(own_hard, _OPEN_FILES_HARD, max(_OPEN_FILES_SOFT, share))
    return min(_OPEN_FILES_SOFT, hard), hard


def sandbox_process_argv(
    procs_files: list[str], argv: list[str], open_files: tuple[int, int]
) -> list[str]:
    """Wrap argv so the process enters the sandbox's cgroups and takes its open-files limit
    before it execs (no preexec_fn): what it and everything it starts inherit."""
    soft, hard = open_files
    script = 'ulimit -Sn "$1" && ulimit -Hn "$2" || exit 125; n=$3; shift 3; '
    script += 'while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; n=$((n-1)); done; '
    script += 'exec "$@"'
    count = str(len(procs_files))
    return ["/bin/sh", "-c", script, "e2bk-join", str(soft), str(hard), count, *procs_files, *argv]
