"""Read-only bind mounts that let bwrap's unprivileged uid reach the service's Python.

bwrap runs as the sandbox's own unprivileged host uid, and bind sources are looked up by path
as that uid, so a Python under a 0700 directory (``/root/.pyenv``) cannot be bound directly.
The service, as host root, bind-mounts such a directory read-only once under a traversable
staging dir, and bwrap binds the staged copy at the original path inside. Only ever unmounted
(never deleted recursively), so a cleanup can never reach the Python itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import stat
import threading
from pathlib import Path

_MS_RDONLY, _MS_REMOUNT, _MS_BIND, _MS_REC = 1, 32, 4096, 16384
_MNT_DETACH = 2
# The running process's own symbols include libc's; find_library("c") would run
# `ldconfig -p` (tens of milliseconds) on every service start.
_libc = ctypes.CDLL(None, use_errno=True)
_lock = threading.Lock()
_staged: dict[str, str] = {}


def reachable_by_anyone(path: str) -> bool:
    """Whether every directory above path lets other users through (o+x)."""
    current = os.path.dirname(path)
    while True:
        if not os.stat(current).st_mode & stat.S_IXOTH:
            return False
        if current == "/":
            return True
        current = os.path.dirname(current)


def source_for(path: str, stage_root: Path) -> str:
    """The path bwrap should bind for ``path``: itself, or a read-only staged mount of it."""
    if reachable_by_anyone(path):
        return path
    with _lock:
        if path in _staged:
            return _staged[path]
        _sweep(stage_root)
        own = stage_root / f"stage-{os.getpid()}"
        own.mkdir(mode=0o711, parents=True, exist_ok=True)
        target = own / str(len(_staged))
        target.mkdir(mode=0o755, exist_ok=True)
        _mount(path, str(target), _MS_BIND | _MS_REC)
        try:
            _mount(None, str(target), _MS_BIND | _MS_REMOUNT | _MS_RDONLY)
        except OSError:
            _libc.umount2(os.fsencode(str(target)), _MNT_DETACH)
            raise
        _staged[path] = str(target)
        return str(target)


def release_all(stage_root: Path) -> None:
    """Unmount this process's staged copies (at service shutdown; sandboxes are gone by then)."""
    with _lock:
        _staged.clear()
        own = stage_root / f"stage-{os.getpid()}"
        if own.is_dir():
            _unmount_dir(own)


def _mount(source: str | None, target: str, flags: int) -> None:
    src = os.fsencode(source) if source is not None else None
    if _libc.mount(src, os.fsencode(target), None, flags, None) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"cannot stage {source or target}: {os.strerror(code)}")


def _sweep(stage_root: Path) -> None:
    """Unmount the staging dirs of services that are gone (never delete through them)."""
    for own in stage_root.glob("stage-*"):
        try:
            pid = int(own.name.split("-", 1)[1])
            os.kill(pid, 0)
            continue
        except (ValueError, PermissionError):
            continue
        except ProcessLookupError:
            pass
        _unmount_dir(own)


def _unmount_dir(own: Path) -> None:
    for target in own.iterdir():
        _libc.umount2(os.fsencode(str(target)), _MNT_DETACH)
        with contextlib.suppress(OSError):
            target.rmdir()  # fails, harmlessly, if something is still mounted there
    with contextlib.suppress(OSError):
        own.rmdir()
