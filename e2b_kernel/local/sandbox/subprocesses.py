"""Starting the service's helper processes (bubblewrap, slirp4netns, ip, mount) so that a
cancellation cannot hang the service.

CPython 3.11's ``asyncio.create_subprocess_exec``, cancelled while it connects the new
process's pipes, kills the process and then waits for those pipes to report it gone, which
they never do (python/cpython#103847, #125502): the caller hangs for ever. A sandbox start
cancelled at that moment (the service stopping while its warm pool starts a sandbox) hung the
service's shutdown. So the start is shielded: a caller cancelled meanwhile is cancelled once
the process exists, and the process is killed (asyncio's child watcher reaps it).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

__all__ = ["HELPER_ENV", "SYSTEM_PATH", "start_process"]

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The whole environment of a helper process: the service's own holds its API key, which no
# helper needs (slirp4netns, the way out of an internet-enabled sandbox were its packet
# parsing broken, must not hold it).
HELPER_ENV = {"PATH": SYSTEM_PATH}


async def start_process(*argv: str, **kwargs: Any) -> asyncio.subprocess.Process:
    """``asyncio.create_subprocess_exec(*argv, **kwargs)``, safe to cancel."""
    starting = asyncio.ensure_future(asyncio.create_subprocess_exec(*argv, **kwargs))
    try:
        return await asyncio.shield(starting)
    except asyncio.CancelledError:
        # Not waited for: a grandchild may hold its pipes open; the caller's cleanup (a
        # sandbox's kill) ends those.
        starting.add_done_callback(_kill_started)
        raise


def _kill_started(starting: asyncio.Future[asyncio.subprocess.Process]) -> None:
    if starting.cancelled() or starting.exception() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        starting.result().kill()
