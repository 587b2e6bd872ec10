"""Code contexts (one kernel each) and the streaming of one execution as NDJSON lines."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections.abc import AsyncGenerator
from typing import Any

from . import ndjson
from .kernels import LANGUAGES, Kernel, SandboxLike, is_idle, next_message
from .server_kernel import ServerKernel

log = logging.getLogger(__name__)

KEEPALIVE_INTERVAL = 5.0  # seconds of kernel silence before a keepalive line (as E2B)
INTERRUPT_GRACE = 15.0  # how long an interrupted cell may take to reach idle before we move on
REPLY_AFTER_IDLE = 5.0  # how long a finished cell's shell reply may lag its 'idle' on iopub
_ABORTED = ("abort", "aborted")
_prefix_counter = itertools.count(1)


class UnknownLanguage(ValueError):
    """No kernel for this language in the local service."""


class Context:
    """One E2B code context: a kernel with an id, a language, a cwd and a lock."""

    def __init__(self, sandbox: SandboxLike, language: str, cwd: str) -> None:
        if language not in LANGUAGES:
            known = ", ".join(sorted(LANGUAGES))
            raise UnknownLanguage(
                f"Failed to create context: no kernel for language '{language}' in the local "
                f"E2B service (available: {known})"
            )
        self.id = str(uuid.uuid4())
        self.language = language
        self.cwd = cwd
        self.sandbox = sandbox
        self.lock = asyncio.Lock()
        self.kernel: Kernel | None = None
        self.closed = False  # deleted, or the sandbox is gone: never start a kernel again
        self._lifecycle = asyncio.Lock()  # serializes start/restart/stop of the kernel
        self._spec = LANGUAGES[language]
        self._server_kernel_id: str | None = None  # our kernel's id in the Jupyter Server

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "language": self.language, "cwd": self.cwd}

    async def start(self) -> None:
        """Start the kernel; the cwd is set by a silent cell so execution_count stays at 0."""
        async with self._lifecycle:
            await self._start(set_cwd=True)

    async def _start(self, *, set_cwd: bool, attach: bool = False) -> None:
        if self.closed:
            raise ProcessLookupError(f"context {self.id} was removed")
        prefix = f"k{next(_prefix_counter)}"
        # As on E2B, python contexts are kernels of the sandbox's Jupyter Server when it has
        # one, so /execute and port 8888 share their namespaces, and the context's id is the
        # kernel's id there (a restart keeps both); otherwise a kernel of our own.
        server = getattr(self.sandbox, "jupyter", None)
        if self.language == "python" and server is not None:
            restarting = self._server_kernel_id
            kernel: Kernel = ServerKernel(
                self.sandbox, self._spec, prefix, server, restarting, attach=attach
            )
        else:
            kernel = Kernel(self.sandbox, self._spec, prefix)
        # Like E2B (kernels start in the Jupyter server root), the cwd comes only from the
        # silent cell, so a restarted kernel is back in /home/user.
        await kernel.start("/home/user")
        self.kernel = kernel
        if isinstance(kernel, ServerKernel) and kernel.kernel_id is not None:
            if self._server_kernel_id is None:
                self.id = kernel.kernel_id  # first start: not registered under an id yet
            self._server_kernel_id = kernel.kernel_id
        envs = self.sandbox_envs()
        if envs:
            # A kernel of the Jupyter Server inherits the server's environment, which may
            # predate the sandbox's env vars (a warm-pool sandbox gets them at create).
            await kernel.run_silent(self.env_code(envs))
        if set_cwd:
            await kernel.run_silent(self._spec.chdir_code(self._kernel_path(self.cwd)))
        if self.closed:  # removed while starting
            await self._stop(polite=False)

    def _kernel_path(self, path: str) -> str:
        """The path as the kernel sees it: without isolation the sandbox paths live on the host."""
        if getattr(self.sandbox, "isolated", True):
            return path
        paths = getattr(self.sandbox, "paths", None)
        try:
            return str(paths.to_host(path, follow=True).host) if paths is not None else path
        except (OSError, ValueError):
            return path

    async def restart(self) -> None:
        """A new kernel under the same id; state is gone and the cwd is not set again (as E2B)."""
        async with self._lifecycle:
            await self._stop(polite=True, forget=False)
            await self._start(set_cwd=False)

    async def ensure_alive(self) -> None:
        """Replace a kernel that died (e.g. `os._exit`) before running more code in it."""
        async with self._lifecycle:
            if not self.closed and (self.kernel is None or self.kernel.died.is_set()):
                await self._stop(polite=False, forget=False)
                # A server kernel restarted by a client of port 8888 is taken as it is.
                await self._start(set_cwd=False, attach=True)

    async def close(self, *, polite: bool = True) -> None:
        """Stop the kernel for good (context deleted or sandbox gone)."""
        self.closed = True
        if self.kernel is not None and not polite:
            # Kill at once, even while a start or restart holds the lifecycle lock.
            await self.kernel.stop(polite=False)
        async with self._lifecycle:
            await self._stop(polite=polite)

    async def _stop(self, *, polite: bool, forget: bool = True) -> None:
        """Stop the kernel; ``forget=False`` keeps a server kernel's id for its restart."""
        kernel, self.kernel = self.kernel, None
        if isinstance(kernel, ServerKernel):
            kernel.forget = forget
        if kernel is not None:
            await kernel.stop(polite=polite)

    def env_code(self, env_vars: dict[str, str]) -> str:
        return self._spec.set_env_code(env_vars)

    def call_env_code(self, env_vars: dict[str, str]) -> str:
        """One /execute call's env vars, undone by :meth:`restore_env_code` after it."""
        return self._spec.call_env_code(env_vars)

    def restore_env_code(self, keys: list[str]) -> str:
        return self._spec.restore_env_code(keys, self.sandbox_envs())

    def sandbox_envs(self) -> dict[str, str]:
        """E2B's default env vars and the sandbox's own (theirs win, as in every process)."""
        return {
            **(getattr(self.sandbox, "e2b_env", None) or {}),
            **(getattr(self.sandbox, "envs", None) or {}),
        }


def prepend_env(code: str, env_code: str) -> str:
    """Prepend env-setting code, indented like the first non-empty line of the cell (as E2B)."""
    if not env_code:
        return code
    first = next((line for line in code.splitlines() if line.strip()), "")
    indent = first[: len(first) - len(first.lstrip())]
    prefix = "\n".join(indent + line for line in env_code.splitlines())
    return f"{prefix}\n{code}"


class Execution:
    """One /execute cell in a context; `lines()` yields its NDJSON lines as they happen."""

    def __init__(self, context: Context, code: str, stop: asyncio.Event) -> None:
        self.context = context
        self.code = code
        self.stop = stop  # set by the HTTP layer on client disconnect or sandbox kill
        self.outcome = "running"  # -> "finished" | "stopped" | "died" | "failed"
        self.kernel: Kernel | None = None
        self.msg_id = ""

    async def lines(self) -> AsyncGenerator[dict[str, Any], None]:
        try:
            await self.context.ensure_alive()  # the kernel may have died since the last cell
        except Exception as exc:
            log.warning("context %s: its kernel could not be restarted: %s", self.context.id, exc)
            self.outcome = "failed"
            yield ndjson.error_line(
                "ContextRestarting", f"Context was restarted, but its kernel failed: {exc}"
            )
            yield ndjson.END_OF_EXECUTION
            return
        kernel = self.kernel = self.context.kernel
        if kernel is None:  # the context was deleted while this request waited for its lock
            self.outcome = "failed"
            yield ndjson.error_line(
                "UnexpectedEndOfExecution", f"Context {self.context.id} was removed"
            )
            yield ndjson.END_OF_EXECUTION
            return
        self.msg_id = kernel.send_execute(self.code, silent=False)
        queue = kernel.queue_for(self.msg_id)
        assert queue is not None
        reply = kernel.reply_for(self.msg_id)
        # An aborted request (ipykernel's stop_on_error) never shows execute_input on iopub, so
        # its shell reply is what ends the wait.
        aborted = asyncio.Event()
        if reply is not None:
            reply.add_done_callback(lambda future: _flag_abort(future, aborted))
        error_written = False
        input_seen = False
        while True:
            if self.stop.is_set():  # checked first: a flood of output must not hide a disconnect
                self.outcome = "stopped"
                return
            try:
                msg = await next_message(
                    queue, self.stop, kernel.died, aborted, timeout=KEEPALIVE_INTERVAL
                )
            except asyncio.TimeoutError:
                yield ndjson.KEEPALIVE
                continue
            if msg is None:
                if self.stop.is_set():
                    self.outcome = "stopped"
                    return
                if aborted.is_set():
                    self.outcome = "finished"
                    kernel.untrack(self.msg_id)
                    yield ndjson.error_line("ExecutionAborted", "Execution was aborted")
                    yield ndjson.END_OF_EXECUTION
                    return
                self.outcome = "died"
                kernel.untrack(self.msg_id)
                yield ndjson.error_line("ContextRestarting", "Context was restarted")
                yield ndjson.END_OF_EXECUTION
                return
            msg_type = msg["header"]["msg_type"]
            if msg_type == "execute_input":
                input_seen = True
            if msg_type == "error" and error_written:
                continue  # E2B writes only the first error of an execution
            line = ndjson.iopub_line(msg)
            if line is not None:
                error_written = error_written or line["type"] == "error"
                yield line
            if is_idle(msg) and input_seen:
                break
        # The reply can say what iopub did not (an exception group is only stderr text there,
        # and the reply's error): wait for it. ipykernel sends it before 'idle', but on another
        # socket, through the bridge: on a loaded machine it came more than 1 s after 'idle'.
        # (At most KEEPALIVE_INTERVAL: no keepalive line is owed meanwhile.)
        kernel.stop_routing(self.msg_id)  # nothing reads its queue any more
        if (
            reply is not None
            and not reply.done()  # usually it is here already
            and not await _until_done(kernel, [reply], REPLY_AFTER_IDLE, also=self.stop)
        ):
            if self.stop.is_set():
                self.outcome = "stopped"
                kernel.untrack(self.msg_id)
                return
            log.warning("kernel %s: no reply to a finished cell", kernel.prefix)
        self.outcome = "finished"
        kernel.untrack(self.msg_id)
        final = _reply_error(reply)
        if final is not None and not error_written:
            yield final
        yield ndjson.END_OF_EXECUTION

    async def wait_interrupted(self) -> None:
        """After an interrupt, wait (bounded) for idle so the next cell is not aborted."""
        kernel = self.kernel
        if kernel is None:
            return
        queue = kernel.queue_for(self.msg_id)
        try:
            if queue is None:
                return
            loop = asyncio.get_running_loop()
            deadline = loop.time() + INTERRUPT_GRACE
            while (remaining := deadline - loop.time()) > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    msg = await next_message(queue, kernel.died, timeout=remaining)
                    if msg is None or is_idle(msg):
                        return
                    continue
                kernel.interrupt()  # SIGINT may have landed outside the cell; try once more
                return
        finally:
            kernel.untrack(self.msg_id)


async def settle_aborts(kernel: Kernel | None, timeout: float = INTERRUPT_GRACE) -> None:
    """Wait until a failed user cell's stop_on_error abort is over, so the next request runs.

    ipykernel 7 aborts execute requests until its shell channel thread posts a "stop aborting"
    message; under load that can come after the failed cell's idle status, which is when the
    context lock is released. So wait for the user cells' replies, and after a failure probe
    with an empty silent cell until one is not aborted.
    """
    if kernel is None:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pending = list(kernel.user_replies.values())
    if pending and not await _until_done(kernel, pending, deadline - loop.time()):
        return
    while kernel.may_abort and (remaining := deadline - loop.time()) > 0:
        probe_id = kernel.send_execute("", silent=True)
        probe = kernel.reply_for(probe_id)
        assert probe is not None
        try:
            if not await _until_done(kernel, [probe], remaining):
                return
        finally:
            kernel.untrack(probe_id)
        if probe.result().get("content", {}).get("status") not in _ABORTED:
            kernel.may_abort = False
    if kernel.may_abort:
        log.warning("kernel %s still aborts requests %.0f s after an error", kernel.prefix, timeout)


async def _until_done(
    kernel: Kernel,
    futures: list[asyncio.Future[Any]],
    timeout: float,
    also: asyncio.Event | None = None,
) -> bool:
    """Wait for all `futures`; False if the kernel died, `also` was set or `timeout` passed
    first."""
    everything = asyncio.ensure_future(asyncio.wait(futures))
    events = [kernel.died] if also is None else [kernel.died, also]
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(
            {everything, *waiters}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for task in (everything, *waiters):
            task.cancel()
    return all(future.done() and not future.cancelled() for future in futures)


def _reply_error(reply: asyncio.Future[dict[str, Any]] | None) -> dict[str, Any] | None:
    """An error line from the shell reply when it says error (iopub may have carried none)."""
    if reply is None or not reply.done() or reply.cancelled():
        return None
    content = reply.result().get("content", {})
    if content.get("status") != "error":
        return None
    return ndjson.error_line(
        content.get("ename", ""), content.get("evalue", ""), content.get("traceback", [])
    )


def _flag_abort(reply: asyncio.Future[dict[str, Any]], aborted: asyncio.Event) -> None:
    if not reply.cancelled() and reply.result().get("content", {}).get("status") in _ABORTED:
        aborted.set()
