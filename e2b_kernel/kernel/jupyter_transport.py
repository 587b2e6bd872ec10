"""The kernel's ``jupyter`` transport: choose it, open the relay, and route the three channels.

On this transport the kernel runs no request handler of its own except interrupt, shutdown
and heartbeat: shell, control and stdin messages go to the sandbox's remote ipykernel through
:class:`~.forward.JupyterForwarder`, and all its messages come back. The hooks used are
ipykernel 7.4's ``shell_main`` (shell), ``dispatch_control`` (control) and the stdin socket.

Requests that arrive before the remote kernel is ready wait (in order) for the transport to be
chosen and the relay to open; none is lost.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import signal
from typing import TYPE_CHECKING, Any, NamedTuple

from zmq.eventloop.zmqstream import ZMQStream

from ..core import NEW_SANDBOX_NOTICE, SandboxSession
from ..core.jupyter_server import JupyterEndpoint, JupyterServerError, choose_transport
from ..core.kernel_channels import Parts, too_large
from ..core.remote_kernel import closed_error, pick_remote_kernel, reach_remote_kernel
from ..errors import E2BKernelError, KernelDied, SandboxLost, error_content
from .forward import JupyterForwarder, Route, send_reply

__all__ = ["JupyterTransport"]

# How long a restart or shutdown lets a running cell's interrupt come back before the relay
# closes (a round trip or two; the whole shutdown is bounded by kernel._SHUTDOWN_WAIT).
_SETTLE_WAIT = 2.0
_SEND_AS_A_FILE = (
    "Send large data as a file instead (Sandbox.files.write, or %e2b upload in a python3 "
    "kernel), and read it in the cell."
)
_NEW_SANDBOX_STREAM = {"name": "stderr", "text": NEW_SANDBOX_NOTICE}


class _Checked(NamedTuple):
    """A message whose signature the relay checked (see ``JupyterTransport._split``)."""

    idents: list[bytes]
    signature: bytes
    parts: Parts  # after the signature
    header: dict[str, Any]


def _remember_signature(session: Any, signature: bytes) -> None:
    """Add ``signature`` to the session's history of those seen (as ``Session.deserialize``
    does), which stays bounded: past its size a tenth of it is forgotten."""
    history = session.digest_history
    history.add(signature)
    if len(history) > session.digest_history_size:
        for _ in range(len(history) // 10):
            history.pop()


class JupyterTransport:
    """Mixin for ``E2BKernel``: everything the ``jupyter`` transport adds to the kernel."""

    # Provided by E2BKernel / ipykernel's Kernel.
    sandbox_session: SandboxSession
    session: Any
    log: Any
    iopub_socket: Any
    stdin_socket: Any
    control_stream: Any
    shell_stream: Any
    io_loop: Any
    if TYPE_CHECKING:  # (E2BKernel's property; a definition here would come first in its MRO)

        @property
        def kernel_info(self) -> dict[str, Any]: ...

    def _init_transport(self) -> None:
        self.transport: str | None = None  # "jupyter" or "execute" once chosen
        self.transport_reason = ""
        self._transport_chosen = asyncio.Event()
        self._forwarder: JupyterForwarder | None = None
        self._relay_lock = asyncio.Lock()
        self._previous_kernel_id: str | None = None  # the remote kernel before a restart
        self._own_kernel_id: str | None = None  # a remote kernel we started (deleted at the end)
        self._stdin_stream: ZMQStream | None = None
        self._background: set[asyncio.Future] = set()  # referenced until done
        self._loss_check: asyncio.Future | None = None  # after the relay closed by itself

    # ---- choosing ---------------------------------------------------------------------------

    async def _choose_transport(self, sandbox_started: bool) -> None:
        session = self.sandbox_session
        setting = str(session.config.transport)
        endpoint = session.jupyter_endpoint() if sandbox_started and setting != "execute" else None
        try:
            if setting == "jupyter" and endpoint is None:
                name, why = "jupyter", "E2B_KERNEL_TRANSPORT=jupyter"
            else:
                name, why = await choose_transport(setting, endpoint)
        except JupyterServerError as exc:
            # Forced, but the server does not answer: stay on jupyter, so every request shows
            # this error (nothing switches silently); the next request tries again.
            name, why = "jupyter", str(exc)
        self.transport, self.transport_reason = name, why
        session.transport, session.transport_reason = name, why
        self.log.info("E2B Python kernel: transport %s (%s)", name, why)
        if name == "jupyter":
            # Outside shell handlers ipykernel ignores SIGINT; on this transport no local handler
            # runs a cell, so SIGINT (interrupt_mode signal) must always reach us.
            signal.signal(signal.SIGINT, self._on_sigint)  # type: ignore[attr-defined]
            self._stdin_stream = ZMQStream(self.stdin_socket, self.io_loop)
            self._stdin_stream.on_recv(self._relay_stdin, copy=False)
            if endpoint is not None:
                try:
                    async with self._relay_lock:
                        await self._ensure_forwarder({})
                except E2BKernelError as exc:
                    self.log.warning("the remote kernel is not ready yet: %s", exc)

    async def _wait_for_transport(self) -> str:
        await self._transport_chosen.wait()
        return str(self.transport)

    # ---- the relay ----------------------------------------------------------------------------

    async def _ensure_forwarder(self, header: dict[str, Any]) -> JupyterForwarder:
        """The open relay, (re)opened when needed; announces a new sandbox to ``header``.

        In idle mode ``pause`` every cell first resumes the sandbox (it may have paused while
        idle) and pushes its timeout out, as the execute transport does.
        """
        if self._loss_check is not None:  # the relay closed: is the sandbox gone? wait for it
            await asyncio.wait([self._loss_check])
        session = self.sandbox_session
        announce: bool | None = None
        # A loss is told to the next cell; a kernel_info or completion request cannot show it.
        cell = header.get("msg_type") == "execute_request"
        forwarder_up = self._forwarder is not None and self._forwarder.up
        if forwarder_up and cell:
            if self._pauses_when_idle():
                try:
                    announce = await session.ready()
                except E2BKernelError:
                    await self._drop_forwarder()  # its sandbox is gone
                    raise
        if forwarder_up and self._forwarder is not None and self._forwarder.up and not announce:
            if self._forwarder.sandbox_id == session.sandbox_id:
                # Opened to a new sandbox for a request that was not a cell: tell this cell.
                if cell and session.take_new_sandbox_notice():
                    self._forwarder.publish(header, "stream", _NEW_SANDBOX_STREAM)
                return self._forwarder
        await self._drop_forwarder()
        if announce is None:
            announce = await session.ready(cell=cell)
        endpoint = session.jupyter_endpoint()

        async def connect() -> JupyterForwarder:
            kernel_id = await self._pick_remote_kernel(endpoint)
            forwarder = JupyterForwarder(
                self.session,
                endpoint,
                kernel_id,
                sandbox_id=session.sandbox_id,
                iopub=self.iopub_socket,
                # Its stream, which reads input replies: a send on the socket behind the
                # stream's back could leave one unread (see JupyterForwarder's replies).
                stdin=self._stdin_stream or self.stdin_socket,
                send_control=self._send_control,
                banner=lambda: self.banner,  # type: ignore[attr-defined]
                on_busy=session.hold_busy,
                on_closed=self._relay_closed,
                on_died=self._remote_kernel_died,
                cell_timeout=session.config.cell_timeout,
                log=self.log,
                trust_outputs=session.config.trust_outputs,
            )
            await forwarder.open()
            return forwarder

        forwarder = await reach_remote_kernel(session, connect)
        self._forwarder = forwarder
        if announce and header:
            forwarder.publish(header, "stream", _NEW_SANDBOX_STREAM)
        return forwarder

    async def _drop_forwarder(self) -> None:
        forwarder, self._forwarder = self._forwarder, None
        if forwarder is not None:
            await forwarder.close()

    def _pauses_when_idle(self) -> bool:
        return str(self.sandbox_session.config.idle) == "pause"

    async def _pick_remote_kernel(self, endpoint: JupyterEndpoint) -> str:
        """The remote kernel: the one before a restart (restarted), the sandbox's default
        ``/execute`` context (one namespace with ``Sandbox.run_code``), or a new one."""
        previous, self._previous_kernel_id = self._previous_kernel_id, None
        session = self.sandbox_session
        kernel_id, started = await pick_remote_kernel(session, endpoint, self.log, previous)
        if started:
            self._own_kernel_id = kernel_id
        return kernel_id

    def _split(self, msg: list[Any]) -> _Checked:
        """Identities, signature, parts after it, and header; raises if the signature is bad.

        The checks of ``Session.deserialize``, without parsing the parent header, metadata,
        content and dates of a message that is relayed as it is (a tenth of a millisecond a
        request). A message that is relayed must then be :meth:`_taken`; one handed to
        ipykernel instead is remembered there."""
        idents, frames = self.session.feed_identities(msg, copy=False)
        parts = [bytes(f.bytes) if hasattr(f, "bytes") else bytes(f) for f in frames]
        if len(parts) < 5:
            raise ValueError(f"a message has at least 5 parts, not {len(parts)}")
        if self.session.auth is not None:
            signature = parts[0]
            if not signature:
                raise ValueError("unsigned message")
            if signature in self.session.digest_history:
                raise ValueError("duplicate signature")
            if not hmac.compare_digest(signature, self.session.sign(parts[1:5])):
                raise ValueError("invalid signature")
        header = json.loads(parts[1])
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        return _Checked([bytes(i) for i in idents], parts[0], parts[1:], header)

    def _taken(self, checked: _Checked) -> None:
        """Remember the signature of a message this relay takes (as ``Session.deserialize``
        does for ipykernel), so that the same message sent again is refused."""
        if self.session.auth is not None:
            _remember_signature(self.session, checked.signature)

    async def _relay_shell(self, msg: list[Any]) -> bool:
        """Forward one shell message; False when it must be answered locally instead."""
        try:
            checked = self._split(msg)
        except Exception:
            self.log.error("invalid shell message", exc_info=True)
            return True
        idents, _, parts, header = checked
        if header.get("msg_type") == "connect_request":
            return False  # the ports a front end can reach are this process's, not the remote's
        stream = self.shell_stream
        async with self._relay_lock:  # FIFO: requests keep their order while the relay opens
            try:
                forwarder = await self._ensure_forwarder(header)
            except E2BKernelError as exc:
                if header.get("msg_type") == "kernel_info_request":
                    return False  # answered by ipykernel; its banner names the problem
                self._taken(checked)
                self._fail_route(Route("shell", idents, stream, header), exc)
                return True
            self._taken(checked)
            refusal = too_large("shell", parts, "This message", _SEND_AS_A_FILE)
            if refusal is not None:
                self.log.warning("refused a %s: %s", header.get("msg_type"), refusal)
                self._fail_route(Route("shell", idents, stream, header), refusal)
                return True
            forwarder.forward("shell", idents, stream, parts, header)
        return True

    def _relay_control(self, msg: list[Any]) -> bool:
        """Forward one control message from the control thread; False to handle it locally."""
        try:
            checked = self._split(msg)
        except Exception:
            return False
        idents, _, parts, header = checked
        if header.get("msg_type") in ("shutdown_request", "interrupt_request"):
            return False
        forwarder = self._forwarder
        loop = getattr(self, "_shell_loop", None)
        if forwarder is None or not forwarder.up or loop is None:
            return False
        self._taken(checked)
        loop.call_soon_threadsafe(
            forwarder.forward, "control", idents, self.control_stream, parts, header
        )
        return True

    def _relay_stdin(self, msg: list[Any]) -> None:
        forwarder = self._forwarder
        if forwarder is None or not forwarder.up:
            return
        try:
            checked = self._split(msg)
        except Exception:
            self.log.error("invalid stdin message", exc_info=True)
            return
        self._taken(checked)
        forwarder.forward("stdin", checked.idents, None, checked.parts, checked.header)

    def _send_control(self, stream: Any, parts: Parts, idents: list[bytes]) -> None:
        # The control stream belongs to the control thread: send from its loop.
        stream.io_loop.add_callback(self.session.send_raw, stream, parts, ident=idents)

    async def _interrupt_remote(self) -> bool:
        """Interrupt through the REST API; False when this transport is not in use."""
        forwarder = self._forwarder
        if self.transport != "jupyter" or forwarder is None:
            return False
        if not forwarder.cell_in_flight:
            # Idle, an interrupt changes nothing (as on python3), but the remote SIGINT lands
            # a network round trip later: inside the next request's handler it would abort
            # that request without a reply. So an idle interrupt never leaves this process.
            self.log.info("interrupt while idle: nothing to interrupt")
            return True
        self.log.info("interrupting the remote kernel")
        await forwarder.interrupt()
        return True

    # ---- loss -----------------------------------------------------------------------------------

    def _relay_closed(self, reason: str) -> None:
        self.log.warning("the kernel channels closed: %s", reason)
        self._loss_check = self._in_background(self._after_relay_closed(reason))

    def _in_background(self, coroutine: Any) -> asyncio.Future:
        """Run ``coroutine`` as a task referenced until it is done."""
        future = asyncio.ensure_future(coroutine)
        self._background.add(future)
        future.add_done_callback(self._background.discard)
        return future

    async def _after_relay_closed(self, reason: str) -> None:
        forwarder = self._forwarder
        if forwarder is None:
            return
        session = self.sandbox_session
        try:
            exc = await closed_error(session, reason)
        finally:
            self._loss_check = None
        pending = forwarder.take_pending()
        cell_pending = any(r.header.get("msg_type") == "execute_request" for r in pending)
        if isinstance(exc, SandboxLost) and not cell_pending:
            session.report_lost(str(exc))  # lost while no cell ran: the next cell says so
        session.hold_busy(False)
        for route in pending:
            self._fail_route(route, exc)

    def _remote_kernel_died(self, state: str, routes: list[Route]) -> None:
        """Answer the requests the remote kernel's death left without a reply: the cell whose
        timeout restarted it with its timeout, the others with ``KernelDied``."""
        forwarder = self._forwarder
        for route in routes:
            msg_id = route.header.get("msg_id")
            if forwarder is not None and msg_id in forwarder.restarted_for_timeout:
                forwarder.restarted_for_timeout.discard(msg_id)
                self._fail_route(route, forwarder.timeout_error(restarted=True))
            else:
                self._fail_route(route, KernelDied(state))

    def _fail_route(self, route: Route, exc: E2BKernelError | KeyboardInterrupt) -> None:
        """Answer a request that cannot reach the remote kernel: busy, error, reply, idle."""
        header = route.header
        msg_type = str(header.get("msg_type", "unknown_request"))
        content = error_content(exc)
        parent = {"header": header}
        topic = b"kernel.e2b."
        self.session.send(
            self.iopub_socket, "status", {"execution_state": "busy"}, parent, ident=topic
        )
        if msg_type == "execute_request":
            self.session.send(self.iopub_socket, "error", content, parent, ident=topic + b"error")
        reply = {"status": "error", "execution_count": 0, **content}
        if msg_type == "kernel_info_request":
            # python3 never fails one, and jupyter_client's wait_for_ready raises a KeyError
            # on a reply without protocol_version: ours, whose banner says what happened.
            reply = {"status": "ok", **self.kernel_info}
        send_reply(self.session, route, reply, self._send_control)
        self.session.send(
            self.iopub_socket, "status", {"execution_state": "idle"}, parent, ident=topic
        )

    # ---- restart and shutdown ------------------------------------------------------------------

    def _transport_state(self) -> dict[str, Any]:
        """What the restarted kernel process needs to keep using the same remote kernel."""
        state: dict[str, Any] = {"transport": self.transport}
        if self._forwarder is not None:
            state["jupyter_kernel_id"] = self._forwarder.kernel_id
        return state

    async def _close_transport(self, keep_kernel: bool) -> None:
        forwarder = self._forwarder
        if forwarder is None:
            return
        self._forwarder = None
        if keep_kernel:
            # A cell still running gets its end: its KeyboardInterrupt, reply and idle, or
            # ours when they do not come in time. Nothing waits on it forever.
            await forwarder.settle(_SETTLE_WAIT)
            for route in forwarder.take_pending():
                self._fail_route(route, KeyboardInterrupt("the kernel restarted"))
        # On shutdown, as python3: the reply at once, nothing more for a cell still running
        # (the kernel is going; the sandbox goes with it unless kept).
        await forwarder.close()
        if not keep_kernel and self._own_kernel_id is not None:
            try:  # our own kernel in a server that may outlive the sandbox (development)
                await asyncio.wait_for(forwarder.endpoint.delete(self._own_kernel_id), 2)
            except Exception as exc:
                self.log.debug("could not delete remote kernel: %r", exc)
