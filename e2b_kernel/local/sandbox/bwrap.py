"""The bubblewrap command line of a sandbox: namespaces, ids, capabilities and the host view.

bwrap runs as an unprivileged host uid ``U`` (one range of 65536 ids per sandbox, never host
root). It creates the user namespace and blocks; the service, as host root, maps inside ids
``0..65535`` to ``U..U+65535`` and lets it go on. The agent then runs as root *inside* with
only the capabilities it needs, all scoped to that user namespace, with ``no_new_privs`` and
the seccomp filter. Sources the uid cannot reach (``/root/.pyenv``, the service's 0700 state
dir) are opened by the service and bound by fd.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..host_dirs import user_folder, user_root
from . import network, staging

# Shared by this user's local services (for root: every isolated one, since only root can
# map uid ranges): uid-range locks, staged mounts and each service's state dir.
RUNTIME_ROOT = user_root() / "local"
AGENT_PARENT = "/opt/e2b"  # the agent package is bound at /opt/e2b/e2b_agent
AGENT_PACKAGE = "e2b_agent"
SOCKETS_INSIDE = "/run/e2b"  # kernel connection files (read-only) and sockets/ (the kernels')
UID_BASE = 1_000_000
UID_RANGE = 65536
_SLOTS = 4096
# Inside root keeps these, in its own user namespace only: SETUID/SETGID/SETPCAP to start
# commands as another user with nothing, KILL to signal them, CHOWN/DAC_OVERRIDE/FOWNER for
# file operations the agent performs on the sandbox's own files.
AGENT_CAPS = (
    "CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP", "CAP_KILL",
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER",
)  # fmt: skip
_PACKAGE_DIRS = ("site-packages", "dist-packages")
# Of the host's sysfs, the CPU topology only (glibc's CPU count, BLAS and NUMA libraries read
# it); the rest shows the host's interfaces, MAC addresses, traffic counters and disks.
_SYS_DIRS = ("devices/system/cpu", "devices/system/node")
_MASKED_FILES = ("/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-")
_MASKED_DIRS = ("/etc/ssh", "/etc/ssl/private", "/etc/sudoers.d")
PASSWD = (
    "root:x:0:0:root:/root:/bin/bash\n"
    "user:x:1000:1000:user:/home/user:/bin/bash\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
)
GROUP = "root:x:0:\nuser:x:1000:\nnogroup:x:65534:\n"


def runtime_root() -> Path:
    """:data:`RUNTIME_ROOT`, made and checked to be this user's alone (``host_dirs``), and
    passable as its parent is (bwrap reaches a sandbox's disk by path)."""
    return user_folder(RUNTIME_ROOT.name, 0o711)


class UidRange:
    """A host uid range held for one sandbox, with a lock file so services never share one."""

    def __init__(self, lock_dir: Path) -> None:
        lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        start = random.randrange(_SLOTS)  # spread services out; the lock decides
        for step in range(_SLOTS):
            slot = (start + step) % _SLOTS
            fd = os.open(lock_dir / f"{slot}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self._fd = fd
            self.base = UID_BASE + slot * UID_RANGE
            return
        raise OSError("no free host uid range for a sandbox")

    def host(self, inside: int) -> int:
        return self.base + inside

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)

    def id_map(self) -> str:
        return f"0 {self.base} {UID_RANGE}\n"


@dataclass
class Command:
    """An argv plus the fds it needs; the caller passes and then closes them."""

    argv: list[str]
    fds: list[int] = field(default_factory=list)

    def fd(self, fd: int) -> str:
        self.fds.append(fd)
        return str(fd)

    def bind(self, source: str | Path, dest: str, *, read_only: bool = True) -> None:
        """Bind by an O_PATH fd opened here, as host root, so bwrap's uid needs no access."""
        fd = os.open(source, os.O_PATH | os.O_CLOEXEC)
        self.argv += ["--ro-bind-fd" if read_only else "--bind-fd", self.fd(fd), dest]

    def data(self, text: str, dest: str) -> None:
        fd = os.memfd_create("e2b-data", os.MFD_CLOEXEC)
        os.write(fd, text.encode())
        os.lseek(fd, 0, os.SEEK_SET)
        # bwrap makes data files 0600 (root's only): passwd, group and hostname are public.
        self.argv += ["--perms", "0644", "--ro-bind-data", self.fd(fd), dest]

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()


def python_dirs() -> list[str]:
    """The service's Python (prefixes and import path), outermost dirs only, not under /usr."""
    found = {sys.prefix, sys.base_prefix, sys.exec_prefix, *sys.path[1:]}
    # Only the Python itself: never a project folder on sys.path (an editable install's
    # source tree, like /work/main) nor a whole home directory.
    real = sorted({os.path.realpath(p) for p in found if p and os.path.isdir(p)})
    real = [p for p in real if _is_python_dir(p) and p != "/usr" and not p.startswith("/usr/")]
    ordered: list[str] = []
    for path in real:
        if not any(path.startswith(parent + "/") for parent in ordered):
            ordered.append(path)
    return ordered


def _is_python_dir(path: str) -> bool:
    """The interpreter's prefixes and package dirs; not source trees added to sys.path."""
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    inside = any(path.startswith(prefix + "/") for prefix in prefixes)
    return path in prefixes or inside or os.path.basename(path) in _PACKAGE_DIRS


def host_view(
    cmd: Command,
    *,
    disk: Path,
    sockets: Path,
    kernel_sockets: Path,
    agent_dir: Path,
    stage_root: Path,
    shm_bytes: int,
) -> None:
    """Mounts: a read-only runtime, generated identity files, the sandbox's own dirs."""
    for top in ("/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"):
        if os.path.islink(top):
            cmd.argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            cmd.bind(top, top)
    cmd.bind("/usr", "/usr")
    cmd.bind("/etc", "/etc")
    cmd.data(PASSWD, "/etc/passwd")
    cmd.data(GROUP, "/etc/group")
    cmd.data("sandbox\n", "/etc/hostname")
    # The host's may name a resolver on its own loopback; this one answers once the sandbox
    # has a network, which may be started later (update_network).
    cmd.data(network.RESOLV_CONF, "/etc/resolv.conf")
    for path in _MASKED_FILES:
        if os.path.exists(path):
            cmd.argv += ["--ro-bind", "/dev/null", path]
    for path in _MASKED_DIRS:
        if os.path.isdir(path):
            cmd.argv += ["--perms", "0555", "--tmpfs", path, "--remount-ro", path]
    # The sandbox's own dirs first: a Python under /root is then bound over its /root.
    cmd.argv += ["--perms", "0755", "--dir", "/home"]  # bwrap would make it 0700
    cmd.bind(disk / "home", "/home/user", read_only=False)
    cmd.bind(disk / "tmp", "/tmp", read_only=False)
    cmd.bind(disk / "root", "/root", read_only=False)
    made = {"/", "/home", "/tmp", "/root", "/usr", "/etc"}
    for path in python_dirs():
        # Let uid 1000 through the mount points' parents (/work, /root/.pyenv...), as on the
        # host; the parents hold nothing else.
        for parent in reversed(Path(path).parents):
            if str(parent) not in made:
                made.add(str(parent))
                cmd.argv += ["--perms", "0755", "--dir", str(parent)]
        cmd.bind(staging.source_for(path, stage_root), path)
    cmd.bind(staging.source_for(str(agent_dir), stage_root), f"{AGENT_PARENT}/{AGENT_PACKAGE}")
    for folder in ("/sys", "/sys/devices", "/sys/devices/system"):
        cmd.argv += ["--perms", "0755", "--dir", folder]  # bwrap would make them 0700
    for name in _SYS_DIRS:
        if os.path.isdir(f"/sys/{name}"):
            cmd.bind(f"/sys/{name}", f"/sys/{name}")
    cmd.argv += ["--proc", "/proc", "--dev", "/dev"]
    # POSIX shared memory and semaphores (multiprocessing's locks and queues, joblib, PyTorch's
    # DataLoader) need a /dev/shm anyone may write, as in E2B's VM (whose tmpfs is also half
    # the memory); its pages count against the sandbox's memory limit. /dev itself read-only:
    # root in the sandbox had a writable tmpfs there, outside the disk cap.
    cmd.argv += ["--perms", "1777", "--size", str(shm_bytes), "--tmpfs", "/dev/shm"]
    cmd.argv += ["--remount-ro", "/dev"]
    cmd.argv += ["--perms", "0755", "--dir", "/run"]  # bwrap would make it 0700
    # Connection files read-only (only the service writes them); the kernels' sockets rw.
    cmd.bind(sockets, SOCKETS_INSIDE)
    cmd.bind(kernel_sockets, f"{SOCKETS_INSIDE}/{kernel_sockets.name}", read_only=False)
    cmd.argv += ["--dir", "/var/tmp", "--symlink", "/run", "/var/run"]
    cmd.argv += ["--remount-ro", "/"]


def sandbox_command(
    bwrap: str,
    *,
    uid_range: UidRange,
    disk: Path,
    sockets: Path,
    kernel_sockets: Path,
    agent_dir: Path,
    seccomp_fd: int,
    stage_root: Path,
    shm_bytes: int,
) -> tuple[Command, dict[str, int]]:
    """The full command (setpriv to uid U, then bwrap) and the fds the service keeps:
    ``block`` (write a byte once the id maps are written) and ``info`` (bwrap's JSON)."""
    uid = str(uid_range.base)
    cmd = Command(["setpriv", "--reuid", uid, "--regid", uid, "--clear-groups"])
    cmd.argv += ["--inh-caps=-all", "--no-new-privs", "--", bwrap]
    block_read, block_write = os.pipe2(os.O_CLOEXEC)
    info_read, info_write = os.pipe2(os.O_CLOEXEC)
    cmd.argv += ["--unshare-user", "--userns-block-fd", cmd.fd(block_read)]
    cmd.argv += ["--info-fd", cmd.fd(info_write)]
    cmd.argv += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net"]
    # (--disable-userns cannot be combined with --userns-block-fd: seccomp blocks unshare.)
    cmd.argv += ["--unshare-cgroup-try"]
    cmd.argv += ["--uid", "0", "--gid", "0", "--hostname", "sandbox"]
    cmd.argv += ["--cap-drop", "ALL"]
    for cap in AGENT_CAPS:
        cmd.argv += ["--cap-add", cap]
    cmd.argv += ["--seccomp", cmd.fd(seccomp_fd)]
    cmd.argv += ["--die-with-parent", "--new-session"]
    host_view(
        cmd,
        disk=disk,
        sockets=sockets,
        kernel_sockets=kernel_sockets,
        agent_dir=agent_dir,
        stage_root=stage_root,
        shm_bytes=shm_bytes,
    )
    cmd.argv += ["--chdir", "/", "--setenv", "PATH", "/usr/bin:/bin", "--"]
    return cmd, {"block": block_write, "info": info_read}
