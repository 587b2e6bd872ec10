"""The relay's bookkeeping of requests and replies, with a real JupyterForwarder.

Its kernel channels are never opened (sends only queue), and the front end's sockets are real
ZMQ sockets on inproc, so what the front end would receive is read back as it was sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

import pytest
import zmq
from jupyter_client.session import Session
from zmq.eventloop.zmqstream import ZMQStream

from e2b_kernel.core import kernel_channels
from e2b_kernel.core.jupyter_server import JupyterEndpoint
from e2b_kernel.kernel import forward
from e2b_kernel.kernel.forward import JupyterForwarder
from e2b_kernel.kernel.jupyter_transport import JupyterTransport


def _parts(session: Session, msg: dict) -> list[bytes]:
    return [bytes(p) for p in session.serialize(msg)[2:]]


def _forwarder(session: Session, iopub, **overrides) -> JupyterForwarder:
    """A relay whose kernel channels never open (sends only queue)."""
    options = {
        "iopub": iopub,
        "stdin": None,
        "send_control": lambda *_: None,
        "banner": lambda: "",
        "on_busy": lambda _: None,
        "on_closed": lambda _: None,
        "on_died": lambda *_: None,
        "cell_timeout": None,
        "log": logging.getLogger("test"),
        **overrides,
    }
    return JupyterForwarder(session, JupyterEndpoint("http://127.0.0.1:9"), "kernel-id", **options)


@pytest.fixture
def sockets():
    context = zmq.Context.instance()
    shell, front = context.socket(zmq.ROUTER), context.socket(zmq.DEALER)
    address = f"inproc://shell-{uuid.uuid4().hex}"  # id() may repeat before an unbind
    shell.bind(address)
    front.setsockopt(zmq.IDENTITY, b"front")
    front.connect(address)
    iopub = context.socket(zmq.PUB)
    iopub.bind(f"inproc://iopub-{uuid.uuid4().hex}")
    yield shell, front, iopub
    for sock in (shell, front, iopub):
        sock.close(linger=0)


async def _relay_one(
    sockets,
    monkeypatch: pytest.MonkeyPatch,
    msg_type: str,
    content: dict,
    busy: list[bool] | None = None,
    interrupted: bool = False,
) -> tuple[list[list[bytes]], int]:
    """Forward one front-end message; the remote kernel answers 'busy' and 'idle' but never a
    reply. Returns what the front end received within two (shortened) graces, and how many
    requests the relay still waits on; ``busy`` records what the relay told the session."""
    monkeypatch.setattr(forward, "_REPLY_AFTER_IDLE_GRACE", 0.05)
    shell, front, iopub = sockets
    session = Session(key=b"k")
    relay = _forwarder(session, iopub, on_busy=(busy if busy is not None else []).append)
    if interrupted:  # as interrupt() records it (its REST call is not the point here)
        relay._interrupted_at = asyncio.get_running_loop().time()
    request = session.msg(msg_type, content)
    relay.forward("shell", [b"front"], shell, _parts(session, request))
    for state in ("busy", "idle"):
        status = session.msg("status", {"execution_state": state}, parent=request)
        relay._from_remote("iopub", _parts(session, status))
    received = []
    deadline = asyncio.get_running_loop().time() + 2 * forward._REPLY_AFTER_IDLE_GRACE
    while (left := deadline - asyncio.get_running_loop().time()) > 0:
        await asyncio.sleep(0)  # let the relay's timers run
        if front.poll(int(left * 1000) // 10 or 1):
            received.append(front.recv_multipart())
    return received, len(relay._routes)


@pytest.mark.parametrize(
    ("msg_type", "content", "interrupted"),
    [
        ("execute_request", {"code": "1"}, False),  # a cell never waits for ever
        ("inspect_request", {"code": "x", "cursor_pos": 1}, True),  # cut by our interrupt
    ],
)
def test_a_request_ended_without_reply_gets_one(
    sockets, monkeypatch, msg_type: str, content: dict, interrupted: bool
) -> None:
    received, waiting = asyncio.run(
        _relay_one(sockets, monkeypatch, msg_type, content, interrupted=interrupted)
    )
    (reply,) = received
    assert waiting == 0
    header = json.loads(reply[2])  # after the delimiter and the signature
    assert header["msg_type"] == msg_type.replace("_request", "_reply")
    assert json.loads(reply[5])["ename"] == "KeyboardInterrupt"


def test_a_malformed_request_ended_without_reply_gets_none(sockets, monkeypatch) -> None:
    """ipykernel's handler fails on a malformed request (an inspect_request without
    cursor_pos): python3 answers nothing; a made-up KeyboardInterrupt was wrong."""
    assert asyncio.run(_relay_one(sockets, monkeypatch, "inspect_request", {"code": "x"})) == (
        [],
        0,
    )


def test_an_unknown_request_gets_no_made_up_reply(sockets, monkeypatch) -> None:
    # ipykernel answers no request type it does not know; python3's front ends see none.
    assert asyncio.run(_relay_one(sockets, monkeypatch, "bogus_request", {})) == ([], 0)


def test_kernel_info_does_not_offer_subshells(sockets) -> None:
    """The local ipykernel routes a subshell's requests before they could be relayed, and
    knows no remote subshell: offering them would make every subshell request fail."""
    shell, front, iopub = sockets
    session = Session(key=b"k")
    relay = _forwarder(session, iopub, banner=lambda: "E2B Python")
    request = session.msg("kernel_info_request", {})
    relay.forward("shell", [b"front"], shell, _parts(session, request))
    docs = {"text": "Python", "url": "https://docs.python.org/3"}
    links = [docs, {"text": "Help", "url": " javascript:alert(1)"}, {"text": "no url"}]
    content = {
        "banner": "IPython",
        "supported_features": ["kernel subshells", "debugger"],
        "help_links": links,
    }
    relay._from_remote(
        "shell", _parts(session, session.msg("kernel_info_reply", content, parent=request))
    )
    assert front.poll(2000)
    reply = json.loads(front.recv_multipart()[5])
    assert reply["supported_features"] == ["debugger"]
    assert reply["banner"].startswith("E2B Python") and "Remote kernel: IPython" in reply["banner"]
    # Front ends open help links: the sandbox's kernel may offer web pages only.
    assert reply["help_links"] == [docs]


def test_a_request_that_arrives_as_a_reply_goes_out_is_still_read(sockets) -> None:
    """The front end sends its next cell once the last one's 'idle' came, which is often just
    as the relay writes that cell's reply. The reply went out on the shell stream's socket,
    behind the stream's back: the send took the socket's edge-triggered read event, the
    stream never woke for the new request, and the notebook waited for ever (ipykernel's
    "wedge")."""

    async def scenario() -> None:
        shell, front, iopub = sockets
        stream = ZMQStream(shell)  # the kernel's shell stream, on this loop
        arrived = asyncio.Event()
        stream.on_recv(lambda _msg: arrived.set())
        session = Session(key=b"k")
        relay = _forwarder(session, iopub)
        first = session.msg("complete_request", {"code": "", "cursor_pos": 0})
        relay.forward("shell", [b"front"], stream, _parts(session, first))
        session.send(front, "execute_request", {"code": "2"})  # in the socket, not yet read
        reply = session.msg("complete_reply", {"status": "ok", "matches": []}, parent=first)
        relay._from_remote("shell", _parts(session, reply))
        try:
            await asyncio.wait_for(arrived.wait(), 5)
        except asyncio.TimeoutError:
            pytest.fail("the request that came in while the reply went out was never read")
        assert front.poll(2000)
        assert json.loads(front.recv_multipart()[2])["msg_type"] == "complete_reply"
        stream.flush()
        stream.close(linger=0)

    asyncio.run(scenario())


def test_a_comm_message_gets_no_reply_and_is_not_kept(sockets, monkeypatch) -> None:
    content = {"comm_id": "c", "data": {"method": "update", "state": {"value": 7}}}
    assert asyncio.run(_relay_one(sockets, monkeypatch, "comm_msg", content)) == ([], 0)


@pytest.mark.parametrize(
    ("msg_type", "content", "expected"),
    [
        ("execute_request", {"code": "1"}, [True, False]),
        ("kernel_info_request", {}, []),
        ("complete_request", {"code": "pri", "cursor_pos": 3}, []),
    ],
)
def test_only_a_cell_is_busy_and_only_its_end_makes_the_session_idle(
    sockets, monkeypatch, msg_type: str, content: dict, expected: list[bool]
) -> None:
    """The session builds the SDK's sandbox object once a cell has ended (a second of CPU):
    the 'idle' that ends a kernel_info or completion request, which a front end sends before
    the first cell, must not start it, or it competes with that cell."""
    busy: list[bool] = []
    asyncio.run(_relay_one(sockets, monkeypatch, msg_type, content, busy))
    assert busy == expected


def _status(session: Session, state: str, parent: dict | None = None) -> list[bytes]:
    return _parts(session, session.msg("status", {"execution_state": state}, parent=parent))


@pytest.mark.parametrize("state", ["restarting", "dead"])
def test_requests_the_dead_process_had_not_started_wait_for_a_new_one(sockets, state: str) -> None:
    """After exit() the server hands the cells sent meanwhile to the new process, which runs
    them: those are answered when our first request to it is (it comes after them), unless
    the server says no new process comes ('dead')."""
    shell, _front, iopub = sockets

    async def scenario() -> list[tuple[str, list[str]]]:
        session = Session(key=b"k")
        died: list[tuple[str, list[str]]] = []
        relay = _forwarder(
            session,
            iopub,
            on_died=lambda s, routes: died.append((s, [r.header["msg_id"] for r in routes])),
        )
        running = session.msg("execute_request", {"code": "exit()"})
        relay.forward("shell", [b"front"], shell, _parts(session, running))
        relay._from_remote("iopub", _status(session, "busy", running))
        queued = session.msg("execute_request", {"code": "1"})
        relay.forward("shell", [b"front"], shell, _parts(session, queued))
        relay.channels._outbox.clear()  # as the writer does: both went to the old process
        relay._from_remote("iopub", _status(session, state))  # the server's notice
        running_id, queued_id = running["header"]["msg_id"], queued["header"]["msg_id"]
        if state == "dead":
            assert died == [(state, [running_id, queued_id])]
            return died
        assert died == []  # not yet known: the sandbox may be going too
        await _new_process_answers_a_nudge(relay, session)
        assert died == [(state, [running_id])]
        hidden = {"msg_id": relay._orphans_wait_for}
        ours = session.msg("execute_reply", {"status": "ok"}, parent=hidden)
        relay._from_remote("shell", _parts(session, ours))
        assert died == [(state, [running_id]), (state, [queued_id])]
        await relay.close()
        return died

    asyncio.run(scenario())


def test_requests_sent_after_an_exit_reply_wait_for_the_new_process(sockets) -> None:
    """exit()'s reply says the process ends: what the front end sends next is held (not sent
    to a process that is gone, whose successor would run it before the server listens to its
    IOPub, losing its output) until the new process answers, after python3's look; it is
    not an orphan of the old process."""
    shell, _front, iopub = sockets

    async def scenario() -> None:
        session = Session(key=b"k")
        died: list[str] = []
        relay = _forwarder(session, iopub, on_died=lambda state, _routes: died.append(state))
        channels = relay.channels
        channels._iopub_live.set()  # as after open()
        running = session.msg("execute_request", {"code": "exit()"})
        relay.forward("shell", [b"front"], shell, _parts(session, running))
        channels._outbox.clear()  # written to the old process
        relay._from_remote("iopub", _status(session, "busy", running))
        payload = [{"source": "ask_exit", "keepkernel": False}]
        reply = session.msg("execute_reply", {"status": "ok", "payload": payload}, parent=running)
        channels._process_ends(_parts(session, reply)[3])  # as the reader does, then:
        relay._from_remote("shell", _parts(session, reply))
        relay._from_remote("iopub", _status(session, "idle", running))
        assert not channels._iopub_live.is_set()  # held from the reply on
        queued = session.msg("execute_request", {"code": "1"})
        relay.forward("shell", [b"front"], shell, _parts(session, queued))
        relay._from_remote("iopub", _status(session, "restarting"))  # the server's notice
        await _new_process_answers_a_nudge(relay, session)
        look = relay._orphans_wait_for
        assert [json.loads(parts[0])["msg_id"] for _, parts in channels._outbox] == [
            look,
            queued["header"]["msg_id"],
        ]
        assert relay._orphans == set()  # the queued request is not taken for lost
        hidden = {"msg_id": look}
        ours = session.msg("execute_reply", {"status": "ok"}, parent=hidden)
        relay._from_remote("shell", _parts(session, ours))
        assert died == []
        await relay.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("keepkernel", [True, None])
def test_a_reply_that_keeps_the_process_or_says_nothing_of_it_holds_nothing(
    keepkernel: bool | None,
) -> None:
    async def scenario() -> None:
        session = Session(key=b"k")
        channels = _forwarder(session, None).channels
        channels._iopub_live.set()
        payload = [] if keepkernel is None else [{"source": "ask_exit", "keepkernel": True}]
        reply = session.msg("execute_reply", {"status": "ok", "payload": payload})
        channels._process_ends(_parts(session, reply)[3])
        assert channels._iopub_live.is_set()
        await channels.close()

    asyncio.run(scenario())


def test_held_requests_go_out_when_no_restart_notice_comes(monkeypatch) -> None:
    """A server with no restarter never says so: the hold ends by itself."""
    monkeypatch.setattr(kernel_channels, "EXIT_NOTICE_WAIT", 0.05)

    async def scenario() -> None:
        session = Session(key=b"k")
        channels = _forwarder(session, None).channels
        channels._iopub_live.set()
        payload = [{"source": "ask_exit", "keepkernel": False}]
        reply = session.msg("execute_reply", {"status": "ok", "payload": payload})
        channels._process_ends(_parts(session, reply)[3])
        assert not channels._iopub_live.is_set()
        await asyncio.wait_for(channels._iopub_live.wait(), 5)
        await channels.close()

    asyncio.run(scenario())


async def _new_process_answers_a_nudge(relay: JupyterForwarder, session: Session) -> None:
    channels = relay.channels
    while not channels._nudges:  # the renudge task queues its first nudge when it runs
        await asyncio.sleep(0)
    nudge = json.loads(channels._nudges[0][0])
    answer = session.msg("status", {"execution_state": "busy"}, parent={"header": nudge})
    assert channels._is_nudge_answer("iopub", _parts(session, answer))
    assert channels._renudging is not None
    assert await channels._renudging is True
    await asyncio.sleep(0)  # the future's done callbacks run in the loop's next turn


def test_a_cell_whose_sandbox_goes_right_after_its_kernel_is_left_to_the_loss(sockets) -> None:
    """A killed sandbox's kernel may die a moment before its Jupyter Server, which then still
    reports the death: the running cell is not answered KernelDied then, since no new process
    proves the sandbox lives; the socket's close hands it to the loss (SandboxLost)."""
    shell, _front, iopub = sockets

    async def scenario() -> None:
        session = Session(key=b"k")
        died: list[str] = []
        relay = _forwarder(session, iopub, on_died=lambda state, _routes: died.append(state))
        running = session.msg("execute_request", {"code": "import time; time.sleep(100)"})
        relay.forward("shell", [b"front"], shell, _parts(session, running))
        relay._from_remote("iopub", _status(session, "busy", running))
        closed: asyncio.Future = asyncio.get_running_loop().create_future()
        closed.set_result(None)
        relay.channels._reader = closed  # type: ignore[assignment]  # the socket has closed
        relay._from_remote("iopub", _status(session, "restarting"))
        assert relay.channels._renudging is not None
        assert await relay.channels._renudging is False
        await asyncio.sleep(0)  # the future's done callbacks run in the loop's next turn
        assert died == []
        pending = relay.take_pending()
        assert [route.header["msg_id"] for route in pending] == [running["header"]["msg_id"]]
        await relay.close()

    asyncio.run(scenario())


def _as_received(frames: list[bytes]) -> list[zmq.Frame]:
    """As the kernel's shell stream hands a message over (``copy=False``)."""
    return [zmq.Frame(frame) for frame in frames]


class _Transport(JupyterTransport):
    """Just what ``JupyterTransport._split`` reads."""

    def __init__(self, session: Session) -> None:
        self.session = session


@pytest.mark.parametrize("flaw", ["another key", "sent again", "unsigned", "too few parts"])
def test_the_relay_refuses_what_ipykernel_refuses(flaw: str) -> None:
    """A request goes on only with the connection's signature, once taken (the relay checks
    it itself, without ``Session.deserialize``); anything else raises, and nothing is
    relayed. A message only checked, not taken, is left for ipykernel to remember."""
    session = Session(key=b"the key")
    transport = _Transport(session)
    msg = session.msg("execute_request", {"code": "1"})
    frames = [b"ident", b"<IDS|MSG>", *(bytes(f) for f in session.serialize(msg)[1:])]
    if flaw == "another key":
        other = Session(key=b"another key")
        frames = [b"ident", *(bytes(f) for f in other.serialize(msg))]
    elif flaw == "sent again":
        checked = transport._split(_as_received(frames))
        assert checked.idents == [b"ident"]
        assert checked.header["msg_id"] == msg["header"]["msg_id"]
        assert len(checked.parts) == 4
        transport._taken(checked)
    elif flaw == "unsigned":
        frames[2] = b""
    else:
        frames = frames[:4]
    with pytest.raises(ValueError):
        transport._split(_as_received(frames))


def test_remembered_signatures_stay_bounded() -> None:
    session = Session(key=b"the key", digest_history_size=100)
    transport = _Transport(session)
    for n in range(1000):
        msg = session.msg("execute_request", {"code": str(n)})
        frames = _as_received([bytes(f) for f in session.serialize(msg)])
        transport._taken(transport._split(frames))
    assert len(session.digest_history) <= 100


def test_a_message_left_to_ipykernel_is_not_remembered_here() -> None:
    """Interrupt, shutdown and connect requests are checked here, then handed to ipykernel,
    which refuses a signature it has seen: only what the relay takes is remembered."""
    session = Session(key=b"the key")
    transport = _Transport(session)
    msg = session.msg("shutdown_request", {"restart": False})
    frames = _as_received([bytes(f) for f in session.serialize(msg)])
    transport._split(frames)
    session.deserialize(list(frames)[1:], content=True, copy=False)  # as ipykernel then does


def _front_iopub(iopub) -> zmq.Socket:
    """A subscriber to the relay's IOPub socket (inproc: connected before anything is sent)."""
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(iopub.getsockopt(zmq.LAST_ENDPOINT).decode())
    return sub


def _published(sub: zmq.Socket, wait_ms: int = 200) -> list[tuple[str, dict]]:
    """(msg_type, content) of what the front end got on IOPub so far."""
    got = []
    while sub.poll(wait_ms):
        frames = sub.recv_multipart()
        at = frames.index(b"<IDS|MSG>")
        got.append((json.loads(frames[at + 2])["msg_type"], json.loads(frames[at + 5])))
    return got


async def _nudge_sent(relay: JupyterForwarder, count: int) -> dict:
    """The header of the ``count``-th nudge queued on control (waiting for it to be)."""
    channels = relay.channels
    while channels._nudges_sent < count:
        await asyncio.sleep(0)
    return json.loads(channels._nudges[count - 1][0])


def _opened(relay: JupyterForwarder) -> None:
    """As if the relay's socket were open (its reader still running)."""
    relay.channels._reader = asyncio.get_running_loop().create_future()  # type: ignore[assignment]


def test_a_cell_replied_to_whose_iopub_was_lost_still_ends(sockets) -> None:
    """A process the server has just restarted can run a cell queued for it before the
    server's IOPub subscription to it is live: the reply comes, its 'busy', output and 'idle'
    never do, and a front end would wait for that 'idle' for ever. Once an IOPub answer to a
    later request of ours (a nudge on control) has come, theirs cannot: the cell ends with a
    note. A cell replied to after that nudge was sent is not ended by its answer."""
    shell, _front, iopub = sockets
    sub = _front_iopub(iopub)
    session = Session(key=b"k")

    def replied(relay: JupyterForwarder, code: str) -> dict:
        request = session.msg("execute_request", {"code": code})
        relay.forward("shell", [b"front"], shell, _parts(session, request))
        reply = session.msg("execute_reply", {"status": "ok"}, parent=request)
        relay._from_remote("shell", _parts(session, reply))
        return request

    def answer(relay: JupyterForwarder, nudge: dict) -> None:
        status = _status(session, "busy", {"header": nudge})
        assert relay.channels._is_nudge_answer("iopub", status)

    async def scenario() -> tuple[list, list, list]:
        relay = _forwarder(session, iopub)
        _opened(relay)
        replied(relay, "print('ran')")
        first_nudge = await _nudge_sent(relay, 1)
        late = replied(relay, "2")
        await _nudge_sent(relay, 2)
        before = _published(sub, 50)
        answer(relay, first_nudge)
        await asyncio.sleep(0.05)  # the first cell's watch ends
        after_answer = _published(sub)
        relay._from_remote("iopub", _status(session, "busy", late))
        relay._from_remote("iopub", _status(session, "idle", late))
        await relay.close()
        return before, after_answer, _published(sub)

    try:
        before, after_answer, rest = asyncio.run(scenario())
    finally:
        sub.close(linger=0)
    assert before == []
    assert after_answer == [
        ("stream", {"name": "stderr", "text": kernel_channels.LOST_OUTPUT_NOTE}),
        ("status", {"execution_state": "idle"}),
    ]
    assert [(kind, c.get("execution_state")) for kind, c in rest] == [
        ("status", "busy"),
        ("status", "idle"),
    ]


def test_a_reply_ahead_of_its_iopub_is_not_taken_for_a_loss(sockets, monkeypatch) -> None:
    """The server relays shell and IOPub from different sockets: a cell's 'busy' may come
    after its reply (behind a previous cell's output). Its own status ends the wait; when
    IOPub never answers at all, the cell still ends, after CATCH_UP_FOR."""
    monkeypatch.setattr(kernel_channels, "CATCH_UP_FOR", 0.3)
    monkeypatch.setattr(kernel_channels, "_NUDGE_EVERY", 0.1)
    shell, _front, iopub = sockets
    sub = _front_iopub(iopub)
    session = Session(key=b"k")

    async def scenario() -> tuple[list, list]:
        relay = _forwarder(session, iopub)
        _opened(relay)
        requests = [session.msg("execute_request", {"code": str(n)}) for n in range(2)]
        for request in requests:
            relay.forward("shell", [b"front"], shell, _parts(session, request))
            reply = session.msg("execute_reply", {"status": "ok"}, parent=request)
            relay._from_remote("shell", _parts(session, reply))
        relay._from_remote("iopub", _status(session, "busy", requests[0]))
        relay._from_remote("iopub", _status(session, "idle", requests[0]))
        first = _published(sub, 50)
        await asyncio.sleep(0.6)  # past CATCH_UP_FOR: IOPub never answered a nudge
        later = _published(sub)
        await relay.close()
        return first, later

    try:
        first, later = asyncio.run(scenario())
    finally:
        sub.close(linger=0)
    assert [c.get("execution_state") for _, c in first] == ["busy", "idle"]
    assert later == [
        ("stream", {"name": "stderr", "text": kernel_channels.LOST_OUTPUT_NOTE}),
        ("status", {"execution_state": "idle"}),
    ]


def test_a_reply_the_guard_cannot_read_becomes_an_error_reply(sockets) -> None:
    """Content nested past Python's JSON parser may still be read by the browser: it is not
    passed on, and the front end still gets a reply (it would wait for ever)."""
    shell, front, iopub = sockets

    async def scenario() -> dict:
        session = Session(key=b"k")
        relay = _forwarder(session, iopub)
        request = session.msg("execute_request", {"code": "help(zip)"})
        relay.forward("shell", [b"front"], shell, _parts(session, request))
        relay._from_remote("iopub", _status(session, "busy", request))
        reply = _parts(session, session.msg("execute_reply", {}, parent=request))
        reply[3] = b'{"status": "ok", "payload": [{"source": "page", "data": {"text/html": '
        reply[3] += b"[" * 50_000
        relay._from_remote("shell", reply)
        assert front.poll(2000)
        content = json.loads(front.recv_multipart()[5])
        await relay.close()
        return dict(content)

    content = asyncio.run(scenario())
    assert content["status"] == "error" and "could not be read" in content["evalue"]


def _states(watcher: zmq.Socket) -> list[tuple[str, str]]:
    """(msg_type, execution_state or ename) of each message published so far."""
    return [(t, c.get("execution_state", c.get("ename"))) for t, c in _published(watcher)]


@pytest.mark.parametrize(
    ("channel", "parts"),
    [
        ("iopub", [b"{}", b"[]", b"{}", b'{"execution_state": "idle"}']),  # a parent not an object
        ("iopub", [b'{"msg_type": "status"}', b"{}", b"{}", b"[]"]),  # content not an object
        ("shell", [b'{"msg_type": "execute_reply"}', b"[]", b"{}", b"{}"]),
        ("iopub", [b'{"msg_type": "display_data"}', b"{}", b"{}", b'"e2b/data"' + b"[" * 5000]),
    ],
)
def test_messages_the_relay_cannot_read_are_dropped_and_it_goes_on(sockets, channel, parts) -> None:
    """The sandbox's kernel can send any bytes: none may end the relay (its reader closing
    would fail the running cell and lose every widget)."""
    shell, front, iopub = sockets

    async def scenario() -> bool:
        session = Session(key=b"k")
        relay = _forwarder(session, iopub)
        relay._from_remote(channel, parts)  # (raised before, which closed the relay)
        request = session.msg("kernel_info_request", {})
        relay.forward("shell", [b"front"], shell, _parts(session, request))
        reply = session.msg("kernel_info_reply", {"banner": ""}, parent=request)
        relay._from_remote("shell", _parts(session, reply))
        answered = bool(front.poll(2000))
        await relay.close()
        return answered

    assert asyncio.run(scenario())


def test_an_unreadable_exit_reply_holds_nothing() -> None:
    async def scenario() -> None:
        channels = _forwarder(Session(key=b"k"), None).channels
        channels._iopub_live.set()
        channels._process_ends(b'{"payload": ' + b"[" * 5000 + b'"ask_exit"')  # (raised before)
        assert channels._iopub_live.is_set()
        await channels.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("reply", ["late", "never"])
def test_a_timed_out_cell_shows_its_error_once_and_before_its_idle(sockets, reply: str) -> None:
    """The server relays shell and IOPub from different sockets: the 'idle' of a cell that
    caught its timeout's interrupt and ended ok may come before its reply, which becomes the
    timeout's error: that error must still come before the 'idle' (CI saw it after, where a
    front end has stopped reading the cell's outputs). And when the interrupt's error went out
    (as the timeout's) and no reply follows, the reply made for it shows no second error."""
    shell, _front, iopub = sockets
    watcher = _front_iopub(iopub)

    async def scenario() -> list[tuple[str, str]]:
        session = Session(key=b"k")
        relay = _forwarder(session, iopub)
        request = session.msg("execute_request", {"code": "time.sleep(30)"})
        msg_id = request["header"]["msg_id"]
        relay.forward("shell", [b"front"], shell, _parts(session, request))
        relay._from_remote("iopub", _status(session, "busy", request))
        relay._timed_out_ids.add(msg_id)  # as its timeout does
        if reply == "never":
            error = {"ename": "KeyboardInterrupt", "evalue": "", "traceback": []}
            relay._from_remote(
                "iopub", _parts(session, session.msg("error", error, parent=request))
            )
        relay._from_remote("iopub", _status(session, "idle", request))
        if reply == "late":
            late = session.msg("execute_reply", {"status": "ok"}, parent=request)
            relay._from_remote("shell", _parts(session, late))
        else:
            relay._reply_if_missing(msg_id)  # as its grace timer does
        seen = _states(watcher)
        await relay.close()
        return seen

    try:
        assert asyncio.run(scenario()) == [
            ("status", "busy"),
            ("error", "ExecutionTimeout"),
            ("status", "idle"),
        ]
    finally:
        watcher.close(linger=0)
