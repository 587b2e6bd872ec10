"""KernelChannels.open returns only once the remote kernel's IOPub reaches the socket.

A scripted Jupyter-Server-like WebSocket peer plays what a real server does only by chance
(IOPub not live yet when the connection opens, or never); the real Jupyter Server of a local
sandbox shows that nothing of the nudging reaches the front end.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from e2b_code_interpreter import AsyncSandbox
from jupyter_client.session import Session
from websockets.asyncio.server import ServerConnection, serve

from e2b_kernel.core import kernel_channels
from e2b_kernel.core.jupyter_server import JupyterEndpoint, endpoint_for
from e2b_kernel.core.kernel_channels import (
    V1_PROTOCOL,
    KernelChannels,
    KernelChannelsError,
    Parts,
    decode,
    encode,
    kernel_died,
)

LOG = logging.getLogger("test.kernel_channels")


def _message(msg_type: str, parent: dict[str, Any], content: dict[str, Any]) -> Parts:
    header = {"msg_id": f"{msg_type}-{time.monotonic_ns()}", "msg_type": msg_type}
    return [json.dumps(x).encode() for x in (header, parent, {}, content)]


class ScriptedServer:
    """Answers every request on its channel; its IOPub stays silent for the first
    ``deaf_nudges`` kernel_info_requests (a subscription not live yet), or for ever."""

    def __init__(self, deaf_nudges: int | None) -> None:
        self.deaf_nudges = deaf_nudges
        self.requests: list[tuple[str, str]] = []  # (channel, msg_type) received

    async def handle(self, ws: ServerConnection) -> None:
        async for data in ws:
            channel, parts = decode(V1_PROTOCOL, data)
            header = json.loads(parts[0])
            msg_type = header["msg_type"]
            self.requests.append((channel, msg_type))
            reply = msg_type.replace("_request", "_reply")
            await ws.send(encode(V1_PROTOCOL, channel, _message(reply, header, {"ok": 1})))
            nudges = sum(1 for _, t in self.requests if t == "kernel_info_request")
            if self.deaf_nudges is None or nudges <= self.deaf_nudges:
                continue
            for state in ("busy", "idle"):
                status = _message("status", header, {"execution_state": state})
                await ws.send(encode(V1_PROTOCOL, "iopub", status))


@asynccontextmanager
async def _served(server: ScriptedServer) -> AsyncIterator[JupyterEndpoint]:
    async with serve(server.handle, "127.0.0.1", 0, subprotocols=[V1_PROTOCOL]) as listening:
        port = listening.sockets[0].getsockname()[1]
        yield JupyterEndpoint(f"http://127.0.0.1:{port}")


def test_open_waits_for_live_iopub_and_swallows_its_nudges() -> None:
    async def scenario() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        server = ScriptedServer(deaf_nudges=2)
        received: list[tuple[str, str]] = []

        def on_message(channel: str, parts: Parts) -> None:
            received.append((channel, json.loads(parts[0])["msg_type"]))

        async with _served(server) as endpoint:
            channels = KernelChannels(endpoint, "k", on_message, lambda _: None, LOG)
            await channels.open()
            opened_after = list(server.requests)
            # The front end's own request after open: all its messages are passed on.
            channels.send("shell", _message("kernel_info_request", {}, {}))
            deadline = time.monotonic() + 10
            while len(received) < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            await channels.close()
        return opened_after, received

    opened_after, received = asyncio.run(scenario())
    # Nudged on control until IOPub answered (the third nudge), and only then open.
    assert opened_after == [("control", "kernel_info_request")] * 3
    # None of the nudges' replies or statuses reached the front end; its own request's did.
    assert sorted(received) == [
        ("iopub", "status"),
        ("iopub", "status"),
        ("shell", "kernel_info_reply"),
    ]


def test_open_fails_clearly_when_iopub_never_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernel_channels, "IOPUB_READY_TIMEOUT", 1.5)

    async def scenario() -> None:
        async with _served(ScriptedServer(deaf_nudges=None)) as endpoint:
            channels = KernelChannels(endpoint, "k", lambda *_: None, lambda _: None, LOG)
            await channels.open()

    began = time.monotonic()
    with pytest.raises(KernelChannelsError, match="IOPub did not answer within 2 s"):
        asyncio.run(scenario())
    assert time.monotonic() - began < 10


def test_a_real_server_passes_on_every_message_of_the_first_cell_and_no_nudge(
    sdk_env: dict[str, str],
) -> None:
    """Against a sandbox's real Jupyter Server: right after open(), a cell's messages all
    arrive (busy, execute_input, execute_result, idle, and the reply), and nothing else."""

    async def scenario() -> tuple[str, list[tuple[str, str, dict[str, Any]]]]:
        sandbox = await AsyncSandbox.create(timeout=120)
        try:
            await sandbox.run_code("1")
            endpoint = endpoint_for(sandbox)
            kernel_id = (await endpoint.list_kernels())[0]["id"]
            received: list[tuple[str, str, dict[str, Any]]] = []

            def on_message(channel: str, parts: Parts) -> None:
                header, parent = json.loads(parts[0]), json.loads(parts[1])
                received.append((channel, header["msg_type"], parent))

            channels = KernelChannels(endpoint, kernel_id, on_message, lambda _: None, LOG)
            await channels.open()
            session = Session(key=b"unused: the server signs", username="test")
            request = session.msg("execute_request", {"code": "6 * 7", "silent": False})
            channels.send("shell", [bytes(p) for p in session.serialize(request)[2:]])
            msg_id = request["header"]["msg_id"]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if sum(1 for *_, parent in received if parent.get("msg_id") == msg_id) >= 5:
                    break
                await asyncio.sleep(0.02)
            await channels.close()
            return msg_id, received
        finally:
            await sandbox.kill()

    msg_id, received = asyncio.run(scenario())
    # (The server's own readiness check may publish statuses too: every client sees those.)
    nudges = [m for m in received if m[2].get("username") == "e2b-kernel"]
    assert nudges == []
    assert sorted((c, t) for c, t, parent in received if parent.get("msg_id") == msg_id) == [
        ("iopub", "execute_input"),
        ("iopub", "execute_result"),
        ("iopub", "status"),
        ("iopub", "status"),
        ("shell", "execute_reply"),
    ]


@pytest.mark.parametrize(
    ("msg_type", "parent_id", "content", "expected"),
    [
        ("status", None, {"execution_state": "restarting"}, "restarting"),
        ("status", None, {"execution_state": "dead"}, "dead"),
        ("status", None, {"execution_state": "starting"}, None),
        ("status", "a-request", {"execution_state": "restarting"}, None),
        # Another client restarted it through the server's REST API: the process says so.
        ("shutdown_reply", "servers-request", {"status": "ok", "restart": True}, "restarted"),
        ("shutdown_reply", "servers-request", {"status": "ok", "restart": False}, None),
        ("execute_result", None, {"data": {}}, None),
    ],
)
def test_kernel_died_names_the_messages_after_which_no_reply_comes(
    msg_type: str, parent_id: str | None, content: dict, expected: str | None
) -> None:
    assert kernel_died("iopub", msg_type, parent_id, content) == expected
    assert kernel_died("shell", msg_type, parent_id, content) is None
