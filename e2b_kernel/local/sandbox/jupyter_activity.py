"""The kernel manager of a sandbox's Jupyter Server: the server's own, with a cheaper watch of
each kernel's activity. Copied into the sandbox and imported only by that server (stdlib and
``jupyter_server`` only; the sandbox may not see this package at all).

Why: the server watches every IOPub message of every kernel to keep its ``last_activity`` and
``execution_state`` (what ``GET /api/kernels`` shows, and what culling reads). It decodes each
message in full (signature checked, dates parsed), and a status message twice: 3.3 ms of CPU
per trivial cell on a 2-core VM, a third of what the kernel itself spends on that cell, and
paid on every cell whichever client runs it. Here the same record is kept from the header and
parent header (and a status message's content) parsed as plain JSON. The signature is not
checked: the messages come from the sandbox's own kernel over a socket in the sandbox, no less
trusted than the server itself, and nothing here is passed on.
"""

from __future__ import annotations

import json
from typing import Any

from jupyter_server._tz import utcnow
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager

__all__ = ["QuickActivityKernelManager"]

_DELIMITER = b"<IDS|MSG>"


class QuickActivityKernelManager(AsyncMappingKernelManager):
    """Jupyter Server's kernel manager; only the activity watch differs (see the module)."""

    def start_watching_activity(self, kernel_id: str) -> None:
        self.log.debug("Watching kernel activity: %s", kernel_id)
        kernel = self._kernels[kernel_id]
        kernel.reason = ""
        kernel.last_activity = utcnow()
        kernel._activity_stream = kernel.connect_iopub()

        def record_activity(frames: list[bytes]) -> None:
            header, parent, content_of = _read(frames)
            if header is None:
                return
            msg_type = header.get("msg_type")
            parent_type = parent.get("msg_type")
            if (
                self.track_message_type(msg_type)
                or self.track_message_type(parent_type)
                or kernel.execution_state == "busy"
            ):
                self.last_kernel_activity = kernel.last_activity = utcnow()
            if msg_type != "status":
                return
            state = content_of().get("execution_state")
            if self.track_message_type(parent_type):
                kernel.execution_state = state
            elif kernel.execution_state == "starting" and state != "starting":
                # As the server does: after starting, idle unless a tracked request says more.
                kernel.execution_state = "idle"

        kernel._activity_stream.on_recv(record_activity)


def _read(frames: list[Any]) -> tuple[dict | None, dict, Any]:
    """A message's header and parent header, and a function that reads its content; a None
    header for what is not a well-formed message (ignored, as the server's logged failure)."""
    parts = [bytes(frame) for frame in frames]
    try:
        start = parts.index(_DELIMITER) + 1  # then the signature, header, parent, metadata...
        header, parent = json.loads(parts[start + 1]), json.loads(parts[start + 2])
    except (ValueError, IndexError, RecursionError):
        return None, {}, dict
    if not isinstance(header, dict) or not isinstance(parent, dict):
        return None, {}, dict

    def content() -> dict:
        try:
            value = json.loads(parts[start + 4])
        except (ValueError, IndexError, RecursionError):
            return {}
        return value if isinstance(value, dict) else {}

    return header, parent, content
