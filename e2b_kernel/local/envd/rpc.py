"""envd's Connect-RPC plane: the SDK's generated ASGI apps serving our services."""

from __future__ import annotations

import asyncio
from typing import Any

from e2b.envd.filesystem.filesystem_connect import FilesystemASGIApplication
from e2b.envd.process.process_connect import ProcessASGIApplication

from ..sandbox import SandboxKilled
from ..service.registry import Entry
from .filesystem import FilesystemService
from .process import CLIENT_GONE, ProcessService

_READ_MAX_BYTES = 16 * 1024 * 1024


class EnvdRpc:
    """Dispatches /process.Process/* and /filesystem.Filesystem/* for one sandbox."""

    def __init__(self, entry: Entry) -> None:
        self.sandbox = entry.sandbox
        self.process = ProcessService(entry.sandbox)
        self.filesystem = FilesystemService(entry.sandbox)
        self._process_app = ProcessASGIApplication(self.process, read_max_bytes=_READ_MAX_BYTES)
        self._fs_app = FilesystemASGIApplication(self.filesystem, read_max_bytes=_READ_MAX_BYTES)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        # connectrpc notices a vanished client only between messages; streams waiting for
        # output watch this event instead, so they stop holding output back at once.
        gone = asyncio.Event()

        async def watched_receive() -> dict[str, Any]:
            message = await receive()
            if message["type"] == "http.disconnect":
                gone.set()
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            # Like E2B, a killed sandbox's streams break off instead of ending cleanly.
            if self.sandbox.killed.is_set() and message["type"] == "http.response.body":
                raise SandboxKilled(f"sandbox {self.sandbox.sandbox_id} was killed")
            await send(message)

        CLIENT_GONE.set(gone)
        if scope["path"].startswith("/process.Process/"):
            await self._process_app(scope, watched_receive, guarded_send)
        else:
            await self._fs_app(scope, watched_receive, guarded_send)


def rpc_app_for(entry: Entry) -> EnvdRpc:
    """The (cached) Connect-RPC app of a sandbox."""
    if entry.envd_rpc is None:
        entry.envd_rpc = EnvdRpc(entry)
    return entry.envd_rpc
