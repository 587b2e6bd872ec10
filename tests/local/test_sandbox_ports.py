"""Sandbox ports through the local service, as E2B's proxy serves them: HTTP and WebSocket to
a server inside the sandbox, the closed-port error, and the traffic token of restricted
sandboxes. The unmodified SDK starts the servers; raw clients reach them with E2B's routing
headers or E2B's host form with the domain ``localhost``."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import textwrap
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from attack_helpers import flood_server
from e2b import AsyncSandbox, Sandbox
from e2b.exceptions import SandboxUnreachableException, format_sandbox_unavailable_exception
from local_helpers import sandbox_headers, sdk_options, wait_for
from websockets.sync.client import connect as ws_connect
from websockets.typing import Subprotocol

from e2b_kernel.local import RunningService

JUPYTER_SUBPROTOCOL = "v1.kernel.websocket.jupyter.org"
# An echo server on port 8765 inside the sandbox; it keeps the frame type and picks the
# Jupyter subprotocol when offered (the sandbox's Python has `websockets`, as the service's).
ECHO_SERVER = textwrap.dedent(
    """
    import asyncio
    from websockets.asyncio.server import serve

    PROTOCOL = "v1.kernel.websocket.jupyter.org"

    async def echo(ws):
        async for message in ws:
            await ws.send(message)

    async def main():
        async with serve(echo, "127.0.0.1", 8765, subprotocols=[PROTOCOL], max_size=None) as server:
            await server.serve_forever()

    asyncio.run(main())
    """
)

# Answers a plain GET, and a WebSocket's first message, with the Host and X-Forwarded-Host the
# server got and the names of all its headers, as JSON.
HOST_ECHO = textwrap.dedent(
    """
    import asyncio, json, sys
    from http import HTTPStatus
    from websockets.asyncio.server import serve

    def seen(request):
        host, forwarded = request.headers.get("Host"), request.headers.get("X-Forwarded-Host")
        names = sorted({name.lower() for name in request.headers.keys()})
        return json.dumps({"host": host, "forwarded": forwarded, "names": names})

    def plain_http(connection, request):
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return connection.respond(HTTPStatus.OK, seen(request))

    async def first_message(ws):
        await ws.send(seen(ws.request))

    async def main():
        port = int(sys.argv[1])
        async with serve(first_message, "127.0.0.1", port, process_request=plain_http) as server:
            await server.serve_forever()

    asyncio.run(main())
    """
)


def _routing(sandbox: Sandbox | AsyncSandbox, port: int) -> dict[str, str]:
    return {"E2b-Sandbox-Id": sandbox.sandbox_id, "E2b-Sandbox-Port": str(port)}


def _wait_open(http: httpx.Client, url: str, headers: dict[str, str]) -> httpx.Response:
    """GET until the server in the sandbox listens (502 'port is not open' until then)."""
    answers: list[httpx.Response] = []

    def answered() -> bool:
        answers.append(http.get(url, headers=headers))
        return answers[-1].status_code != 502

    wait_for(answered, 30, "the server in the sandbox to listen")
    return answers[-1]


@pytest.fixture(scope="module")
def sandbox(local_service: RunningService) -> Iterator[Sandbox]:
    """A sandbox whose SDK domain is `localhost`, so get_host() names a loopback host."""
    sbx = Sandbox.create(timeout=300, domain="localhost", **sdk_options(local_service))
    try:
        yield sbx
    finally:
        sbx.kill()


def test_http_server_in_the_sandbox_is_reachable(
    local_service: RunningService, sandbox: Sandbox
) -> None:
    sandbox.files.write("/home/user/site/hello.txt", "hello from the sandbox")
    sandbox.commands.run("cd site && python -m http.server 3000", background=True, timeout=0)
    # The SDK's own URL for a sandbox port: E2B_SANDBOX_URL (the service) for every port.
    url = sandbox.connection_config.get_sandbox_url(
        sandbox.sandbox_id, sandbox.sandbox_domain, 3000
    )
    assert url == local_service.url
    with httpx.Client(base_url=url) as http:
        listing = _wait_open(http, "/", _routing(sandbox, 3000))
        assert listing.status_code == 200, listing.text
        assert "hello.txt" in listing.text  # http.server's directory listing
        # E2B's host form, {port}-{id}.{domain}, as the SDK builds it.
        assert sandbox.get_host(3000) == f"3000-{sandbox.sandbox_id}.localhost"
        by_host = http.get("/hello.txt", headers={"Host": sandbox.get_host(3000)})
        assert by_host.status_code == 200
        assert by_host.text == "hello from the sandbox"


def test_request_and_response_bodies_stream_through(
    local_service: RunningService, sandbox: Sandbox
) -> None:
    server = textwrap.dedent(
        """
        from http.server import BaseHTTPRequestHandler, HTTPServer

        class Echo(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                size = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(size) if size else self._chunked()
                self.send_response(201)
                self.send_header("X-Seen-Length", str(len(data)))
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _chunked(self):
                data = b""
                while (size := int(self.rfile.readline().strip(), 16)):
                    data += self.rfile.read(size)
                    self.rfile.readline()
                self.rfile.readline()
                return data

        HTTPServer(("127.0.0.1", 3001), Echo).serve_forever()
        """
    )
    sandbox.files.write("/home/user/echo_http.py", server)
    sandbox.commands.run("python echo_http.py", background=True, timeout=0)
    payload = bytes(range(256)) * 4096  # 1 MiB, every byte value

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(payload), 65536):
            yield payload[start : start + 65536]

    with httpx.Client(base_url=local_service.url, timeout=60) as http:
        _wait_open(http, "/", _routing(sandbox, 3001))
        fixed = http.post("/upload", content=payload, headers=_routing(sandbox, 3001))
        assert fixed.status_code == 201
        assert fixed.content == payload
        chunked = http.post("/upload", content=chunks(), headers=_routing(sandbox, 3001))
        assert chunked.status_code == 201
        assert chunked.headers["x-seen-length"] == str(len(payload))
        assert chunked.content == payload
    # Chunked with a Content-Length beside it: the chunks frame the body (RFC 9112 6.3), and
    # the Length must not reach the sandbox's server (a 500 and a traceback, before).
    routing = "".join(f"{k}: {v}\r\n" for k, v in _routing(sandbox, 3001).items()).encode()
    address = urlsplit(local_service.url)
    with socket.create_connection((address.hostname, address.port), timeout=60) as conn:
        conn.sendall(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + routing
            + b"Transfer-Encoding: chunked\r\nContent-Length: 999\r\n\r\n"
            + b"5\r\nhello\r\n0\r\n\r\n"
        )  # fmt: skip
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 201"), answer[:300]
    assert answer.endswith(b"hello")


def test_websocket_server_in_the_sandbox(local_service: RunningService, sandbox: Sandbox) -> None:
    sandbox.files.write("/home/user/echo_ws.py", ECHO_SERVER)
    sandbox.commands.run("python echo_ws.py", background=True, timeout=0)
    with httpx.Client(base_url=local_service.url) as http:
        _wait_open(http, "/", _routing(sandbox, 8765))  # a plain GET: the server says 426
    url = local_service.url.replace("http://", "ws://") + "/echo"
    headers = _routing(sandbox, 8765)
    offered = [Subprotocol(JUPYTER_SUBPROTOCOL)]
    with ws_connect(url, additional_headers=headers, subprotocols=offered, max_size=None) as ws:
        assert ws.subprotocol == JUPYTER_SUBPROTOCOL
        ws.send("text frame ✓")
        assert ws.recv() == "text frame ✓"
        ws.send(b"\x00\x01binary\xff")
        assert ws.recv() == b"\x00\x01binary\xff"
        big = bytes(range(256)) * 8192  # 2 MiB: more than one read of the tunnel
        ws.send(big)
        assert ws.recv() == big


def test_mask_request_host_is_the_host_the_server_sees(
    local_service: RunningService, sandbox: Sandbox
) -> None:
    masked = Sandbox.create(
        timeout=120,
        domain="localhost",
        network={"mask_request_host": "localhost:${PORT}"},
        **sdk_options(local_service),
    )
    try:
        seen = {}
        for sbx in (masked, sandbox):
            sbx.files.write("/home/user/host_echo.py", HOST_ECHO)
            sbx.commands.run("python host_echo.py 3004", background=True, timeout=0)
            with httpx.Client(base_url=local_service.url) as http:
                seen[sbx] = _wait_open(http, "/", {"Host": sbx.get_host(3004)}).json()
                del seen[sbx]["names"]
        # E2B's proxy: the mask, ${PORT} replaced; the caller's host in X-Forwarded-Host.
        assert seen[masked] == {"host": "localhost:3004", "forwarded": masked.get_host(3004)}
        assert seen[sandbox] == {"host": sandbox.get_host(3004), "forwarded": None}
        url = local_service.url.replace("http://", "ws://")
        with ws_connect(url, additional_headers=_routing(masked, 3004)) as ws:
            assert json.loads(ws.recv())["host"] == "localhost:3004"
        with ws_connect(url, additional_headers=_routing(sandbox, 3004)) as ws:
            assert json.loads(ws.recv())["host"] == url.removeprefix("ws://")
        assert masked.get_info().network == {
            "allow_out": [],
            "deny_out": [],
            "mask_request_host": "localhost:${PORT}",
        }
    finally:
        masked.kill()


def test_closed_port_is_e2b_port_not_open(local_service: RunningService, sandbox: Sandbox) -> None:
    reply = httpx.get(f"{local_service.url}/", headers=_routing(sandbox, 3999))
    assert reply.status_code == 502
    body = reply.json()
    assert body["sandboxId"] == sandbox.sandbox_id
    assert body["message"] == "The sandbox is running but port is not open"
    # The SDK's own mapping of the proxy's 502 makes it SandboxUnreachableException.
    error = format_sandbox_unavailable_exception(body["message"])
    assert isinstance(error, SandboxUnreachableException)
    with pytest.raises(Exception) as refused:
        url = local_service.url.replace("http://", "ws://")
        ws_connect(url, additional_headers=_routing(sandbox, 3999)).close()
    assert "502" in str(refused.value)


def test_restricted_sandbox_needs_the_traffic_token(local_service: RunningService) -> None:
    restricted = Sandbox.create(
        timeout=120, network={"allow_public_traffic": False}, **sdk_options(local_service)
    )
    try:
        token = restricted.traffic_access_token
        assert token
        restricted.commands.run("python -m http.server 3002", background=True, timeout=0)
        headers = _routing(restricted, 3002)
        with httpx.Client(base_url=local_service.url) as http:
            allowed = {**headers, "E2B-Traffic-Access-Token": token}
            assert _wait_open(http, "/", allowed).status_code == 200
            missing = http.get("/", headers=headers)
            assert missing.status_code == 403
            assert missing.json() == {
                "sandboxId": restricted.sandbox_id,
                "message": "Sandbox is secured with traffic access token. "
                "Token header 'e2b-traffic-access-token' is missing",
                "code": 403,
            }
            wrong = http.get("/", headers={**headers, "E2B-Traffic-Access-Token": "x" * 64})
            assert wrong.status_code == 403
            assert "is invalid" in wrong.json()["message"]
        url = local_service.url.replace("http://", "ws://")
        with pytest.raises(Exception) as refused:
            ws_connect(url, additional_headers=headers).close()
        assert "403" in str(refused.value)
        # Let through, an upgrade still leaves E2B's credentials at the proxy.
        restricted.files.write("/home/user/host_echo.py", HOST_ECHO)
        restricted.commands.run("python host_echo.py 3005", background=True, timeout=0)
        echo = {**_routing(restricted, 3005), "E2B-Traffic-Access-Token": token}
        with httpx.Client(base_url=local_service.url) as http:
            assert "e2b-traffic-access-token" not in _wait_open(http, "/", echo).json()["names"]
        with ws_connect(url, additional_headers=echo) as ws:
            names = json.loads(ws.recv())["names"]
        assert "e2b-traffic-access-token" not in names and "e2b-sandbox-id" in names
    finally:
        restricted.kill()


def test_async_sdk_server_reachable(local_service: RunningService) -> None:
    async def scenario() -> None:
        sbx = await AsyncSandbox.create(timeout=120, **sdk_options(local_service))
        try:
            await sbx.commands.run("python -m http.server 3003", background=True, timeout=0)
            async with httpx.AsyncClient(base_url=local_service.url) as http:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 30
                while True:
                    reply = await http.get("/", headers=_routing(sbx, 3003))
                    if reply.status_code != 502 or loop.time() > deadline:
                        break
                    await asyncio.sleep(0.05)  # poll interval of a bounded wait for listen()
                assert reply.status_code == 200
                assert "Directory listing" in reply.text
        finally:
            await sbx.kill()

    asyncio.run(scenario())


def _flooding(sandbox: Sandbox, mode: str, port: int) -> None:
    sandbox.files.write("/home/user/flood.py", flood_server(port, mode))
    sandbox.commands.run("python /home/user/flood.py", background=True, timeout=0)
    wait_for(lambda: sandbox.files.exists(f"/tmp/listening-{port}"), 30, "the flood server")


def test_a_port_that_answers_only_1xx_heads_gets_a_502(
    local_service: RunningService, sandbox: Sandbox
) -> None:
    """Each 1xx head costs the service a parse and no byte of answer: a server that sent
    them without end held the service's loop (every sandbox's) for as long as the caller
    waited. After a few the request ends with E2B's 502."""
    _flooding(sandbox, "1xx heads", 3101)
    with httpx.Client(base_url=local_service.url, timeout=30) as http:
        answer = http.get("/", headers=_routing(sandbox, 3101))
    assert answer.status_code == 502, answer.text
    assert "1xx answers" in answer.text


def test_a_port_that_answers_in_one_byte_chunks_leaves_the_service_serving(
    local_service: RunningService, sandbox: Sandbox
) -> None:
    """Parsing costs the service per chunk: a server sending one-byte chunks kept the loop
    for seconds between two turns (another sandbox waited 5 to 39 s). The loop now gets a
    turn every few hundred chunks, so the service keeps serving while the body streams."""
    _flooding(sandbox, "one-byte chunks", 3102)
    probes: list[float] = []
    received = 0
    with (
        httpx.Client(base_url=local_service.url, timeout=30) as http,
        http.stream("GET", "/", headers=_routing(sandbox, 3102)) as answer,
    ):
        assert answer.status_code == 200
        # envd's health: the service's own loop answers it (as test_service_robustness probes).
        with httpx.Client(headers=sandbox_headers(sandbox), timeout=30) as prober:
            for chunk in answer.iter_raw():
                received += len(chunk)
                if received > len(probes) * (64 << 10):  # a probe per 64 KiB of body
                    began = time.monotonic()
                    assert prober.get(f"{local_service.url}/health").status_code == 204
                    probes.append(time.monotonic() - began)
                if len(probes) >= 10:
                    break
    assert received > 0 and len(probes) == 10
    # The second slowest: one probe alone can meet a moment with no core for the service on
    # a loaded 2-core machine; the flaw held every probe for seconds.
    assert sorted(probes)[-2] < 1.0, [f"{probe * 1000:.0f} ms" for probe in probes]


# Answers every request on a connection with a keep-alive "200 ok", as a server that refuses
# a WebSocket upgrade may, and keeps every byte it receives in /tmp/seen-<port>.
REFUSING_SERVER = textwrap.dedent(
    """
    import socket, sys, threading
    port = int(sys.argv[1])

    def serve(conn):
        with conn, open(f"/tmp/seen-{port}", "ab", buffering=0) as seen:
            while data := conn.recv(65536):
                seen.write(data)
                conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok")

    listener = socket.create_server(("127.0.0.1", port))
    open(f"/tmp/listening-{port}", "w").close()
    while True:
        threading.Thread(target=serve, args=(listener.accept()[0],), daemon=True).start()
    """
)
UPGRADE = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


def test_a_refused_upgrade_does_not_hand_the_callers_connection_to_the_sandbox(
    local_service: RunningService, sandbox: Sandbox
) -> None:
    """Attack: a sandbox server answers a WebSocket upgrade with an ordinary keep-alive 200.
    The service spliced the connection at the upgrade request, so the caller's HTTP client
    kept it and sent its next request, the service's API key with it, into the sandbox (which
    answered it as the control plane). Only a 101 may turn a connection into a pipe; other
    answers end the connection, and bytes the caller sent after its upgrade request never
    reach the sandbox unless the upgrade is accepted."""
    port = 3103
    sandbox.files.write("/home/user/refusing.py", REFUSING_SERVER)
    sandbox.commands.run(f"python /home/user/refusing.py {port}", background=True, timeout=0)
    wait_for(lambda: sandbox.files.exists(f"/tmp/listening-{port}"), 30, "the refusing server")
    key = {"X-API-Key": local_service.api_key}
    with httpx.Client(base_url=local_service.url, timeout=30) as http:
        refused = http.get("/", headers={**_routing(sandbox, port), **UPGRADE})
        assert (refused.status_code, refused.text) == (200, "ok")
        listed = http.get("/sandboxes", headers=key)  # the same client: a pooled connection
    assert listed.status_code == 200 and listed.text != "ok", "the sandbox answered the service"
    assert refused.headers.get("connection") == "close"
    assert sandbox.sandbox_id in {s["sandboxID"] for s in listed.json()}
    # A client that pipelines: its second request is in the bytes after the upgrade's head.
    upgrade = f"GET / HTTP/1.1\r\nHost: localhost\r\nE2b-Sandbox-Id: {sandbox.sandbox_id}\r\n"
    upgrade += f"E2b-Sandbox-Port: {port}\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in UPGRADE.items()
    )
    pipelined = (
        f"GET /sandboxes HTTP/1.1\r\nHost: localhost\r\nX-API-Key: {local_service.api_key}\r\n\r\n"
    )
    address = urlsplit(local_service.url)
    with socket.create_connection((address.hostname, address.port), timeout=30) as raw:
        raw.sendall((upgrade + "\r\n" + pipelined).encode())
        answer = b""
        while chunk := raw.recv(65536):  # the service closes after the refusal
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok"), answer[:300]
    seen = sandbox.files.read(f"/tmp/seen-{port}")
    assert local_service.api_key not in seen, "the caller's API key reached the sandbox"
    assert seen.count("GET / HTTP/1.1") == 2 and "/sandboxes" not in seen, seen


# Accepts one connection at a time, records that it has the request head, then reads until
# the other side closes and records that too.
SILENT_UNTIL_CLOSED = textwrap.dedent(
    """
    import socket, sys
    port = int(sys.argv[1])
    listener = socket.create_server(("127.0.0.1", port))
    open(f"/tmp/listening-{port}", "w").close()
    conn, _ = listener.accept()
    head = b""
    while b"\\r\\n\\r\\n" not in head:
        head += conn.recv(65536)
    open(f"/tmp/asked-{port}", "w").close()
    while conn.recv(65536):
        pass
    open(f"/tmp/closed-{port}", "w").close()
    """
)


def _raw_upgrade(service: RunningService, sandbox: Sandbox, port: int) -> bytes:
    head = f"GET / HTTP/1.1\r\nHost: localhost\r\nE2b-Sandbox-Id: {sandbox.sandbox_id}\r\n"
    head += f"E2b-Sandbox-Port: {port}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in UPGRADE.items())
    return (head + "\r\n").encode()


def test_a_caller_who_hangs_up_before_the_sandbox_answers_frees_the_relay(
    local_service: RunningService, sandbox: Sandbox
) -> None:
    """Until a 101 the caller's socket was paused, so its hang-up went unseen: a sandbox
    server that never answered kept the caller's socket, the tunnel and a task for every
    caller that had given up (and outside the connection limit)."""
    port = 3104
    sandbox.files.write("/home/user/silent_until_closed.py", SILENT_UNTIL_CLOSED)
    sandbox.commands.run(
        f"python /home/user/silent_until_closed.py {port}", background=True, timeout=0
    )
    wait_for(lambda: sandbox.files.exists(f"/tmp/listening-{port}"), 30, "the silent server")
    address = urlsplit(local_service.url)
    with socket.create_connection((address.hostname, address.port), timeout=30) as raw:
        raw.sendall(_raw_upgrade(local_service, sandbox, port))
        wait_for(lambda: sandbox.files.exists(f"/tmp/asked-{port}"), 30, "the upgrade to arrive")
    wait_for(lambda: sandbox.files.exists(f"/tmp/closed-{port}"), 30, "the tunnel to close")


def test_a_refusal_reaches_a_caller_that_is_still_sending(
    local_service: RunningService, sandbox: Sandbox
) -> None:
    """A caller that sends much after its upgrade request (held for the server until a 101)
    gets the whole refusal: the service ends its side and lets the caller finish before it
    closes, instead of a reset that can take the end of the answer with it."""
    port = 3105
    sandbox.files.write("/home/user/refusing.py", REFUSING_SERVER)
    sandbox.commands.run(f"python /home/user/refusing.py {port}", background=True, timeout=0)
    wait_for(lambda: sandbox.files.exists(f"/tmp/listening-{port}"), 30, "the refusing server")
    address = urlsplit(local_service.url)
    with socket.create_connection((address.hostname, address.port), timeout=30) as raw:
        raw.sendall(_raw_upgrade(local_service, sandbox, port))
        sender = threading.Thread(target=_send_quietly, args=(raw, b"x" * (8 << 20)))
        sender.start()
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
        sender.join(30)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"\r\n\r\nok"), answer[-300:]


LATE_SWITCHING_SERVER = textwrap.dedent(
    """
    import hashlib, os, socket, sys
    port, expected = int(sys.argv[1]), int(sys.argv[2])
    listener = socket.create_server(("127.0.0.1", port))
    open(f"/tmp/listening-{port}", "w").close()
    conn = listener.accept()[0]
    data = b""
    while b"\\r\\n\\r\\n" not in data:
        data += conn.recv(65536)
    rest = data.split(b"\\r\\n\\r\\n", 1)[1]
    while not os.path.exists(f"/tmp/go-{port}"):  # the caller has sent all it sends
        os.sched_yield()
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\n"
                 b"Connection: Upgrade\\r\\n\\r\\n")
    digest, count = hashlib.sha256(rest), len(rest)
    while count < expected and (chunk := conn.recv(65536)):
        digest.update(chunk)
        count += len(chunk)
    conn.sendall(f"{count} {digest.hexdigest()}".encode())
    conn.close()
    """
)


def test_what_a_caller_sends_before_the_101_all_reaches_the_server(
    local_service: RunningService, sandbox: Sandbox
) -> None:
    """Bytes a caller sends after its upgrade request, before the server has switched
    protocols, are held for the server: past the hold's 64 KiB the chunk that overflowed it
    was dropped (the stream then arrived with a hole in it)."""
    port = 3106
    sandbox.files.write("/home/user/late.py", LATE_SWITCHING_SERVER)
    payload = os.urandom(256 << 10)
    server = f"python /home/user/late.py {port} {len(payload)}"
    sandbox.commands.run(server, background=True, timeout=0)
    wait_for(lambda: sandbox.files.exists(f"/tmp/listening-{port}"), 30, "the late server")
    address = urlsplit(local_service.url)
    with socket.create_connection((address.hostname, address.port), timeout=30) as raw:
        raw.sendall(_raw_upgrade(local_service, sandbox, port))
        sender = threading.Thread(target=raw.sendall, args=(payload,))
        sender.start()
        sender.join(5)  # all sent, or the service stopped reading (then the rest follows)
        sandbox.files.write(f"/tmp/go-{port}", "")
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += raw.recv(65536)
        assert answer.startswith(b"HTTP/1.1 101"), answer
        sender.join(30)
        report = answer.split(b"\r\n\r\n", 1)[1]
        raw.settimeout(10)
        with contextlib.suppress(TimeoutError):  # the server still waits for bytes lost here
            while chunk := raw.recv(65536):
                report += chunk
    expected = f"{len(payload)} {hashlib.sha256(payload).hexdigest()}"
    assert report.decode() == expected


def _send_quietly(raw: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the service closes once it has answered
        raw.sendall(data)


def test_an_upgrade_without_a_host_gets_a_400(
    local_service: RunningService, sandbox: Sandbox
) -> None:
    """HTTP/1.0 lets a request omit Host; the relay raised on it and the caller got nothing."""
    head = (
        f"GET / HTTP/1.0\r\nE2b-Sandbox-Id: {sandbox.sandbox_id}\r\nE2b-Sandbox-Port: 3103\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in UPGRADE.items())
        + "\r\n"
    )
    address = urlsplit(local_service.url)
    with socket.create_connection((address.hostname, address.port), timeout=30) as raw:
        raw.sendall(head.encode())
        answer = raw.recv(65536)
    assert answer.startswith(b"HTTP/1.1 400"), answer
