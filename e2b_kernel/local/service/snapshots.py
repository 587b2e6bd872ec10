"""Snapshots and fork (E2B's ``/sandboxes/{id}/snapshots``, ``/snapshots``, ``/fork``).

The honest subset of what one machine can do: a snapshot keeps the FILESYSTEM of a sandbox
(/home/user and /tmp, archived inside the sandbox, see sandbox/fs_snapshot.py), never its
memory or processes. A sandbox made from one (``Sandbox.create(snapshot_id)``, or a fork)
starts fresh processes on a copy of those files. A caller asking explicitly for memory to be
kept (``mode="full"``) gets a 400 that says so, instead of a snapshot missing what it wanted.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..sandbox.fs_snapshot import SnapshotError, drop_processes
from .errors import ServiceError
from .params import decode_token, encode_token, int_param, timeout_field
from .registry import Entry, Registry

log = logging.getLogger("e2b_kernel.local")

MEMORY_REFUSED = (
    "the local E2B service keeps only the filesystem in a snapshot: memory and running "
    'processes cannot be kept on one machine; use mode="filesystem" (a sandbox made from '
    "the snapshot starts fresh processes)"
)
MAX_FORKS = 20  # the SDK's own bound (validate_fork_count)
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")  # also a path segment: no '/' or ':'


def wants_memory(body: dict[str, Any], name: str = "memory") -> bool | None:
    """The request's ``memory`` flag (None when left out), checked for type."""
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise ServiceError(400, f"{name} must be a boolean, got {value!r}")
    return value


async def filesystem_pause(registry: Registry, entry: Entry) -> bool:
    """Pause keeping only the filesystem (E2B's pause mode "filesystem").

    Every process but the agent ends, and the code interpreter starts afresh on the next
    cell, as a sandbox cold-booted from its disk would.
    """
    if entry.sandbox.paused:
        return False
    await reset_processes(entry)
    paused = await registry.pause(entry)
    entry.pause_mode = "filesystem"
    return paused


async def reset_processes(entry: Entry) -> None:
    """End the sandbox's processes, as a reboot would, and start its services afresh: the
    Jupyter Server (as the template's boot does) and a code interpreter whose kernels start
    on first use."""
    old = entry.interpreter
    if old is not None:
        from ..interpreter import CodeInterpreter

        await old.shutdown()
        entry.interpreter = CodeInterpreter(entry.sandbox)
    drop_processes(entry.sandbox)
    await entry.sandbox.start_jupyter()


def snapshot_error(exc: Exception) -> ServiceError:
    if isinstance(exc, SnapshotError):
        return ServiceError(500, str(exc))
    return ServiceError(500, f"the snapshot could not be taken: {exc}")


class SnapshotRoutes:
    """The snapshot and fork endpoints; `control` is the ControlPlane they belong to."""

    def __init__(self, control: Any) -> None:
        self.control = control
        self.registry: Registry = control.registry

    async def create_snapshot(self, request: Request) -> Response:
        """POST /sandboxes/{id}/snapshots {name?, memory?}: 201 SnapshotInfo."""
        entry = self.control._entry(request.path_params["sandbox_id"])
        body = await self.control._json(request)
        if wants_memory(body) is True:
            raise ServiceError(400, MEMORY_REFUSED)
        name = body.get("name")
        if name is not None and (not isinstance(name, str) or not _NAME.fullmatch(name)):
            raise ServiceError(400, f"name must match {_NAME.pattern}, got {name!r}")
        snapshot = await self._take(entry, name)
        return JSONResponse(snapshot.to_json(), 201)

    async def _take(self, entry: Entry, name: str | None, *, hidden: bool = False) -> Any:
        # A paused sandbox's agent is frozen: thaw it for the archive, then freeze it again.
        was_paused = entry.sandbox.paused
        try:
            if was_paused:
                entry.sandbox.resume()
            return await self.registry.snapshots.take(entry, name, hidden=hidden)
        except (OSError, SnapshotError) as exc:
            raise snapshot_error(exc) from None
        finally:
            if was_paused and not entry.sandbox.killed.is_set():
                try:
                    await entry.sandbox.pause()
                except OSError as exc:  # the snapshot is taken; the sandbox runs on, and says so
                    log.warning(
                        "sandbox %s: not paused again after its snapshot: %s", entry.sandbox_id, exc
                    )

    async def list_snapshots(self, request: Request) -> Response:
        """GET /snapshots?sandboxID=&name=&limit=&nextToken=: 200 [SnapshotInfo], paged."""
        query = request.query_params
        limit = int_param(query.get("limit"), "limit", default=100, low=1, high=1000)
        start = decode_token(query.get("nextToken"))
        found = self.registry.snapshots.listing(query.get("sandboxID"), query.get("name"))
        headers = {}
        if start + limit < len(found):
            headers["x-next-token"] = encode_token(start + limit)
        return JSONResponse([s.to_json() for s in found[start : start + limit]], headers=headers)

    async def delete_snapshot(self, request: Request) -> Response:
        """DELETE /templates/{id}: 204, or 404 when no snapshot has that id or name."""
        wanted = request.path_params["template_id"]
        if not await self.registry.snapshots.delete(wanted):
            raise ServiceError(404, f"Snapshot {wanted} not found")
        return Response(status_code=204)

    async def fork(self, request: Request) -> Response:
        """POST /sandboxes/{id}/fork {timeout?, count?}: 201 [{sandbox} | {error}].

        The source's files are archived once; each fork is a new sandbox restored from them,
        with the source's template, metadata and env vars, and fresh processes.
        """
        entry = self.control._entry(request.path_params["sandbox_id"])
        body = await self.control._json(request)
        count = body.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_FORKS:
            raise ServiceError(400, f"count must be an integer between 1 and {MAX_FORKS}")
        timeout = timeout_field(body, "timeout", default=entry.timeout_seconds)
        snapshot = await self._take(entry, None, hidden=True)
        try:
            results = await asyncio.gather(
                *(self._one_fork(entry, snapshot, timeout) for _ in range(count))
            )
        finally:
            await asyncio.to_thread(snapshot.path.unlink, missing_ok=True)
        return JSONResponse(results, 201)

    async def _one_fork(self, source: Entry, snapshot: Any, timeout: int) -> dict[str, Any]:
        try:
            fork = await self.control.start_sandbox(
                template_id=source.template_id,
                timeout=timeout,
                metadata=dict(source.metadata),
                envs=dict(source.sandbox.envs),
                auto_pause=source.auto_pause,
                auto_resume=source.auto_resume,
                traffic=source.traffic_token is None,
                snapshot=snapshot,
                network=source.network,  # a fork keeps its source's egress rules
            )
        except ServiceError as exc:
            return {"error": {"code": exc.status, "message": str(exc)}}
        return {"sandbox": self.control._sandbox_json(fork)}
