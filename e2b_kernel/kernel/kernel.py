"""``E2BKernel``: a Jupyter kernel whose cells all run in one persistent E2B sandbox.

Threads and loops (ipykernel 7): ``do_execute``/``do_complete``/... run on the shell loop in
the main thread; ``interrupt_request`` and ``do_shutdown`` run on the control thread's own loop.
The ``SandboxSession`` lives on the shell loop, so the control thread reaches it only through
``call_soon_threadsafe`` / ``run_coroutine_threadsafe``.

Restart: ``jupyter_client`` restarts a kernel by asking the process to shut down with
``restart: true`` and starting a NEW process with the same connection file. This process then
keeps the sandbox (and, for the private local backend, the helper process serving it, see
``backends.hosted``), writes a hand-off file keyed by the connection file (``restart_state``) and
exits; the new process adopts the service, reconnects to the sandbox and restarts its Python
context. So a restart gives fresh Python state with files and installed packages kept. A hard
restart (process killed without ``shutdown_request``) starts a new sandbox; the old one dies by
its timeout (cloud) or with its helper a few seconds later (local).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import signal
import sys
import traceback
from typing import Any

import zmq
from ipykernel.kernelbase import Kernel
from ipykernel.utils import _async_in_context
from traitlets import Instance

from .. import __version__
from ..backends import HostedService, discard_early, restart_state
from ..config import SessionConfig
from ..core import SandboxSession, create_ahead, introspection
from ..core.active_content import guard_event, guard_output
from ..core.rest import tls_context
from ..errors import ConfigurationError, E2BKernelError, ExecutionInterrupted, error_content
from .history import CellHistory
from .jupyter_transport import JupyterTransport

__all__ = ["E2BKernel", "main"]

# jupyter_client SIGKILLs a kernel 5 s after shutdown_request (shutdown_wait_time): finish first.
_SHUTDOWN_WAIT = 4.0
INTERRUPT_REPLY_WAIT = 5.0  # seconds an interrupt_reply waits for the remote interrupt to be sent
_QUICK_REQUESTS = frozenset({"complete_request", "inspect_request", "is_complete_request"})


class E2BKernel(JupyterTransport, Kernel):
    """Runs every cell in an E2B sandbox: relayed to the sandbox's own Jupyter kernel (the
    ``jupyter`` transport), or through ``SandboxSession.execute`` (the ``execute`` transport)."""

    implementation = "e2b_kernel"
    implementation_version = __version__
    language_info = {
        "name": "python",
        "version": "3",
        "mimetype": "text/x-python",
        "file_extension": ".py",
        "pygments_lexer": "ipython3",
        "codemirror_mode": {"name": "ipython", "version": 3},
        "nbconvert_exporter": "python",
    }
    help_links = [{"text": "E2B documentation", "url": "https://e2b.dev/docs"}]

    session_config = Instance(SessionConfig, allow_none=True)

    def __init__(self, **kwargs: Any) -> None:
        self._next_count = 1  # the number the next stored cell gets, as IPython counts
        self._cell_number = 0  # the running cell's, for its result and reply
        self._shutting_down = False  # set by a shutdown_request (not a restart)
        super().__init__(**kwargs)
        self._config_error: ConfigurationError | None = None
        try:
            self.session_config = SessionConfig(parent=self)
        except ConfigurationError as exc:
            # Do not die at start-up (front ends would only say "kernel died"): every cell
            # shows this error instead, naming the variable to fix.
            self.log.error("%s", exc)
            self._config_error = exc
            self.session_config = SessionConfig.builtin_defaults()
        # The private local service runs in a helper process so that a restart (a new kernel
        # process) keeps the sandbox; see backends/hosted.py.
        self.sandbox_session = SandboxSession(
            self.session_config, log=self.log, service_factory=HostedService.launch
        )
        # On the jupyter transport the first cell needs no SDK: the sandbox is created with
        # one plain request where the backend allows it, the SDK imported after that cell.
        self.sandbox_session.defer_sdk = self.session_config.transport != "execute"
        self._shell_loop: asyncio.AbstractEventLoop | None = None
        self._start_task: asyncio.Task | None = None
        self._cell_task: asyncio.Task | None = None
        self._backend_ready = asyncio.Event()
        self.history = CellHistory()
        self._init_transport()

    # ---- start-up ---------------------------------------------------------------------------

    def start(self) -> None:
        """Register the message handlers, then start the sandbox in the background."""
        super().start()
        self.io_loop.add_callback(self._begin_sandbox)

    def _begin_sandbox(self) -> None:
        self._shell_loop = asyncio.get_running_loop()
        self._start_task = asyncio.ensure_future(self._start_sandbox())
        session = self.sandbox_session
        if self._config_error is None and session.config.transport != "execute":
            if session.backend == "cloud" and not os.environ.get("E2B_SANDBOX_URL"):
                # Sandbox ports are reached over https: the TLS context is built while the
                # sandbox starts, not when the relay first asks the Jupyter Server.
                self._in_background(asyncio.to_thread(tls_context))

    async def _start_sandbox(self) -> None:
        """Create (or, after a restart, reconnect to) the sandbox, then choose the transport;
        errors wait for a cell."""
        started = False
        try:
            if self._config_error is None:
                started = await self._start_session()
        finally:
            self._backend_ready.set()
            discard_early()  # a service started before the configuration was read, unused
            create_ahead.discard()  # likewise a sandbox asked for then
        try:
            if self._config_error is None:
                await self._choose_transport(started)
            else:
                self.transport, self.transport_reason = "execute", "configuration error"
        except Exception:
            self.log.exception("could not choose the transport")
            self.transport = self.transport or "execute"
        finally:
            self._transport_chosen.set()

    async def _start_session(self) -> bool:
        """Start the backend and the sandbox; True when the sandbox runs."""
        session = self.sandbox_session
        try:
            previous = restart_state.take(self._connection_file())
            if previous:
                await self._take_over(previous)
            await session.start_backend()
            self._backend_ready.set()
            await session.start()
            self.log.info(
                "E2B Python kernel: backend %s, isolation %s, sandbox %s",
                session.backend,
                session.isolation,
                session.sandbox_id,
            )
            return True
        except E2BKernelError as exc:
            # Not raised: the first cell retries the start and shows this error once, cleanly.
            self.log.error("sandbox start failed: %s", exc)
        except Exception:
            self.log.exception("sandbox start failed")
        return False

    async def _take_over(self, previous: dict) -> None:
        """After a restart: adopt the previous process's service and sandbox, fresh state."""
        session = self.sandbox_session
        if previous.get("service"):
            try:
                service = await asyncio.to_thread(HostedService.adopt, previous["service"])
            except Exception as exc:
                self.log.warning("could not adopt the previous local service: %s", exc)
                return
            session.attach_service(service)
        elif previous.get("backend") != session.backend:
            return
        if previous.get("sandbox_id"):
            # On the jupyter transport the remote kernel itself is restarted (REST) once found.
            relayed = previous.get("transport") == "jupyter"
            self._previous_kernel_id = previous.get("jupyter_kernel_id") if relayed else None
            await session.reattach(str(previous["sandbox_id"]), reset=not relayed)

    def _connection_file(self) -> str | None:
        app = getattr(self, "parent", None)
        return getattr(app, "abs_connection_file", None) or getattr(app, "connection_file", None)

    @property
    def banner(self) -> str:  # type: ignore[override]
        """Shown by front ends at start; never in cell outputs."""
        session = self.sandbox_session
        if self._config_error is not None:
            return (
                f"E2B Python (e2b-kernel {__version__}): configuration error: {self._config_error}"
            )
        return (
            f"E2B Python (e2b-kernel {__version__}): every cell runs in one E2B sandbox.\n"
            f"Backend: {session.backend}. Isolation: {session.isolation}.\n"
            f"Transport: {self.transport or 'choosing'} ({self.transport_reason or 'starting'}).\n"
            f"Sandbox: {session.sandbox_id or 'starting'}; template {session.config.template}."
        )

    @property
    def kernel_info(self) -> dict[str, Any]:
        """ipykernel's, without the features of this local process that are not the
        sandbox's: its debugger would debug this relay, not the cells, and its subshells would
        run cells beside each other in one sandbox context. (On the jupyter transport the
        remote kernel answers, and the relay takes out its subshells: forward.py.)"""
        info = dict(super().kernel_info)
        info["supported_features"] = []
        return info

    async def kernel_info_request(self, stream: Any, ident: Any, parent: Any) -> None:
        """Wait briefly for the backend so the banner can name its isolation."""
        try:
            await asyncio.wait_for(self._backend_ready.wait(), 15)
        except asyncio.TimeoutError:
            pass
        await super().kernel_info_request(stream, ident, parent)

    # ---- execution --------------------------------------------------------------------------

    @property
    def execution_count(self) -> int:
        """The next stored cell's number (what ``execute_input`` shows), as IPythonKernel
        takes it from IPython: silent, ``store_history=False`` and empty cells do not advance
        it, and their results and replies carry the last stored cell's number."""
        return self._next_count

    @execution_count.setter
    def execution_count(self, value: int) -> None:
        pass  # ipykernel's base class counts every request; IPython's rules are kept instead

    async def do_execute(
        self,
        code: str,
        silent: bool,
        store_history: bool = True,
        user_expressions: dict | None = None,
        allow_stdin: bool = False,
        *,
        cell_meta: dict | None = None,
        cell_id: str | None = None,
    ) -> dict:
        """Run the cell in the sandbox, publishing its outputs as they arrive."""
        stored = store_history and not silent and bool(code.strip())
        self._cell_number = self._next_count if stored else self._next_count - 1
        reply = await self._execute(code, silent, stored) if code.strip() else self._ok()
        if reply["status"] == "ok" and user_expressions and self._config_error is None:
            reply["user_expressions"] = await self.sandbox_session.user_expressions(
                user_expressions
            )
        return reply

    async def _execute(self, code: str, silent: bool, stored: bool) -> dict:
        self._shell_loop = asyncio.get_running_loop()
        self._cell_task = asyncio.ensure_future(self._run_cell(code, silent))
        await asyncio.wait([self._cell_task])
        task, self._cell_task = self._cell_task, None
        if stored:
            self.history.add(self._cell_number, code)
            self._next_count += 1
        if task.cancelled():
            interrupted = ExecutionInterrupted("the cell was interrupted; state is kept")
            return self._fail(interrupted)
        result: dict = task.result()
        return result

    async def _run_cell(self, code: str, silent: bool) -> dict:
        error: dict | None = None
        try:
            if self._config_error is not None:
                raise self._config_error
            if self._start_task is not None and not self._start_task.done():
                await asyncio.wait([self._start_task])
            self._start_task = None
            async for kind, content in self.sandbox_session.execute(code, front_end="kernel"):
                if kind == "error":
                    error = content
                    if not content["traceback"]:
                        continue  # an exception group, shown on stderr (core/outputs.py)
                if not silent or kind != "execute_result":  # as IPython's silent run
                    self._publish(kind, content)
        except E2BKernelError as exc:
            if self._shutting_down:  # its sandbox went with the kernel (see do_shutdown)
                await self._until_the_loop_stops()
            return self._fail(exc)
        except Exception as exc:
            # A bug of ours must still end the cell with a reply, without internals.
            self.log.exception("internal error while running a cell")
            return self._fail(exc)
        if error is not None:
            return self._error_reply(error)
        return self._ok()

    def _publish(self, kind: str, content: dict) -> None:
        if not self.sandbox_session.config.trust_outputs:
            content = guard_event(kind, content)  # see core.active_content
        if kind == "execute_result":
            content = {**content, "execution_count": self._cell_number}
        elif kind == "display_data":
            content = {**content, "transient": {}}
        self.send_response(self.iopub_socket, kind, content)

    def _ok(self) -> dict:
        return {
            "status": "ok",
            "execution_count": self._cell_number,
            "payload": [],
            "user_expressions": {},
        }

    def _fail(self, exc: BaseException) -> dict:
        content = error_content(exc)
        self.send_response(self.iopub_socket, "error", content)  # silent cells too, as IPython
        return self._error_reply(content)

    def _error_reply(self, error: dict) -> dict:
        # ipykernel's error replies carry an empty payload and user_expressions too, and
        # engine_info (deprecated, still read by ipyparallel).
        engine = {"engine_uuid": self.ident, "engine_id": self.int_id, "method": "execute"}
        return {**self._ok(), "status": "error", **error, "engine_info": engine}

    # ---- interrupts ---------------------------------------------------------------------------

    def pre_handler_hook(self) -> None:
        """While a shell handler runs, SIGINT cancels the running cell (signal interrupt_mode).

        ipykernel installs ``default_int_handler`` here, which would raise KeyboardInterrupt
        inside the event loop machinery and can take the kernel down. Instead the handler only
        schedules a cancellation on the shell loop, like ipykernel's ``_cancel_on_sigint``.
        """
        self.saved_sigint_handler = signal.signal(signal.SIGINT, self._on_sigint)

    def post_handler_hook(self) -> None:
        """Put back the handler that was active before the shell handler ran."""
        signal.signal(signal.SIGINT, self.saved_sigint_handler)

    def _on_sigint(self, _signum: int, _frame: Any) -> None:
        loop = self._shell_loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._interrupt_cell)

    def _interrupt_cell(self) -> None:
        self._in_background(self._interrupt())

    async def _interrupt(self) -> None:
        """Interrupt the running cell: the remote kernel's (jupyter) or our cell task (execute)."""
        if await self._interrupt_remote():
            return
        task = self._cell_task
        if task is not None and not task.done():
            self.log.info("interrupting the running cell")
            task.cancel()

    async def interrupt_request(self, stream: Any, ident: Any, parent: Any) -> None:
        """Message interrupt_mode, on the control thread: reply once the interrupt was sent.

        As on ipykernel, whose reply follows its SIGINT: a client that waits for the reply
        knows the interrupt reached the kernel.
        """
        loop = self._shell_loop
        if loop is not None and not loop.is_closed():
            sent = asyncio.run_coroutine_threadsafe(self._interrupt(), loop)
            try:
                # Shielded: a slow interrupt goes on after the reply; only the wait ends.
                await asyncio.wait_for(
                    asyncio.shield(asyncio.wrap_future(sent)), INTERRUPT_REPLY_WAIT
                )
            except Exception as exc:  # the reply still goes; the interrupt may yet land
                self.log.warning("interrupt not confirmed: %r", exc)
        assert self.session is not None
        self.session.send(stream, "interrupt_reply", {"status": "ok"}, parent, ident=ident)

    async def dispatch_control(self, msg: Any) -> None:
        """On the jupyter transport, control requests (but interrupt and shutdown) are relayed."""
        if self.transport == "jupyter" and self._relay_control(msg):
            return
        await super().dispatch_control(msg)

    # ---- completion, inspection, is_complete --------------------------------------------------

    async def shell_main(self, subshell_id: str | None, msg: Any) -> None:
        """While a cell runs, answer completion, inspection and is_complete at once.

        ipykernel serializes shell messages behind the running cell. These three never touch
        the running cell (the session answers empty while busy; is_complete is local), so they
        are dispatched concurrently, the way ipykernel already does for comm messages.
        """
        if subshell_id is None and await self._wait_for_transport() == "jupyter":
            if await self._relay_shell(msg):
                return
        if subshell_id is None and self._main_asyncio_lock.locked() and self._is_quick(msg):
            parent = self.get_parent("shell")
            ident = self._get_shell_context_var(self._shell_parent_ident)
            try:
                # A task created inside a copied context runs in its own copy of it, so the
                # reply's parent never leaks into the running cell (works on Python 3.10).
                coroutine = self.dispatch_shell(msg, subshell_id=None, concurrent=True)
                await contextvars.copy_context().run(asyncio.ensure_future, coroutine)
            finally:
                self.set_parent(ident, parent, channel="shell")
            return
        await super().shell_main(subshell_id, msg)

    def _abort_queues(self, subshell_id: str | None = None) -> None:
        """After a failed cell (stop_on_error), abort every request already sent, as
        ipykernel does with its shell thread: a "stop aborting" marker queued behind them
        ends the abort. (Without that thread ipykernel ends it at the loop's next turn, when
        the queued requests still wait for the running cell's lock: only the first was
        aborted, and "Run all" went on past a failed cell.)"""
        if subshell_id is not None or self.shell_stream is None:
            super()._abort_queues(subshell_id)
            return
        self._aborting = True
        self.shell_stream.flush()  # every request already here becomes a task, in order
        handler = _async_in_context(functools.partial(self.shell_main, None))
        # Scheduled as the stream schedules each request: it takes the lock after them.
        self._in_background(handler([zmq.Frame(b"stop aborting")]))

    def _is_quick(self, msg: Any) -> bool:
        if self.session is None:
            return False
        try:
            _, frames = self.session.feed_identities(msg, copy=False)
            header = self.session.deserialize(frames, content=False, copy=False)["header"]
        except Exception:
            return False
        return header.get("msg_type") in _QUICK_REQUESTS

    async def do_complete(self, code: str, cursor_pos: int | None) -> dict:
        """Complete from the sandbox's live namespace (empty while a cell runs)."""
        cursor_pos = len(code) if cursor_pos is None else cursor_pos
        if self._config_error is not None:
            return introspection.empty_complete_reply(cursor_pos)
        return await self.sandbox_session.complete(code, cursor_pos)

    async def do_inspect(
        self, code: str, cursor_pos: int | None, detail_level: int = 0, omit_sections: Any = ()
    ) -> dict:
        """Inspect from the sandbox's live namespace (empty while a cell runs)."""
        cursor_pos = len(code) if cursor_pos is None else cursor_pos
        if self._config_error is not None:
            return introspection.empty_inspect_reply()
        reply = await self.sandbox_session.inspect(code, cursor_pos, detail_level)
        if self.sandbox_session.config.trust_outputs:
            return reply
        return guard_output(reply) or reply  # the inspector renders its bundle too

    async def do_history(  # type: ignore[override]
        self, hist_access_type: str, output: bool, raw: bool, **query: Any
    ) -> dict:
        """History of this kernel process's cells, answered locally."""
        entries = self.history.query(hist_access_type, output=output, **query)
        return {"status": "ok", "history": entries}

    async def do_is_complete(self, code: str) -> dict:
        """Answered locally, the way IPython does it."""
        from IPython.core.inputtransformer2 import TransformerManager

        status, indent = TransformerManager().check_complete(code)
        reply: dict[str, Any] = {"status": status}
        if status == "incomplete":
            reply["indent"] = " " * (indent or 0)
        return reply

    # ---- shutdown -----------------------------------------------------------------------------

    async def shutdown_request(self, stream: Any, ident: Any, parent: Any) -> None:
        """Reply, then stop the loops only after the control thread has published 'idle'.

        ipykernel 7.4's own handler stops the shell loop at once. The main thread then closes
        the IOPub thread while the control thread is still about to publish its 'idle' status,
        and that send blocks forever on the dead IOPub pipe: the process hangs in
        ``control_thread.join()`` ("Closing control thread"). Stopping the loops from a
        callback on the control loop runs after ``process_control`` has published, so the
        race is gone. We also skip ipykernel's child-process termination: the only child is
        the local service helper, which a restart must keep (it stops itself otherwise).
        """
        assert self.session is not None
        content = await self.do_shutdown(bool(parent["content"].get("restart", False)))
        self.session.send(stream, "shutdown_reply", content, parent, ident=ident)
        broadcast = self.session.msg("shutdown_reply", content, parent)
        self.session.send(self.iopub_socket, broadcast, ident=self._topic("shutdown"))
        control = self.control_stream
        if control is not None:
            control.flush(zmq.POLLOUT)
            control.io_loop.add_callback(self._stop_loops)
        else:
            self._stop_loops()

    @staticmethod
    async def _until_the_loop_stops() -> None:
        """Wait for ever: the shutdown under way stops this loop, and this never ends."""
        await asyncio.Event().wait()

    def _stop_loops(self) -> None:
        self.io_loop.add_callback(self.io_loop.stop)  # the shell's loop too (E2BKernelApp)
        if self.control_stream is not None:
            self.control_stream.io_loop.stop()

    async def do_shutdown(self, restart: bool) -> dict:
        """Kill the sandbox, or keep it for the restarted kernel process (runs on control).

        A cell still running gets nothing more, as on python3, whose shell loop just stops: not
        the error its sandbox's end would give it."""
        self._shutting_down = not restart
        loop = self._shell_loop
        if loop is not None and loop.is_running():
            future = asyncio.run_coroutine_threadsafe(self._close_session(restart), loop)
            try:
                await asyncio.wait_for(asyncio.wrap_future(future), _SHUTDOWN_WAIT)
            except Exception as exc:
                self.log.warning("sandbox shutdown did not finish cleanly: %s", exc)
        else:
            await self._close_session(restart)
        return {"status": "ok", "restart": restart}

    async def _close_session(self, restart: bool) -> None:
        session = self.sandbox_session
        if self._start_task is not None and not self._start_task.done():
            self._start_task.cancel()
            await asyncio.wait([self._start_task])
        if restart:
            relay_state = self._transport_state()
            await self._close_transport(keep_kernel=True)
            state = await session.detach()
            if state:
                restart_state.put(self._connection_file(), {**state, **relay_state})
                return
        await self._close_transport(keep_kernel=False)
        kept = await session.close(keep=bool(session.config.keep_sandbox))
        if kept:
            self.log.warning("kept sandbox %s; reconnect with %%e2b connect %s", kept, kept)


def _kernel_app_class() -> Any:
    from ipykernel.kernelapp import IPKernelApp

    class E2BKernelApp(IPKernelApp):
        """ipykernel's app, with the shell socket served by the main thread.

        ipykernel 7 receives shell messages on a thread of their own, for kernel subshells,
        and hands each request and each reply across to the main thread and back. This kernel
        offers no subshells (the remote kernel knows none of ours), so those two hops only
        cost every request (about a millisecond a cell on two cores, bench/kernel.py).
        Without the thread ipykernel serves the shell socket from the main loop, in order.
        """

        def init_sockets(self) -> None:
            super().init_sockets()
            unused, self.shell_channel_thread = self.shell_channel_thread, None
            if unused is not None:
                unused.io_loop.close()  # never started; its loop holds a selector

    return E2BKernelApp


def main() -> None:
    """Launch the kernel (``python -m e2b_kernel -f CONNECTION_FILE``)."""
    app = _kernel_app_class().instance(kernel_class=E2BKernel)
    try:
        app.initialize(sys.argv[1:])
    except Exception:
        # E.g. one of the connection file's ports taken meanwhile. ipykernel's exit handler
        # would then wait forever on its ZeroMQ context (the socket that failed to bind is
        # never closed) and the client would give up only after 60 s; ending now lets a
        # Jupyter server restart the kernel on fresh ports at once.
        print("e2b-python: the kernel could not start:", file=sys.stderr)
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    app.start()
