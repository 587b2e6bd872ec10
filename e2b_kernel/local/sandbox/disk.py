"""The sandbox's disk: one tmpfs, capped, holding its /home/user, /tmp and /root.

Mounted by the service (host root) in the service's own mount namespace, under the sandbox's
0700 state dir; bwrap binds its subdirectories. Writes past the cap fail with ENOSPC inside,
and ``df`` there shows the cap. A service that is not host root cannot mount: the dirs are then
plain directories of the host disk, without a cap (``describe`` says so).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

DEFAULT_DISK_MB = 2048
# Inodes per MiB of the cap: one per 4 KiB. tmpfs charges the user extended attributes that
# sandbox code sets (file metadata) to its inode space, 1 KiB an inode, and counts them in no
# block: without a bound they took 196 MiB on a 16 MiB disk. So they take at most a quarter
# of the cap, and the disk holds four times the files that ext4's default ratio gives it.
INODES_PER_MB = 256
_MNT_DETACH = 2
_MS_NOSUID, _MS_NODEV = 2, 4
# The running process's own symbols include libc's; find_library("c") would run
# `ldconfig -p` (tens of milliseconds) on every service start.
_libc = ctypes.CDLL(None, use_errno=True)


def can_cap_disk() -> bool:
    """Whether this service may mount a tmpfs (it runs as host root)."""
    return os.geteuid() == 0


def mount_disk(path: Path, size_mb: int) -> bool:
    """Mount a tmpfs of size_mb at path (an empty dir); False when not possible here.

    One mount(2) call, synchronous on purpose: with a ``mount`` process awaited, a start
    cancelled meanwhile (the service stopping as its pool filled) went on to clean up before
    the mount was made, and the mount outlived the service."""
    if not can_cap_disk():
        return False
    options = f"size={size_mb}m,nr_inodes={size_mb * INODES_PER_MB},mode=0755"
    done = _libc.mount(
        b"e2b-sandbox-disk", os.fsencode(path), b"tmpfs", _MS_NOSUID | _MS_NODEV, options.encode()
    )
    if done != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"cannot mount the sandbox disk: {os.strerror(code)}", str(path))
    return True


def unmount_disk(path: Path) -> None:
    """Detach the tmpfs (its memory is freed once nothing uses it); no error if not mounted."""
    if _libc.umount2(os.fsencode(path), _MNT_DETACH) != 0:
        code = ctypes.get_errno()
        if code not in (22, 2):  # EINVAL: not a mount point; ENOENT: already removed
            raise OSError(code, os.strerror(code), str(path))
