"""The host directories this user's kernels and local services share, made safely.

They live in the temp folder, where any local user can create a name first. A directory
another user made would let them swap in symlinks and plant files that a service running as
root then trusts (a stale-state sweep, bind mounts, uid-range locks). So each user has a
folder of their own, ``e2b-kernel-<uid>``, and it is used only when it is a real directory
that this user owns and no one else can write, as tmux checks its socket folder.

Only the standard library: the kernel's early launch (``backends/early.py``) imports this,
the one module of the service that the rest of the package imports besides its start
functions (the kernel's leases and the service's state share the folder).
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

__all__ = ["UnsafeHostDir", "owned_dir", "user_folder", "user_root"]


class UnsafeHostDir(RuntimeError):
    """A shared directory exists but is not safely this user's."""


def user_root() -> Path:
    """This user's folder for kernel leases and local service state (not yet made)."""
    return Path(tempfile.gettempdir()) / f"e2b-kernel-{os.geteuid()}"


def owned_dir(path: Path, mode: int) -> Path:
    """``path`` made if missing, with ``mode`` (the umask would trim it: every user must pass
    through the service's folders to reach a sandbox's disk); raises :class:`UnsafeHostDir`
    unless it is a directory (not a symlink) of this user that no other user could write."""
    try:
        path.mkdir(mode=mode)
    except FileExistsError:
        pass
    info = path.lstat()
    fix = f"Remove {path} (as root if need be), or set TMPDIR to a directory of your own."
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeHostDir(f"{path} is not a directory (a symlink or a file is there). {fix}")
    if info.st_uid != os.geteuid():
        raise UnsafeHostDir(
            f"{path} belongs to uid {info.st_uid}, not to this user (uid {os.geteuid()}): "
            f"another user may have made it to take over what e2b-kernel keeps there. {fix}"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeHostDir(
            f"{path} can be written by other users (mode {stat.S_IMODE(info.st_mode):o}). {fix}"
        )
    if stat.S_IMODE(info.st_mode) != mode:
        os.chmod(path, mode, follow_symlinks=False)
    return path


def user_folder(name: str, mode: int) -> Path:
    """``name`` inside :func:`user_root`, both made and checked (``owned_dir``). The user
    folder lets every user through (0711) but list nothing: bwrap runs as a sandbox's uid and
    reaches its disk by path."""
    return owned_dir(owned_dir(user_root(), 0o711) / name, mode)
