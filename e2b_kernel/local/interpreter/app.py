"""The code-interpreter plane of one local sandbox (E2B port 49999): /execute, /contexts, /health.

It answers as E2B's `template/server` does (spec section 3). Contexts are Jupyter kernels running
inside the sandbox; see `contexts.py` for the kernels and the iopub -> NDJSON streaming.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from . import ndjson
from .contexts import Context, Execution, UnknownLanguage, prepend_env, settle_aborts
from .kernels import SandboxLike, normalize_language
from .server_kernel import prestart_kernel, write_kernelspec

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DEFAULT_CWD = "/home/user"
MAX_BODY_BYTES = 64 * 1024 * 1024
_CONTEXT_PATH = re.compile(r"^/contexts/([^/]+)(/restart)?/?$")


def route_path(path: str) -> str:
    """The path as routed here (trailing slashes do not count): the service's front checks
    the same one, so that ``/execute/`` needs the access token as ``/execute`` does."""
    return path.rstrip("/") or "/"


class SandboxKilledDuringExecution(RuntimeError):
    """Raised after the /execute response started, so the HTTP connection is cut mid-body."""


class HTTPError(Exception):
    """A plain-text error reply, as E2B's server sends them."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


class CodeInterpreter:
    """Per-sandbox ASGI app for the port-49999 plane."""

    def __init__(self, sandbox: SandboxLike) -> None:
        self.sandbox = sandbox
        self._contexts: dict[str, Context] = {}  # creation order, defaults included
        self._defaults: dict[str, Context] = {}
        self._default_locks: dict[str, asyncio.Lock] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._default_started: asyncio.Future[None] | None = None  # its background start
        self._closed = False
        on_kill = getattr(sandbox, "on_kill", None)
        if on_kill is not None:
            on_kill(self.shutdown)

    async def start(self) -> None:
        """Start the default python context (cwd /home/user) as the sandbox is announced.

        With a Jupyter Server in the sandbox, the default context is one of its kernels
        (``server_kernel.py``): its ``python3`` kernelspec is written first, and the context
        starts in the background, so create does not wait for the server to come up; the
        first /execute waits for it (it takes the same lock). Without one, the kernel is ours
        and create waits for it, as before.
        """
        spec_root = getattr(self.sandbox, "kernelspec_dir", None)
        if getattr(self.sandbox, "jupyter", None) is None or spec_root is None:
            await self._default_context("python")
            return
        server = getattr(self.sandbox, "jupyter", None)
        write_kernelspec(self.sandbox, spec_root, getattr(server, "provisioner_name", None))
        self._default_started = asyncio.ensure_future(self._start_default_quietly(server))
        self._background.add(self._default_started)
        self._default_started.add_done_callback(self._background.discard)

    async def warm(self) -> None:
        """Wait until the default context's kernel runs (a warm-pool sandbox is only ready
        then: its first cell must not wait for the Jupyter Server and a kernel to start)."""
        if self._default_started is not None:
            await asyncio.shield(self._default_started)

    async def _start_default_quietly(self, server: Any) -> None:
        if getattr(server, "provisioner_name", None):
            try:  # beside the server, which is still starting; the context then adopts it
                await prestart_kernel(self.sandbox, server)
            except Exception as exc:  # the server starts the kernel itself, as before
                log.warning("could not start the default kernel beside the Jupyter Server: %s", exc)
        try:
            await self._default_context("python")
        except Exception as exc:  # the first /execute tries again and reports it
            text = exc.text if isinstance(exc, HTTPError) else str(exc)
            log.warning("the default python context did not start in the background: %s", text)

    async def apply_sandbox_envs(self, envs: dict[str, str]) -> None:
        """Set sandbox-level env vars in kernels that are already running (a pooled sandbox
        gets its caller's envs after its python kernel started), silently, as at start."""
        if not envs:
            return
        for context in list(self._contexts.values()):
            if context.kernel is not None:
                await context.kernel.run_silent(context.env_code(envs))

    async def shutdown(self) -> None:
        """Stop every kernel; idempotent."""
        self._closed = True
        for task in list(self._background):
            task.cancel()
        contexts = list(self._contexts.values())
        self._contexts.clear()
        self._defaults.clear()
        # A killed sandbox is about to lose all its processes anyway: no polite shutdown then.
        polite = not self.sandbox.killed.is_set()
        await asyncio.gather(
            *(context.close(polite=polite) for context in contexts), return_exceptions=True
        )

    # ---- ASGI -------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method, path = scope["method"], route_path(scope["path"])
        try:
            if path == "/execute" and method == "POST":
                await self._execute(await self._json_body(receive), receive, send)
            elif path == "/health" and method == "GET":
                await _reply_json(send, 200, "OK")
            elif path == "/contexts" and method == "POST":
                await _reply_json(
                    send, 200, await self._create_context(await self._json_body(receive))
                )
            elif path == "/contexts" and method == "GET":
                if self._default_started is not None:
                    # E2B lists the default context from the start: wait for its start.
                    await asyncio.shield(self._default_started)
                await _reply_json(send, 200, [c.to_json() for c in self._contexts.values()])
            elif match := _CONTEXT_PATH.match(path):
                await self._context_route(method, match.group(1), bool(match.group(2)), send)
            elif path in ("/execute", "/health", "/contexts"):
                await _reply_json(send, 405, {"detail": "Method Not Allowed"})
            else:
                await _reply_json(send, 404, {"detail": "Not Found"})
        except HTTPError as exc:
            await _reply_text(send, exc.status, exc.text)

    async def _json_body(self, receive: Receive) -> dict[str, Any]:
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise HTTPError(400, "The client disconnected before sending the request body")
            body += message.get("body", b"")
            if len(body) > MAX_BODY_BYTES:
                raise HTTPError(413, f"Request body larger than {MAX_BODY_BYTES} bytes")
            if not message.get("more_body"):
                break
        if not body.strip():
            return {}
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise HTTPError(422, f"Request body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise HTTPError(422, "Request body must be a JSON object")
        return data

    # ---- contexts ---------------------------------------------------------------------------

    async def _new_context(self, language: str, cwd: str) -> Context:
        try:
            context = Context(self.sandbox, language, cwd)
        except UnknownLanguage as exc:
            raise HTTPError(500, str(exc)) from None
        try:
            await context.start()
        except Exception as exc:
            await context.close(polite=False)
            if self._closed:
                raise HTTPError(502, "The sandbox was killed") from None
            log.warning("sandbox context start failed: %s", exc)
            raise HTTPError(500, f"Failed to create context: {exc}") from None
        if self._closed:
            await context.close(polite=False)
            raise HTTPError(502, "The sandbox was killed")
        self._contexts[context.id] = context
        return context

    async def _default_context(self, language: str) -> Context:
        """The remembered default context for a language, created lazily under a lock."""
        lock = self._default_locks.setdefault(language, asyncio.Lock())
        async with lock:
            context = self._defaults.get(language)
            if context is None or context.id not in self._contexts:
                context = await self._new_context(language, DEFAULT_CWD)
                self._defaults[language] = context
            return context

    async def _create_context(self, body: dict[str, Any]) -> dict[str, str]:
        language = normalize_language(_optional_str(body, "language"))
        cwd = _optional_str(body, "cwd") or DEFAULT_CWD
        return (await self._new_context(language, cwd)).to_json()

    async def _context_route(self, method: str, context_id: str, restart: bool, send: Send) -> None:
        context = self._contexts.get(context_id)
        if (restart and method == "POST") or (not restart and method == "DELETE"):
            if context is None:
                raise HTTPError(404, f"Context {context_id} not found")
        else:
            await _reply_json(send, 405, {"detail": "Method Not Allowed"})
            return
        if restart:
            try:
                await context.restart()
            except Exception:
                log.exception("restarting context %s failed", context_id)
                raise HTTPError(500, f"Failed to restart context {context_id}") from None
        else:
            self._contexts.pop(context_id, None)
            for language, default in list(self._defaults.items()):
                if default is context:
                    del self._defaults[language]
            await context.close()
        await _reply_json(send, 200, None)

    async def _resolve(self, body: dict[str, Any]) -> Context:
        context_id = _optional_str(body, "context_id")
        language = _optional_str(body, "language")
        if context_id and language:
            raise HTTPError(400, "Only one of context_id or language can be provided")
        if context_id:
            context = self._contexts.get(context_id)
            if context is None:
                raise HTTPError(404, f"Context {context_id} not found")
            return context
        return await self._default_context(normalize_language(language))

    # ---- /execute ---------------------------------------------------------------------------

    async def _execute(self, body: dict[str, Any], receive: Receive, send: Send) -> None:
        code = body.get("code")
        if not isinstance(code, str):
            raise HTTPError(422, "Field 'code' is required and must be a string")
        env_vars = body.get("env_vars") or {}
        if not isinstance(env_vars, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()
        ):
            raise HTTPError(422, "Field 'env_vars' must be an object of string values")
        context = await self._resolve(body)

        await send({"type": "http.response.start", "status": 200, "headers": []})
        stop = asyncio.Event()
        disconnected = asyncio.Event()
        watchers = [
            asyncio.ensure_future(_watch_disconnect(receive, disconnected, stop)),
            asyncio.ensure_future(_relay(self.sandbox.killed, stop)),
        ]
        try:
            completed = await self._run_locked(context, code, env_vars, stop, disconnected, send)
        finally:
            for watcher in watchers:
                watcher.cancel()
        if not completed and not disconnected.is_set():
            # Cut the connection mid-body: the SDK then checks is_running() and raises
            # "The sandbox was killed while the request was in progress".
            raise SandboxKilledDuringExecution("sandbox killed during /execute; aborting stream")

    async def _run_locked(
        self,
        context: Context,
        code: str,
        env_vars: dict[str, str],
        stop: asyncio.Event,
        disconnected: asyncio.Event,
        send: Send,
    ) -> bool:
        """Run the cell under the context lock; True when the stream was completed."""
        if not await _acquire_unless(context.lock, stop):
            return False
        release_now = True
        try:
            await settle_aborts(context.kernel)  # a previous failed cell must not abort this one
            cell = prepend_env(code, context.call_env_code(env_vars) if env_vars else "")
            execution = Execution(context, cell, stop)
            lines = execution.lines()
            try:
                async for line in lines:
                    body = ndjson.encode(line)
                    await send({"type": "http.response.body", "body": body, "more_body": True})
            except Exception:
                # A server that raises on a vanished client (uvicorn returns silently): treat it
                # as the disconnect it is, so the cell is still interrupted.
                await lines.aclose()
                if execution.kernel is not None:
                    execution.kernel.interrupt()
                    release_now = False
                    self._in_background(_finish_interrupt(execution, context, env_vars))
                raise
            if execution.outcome == "stopped":
                if disconnected.is_set() and not self.sandbox.killed.is_set():
                    assert execution.kernel is not None
                    execution.kernel.interrupt()
                    # Keep the lock until the interrupted cell is idle, so the next cell on this
                    # context is not aborted by ipykernel's stop_on_error.
                    release_now = False
                    self._in_background(_finish_interrupt(execution, context, env_vars))
                return False
            if execution.outcome == "died":
                if self.sandbox.killed.is_set() or self._closed:
                    return False
                release_now = False
                self._in_background(_restart_after_death(context))
            elif env_vars and execution.outcome == "finished":
                restore = context.restore_env_code(list(env_vars))
                release_now = False
                self._in_background(_restore_env(context, restore))
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return True
        finally:
            if release_now:
                context.lock.release()

    def _in_background(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


async def _finish_interrupt(execution: Execution, context: Context, env_vars: dict) -> None:
    """Wait for the interrupted cell's end, then put its env vars back (a call cut by its
    timeout left them, a secret among them, to every later call); releases the lock."""
    try:
        await execution.wait_interrupted()
    except BaseException:
        context.lock.release()
        raise
    await _restore_env(context, context.restore_env_code(list(env_vars)) if env_vars else "")


async def _restart_after_death(context: Context) -> None:
    """Give the context a fresh kernel after its kernel died mid-execution; releases the lock."""
    try:
        await context.ensure_alive()
    except Exception:
        log.exception("restarting context %s after its kernel died failed", context.id)
    finally:
        context.lock.release()


async def _restore_env(context: Context, code: str) -> None:
    """Silent cell putting per-call env vars back (none for an empty ``code``); the next cell
    waits for it (the lock, released here)."""
    try:
        if code and context.kernel is not None and not context.kernel.died.is_set():
            await settle_aborts(context.kernel)  # the cell may have failed: stop_on_error
            await context.kernel.run_silent(code)
    except Exception:
        log.exception("restoring env vars in context %s failed", context.id)
    finally:
        context.lock.release()


async def _acquire_unless(lock: asyncio.Lock, stop: asyncio.Event) -> bool:
    """Acquire `lock` unless `stop` is set first."""
    acquire = asyncio.ensure_future(lock.acquire())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({acquire, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if acquire.done() and not acquire.cancelled():
        return True
    acquire.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await acquire
    if acquire.done() and not acquire.cancelled():
        lock.release()  # it was granted while we were cancelling
    return False


async def _watch_disconnect(
    receive: Receive, disconnected: asyncio.Event, stop: asyncio.Event
) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    disconnected.set()
    stop.set()


async def _relay(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()


def _optional_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None or isinstance(value, str):
        return value
    raise HTTPError(422, f"Field '{key}' must be a string or null")


async def _reply_text(send: Send, status: int, text: str) -> None:
    await _reply(send, status, text.encode(), b"text/plain; charset=utf-8")


async def _reply_json(send: Send, status: int, data: Any) -> None:
    await _reply(send, status, json.dumps(data).encode(), b"application/json")


async def _reply(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
