"""The control plane (spec section 1): create, connect, kill, timeout, info, list, pause.

Requests reach it through ServiceApp once it has checked the API key; a starlette Router
picks the handler, and every failure is a ServiceError, answered in E2B's shape by the app.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, Router
from starlette.types import Receive, Scope, Send

from ..interpreter import CodeInterpreter
from ..sandbox import SandboxStartError
from ..sandbox.egress import EgressError
from ..sandbox.fs_snapshot import restore
from .auth import new_token
from .errors import ServiceError, not_found
from .guards import check_env_names, check_json_depth
from .idempotency import IdempotentCreates
from .network_opts import NetworkOptions, from_create, update_network
from .params import decode_token, encode_token, int_param, metadata_filter, timeout_field
from .registry import DEFAULT_TIMEOUT, Entry, Registry
from .snapshot_store import Snapshot
from .snapshots import SnapshotRoutes, filesystem_pause, reset_processes, wants_memory

log = logging.getLogger("e2b_kernel.local")

ENVD_VERSION = "0.6.5"
CLIENT_ID = "local"
MAX_JSON_BODY = 1024 * 1024
ISOLATION_METADATA_KEY = "e2b_kernel.isolation"


Handler = Callable[[Request], Awaitable[Response]]
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"]


def rfc3339(moment: datetime) -> str:
    """RFC 3339 UTC timestamp with a Z suffix."""
    return moment.isoformat().replace("+00:00", "Z")


def _by_method(plane: object, handlers: Mapping[str, str]) -> Handler:
    """One route's endpoint: dispatch on the method, 405 in E2B's shape for any other.

    Handlers are looked up by name on each call, so a test can replace one on the instance.
    """

    async def endpoint(request: Request) -> Response:
        name = handlers.get(request.method)
        if name is None:
            path = request.url.path
            raise ServiceError(405, f"method {request.method} is not allowed on {path}")
        handler: Handler = getattr(plane, name)
        return await handler(request)

    return endpoint


async def _no_route(scope: Scope, receive: Receive, send: Send) -> None:
    path = str(scope["path"])
    if path == "/volumes" or path.startswith(("/volumes/", "/volumecontent/")):
        raise volumes_unavailable()
    raise ServiceError(404, f"no such endpoint: {scope['method']} {path}")


def volumes_unavailable() -> ServiceError:
    """E2B's persistent volumes are not emulated: said plainly, with what to use instead."""
    return ServiceError(
        501,
        "volumes are not available in the local E2B service (e2b-kernel local); keep files "
        "in the sandbox (its snapshots keep them too), or copy them in and out with its "
        "files API",
    )


async def disk_total(entry: Entry) -> int:
    """Size of the sandbox's disk in bytes (statvfs off the loop; the agent's seam too)."""
    return await asyncio.to_thread(lambda: shutil.disk_usage(entry.sandbox.home_dir).total)


class ControlPlane:
    """Handlers for every control-plane route; `handle` dispatches a request."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.isolation_none = registry.policy.mode == "none"
        sandbox = "/sandboxes/{sandbox_id}"
        routes = {
            "/v2/sandboxes": {"POST": "create", "GET": "list_v2"},
            "/sandboxes": {"GET": "list_v2"},
            "/v2" + sandbox + "/connect": {"POST": "connect"},
            sandbox + "/connect": {"POST": "connect"},
            sandbox + "/resume": {"POST": "connect"},
            sandbox: {"GET": "get_info", "DELETE": "kill"},
            sandbox + "/timeout": {"POST": "set_timeout"},
            sandbox + "/refreshes": {"POST": "refresh"},
            sandbox + "/pause": {"POST": "pause"},
            sandbox + "/metrics": {"GET": "metrics"},
            sandbox + "/network": {"PUT": "update_network"},
        }
        self.pool = registry.pool
        self.idempotent_creates = IdempotentCreates()
        self.snapshot_routes = SnapshotRoutes(self)
        snapshot_routes = {
            sandbox + "/snapshots": {"POST": "create_snapshot"},
            sandbox + "/fork": {"POST": "fork"},
            "/snapshots": {"GET": "list_snapshots"},
            "/templates/{template_id}": {"DELETE": "delete_snapshot"},
        }
        self.router = Router(
            # Every method reaches _by_method, which answers 405 in E2B's shape itself.
            [Route(p, _by_method(self, h), methods=_ALL_METHODS) for p, h in routes.items()]
            + [
                Route(p, _by_method(self.snapshot_routes, h), methods=_ALL_METHODS)
                for p, h in snapshot_routes.items()
            ],
            redirect_slashes=False,
            default=_no_route,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"].rstrip("/") or "/"  # the old router ignored a trailing slash
        await self.router({**scope, "path": path}, receive, send)

    async def _json(self, request: Request) -> dict[str, Any]:
        raw = await request.body()
        if len(raw) > MAX_JSON_BODY:
            raise ServiceError(413, f"request body too large (limit {MAX_JSON_BODY} bytes)")
        if not raw.strip():
            return {}
        check_json_depth(raw)  # json.loads would recurse until RecursionError (a 500)
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise ServiceError(400, f"request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ServiceError(400, "request body must be a JSON object")
        return body

    def _entry(self, sandbox_id: str) -> Entry:
        entry = self.registry.get(sandbox_id)
        if entry is None:
            raise not_found(sandbox_id)
        return entry

    async def create(self, request: Request) -> Response:
        """POST /v2/sandboxes: start a sandbox (and its default code context), answer 201;
        a repeat of an ``Idempotency-Key`` gets the first answer (see .idempotency)."""
        body = await self._json(request)
        key = request.headers.get("idempotency-key")
        return await self.idempotent_creates.run(key, body, lambda: self._create(body))

    async def _create(self, body: dict[str, Any]) -> Response:
        if body.get("volumeMounts"):
            raise volumes_unavailable()  # refused, never silently left unmounted
        template = body.get("templateID", "base")
        if not isinstance(template, str) or not template:
            raise ServiceError(400, "templateID must be a non-empty string")
        timeout = timeout_field(body, "timeout", default=DEFAULT_TIMEOUT)
        metadata = _string_map(body, "metadata")
        envs = _string_map(body, "envVars")
        check_env_names(envs, "envVars")  # execve refuses them deep inside the sandbox start
        network = body.get("network") or {}
        public = not isinstance(network, dict) or network.get("allowPublicTraffic", True)
        internet = body.get("allow_internet_access", body.get("allowInternetAccess", False))
        options = from_create(body, bool(internet))
        if self.isolation_none and isinstance(network, dict) and network.get("denyOut"):
            # The host's network cannot be filtered here: refused, never silently ignored.
            raise ServiceError(
                400,
                "denyOut needs isolation: without it the sandbox uses the host's network, "
                "which the local service does not filter",
            )
        auto_resume = body.get("autoResume") or {}
        entry = await self.start_sandbox(
            template_id=template,
            timeout=timeout,
            metadata=metadata,
            envs=envs,
            network=options,
            auto_pause=bool(body.get("autoPause", False)),
            auto_resume=bool(isinstance(auto_resume, dict) and auto_resume.get("enabled")),
            traffic=public is not False,
        )
        return JSONResponse(self._sandbox_json(entry), 201)

    async def start_sandbox(
        self,
        *,
        template_id: str,
        timeout: int,
        metadata: dict[str, str],
        envs: dict[str, str],
        auto_pause: bool = False,
        auto_resume: bool = False,
        traffic: bool = True,
        snapshot: Snapshot | None = None,
        network: NetworkOptions | None = None,
    ) -> Entry:
        """Start a sandbox with its code interpreter; from a snapshot when the template names
        one (its files are restored inside the new sandbox before anything runs there)."""
        snapshot = snapshot or self.registry.snapshots.find(template_id)
        if snapshot is None and self.registry.snapshots.is_missing_reference(template_id):
            # E2B's answer for a template (a snapshot is one) that does not exist.
            raise ServiceError(404, f"template '{template_id}' not found")
        ready = None
        if self.registry.poolable(metadata):
            ready = await self.pool.take(envs)
        try:
            entry = await self.registry.create(
                prepared=ready[0] if ready else None,
                template_id=template_id,
                timeout=timeout,
                metadata=metadata,
                envs=envs,
                auto_pause=auto_pause,
                auto_resume=auto_resume,
                # As E2B today, every sandbox is secured (the SDK's `secure` is ignored).
                access_token=new_token(),
                traffic_token=None if traffic else new_token(),
            )
        except ValueError as exc:  # e.g. metadata e2b.disk_mb out of range
            raise ServiceError(400, str(exc)) from None
        except (OSError, SandboxStartError, asyncio.TimeoutError) as exc:
            log.exception("could not start a sandbox")
            reason = str(exc) or type(exc).__name__
            raise ServiceError(500, f"could not start the sandbox: {reason}") from None
        entry.network = network
        if network is not None and network.needs_stack:
            # Before the 201: no code of the caller's runs before its rules hold.
            try:
                await entry.sandbox.set_egress(network.rules, reach=True)
            except (EgressError, OSError) as exc:
                await self.registry.kill(entry.sandbox_id)
                status = 400 if isinstance(exc, EgressError) else 500
                raise ServiceError(status, f"cannot apply the network options: {exc}") from None
        try:
            if snapshot is not None:
                await restore(entry.sandbox, snapshot.path)
            if ready is not None:  # its kernel runs already: give it the caller's env vars
                entry.interpreter = ready[1]
                await entry.interpreter.apply_sandbox_envs({"E2B_TEMPLATE_ID": template_id, **envs})
            else:
                entry.interpreter = CodeInterpreter(entry.sandbox)
                entry.sandbox.on_kill(entry.interpreter.shutdown)
                await entry.interpreter.start()
        except Exception as exc:
            log.exception("sandbox %s: start failed", entry.sandbox_id)
            await self.registry.kill(entry.sandbox_id)
            message = f"the sandbox's code interpreter failed to start: {exc}"
            raise ServiceError(500, message) from None
        log.info("created sandbox %s (template %s)", entry.sandbox_id, template_id)
        return entry

    async def connect(self, request: Request) -> Response:
        """POST /v2/sandboxes/{id}/connect: 200 if running, 201 if resumed from paused."""
        sandbox_id = request.path_params["sandbox_id"]
        body = await self._json(request)
        timeout = timeout_field(body, "timeout", default=None)
        entry = self.registry.get(sandbox_id)
        if entry is None:
            raise ServiceError(404, f"Paused sandbox {sandbox_id} not found")
        if entry.sandbox.paused:
            self.registry.resume(entry, timeout)
            if wants_memory(body) is False:  # on_resume="reboot": cold boot from the disk
                # After the thaw: the agent that starts the fresh services must be running.
                await reset_processes(entry)
            return JSONResponse(self._sandbox_json(entry), 201)
        self.registry.extend(entry, timeout if timeout is not None else entry.timeout_seconds)
        return JSONResponse(self._sandbox_json(entry), 200)

    async def update_network(self, request: Request) -> Response:
        """PUT /sandboxes/{id}/network: replace the sandbox's egress rules (204)."""
        return await update_network(self, request)

    async def kill(self, request: Request) -> Response:
        """DELETE /sandboxes/{id}: 204, or 404 when unknown or already killed."""
        sandbox_id = request.path_params["sandbox_id"]
        if not await self.registry.kill(sandbox_id):
            raise not_found(sandbox_id)
        log.info("killed sandbox %s", sandbox_id)
        return Response(status_code=204)

    async def set_timeout(self, request: Request) -> Response:
        """POST /sandboxes/{id}/timeout {"timeout": s}: the sandbox now ends s seconds from now."""
        sandbox_id = request.path_params["sandbox_id"]
        body = await self._json(request)
        timeout = timeout_field(body, "timeout", default=None)
        if timeout is None:
            raise ServiceError(400, 'the body must be {"timeout": <seconds>}')
        self.registry.set_timeout(self._entry(sandbox_id), timeout)
        return Response(status_code=204)

    async def refresh(self, request: Request) -> Response:
        """POST /sandboxes/{id}/refreshes {"duration": s}: extend the sandbox's life."""
        sandbox_id = request.path_params["sandbox_id"]
        body = await self._json(request)
        duration = timeout_field(body, "duration", default=None)
        entry = self._entry(sandbox_id)
        self.registry.extend(entry, duration if duration is not None else entry.timeout_seconds)
        return Response(status_code=204)

    async def get_info(self, request: Request) -> Response:
        """GET /sandboxes/{id}: SandboxDetail."""
        sandbox_id = request.path_params["sandbox_id"]
        entry = self._entry(sandbox_id)
        return JSONResponse(self._detail_json(entry, await disk_total(entry)))

    async def pause(self, request: Request) -> Response:
        """POST /sandboxes/{id}/pause: 204, or 409 when it is already paused."""
        sandbox_id = request.path_params["sandbox_id"]
        body = await self._json(request)
        entry = self._entry(sandbox_id)
        try:
            if wants_memory(body) is False:  # keep_memory=False / mode="filesystem"
                paused = await filesystem_pause(self.registry, entry)
            else:  # left out means E2B's default, a full pause: the freezer keeps memory
                paused = await self.registry.pause(entry)
        except OSError as exc:
            raise ServiceError(500, f"cannot pause this sandbox: {exc}") from None
        if not paused:
            raise ServiceError(409, f"Sandbox {sandbox_id} is already paused")
        return Response(status_code=204)

    async def list_v2(self, request: Request) -> Response:
        """GET /v2/sandboxes: filtered by metadata/state, paged with x-next-token."""
        query = request.query_params
        wanted_meta = metadata_filter(query.get("metadata"))
        states = {s for s in query.get("state", "").split(",") if s}
        unknown = states - {"running", "paused"}
        if unknown:
            raise ServiceError(400, f"unknown state filter {sorted(unknown)}: use running,paused")
        limit = int_param(query.get("limit"), "limit", default=100, low=1, high=1000)
        start = decode_token(query.get("nextToken"))
        after = _parse_time(query.get("startedAfter"))
        entries = [
            e
            for e in self.registry.entries()
            if (not states or e.state in states)
            and all(e.metadata.get(k) == v for k, v in wanted_meta.items())
            and (not query.get("template") or e.template_id == query.get("template"))
            and (after is None or e.started_at >= after)
        ]
        if query.get("order") == "desc":
            entries.reverse()
        page = entries[start : start + limit]
        headers = {}
        if start + limit < len(entries):
            headers["x-next-token"] = encode_token(start + limit)
        totals = await asyncio.gather(*(disk_total(e) for e in page))
        body = [self._detail_json(e, total) for e, total in zip(page, totals, strict=True)]
        return JSONResponse(body, headers=headers)

    async def metrics(self, request: Request) -> Response:
        """GET /sandboxes/{id}/metrics?start=&end=: the samples taken in that range."""
        sandbox_id = request.path_params["sandbox_id"]
        entry = self._entry(sandbox_id)
        query = request.query_params
        start = int_param(query.get("start"), "start", default=-1, low=0, high=2**40)
        end = int_param(query.get("end"), "end", default=-1, low=0, high=2**40)
        if start >= 0 and end >= 0 and start > end:
            raise ServiceError(400, f"start ({start}) must not be after end ({end})")
        assert entry.metrics is not None
        samples = await entry.metrics.between(
            start if start >= 0 else None, end if end >= 0 else None
        )
        return JSONResponse(samples)

    def _sandbox_json(self, entry: Entry) -> dict[str, Any]:
        return {
            "templateID": entry.template_id,
            "sandboxID": entry.sandbox_id,
            "clientID": CLIENT_ID,
            "envdVersion": ENVD_VERSION,
            "alias": entry.template_id,
            "envdAccessToken": entry.access_token,
            "trafficAccessToken": entry.traffic_token,
            "domain": None,
        }

    def _detail_json(self, entry: Entry, disk_bytes: int) -> dict[str, Any]:
        metadata = dict(entry.metadata)
        if self.isolation_none:
            metadata[ISOLATION_METADATA_KEY] = "none"
        return {
            "templateID": entry.template_id,
            "alias": entry.template_id,
            "sandboxID": entry.sandbox_id,
            "clientID": CLIENT_ID,
            "startedAt": rfc3339(entry.started_at),
            "endAt": rfc3339(entry.end_at),
            "envdVersion": ENVD_VERSION,
            "cpuCount": os.cpu_count() or 1,
            "memoryMB": self.registry.policy.memory_mb,
            "diskSizeMB": disk_bytes // (1024 * 1024),
            "state": entry.state,
            "metadata": metadata,
            **({"pauseMode": entry.pause_mode} if entry.sandbox.paused else {}),
            "allowInternetAccess": entry.network.internet if entry.network else True,
            **({"network": shown} if (shown := _network_json(entry)) else {}),
            "lifecycle": {
                "autoResume": entry.auto_resume,
                "onTimeout": "pause" if entry.auto_pause else "kill",
            },
        }


def _network_json(entry: Entry) -> dict[str, Any] | None:
    return entry.network.to_json() if entry.network is not None else None


def _string_map(body: dict[str, Any], name: str) -> dict[str, str]:
    value = body.get(name) or {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ServiceError(400, f"{name} must be an object of string values")
    return dict(value)


def _parse_time(raw: str | None) -> datetime | None:
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ServiceError(400, f"startedAfter must be an ISO-8601 time, got {raw!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
