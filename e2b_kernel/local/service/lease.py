"""Serve only while a lease is held: ``e2b-kernel local --lease FILE``.

A kernel's private service must outlive a restart (``jupyter_client`` restarts a kernel by
starting a new process) yet must not outlive the kernel. The kernel holds an exclusive
``flock`` on the lease file for its whole life, and the OS drops it when the process exits,
however it exits (SIGKILL included). A restarted kernel takes the same lease. When nobody has
held it for ``GRACE`` seconds, the service stops (killing its sandboxes) and removes the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time

__all__ = ["GRACE", "lease_is_free", "serve_while_leased"]

GRACE = 10.0  # seconds without a holder before the service stops
_POLL = 0.25


def lease_is_free(path: str) -> bool:
    """True when no process holds the lease (or the file is gone)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing drops our probe lock at once
    return True


async def serve_while_leased(path: str, serving: asyncio.Task) -> None:
    """Return once the lease has been free for ``GRACE`` seconds (or serving ended)."""
    free_since: float | None = None
    try:
        while not serving.done():
            await asyncio.sleep(_POLL)
            if not lease_is_free(path):
                free_since = None
                continue
            free_since = free_since or time.monotonic()
            if time.monotonic() - free_since > GRACE:
                return
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
