"""Run a cell in a kernel of a sandbox's port 8888 as a Jupyter front end does: the kernel
channels' WebSocket (v1 protocol), through the local service's sandbox-port proxy."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from jupyter_client.jsonutil import json_default
from jupyter_client.session import Session
from jupyter_server.services.kernels.connection.base import (
    deserialize_msg_from_ws_v1,
    serialize_msg_to_ws_v1,
)
from websockets.sync.client import connect as ws_connect
from websockets.typing import Subprotocol

JUPYTER_SUBPROTOCOL = "v1.kernel.websocket.jupyter.org"


def _pack(part: Any) -> bytes:
    return json.dumps(part, default=json_default).encode()


def _wait_for_iopub(ws: Any, session: Session) -> None:
    """Until the new connection's IOPub is subscribed: the server checks that only for an idle
    kernel, so an execute_request sent at once may lose its IOPub messages (a front end's
    usual kernel_info nudging, as core/kernel_channels.py does)."""
    nudges: set[str] = set()
    for _ in range(40):
        nudge = session.msg("kernel_info_request", {})
        nudges.add(nudge["header"]["msg_id"])
        ws.send(serialize_msg_to_ws_v1(nudge, "shell", _pack))
        try:
            while True:
                frame = ws.recv(timeout=0.5)
                channel, parts = deserialize_msg_from_ws_v1(frame)
                if channel == "iopub" and json.loads(parts[1]).get("msg_id") in nudges:
                    return
        except TimeoutError:
            continue
    raise AssertionError("port 8888's IOPub never answered a kernel_info_request")


def execute_over_8888(
    service_url: str,
    sandbox_id: str,
    kernel_id: str,
    code: str,
    during: Callable[[], object] | None = None,
    wait: float = 60,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run ``code``; (the execute_reply's content, the execute_result's data or {}).
    ``during`` is called once, at the cell's first output on stdout: its code runs then (at
    its execute_input, ipykernel may still be in its own code, where a SIGINT ends the handler
    with no reply at all). ``wait``: the longest silence, in seconds, before the cell counts
    as hung (AssertionError)."""
    session = Session()
    request = session.msg("execute_request", {"code": code, "silent": False})
    url = service_url.replace("http://", "ws://") + f"/api/kernels/{kernel_id}/channels"
    headers = {"E2b-Sandbox-Id": sandbox_id, "E2b-Sandbox-Port": "8888"}
    offered = [Subprotocol(JUPYTER_SUBPROTOCOL)]
    with ws_connect(url, additional_headers=headers, subprotocols=offered) as ws:
        assert ws.subprotocol == JUPYTER_SUBPROTOCOL  # the binary-safe protocol survived
        _wait_for_iopub(ws, session)
        ws.send(serialize_msg_to_ws_v1(request, "shell", _pack))
        data: dict[str, Any] = {}
        # Shell and IOPub are two sockets inside: the reply may overtake the execute_result,
        # so the cell is over only when both the reply and IOPub's idle status are in.
        reply: dict[str, Any] | None = None
        idle = False
        while reply is None or not idle:
            try:
                frame = ws.recv(timeout=wait)
            except TimeoutError:
                raise AssertionError(f"the cell sent nothing for {wait} s: {code!r}") from None
            assert isinstance(frame, bytes)
            channel, parts = deserialize_msg_from_ws_v1(frame)
            header, parent, content = (json.loads(parts[i]) for i in (0, 1, 3))
            if parent.get("msg_id") != request["header"]["msg_id"]:
                continue
            if header["msg_type"] == "stream" and during is not None:
                during()
                during = None
            if header["msg_type"] == "execute_result":
                data = content["data"]
            if channel == "shell" and header["msg_type"] == "execute_reply":
                reply = content
            if header["msg_type"] == "status" and content["execution_state"] == "idle":
                idle = True
        return reply, data
