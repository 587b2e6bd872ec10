"""``SandboxSession``: one persistent E2B sandbox, driven through the unmodified E2B SDK.

The session turns ``AsyncSandbox.run_code`` callbacks into Jupyter-shaped events that are
yielded *while the cell runs* (callbacks -> ``asyncio.Queue`` -> async generator). It owns the
sandbox's lifecycle: background creation, keep-alive (refresh the sandbox timeout while busy,
and while idle unless idle mode is ``pause``), loss detection, restart and shutdown.

All methods must be called on one event loop (the loop the session was started on).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import IO, TYPE_CHECKING, Any

from ..backends import Backend, ServiceHandle
from ..config import SessionConfig
from ..errors import (
    E2BKernelError,
    ExecutionTimeout,
    SandboxLost,
    SandboxUnavailable,
)
from . import create_ahead, introspection, quick_create, sdk, text_plain
from .hidden import parse_reply
from .jupyter_server import (
    CONTEXTS_PORT,
    JUPYTER_PORT,
    JupyterEndpoint,
    endpoint_at,
    endpoint_for,
)
from .keepalive import KeepAlive
from .remote_look import notebook_session
from .sdk_errors import is_sandbox_gone, unavailable_message
from .streaming import DONE, Event, start_run_code
from .telemetry import execution_span
from .text_plain import install_code as text_plain_carrier_code

if TYPE_CHECKING:
    from e2b_code_interpreter import AsyncSandbox

__all__ = [
    "TIMEOUT_GRACE",
    "Event",
    "HiddenResult",
    "SandboxSession",
    "cell_limit",
    "cell_timeout_message",
    "cell_timeout_restart_message",
    "cell_timeout_running_message",
]

# How long a timed-out cell has to stop once interrupted (its cleanup) before its Python is
# restarted: a cell that catches KeyboardInterrupt would run on, and later cells wait behind it.
TIMEOUT_GRACE = 10.0

NEW_SANDBOX_NOTICE = (
    "[e2b-kernel] The previous sandbox was lost; this cell runs in a NEW sandbox "
    "with fresh Python state and files.\n"
)


def cell_timeout_message(limit: float, raise_it: str) -> str:
    """The ``ExecutionTimeout`` message; ``raise_it`` names the setting that set ``limit``."""
    return (
        f"The cell did not finish within its timeout of {limit:g} s and was "
        f"interrupted; the sandbox and its state are kept. {raise_it}"
    )


def cell_timeout_restart_message(limit: float, raise_it: str) -> str:
    """The ``ExecutionTimeout`` message of a cell that caught its interrupt and ran on."""
    return (
        f"The cell did not finish within its timeout of {limit:g} s and did not stop when "
        "interrupted (it caught KeyboardInterrupt), so the sandbox's Python kernel was "
        "restarted: its variables are gone; files and installed packages are kept. "
        f"{raise_it}"
    )


def cell_timeout_running_message(limit: float) -> str:
    """The ``ExecutionTimeout`` message of a cell that ignored its interrupt and could not be
    stopped."""
    return (
        f"The cell did not finish within its timeout of {limit:g} s, did not stop when "
        "interrupted (it caught KeyboardInterrupt) and could not be stopped: it may still run "
        "in the sandbox, and later cells wait for it. Restart the kernel."
    )


def cell_limit(timeout: float | None, default: float | None) -> tuple[float | None, str]:
    """A cell's time limit (None or 0: none) and the sentence naming the setting that set it."""
    if timeout is not None:
        return timeout, "Allow this cell a longer timeout."
    return default, "Raise E2B_KERNEL_CELL_TIMEOUT to allow longer cells."


class HiddenResult:
    """What hidden code printed, and the remote error it raised (Jupyter content) if any."""

    def __init__(self, stdout: str, error: dict[str, Any] | None) -> None:
        self.stdout = stdout
        self.error = error

    def reply(self) -> dict[str, Any] | None:
        """The marked JSON reply the hidden code printed (see :mod:`.hidden`)."""
        return parse_reply(self.stdout)


class SandboxSession:
    """One sandbox and its default Python context, shared by the kernel, magic and executor."""

    def __init__(
        self,
        config: SessionConfig | None = None,
        *,
        name: str = "default",
        log: logging.Logger | None = None,
        service_factory: Callable[..., ServiceHandle] | None = None,
    ) -> None:
        self.config = config if config is not None else SessionConfig()
        self.name = name
        self.log = log or logging.getLogger("e2b_kernel.session")
        self._backend = Backend(self.config, self.log, service_factory)
        self.sandbox: AsyncSandbox | None = None
        # A sandbox created without the SDK (see .quick_create) until its SDK object is built.
        self._created: quick_create.CreatedSandbox | None = None
        self._quick_target: quick_create.QuickTarget | None = None  # where it was created
        # Stops the thread that keeps a sandbox created ahead alive (see .create_ahead): called
        # once this session's keep-alive has taken over, or the sandbox is dropped.
        self._settle_create_ahead: Callable[[], None] | None = None
        self._sdk_build: asyncio.Future[AsyncSandbox] | None = None
        # Set by a front end whose cells need no SDK (the kernel on the jupyter transport):
        # the sandbox is then created with one plain request where the backend allows it.
        self.defer_sdk = False
        self._start_lock = asyncio.Lock()
        self._exec_lock = asyncio.Lock()
        self._busy = False
        self._lost: str | None = None  # why the sandbox is gone; the next execute raises
        self._announce_new = False  # say "new sandbox" once on the next execute
        self._keepalive: KeepAlive | None = None
        self._run_task: asyncio.Task | None = None  # the running run_code, for the keep-alive
        self._run_lost = False  # the keep-alive found the sandbox gone during the run
        self._closed = False
        # How cells reach the sandbox ("jupyter" or "execute") and why; set by the front end
        # that chose it, shown by ``status``.
        self.transport = "execute"
        self.transport_reason = "not chosen yet"
        # The sandbox whose Python context has the text/plain carrier (see .text_plain).
        self._carrier_in: str | None = None

    @property
    def sandbox_id(self) -> str | None:
        """The id of the current sandbox, if there is one."""
        if self.sandbox is not None:
            return self.sandbox.sandbox_id
        return self._created.sandbox_id if self._created is not None else None

    @property
    def has_sandbox(self) -> bool:
        """Whether a sandbox runs for this session (its SDK object may not be built yet)."""
        return self.sandbox is not None or self._created is not None

    @property
    def backend(self) -> str:
        """ "cloud" or "local"."""
        return self._backend.name

    @property
    def isolation(self) -> str:
        """What isolation the backend gives, in words."""
        return self._backend.isolation

    @property
    def busy(self) -> bool:
        """True while a cell runs."""
        return self._busy

    # ---- connection -------------------------------------------------------------------

    async def start_backend(self) -> None:
        """Start the private local service if the backend needs one (sets ``isolation``)."""
        async with self._start_lock:
            await self._ensure_backend()

    async def _ensure_backend(self) -> None:
        """Start the backend's private service (if any) while the SDK is imported beside it:
        both take about 0.3 s, and most callers need both (see sdk.py). With ``defer_sdk``
        the SDK is left for later."""
        loading = None if self.defer_sdk else asyncio.ensure_future(sdk.load())
        try:
            await self._backend.ensure_started()
        finally:
            if loading is not None:
                await loading

    def attach_service(self, service: ServiceHandle) -> None:
        """Use an already running local service (for example one adopted after a restart)."""
        self._backend.attach(service)

    async def detach(self) -> dict[str, Any] | None:
        """Stop managing the sandbox without killing it; return how to reconnect to it.

        Returns None (and closes normally) when the sandbox cannot outlive this process,
        which is the case for a local service running inside it.
        """
        if not self.has_sandbox or not self._backend.outlives_process:
            await self.close()
            return None
        state: dict[str, Any] = {"sandbox_id": self.sandbox_id, "backend": self.backend}
        service_state = self._backend.hand_over()
        if service_state is not None:
            state["service"] = service_state
        self._closed = True
        self._drop_sandbox()
        return state

    def release(self) -> None:
        """Stop managing the sandbox without killing it: another session now drives it."""
        self._drop_sandbox()

    def sdk_options(self) -> dict[str, Any]:
        """SDK keyword arguments (URLs, key) that reach this session's backend; never log them."""
        return self._backend.sdk_opts()

    async def list_sandboxes(self) -> list[Any]:
        """Every running sandbox this session's backend can see (``SandboxInfo`` objects)."""
        await self.start_backend()  # a local backend's service must run; no sandbox needed
        paginator = (await sdk.load()).list(**self.sdk_options())
        found: list[Any] = []
        while paginator.has_next:
            found.extend(await paginator.next_items())
        return found

    async def reattach(self, sandbox_id: str, *, reset: bool = True) -> None:
        """After a kernel restart: reconnect to ``sandbox_id`` and (``reset``) reset its Python
        state; a front end that restarts its own remote kernel passes ``reset=False``."""
        try:
            await self.connect(sandbox_id)
            if reset:
                await self.restart()
        except E2BKernelError as exc:
            self.log.warning("could not keep sandbox %s across the restart: %s", sandbox_id, exc)
            self._drop_sandbox()

    async def start(self) -> None:
        """Create the sandbox (and the private local service when needed); idempotent."""
        async with self._start_lock:
            if self._closed:
                raise SandboxUnavailable(
                    f"this sandbox session ({self.name!r}) is closed; its sandbox was killed or "
                    "handed over. Create a new session (for example a new SandboxExecutor)."
                )
            if self.has_sandbox:
                return
            await self._ensure_backend()
            opts = self._backend.sdk_opts()
            try:
                await self._create(opts)
            except E2BKernelError:
                raise
            except Exception as exc:
                raise SandboxUnavailable(unavailable_message(exc, self.backend)) from None
            self._lost = None
            self.log.info(
                "sandbox %s started (backend %s, template %s)",
                self.sandbox_id,
                self.backend,
                self.config.template,
            )
            self._start_keepalive()

    async def _create(self, opts: dict[str, Any]) -> None:
        """Create the sandbox: with one plain request when the front end defers the SDK and
        the backend allows it (see .quick_create; the request may have been sent ahead, see
        .create_ahead), otherwise (or if that was refused) through the SDK."""
        settings = quick_create.create_settings(self.config)
        public_traffic = quick_create.ALLOW_PUBLIC_TRAFFIC
        target = quick_create.quick_target(opts) if self.defer_sdk else None
        self._quick_target = target
        if target is not None:
            body = quick_create.create_body(**settings, allow_public_traffic=public_traffic)
            claimed = create_ahead.claim(target, body)
            if claimed is not None:
                try:
                    self._created = await asyncio.wrap_future(claimed.reply)
                finally:
                    if self._created is None:
                        claimed.settle()
                    else:  # kept alive by its thread until our keep-alive takes over
                        self._settle_create_ahead = claimed.settle
            else:
                self._created = await quick_create.create(target, body)
            if self._created is not None:
                return
        sandbox_class = await sdk.load()
        self.sandbox = await sandbox_class.create(
            **settings, network={"allow_public_traffic": public_traffic}, **opts
        )

    async def connect(self, sandbox_id: str) -> None:
        """Attach to an existing (running or paused) sandbox instead of creating one."""
        async with self._start_lock:
            await self._ensure_backend()
            sandbox_class = await sdk.load()
            opts = self._backend.sdk_opts()
            try:
                sandbox = await sandbox_class.connect(
                    sandbox_id, timeout=self.config.sandbox_timeout, **opts
                )
            except Exception as exc:
                if is_sandbox_gone(exc):
                    raise SandboxLost(
                        f"there is no sandbox {sandbox_id} (mistyped, killed or expired); "
                        "%e2b list shows the running ones"
                    ) from None
                raise SandboxUnavailable(unavailable_message(exc, self.backend)) from None
            self._drop_sandbox()
            self.sandbox = sandbox
            self._lost = None
            self.log.info("connected to sandbox %s", sandbox_id)
            self._start_keepalive()

    async def _sdk_sandbox(self) -> AsyncSandbox:
        """The SDK's object for the current sandbox; for one created without the SDK, built
        the first time it is needed (no request is sent: see ``sdk.adopt``)."""
        while self.sandbox is None:
            await asyncio.shield(self._sdk_build_task())
        return self.sandbox

    def _sdk_build_task(self) -> asyncio.Future[AsyncSandbox]:
        """The running build of the SDK's object for the sandbox created without the SDK,
        started unless one runs (a failed one is started again)."""
        created = self._created
        if created is None:
            raise SandboxUnavailable("the sandbox is not started")
        if self._sdk_build is None or self._sdk_build.done():
            self._sdk_build = asyncio.ensure_future(self._adopt_created(created))
            self._sdk_build.add_done_callback(self._log_sdk_build)
        return self._sdk_build

    async def _adopt_created(self, created: quick_create.CreatedSandbox) -> AsyncSandbox:
        sandbox = await self._adopted(created)
        if self._created is created:  # not dropped meanwhile
            self.sandbox, self._created = sandbox, None
        return sandbox

    async def _adopted(self, created: quick_create.CreatedSandbox) -> AsyncSandbox:
        """The SDK's object for ``created``, imported and built on a worker thread: building
        it also builds the SDK's HTTP transport (system CA certificates, OpenTelemetry
        instruments; about 40 ms), which must not hold up the messages this loop relays. The
        SDK's transports are process-wide and bound to no event loop."""
        return await asyncio.to_thread(sdk.adopt, created, self._backend.sdk_opts())

    def _log_sdk_build(self, build: asyncio.Future) -> None:
        if not build.cancelled() and build.exception() is not None:
            # Built again by whoever needs it next, where the error then shows.
            self.log.debug("could not build the sandbox's SDK object: %r", build.exception())

    async def _ready_sandbox(self) -> tuple[AsyncSandbox, bool]:
        """Return the sandbox to run in (the SDK's object), and whether it is new after a loss."""
        announce = await self._ready()
        return await self._sdk_sandbox(), announce

    async def _ready(self, *, cell: bool = True) -> bool:
        """Make sure a sandbox runs (and is resumed); whether it is new after a loss.

        Only a ``cell`` is told of a loss (its error, then the new sandbox's notice): any
        other request (a front end's kernel_info or completion) leaves both for the next cell.
        """
        if self._lost is not None:
            if not cell:
                raise SandboxLost(self._lost)
            reason, self._lost = self._lost, None
            self._drop_sandbox()
            self._announce_new = True
            raise SandboxLost(reason)
        await self.start()
        if self.config.idle == "pause":
            # Resume it if it paused while idle, and push its timeout out before the cell starts
            # (connect does both), so it cannot pause under a running cell.
            await self._resume()
        return self.take_new_sandbox_notice() if cell else False

    def take_new_sandbox_notice(self) -> bool:
        """Whether the next cell must say that it runs in a new sandbox (said once)."""
        announce, self._announce_new = self._announce_new, False
        return announce

    async def _resume(self) -> None:
        """Resume a sandbox that may have paused while idle (connect resumes it)."""
        sandbox = await self._sdk_sandbox()
        try:
            await sandbox.connect(timeout=self.config.sandbox_timeout)
        except Exception as exc:
            if is_sandbox_gone(exc) or await self._backend.service_lost():
                message = self._lost_message(self._how_lost())
                self._drop_sandbox()
                self._announce_new = True
                raise SandboxLost(message) from None
            raise SandboxUnavailable(unavailable_message(exc, self.backend)) from None

    async def ready(self, *, cell: bool = True) -> bool:
        """Make sure a sandbox runs (starting or resuming it); True if it is new after a loss.

        For front ends that run code by their own transport. Raises ``SandboxLost`` once when
        the previous sandbox was found gone while idle, as ``execute`` does. A request that is
        not a ``cell`` neither takes that error nor the notice of a new sandbox from the next
        cell.
        """
        return await self._ready(cell=cell)

    def jupyter_endpoint(self) -> JupyterEndpoint:
        """Where the current sandbox's Jupyter Server is (URL and headers; never log these)."""
        return self._port_endpoint(JUPYTER_PORT, self.config.jupyter_url)

    def _port_endpoint(self, port: int, base_url: str | None = None) -> JupyterEndpoint:
        if self.sandbox is not None:
            return endpoint_for(self.sandbox, base_url, port)
        created = self._created
        if created is None:
            raise SandboxUnavailable("the sandbox is not started")
        url = base_url or created.sandbox_url
        return endpoint_at(url, created.sandbox_id, port, created.traffic_access_token)

    async def code_context_ids(self, language: str = "python") -> list[str]:
        """Ids of the sandbox's ``/execute`` contexts of ``language`` ([] when unknown).

        On E2B each context is a kernel of the sandbox's Jupyter Server with the same id, so a
        front end that speaks Jupyter can share the namespace of ``Sandbox.run_code``. Asked
        as the SDK's ``list_code_contexts`` asks, without needing the SDK.
        """
        if not self.has_sandbox:
            return []
        try:
            contexts = await self._port_endpoint(CONTEXTS_PORT).list_contexts()
        except Exception as exc:
            self.log.debug("could not list code contexts: %r", exc)
            return []
        return [str(c.get("id")) for c in contexts if c.get("language") == language]

    def hold_busy(self, busy: bool) -> None:
        """A front end's own transport runs a cell (keep-alive refreshes while busy)."""
        self._busy = busy
        if not busy and self._created is not None:
            # After a cell, which needed none: no later request waits for the SDK's import.
            self._sdk_build_task()

    def report_lost(self, message: str) -> None:
        """A front end found the sandbox gone while idle: the next ``ready`` raises
        ``SandboxLost(message)`` once, then starts a new sandbox and says so."""
        self._lost = message

    async def confirm_lost(self) -> str | None:
        """After a transport's connection died: if the sandbox is gone, forget it (the next
        ``ready`` starts a new one and says so) and return the message for the user."""
        sandbox_id = self.sandbox_id
        if sandbox_id is None:
            return None
        if self._lost is not None:
            message, self._lost = self._lost, None
            self._mark_lost(sandbox_id)
            return message
        if not await self._is_gone():
            return None
        message = self._lost_message(self._how_lost())
        self._mark_lost(sandbox_id)
        return message

    async def _is_gone(self) -> bool:
        """Asked of the control plane: a paused sandbox is not gone (the next cell resumes it);
        a killed or expired one is unknown there."""
        if await self._backend.service_lost():
            return True
        try:
            sandbox = await self._sdk_sandbox()
        except Exception as exc:  # dropped meanwhile, or the SDK would not import
            self.log.debug("could not ask for the sandbox's state: %r", exc)
            return False
        try:
            info = await asyncio.wait_for(sandbox.get_info(), 10)
        except Exception as exc:
            if is_sandbox_gone(exc):
                return True
            self.log.debug("could not ask for the sandbox's state: %r", exc)
        else:
            if str(getattr(info, "state", "")).lower().endswith("paused"):
                return False
        try:
            return not await asyncio.wait_for(sandbox.is_running(), 10)
        except Exception as exc:
            return is_sandbox_gone(exc)

    def _drop_sandbox(self) -> None:
        if self.has_sandbox:  # answers kept for its first requests (.create_ahead) go with it
            for port in (JUPYTER_PORT, CONTEXTS_PORT):
                self._port_endpoint(port).forget_answers_ahead()
        self.sandbox = None
        self._created = None
        self._sdk_build = None
        self._lost = None  # said of the sandbox dropped here: never of the next one
        self._create_ahead_settled()
        if self._keepalive is not None:
            self._keepalive.stop()
            self._keepalive = None

    def _how_lost(self) -> str:
        """How a sandbox that cannot be reached any more was lost, in words."""
        if self._backend.service is None and self.backend == "local":
            return "lost with the private local E2B service, which stopped"
        return "killed or expired"

    def _lost_message(self, how: str) -> str:
        name = f"sandbox {self.sandbox_id}" if self.sandbox_id else "sandbox"
        return (
            f"The {name} was {how}: its Python state and files are gone. "
            "Run the cell again to continue in a new sandbox."
        )

    # ---- keep-alive ---------------------------------------------------------------------

    def _start_keepalive(self) -> None:
        if self._keepalive is not None:
            self._keepalive.stop()
        sandbox_id = self.sandbox_id
        assert sandbox_id is not None
        self._keepalive = KeepAlive(
            sandbox_id,
            self._refresh_timeout,
            self.config,
            busy=lambda: self._busy,
            on_gone=self._gone,
            log=self.log,
        )
        if self.config.idle == "pause":
            self._create_ahead_settled()  # idle, it may pause at its timeout: cells resume it

    async def _refresh_timeout(self) -> None:
        """Set the sandbox's timeout again: with one plain request while the SDK's object is
        not built (a short timeout can run out while the SDK imports), else through the SDK,
        which also explains any refusal (a sandbox gone, say)."""
        created, target, timeout = self._created, self._quick_target, self.config.sandbox_timeout
        refreshed = False
        if self.sandbox is None and created is not None and target is not None:
            refreshed = await quick_create.refresh(target, created.sandbox_id, timeout)
        if not refreshed:
            await (await self._sdk_sandbox()).set_timeout(timeout)
        self._create_ahead_settled()  # refreshed by us: the thread's refreshes are not needed

    def _create_ahead_settled(self) -> None:
        settle, self._settle_create_ahead = self._settle_create_ahead, None
        if settle is not None:
            settle()

    def _gone(self, sandbox_id: str) -> None:
        """The keep-alive found the sandbox gone: fail the running cell, or the next one."""
        if self._run_task is not None and not self._run_task.done():
            self._run_lost = True
            self._run_task.cancel()
        elif self.sandbox_id == sandbox_id:
            self._lost = self._lost_message("killed or expired")

    # ---- execution ------------------------------------------------------------------------

    async def execute(
        self,
        code: str,
        *,
        timeout: float | None = None,
        env_vars: dict[str, str] | None = None,
        language: str | None = None,
        front_end: str = "api",
    ) -> AsyncIterator[Event]:
        """Run ``code`` and yield Jupyter-shaped events as they arrive.

        Raises ``SandboxLost``, ``SandboxUnavailable``, ``ExecutionTimeout`` or
        ``ConfigurationError`` for infrastructure failures. Cancelling the consumer interrupts
        the remote cell (the stream is closed, so the server interrupts the kernel). Each
        execution is one ``e2b.execute`` span, tagged with ``front_end``.
        """
        with execution_span(front_end, self.sandbox_id) as span:
            span.attributes["e2b.language"] = language or "python"
            async with self._exec_lock:
                sandbox, announce = await self._ready_sandbox()
                span.sandbox_id = sandbox.sandbox_id
                if announce:
                    yield ("stream", {"name": "stderr", "text": NEW_SANDBOX_NOTICE})
                if language in (None, "python") and front_end != "executor":
                    await self._install_carrier(sandbox)
                async for event in self._run(sandbox, code, timeout, env_vars, language):
                    if event[0] == "error":
                        span.fail(str(event[1].get("ename", "Error")))
                    yield event

    async def _run(
        self,
        sandbox: AsyncSandbox,
        code: str,
        timeout: float | None,
        env_vars: dict[str, str] | None,
        language: str | None,
    ) -> AsyncIterator[Event]:
        task, queue = start_run_code(sandbox, code, envs=env_vars, language=language)
        self._run_task, self._run_lost = task, False
        limit, raise_it = cell_limit(timeout, self.config.cell_timeout)
        deadline = None if not limit else time.monotonic() + limit
        self._busy = True
        try:
            while True:
                remaining = None if deadline is None else deadline - time.monotonic()
                try:
                    event = await asyncio.wait_for(queue.get(), remaining)
                except asyncio.TimeoutError:
                    task.cancel()  # closing the stream interrupts the remote cell
                    await asyncio.wait([task])
                    stopped = "stopped"
                    if language in (None, "python"):
                        stopped = await self._stopped_after_interrupt(sandbox)
                    if stopped == "stopped":
                        message = cell_timeout_message(limit or 0, raise_it)
                    elif stopped == "restarted":
                        message = cell_timeout_restart_message(limit or 0, raise_it)
                    else:
                        message = cell_timeout_running_message(limit or 0)
                    raise ExecutionTimeout(message) from None
                if event is DONE:
                    break
                yield event
            await self._finish(sandbox, task, language)
        finally:
            self._busy = False
            self._run_task = None
            if not task.done():
                task.cancel()
                await asyncio.wait([task])

    async def _stopped_after_interrupt(self, sandbox: AsyncSandbox) -> str:
        """``stopped`` when the interrupted cell ended within TIMEOUT_GRACE seconds (the
        context then answers); if it caught the interrupt and runs on, its context is
        restarted (every later cell would wait behind it): ``restarted``, or ``running`` when
        that failed. Failures to tell leave it to the next cell."""
        try:
            await asyncio.wait_for(self._run_hidden_now(sandbox, "pass"), TIMEOUT_GRACE)
            return "stopped"
        except asyncio.TimeoutError:
            pass
        except Exception as exc:
            self.log.warning("could not tell whether the timed-out cell stopped: %r", exc)
            return "stopped"
        self.log.warning("a timed-out cell ignored its interrupt: restarting its context")
        try:
            restarted = await asyncio.wait_for(self._restart_python_context(sandbox), 60)
        except Exception as exc:
            self.log.warning("could not restart the timed-out cell's context: %r", exc)
            return "running"
        return "restarted" if restarted else "running"

    async def _restart_python_context(self, sandbox: AsyncSandbox) -> bool:
        """Restart the sandbox's default Python context; False when it has none yet."""
        contexts = await sandbox.list_code_contexts()
        default = next((c for c in contexts if c.language == "python"), None)
        if default is None:
            return False
        await sandbox.restart_code_context(default)
        self._carrier_in = None  # fresh Python state: install it again
        return True

    async def _finish(
        self, sandbox: AsyncSandbox, task: asyncio.Task, language: str | None = None
    ) -> None:
        """Turn the finished ``run_code`` task into nothing or an E2BKernelError."""
        if task.cancelled():
            if self._run_lost:
                self._mark_lost(sandbox.sandbox_id)
            raise SandboxLost(self._lost_message("killed or expired"))
        exc = task.exception()
        if exc is None:
            return
        if isinstance(exc, E2BKernelError):
            raise exc
        self.log.warning("run_code failed: %r", exc)
        gone = is_sandbox_gone(exc) or await self._backend.service_lost()
        if not gone:
            try:
                gone = not await asyncio.wait_for(sandbox.is_running(), 10)
            except Exception:
                gone = False
        if gone:
            message = self._lost_message(self._how_lost())
            self._mark_lost(sandbox.sandbox_id)
            raise SandboxLost(message)
        if language not in (None, "python") and "context" in str(exc).lower():
            # Running it again cannot help: the template has no kernel for that language.
            raise SandboxUnavailable(
                f"The sandbox cannot run {language!r} code ({type(exc).__name__}: {exc}). "
                "Use a language its template provides, such as python or bash."
            )
        raise SandboxUnavailable(
            f"The connection to sandbox {sandbox.sandbox_id} failed during the cell "
            f"({type(exc).__name__}: {exc}). The sandbox is still running; run the cell again."
        )

    def _mark_lost(self, sandbox_id: str) -> None:
        """Forget a lost sandbox: the next execute creates a new one and says so once."""
        if self.sandbox_id == sandbox_id:
            self._drop_sandbox()
            self._announce_new = True

    async def run_hidden(self, code: str) -> HiddenResult:
        """Run hidden code in the user's context after any running cell; nothing is shown.

        Raises ``SandboxLost``/``SandboxUnavailable`` as ``execute`` does; a remote exception
        is returned in ``HiddenResult.error``.
        """
        async with self._exec_lock:
            sandbox, _ = await self._ready_sandbox()
            return await self._run_hidden_now(sandbox, code)

    async def _run_hidden_now(self, sandbox: AsyncSandbox, code: str) -> HiddenResult:
        chunks: list[str] = []
        errors: list[dict[str, Any]] = []
        task, queue = start_run_code(sandbox, code, envs=None, language=None)
        self._busy = True
        try:
            while (event := await queue.get()) is not DONE:
                if event[0] == "stream" and event[1].get("name") == "stdout":
                    chunks.append(str(event[1].get("text", "")))
                elif event[0] == "error":
                    errors.append(event[1])
            await self._finish(sandbox, task)
        finally:
            self._busy = False
        return HiddenResult("".join(chunks), errors[0] if errors else None)

    async def _install_carrier(self, sandbox: AsyncSandbox) -> None:
        """Once per Python context: keep the quotes of str results (a notebook user's view;
        ``SandboxExecutor`` keeps E2B's own ``text``), and name the notebook in ``__session__``
        as python3 does (from the ``JPY_SESSION_NAME`` Jupyter gave this process)."""
        if self._carrier_in == sandbox.sandbox_id:
            return
        session_name = os.environ.get("JPY_SESSION_NAME") or None
        code = text_plain_carrier_code() + "\n" + notebook_session(session_name)
        try:
            result = await asyncio.wait_for(self._run_hidden_now(sandbox, code), 30)
        except E2BKernelError:
            raise
        except Exception as exc:
            self.log.warning("could not install the text/plain carrier: %r", exc)
            return
        if result.error is not None:
            self.log.warning("the text/plain carrier failed: %s", result.error.get("evalue"))
        self._carrier_in = sandbox.sandbox_id

    async def _reply_if_idle(self, code: str) -> dict[str, Any] | None:
        """Hidden code for a front end's quick question: never waits for a running cell.

        Returns the hidden code's marked reply, or None when busy or on any failure.
        """
        if self._busy or self._exec_lock.locked() or self._lost is not None or self._closed:
            return None
        if not self.has_sandbox:
            try:  # right after start-up the sandbox may still be on its way
                await asyncio.wait_for(self.start(), 60)
            except Exception as exc:
                self.log.debug("no sandbox for hidden code: %r", exc)
                return None
            if self._exec_lock.locked():  # a cell started meanwhile: do not wait for it
                return None
        async with self._exec_lock:
            try:
                sandbox = await self._sdk_sandbox()
                result = await asyncio.wait_for(self._run_hidden_now(sandbox, code), 30)
            except SandboxLost as exc:
                self._lost = str(exc)  # found by a completion, say: the next cell tells it
                return None
            except Exception as exc:
                self.log.debug("hidden code failed: %r", exc)
                return None
        return result.reply()

    async def complete(self, code: str, cursor_pos: int) -> dict:
        """Jupyter ``complete_reply`` fields from IPython's completer in the sandbox."""
        reply = await self._reply_if_idle(introspection.complete_code(code, cursor_pos))
        return reply if reply is not None else introspection.empty_complete_reply(cursor_pos)

    async def inspect(self, code: str, cursor_pos: int, detail_level: int = 0) -> dict:
        """Jupyter ``inspect_reply`` fields from IPython's inspector in the sandbox."""
        reply = await self._reply_if_idle(
            introspection.inspect_code(code, cursor_pos, detail_level)
        )
        return reply if reply is not None else introspection.empty_inspect_reply()

    async def user_expressions(self, expressions: dict[str, str]) -> dict:
        """Evaluate Jupyter ``user_expressions`` in the user's namespace ({} on failure)."""
        if not expressions:
            return {}
        reply = await self._reply_if_idle(introspection.user_expressions_code(expressions))
        for result in (reply or {}).values():
            if isinstance(result, dict) and isinstance(result.get("data"), dict):
                text_plain.restore(result["data"])  # not the /execute carrier's private type
        return reply or {}

    # ---- files ---------------------------------------------------------------------------

    async def _files(self) -> Any:
        """The started sandbox's file API (the SDK's ``Filesystem``)."""
        await self.start()
        return (await self._sdk_sandbox()).files

    async def write_file(self, path: str, data: bytes | IO[bytes]) -> None:
        """Write ``data`` to ``path`` in the sandbox, creating folders as needed."""
        await (await self._files()).write(path, data)

    async def read_file(self, path: str) -> bytes:
        """The bytes of the sandbox file at ``path``."""
        return bytes(await (await self._files()).read(path, format="bytes"))

    async def make_dir(self, path: str) -> None:
        """Create a folder (and its parents) in the sandbox."""
        await (await self._files()).make_dir(path)

    async def path_info(self, path: str) -> Any | None:
        """The SDK's ``EntryInfo`` for ``path``, or None when nothing is there."""
        files = await self._files()
        if not await files.exists(path):
            return None
        return await files.get_info(path)

    async def list_dir(self, path: str) -> list[Any]:
        """The entries (``EntryInfo``) directly inside a sandbox folder."""
        return list(await (await self._files()).list(path, depth=1))

    # ---- lifecycle ------------------------------------------------------------------------

    async def restart(self) -> None:
        """Fresh Python state in the same sandbox; files and installed packages are kept."""
        sandbox, _ = await self._ready_sandbox()
        async with self._exec_lock:
            try:
                # None yet: the default context is created lazily by the next execute.
                await self._restart_python_context(sandbox)
            except Exception as exc:
                if is_sandbox_gone(exc) or await self._backend.service_lost():
                    message = self._lost_message(self._how_lost())
                    self._mark_lost(sandbox.sandbox_id)
                    raise SandboxLost(message) from None
                raise SandboxUnavailable(f"could not restart the Python context: {exc}") from None

    async def set_timeout(self, seconds: int) -> None:
        """Set the sandbox timeout (seconds from now) and keep refreshing to that value."""
        if self.has_sandbox:  # first, so a refused value is not kept for refreshes
            await (await self._sdk_sandbox()).set_timeout(int(seconds))
        self.config.sandbox_timeout = int(seconds)

    async def status(self) -> dict:
        """Backend, isolation, sandbox id, template and when the sandbox would expire."""
        info: dict[str, Any] = {
            "backend": self.backend,
            "isolation": self.isolation,
            "sandbox_id": self.sandbox_id,
            "template": self.config.template,
            "end_at": None,
            "idle": self.config.idle,
            "transport": self.transport,
            "transport_reason": self.transport_reason,
        }
        if self.has_sandbox:
            try:
                details = await (await self._sdk_sandbox()).get_info()
                info["end_at"] = details.end_at.isoformat() if details.end_at else None
            except Exception as exc:
                info["error"] = str(exc)
        return info

    async def close(self, *, keep: bool = False) -> str | None:
        """Kill the sandbox (or keep it and return its id) and stop the private service."""
        self._closed = True
        sandbox, created, sandbox_id, kept = self.sandbox, self._created, self.sandbox_id, None
        self._drop_sandbox()
        if sandbox_id is not None:
            if keep and self._backend.service is None:
                kept = sandbox_id
                self.log.info("keeping sandbox %s (reconnect with %%e2b connect)", kept)
            else:
                if keep:
                    self.log.warning(
                        "not keeping sandbox %s: the private local service stops with this "
                        "session; use a separately started `e2b-kernel local` to keep sandboxes",
                        sandbox_id,
                    )
                try:
                    if sandbox is None and created is not None:  # its SDK object never built
                        sandbox = await self._adopted(created)
                    if sandbox is not None:
                        await asyncio.wait_for(sandbox.kill(), 15)
                except Exception as exc:
                    self.log.warning("could not kill sandbox %s: %s", sandbox_id, exc)
        await self._backend.stop()
        return kept
