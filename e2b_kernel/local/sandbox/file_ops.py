"""The service's file calls: each one runs in the sandbox's agent (see ``agent/files.py``).

The service never touches a sandbox file itself, so paths and symlinks resolve as the sandbox
sees them and a heavy walk loads only that sandbox's agent. Refusals arrive as
``AgentCallError``, an ``OSError`` carrying the agent's errno, for the envd planes to map.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from .agent_client import AgentCallError, AgentClient, AgentStream

_FRAME = struct.Struct(">Q")
_READ_CHUNK = 256 * 1024


class FileOps:
    """File operations of one sandbox, as a given user ("user" or "root") performs them."""

    def __init__(self, client: AgentClient) -> None:
        self.client = client

    async def stat(self, path: str, user: str = "user") -> dict[str, Any]:
        """EntryInfo fields of a path (a final symlink is described, not followed)."""
        return (await self.client.request("fs.stat", path=path, user=user))["entry"]

    async def exists(self, path: str, user: str = "user") -> bool:
        return bool((await self.client.request("fs.exists", path=path, user=user))["exists"])

    async def list(
        self, path: str, user: str = "user", depth: int = 1
    ) -> AsyncGenerator[list[dict[str, Any]], None]:
        """Entries down to depth levels, in the agent's order (depth first, by name), one
        batch at a time as the agent sends them (the event loop serves others between
        batches: see ``AgentStream.read_json``)."""
        async with await self.client.call("fs.list", path=path, user=user, depth=depth) as stream:
            while (line := await stream.read_json()) is not None and "entries" in line:
                yield line["entries"]
        if line != {"end": True}:
            raise ConnectionError("the sandbox agent stopped in the middle of a listing")

    async def read(
        self, path: str, user: str = "user", *, offset: int = 0, length: int | None = None
    ) -> FileRead:
        """The file's bytes (those of ``length`` from ``offset`` when given) as chunks; the
        stream closes when they are read, or by ``FileRead.close()``."""
        stream = await self.client.call(
            "fs.read", path=path, user=user, offset=offset, length=length
        )
        reply = stream.reply
        size = int(reply["size"])
        total, mtime_ns = int(reply["total"]), int(reply["mtime_ns"])
        return FileRead(size, total, mtime_ns, _chunks(stream, size), stream)

    def writer(
        self, path: str, user: str = "user", metadata: dict[str, str] | None = None
    ) -> FileWriter:
        """``async with ops.writer(path) as w: await w.write(b); entry = await w.finish()``."""
        return FileWriter(self.client, path, user, metadata or {})

    async def make_dir(self, path: str, user: str = "user") -> dict[str, Any]:
        """Create a directory and its parents; EEXIST when the path exists."""
        return (await self.client.request("fs.mkdir", path=path, user=user))["entry"]

    async def rename(self, source: str, destination: str, user: str = "user") -> dict[str, Any]:
        reply = await self.client.request(
            "fs.rename", source=source, destination=destination, user=user
        )
        return reply["entry"]

    async def remove(self, path: str, user: str = "user") -> None:
        """Remove a file or a tree; a missing path is not an error."""
        await self.client.request("fs.remove", path=path, user=user)

    async def watch(
        self, path: str, user: str = "user", *, recursive: bool = False, entries: bool = False
    ) -> AgentStream:
        """An open watch: ``read_json()`` gives ``{"name", "type", "entry"?}`` events, None
        when the sandbox is gone; closing the stream ends the watch in the agent."""
        return await self.client.call(
            "fs.watch", path=path, user=user, recursive=recursive, entries=entries
        )

    async def disk_usage(self) -> tuple[int, int]:
        """(bytes used in /home/user + /tmp, size of the disk holding /home/user)."""
        reply = await self.client.request("fs.disk_usage")
        return int(reply["used"]), int(reply["total"])


@dataclass
class FileRead:
    """What ``FileOps.read`` answers: the bytes coming (``size``), the file's size
    (``total``), its modification time, and the bytes as chunks."""

    size: int
    total: int
    mtime_ns: int
    chunks: AsyncGenerator[bytes, None]
    stream: AgentStream

    async def close(self) -> None:
        """Stop reading: a generator never started would not close the agent's stream."""
        await self.chunks.aclose()
        await self.stream.close()


async def _chunks(stream: AgentStream, size: int) -> AsyncGenerator[bytes, None]:
    try:
        remaining = size
        while remaining > 0:
            block = await stream.read_chunk(min(_READ_CHUNK, remaining))
            if not block:
                raise ConnectionError("the file ended early (it shrank, or the sandbox is gone)")
            remaining -= len(block)
            yield block
    finally:
        await stream.close()


class FileWriter:
    """One streamed upload into the sandbox; the file is created (truncated) on enter."""

    def __init__(self, client: AgentClient, path: str, user: str, metadata: dict[str, str]) -> None:
        self._client = client
        self._user = user
        self._metadata = metadata
        self._stream: AgentStream | None = None
        self.path = path

    async def __aenter__(self) -> FileWriter:
        self._stream = await self._client.call(
            "fs.write", path=self.path, user=self._user, metadata=self._metadata
        )
        self.path = self._stream.reply["path"]  # absolute, as the agent resolved it
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._stream is not None
        await self._stream.close()  # unfinished: the agent sees EOF and stops

    async def write(self, data: bytes) -> None:
        """Send one chunk (empty chunks are skipped: an empty frame ends the file)."""
        assert self._stream is not None
        if data:
            await self._stream.write(_FRAME.pack(len(data)) + data)

    async def finish(self) -> dict[str, Any]:
        """End the file; the entry written, or AgentCallError (e.g. ENOSPC) from the agent."""
        assert self._stream is not None
        await self._stream.write(_FRAME.pack(0))
        result = await self._stream.read_json()
        if result is None:
            raise ConnectionError("the sandbox agent hung up before the file was written")
        if not result.get("ok"):
            raise AgentCallError(int(result.get("errno") or 5), str(result.get("error")))
        return result["entry"]
