"""The seccomp filter every sandbox process runs under, built with libseccomp (pyseccomp).

Modelled on Flatpak's bubblewrap filter: everything is allowed except the calls that reach
the kernel's less-hardened surfaces or could undo the sandbox (mounts, new namespaces, module
and kexec calls, keyrings, bpf, perf, userfaultfd, io_uring, Linux AIO, terminal injection,
socket families other than local, IP and netlink).
bwrap loads it (``--seccomp FD``) after setting up the sandbox, so the agent and everything it
starts inherit it. Only the native architecture is allowed: a 32-bit or x32 syscall kills the
process, so the rules cannot be bypassed through another syscall table.
"""

from __future__ import annotations

import errno
import os
import tempfile

# Namespace flags of clone(2)/unshare(2); CLONE_NEWTIME (0x80) overlaps clone's exit-signal
# byte, and unshare is blocked whole, so it is left out.
_CLONE_NAMESPACES = (
    0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
)  # NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET
_TIOCSTI = 0x5412  # push bytes into a terminal's input: would type into the service's tty
_TIOCLINUX = 0x541C
# personality flags that weaken memory protections (no ASLR, executable data, page zero).
_PERSONALITY_FLAGS = (0x0040000, 0x0100000, 0x0200000, 0x0400000, 0x8000000)
_QUERY_BIT = 0x80000000  # set only in personality(0xffffffff), the harmless query

BLOCKED = (
    # mounts, old and new API
    "mount", "umount", "umount2", "pivot_root", "chroot",
    "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr",
    # namespaces (clone with namespace flags is handled below)
    "unshare", "setns",
    # kernel keyrings, bpf, perf, modules, kexec, reboot, swap, accounting, quotas, logs
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "reboot", "swapon", "swapoff", "acct", "quotactl", "quotactl_fd", "syslog",
    # surfaces with a history of exploits, or handles that bypass path checks
    "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "open_by_handle_at", "name_to_handle_at", "lookup_dcookie", "vm86", "vm86old",
    "nfsservctl", "uselib", "ustat", "sysfs", "_sysctl", "iopl", "ioperm",
)  # fmt: skip
# The socket families a sandbox may open, as Flatpak allows: local sockets, IP (its network
# namespace scopes these) and netlink (which ip and glibc's getaddrinfo use). Others reach
# past the namespace (vsock is host-wide: a sandbox could take the host's ports and reach the
# hypervisor) or are kernel surfaces nobody needs here. EAFNOSUPPORT, as on a kernel without
# the family.
SOCKET_FAMILIES = (1, 2, 10, 16)  # AF_UNIX, AF_INET, AF_INET6, AF_NETLINK
# Linux AIO: its contexts come from one host-wide pool (fs.aio-max-nr) that one sandbox could
# take whole, root's share included. ENOSYS, as on kernels without AIO: libraries fall back
# to threads.
NO_AIO = ("io_setup", "io_destroy", "io_submit", "io_cancel", "io_getevents", "io_pgetevents")


def build_filter() -> bytes:
    """The filter as BPF bytes, ready for bwrap's ``--seccomp``."""
    import pyseccomp as sc  # imported here: only isolated sandboxes need libseccomp

    deny = sc.ERRNO(errno.EPERM)
    rules = sc.SyscallFilter(sc.ALLOW)
    for name in BLOCKED:
        try:
            rules.add_rule(deny, name)
        except (OSError, ValueError):
            continue  # not a syscall on this architecture (e.g. vm86 on x86_64)
    for flag in _bits(_CLONE_NAMESPACES):
        rules.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    for name in NO_AIO:
        try:
            rules.add_rule(sc.ERRNO(errno.ENOSYS), name)
        except (OSError, ValueError):
            continue
    no_family = sc.ERRNO(errno.EAFNOSUPPORT)
    for name in ("socket", "socketpair"):
        for family in range(max(SOCKET_FAMILIES)):
            if family not in SOCKET_FAMILIES:
                rules.add_rule(no_family, name, sc.Arg(0, sc.EQ, family))
        # Compared as 64 bits: a family with high bits set (which the kernel drops) is refused.
        rules.add_rule(no_family, name, sc.Arg(0, sc.GE, max(SOCKET_FAMILIES) + 1))
    # clone3 passes its flags in memory, out of seccomp's sight: ENOSYS makes libc use clone.
    rules.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    for request in (_TIOCSTI, _TIOCLINUX):
        rules.add_rule(deny, "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, request))
    # libseccomp allows one comparison per argument, so each rule tests one flag with the
    # query bit in its mask: personality(0xffffffff) still answers.
    for flag in _PERSONALITY_FLAGS:
        rules.add_rule(deny, "personality", sc.Arg(0, sc.MASKED_EQ, flag | _QUERY_BIT, flag))
    with tempfile.TemporaryFile() as out:
        rules.export_bpf(out)
        out.seek(0)
        return out.read()


def _bits(mask: int) -> list[int]:
    return [1 << i for i in range(64) if mask & (1 << i)]


def filter_fd(bpf: bytes) -> int:
    """A readable fd holding the filter (a sealed-size memfd), for bwrap to read once."""
    fd = os.memfd_create("e2b-seccomp", os.MFD_CLOEXEC)
    os.write(fd, bpf)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
