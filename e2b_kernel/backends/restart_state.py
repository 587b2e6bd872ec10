"""Hand a sandbox from a kernel process to its restarted successor.

``jupyter_client`` restarts a kernel by stopping the process (``shutdown_request`` with
``restart: true``) and starting a new one **with the same connection file**. So the old process
writes what the new one needs (sandbox id, and for the private local backend how to reach and
adopt its helper service) into a small private file named after the connection file, in the
Jupyter runtime directory. The new process takes it (reads and deletes it) at start-up,
reconnects and restarts the Python context: fresh state, same files.

A file older than ``MAX_AGE`` is ignored: a restart takes seconds, and a stale file must not
capture a later, unrelated kernel that happens to reuse the connection file name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["MAX_AGE", "put", "state_path", "take"]

MAX_AGE = 120.0


def state_path(connection_file: str) -> Path:
    """The state file for a kernel's connection file."""
    from jupyter_core.paths import jupyter_runtime_dir

    digest = hashlib.sha256(os.path.abspath(connection_file).encode()).hexdigest()[:16]
    return Path(jupyter_runtime_dir()) / f"e2b-kernel-restart-{digest}.json"


def put(connection_file: str | None, state: dict[str, Any]) -> None:
    """Record ``state`` for the next process started with ``connection_file``."""
    if not connection_file:
        return
    path = state_path(connection_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({**state, "written_at": time.time()}, handle)


def take(connection_file: str | None) -> dict[str, Any] | None:
    """Return and delete the state left for ``connection_file``, if recent enough."""
    if not connection_file:
        return None
    path = state_path(connection_file)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
    if not isinstance(data, dict) or time.time() - float(data.get("written_at", 0)) > MAX_AGE:
        return None
    return data
