"""``network={"https_ports": [...]}``: the port proxy speaks TLS to those ports, trusting any
certificate (a self-signed one here), while the caller speaks plain HTTP to the service, as
E2B's proxy re-encrypts that hop. Servers of the wrong kind on a port give a clear 502."""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from e2b import Sandbox
from local_helpers import sdk_options, wait_for
from websockets.sync.client import connect as ws_connect

from e2b_kernel.local import RunningService

HTTPS_PORT = 3443  # a TLS server, listed in https_ports
UNLISTED_TLS_PORT = 3444  # the same TLS server, not listed
PLAIN_PORT = 3445  # a plain-HTTP server, listed
SILENT_PORT = 3446  # accepts and never says a word, listed
DHE_PORT = 3447  # the TLS server with finite-field DHE as its only key exchange, listed
WSS_PORT = 8443  # a TLS WebSocket echo server, listed
HTTPS_PORTS = [HTTPS_PORT, PLAIN_PORT, SILENT_PORT, WSS_PORT, DHE_PORT]
TLS_DIR = "/home/user/tls"
PORT_NOT_OPEN = "The sandbox is running but port is not open"

# Answers GET with the path and the TLS version it was reached over, and echoes a POST body.
HTTPS_SERVER = textwrap.dedent(
    f"""
    import json, ssl, sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            seen = {{"path": self.path, "tls": self.request.version()}}
            self._answer(200, json.dumps(seen).encode())

        def do_POST(self):
            self._answer(201, self.rfile.read(int(self.headers["Content-Length"])))

        def _answer(self, status, body):
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain("{TLS_DIR}/cert.pem", "{TLS_DIR}/key.pem")
    if sys.argv[2:] == ["dhe"]:  # TLS 1.2 with a DH group of the server's choosing
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers("DHE-RSA-AES128-GCM-SHA256")
        context.load_dh_params("{TLS_DIR}/dh.pem")
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()
    """
)

WSS_ECHO_SERVER = textwrap.dedent(
    f"""
    import asyncio, ssl
    from websockets.asyncio.server import serve

    async def echo(ws):
        async for message in ws:
            await ws.send(message)

    async def main():
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain("{TLS_DIR}/cert.pem", "{TLS_DIR}/key.pem")
        async with serve(echo, "127.0.0.1", {WSS_PORT}, ssl=context, max_size=None) as server:
            await server.serve_forever()

    asyncio.run(main())
    """
)

# Holds every connection open without reading or answering: a TLS handshake to it never ends.
SILENT_SERVER = textwrap.dedent(
    f"""
    import pathlib, socket
    listener = socket.create_server(("127.0.0.1", {SILENT_PORT}))
    pathlib.Path("/tmp/silent.ready").touch()
    held = []
    while True:
        held.append(listener.accept()[0])
    """
)


def _routing(sandbox: Sandbox, port: int) -> dict[str, str]:
    return {"E2b-Sandbox-Id": sandbox.sandbox_id, "E2b-Sandbox-Port": str(port)}


def _wait_listening(http: httpx.Client, headers: dict[str, str]) -> httpx.Response:
    """GET / until the port's server listens (E2B's "port is not open" until then); the
    first answer from past the connect, whatever it is."""
    answers: list[httpx.Response] = []

    def listening() -> bool:
        answers.append(http.get("/", headers=headers))
        closed = answers[-1].status_code == 502 and answers[-1].json()["message"] == PORT_NOT_OPEN
        return not closed

    wait_for(listening, 30, f"a server on port {headers.get('E2b-Sandbox-Port')}")
    return answers[-1]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a fresh self-signed key.pem and cert.pem (CN=sandbox)."""
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["/usr/bin/openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
         "-subj", "/CN=sandbox", "-days", "1",
         "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(  # -dsaparam: quick to make, as a hostile server's group would be
        ["/usr/bin/openssl", "dhparam", "-dsaparam", "-out", str(folder / "dh.pem"), "2048"],
        check=True,
        capture_output=True,
    )
    return folder


@pytest.fixture(scope="module")
def sandbox(local_service: RunningService, certificate: Path) -> Iterator[Sandbox]:
    """A sandbox with https_ports, the certificate uploaded and the TLS server started on a
    listed and an unlisted port."""
    sbx = Sandbox.create(
        timeout=300,
        domain="localhost",
        network={"https_ports": HTTPS_PORTS},
        **sdk_options(local_service),
    )
    try:
        for name in ("key.pem", "cert.pem", "dh.pem"):
            sbx.files.write(f"{TLS_DIR}/{name}", (certificate / name).read_bytes())
        sbx.files.write("/home/user/https_server.py", HTTPS_SERVER)
        for port in (HTTPS_PORT, UNLISTED_TLS_PORT):
            sbx.commands.run(f"python https_server.py {port}", background=True, timeout=0)
        yield sbx
    finally:
        sbx.kill()


def test_get_and_post_reach_a_self_signed_https_server(
    local_service: RunningService, sandbox: Sandbox
) -> None:
    assert sandbox.get_info().network == {
        "allow_out": [],
        "deny_out": [],
        "https_ports": HTTPS_PORTS,
    }
    with httpx.Client(base_url=local_service.url, timeout=60) as http:
        first = _wait_listening(http, _routing(sandbox, HTTPS_PORT))
        assert first.status_code == 200, first.text
        # E2B's host form, as the SDK builds it; the caller speaks plain HTTP to the service.
        seen = http.get("/hello?x=1", headers={"Host": sandbox.get_host(HTTPS_PORT)})
        assert seen.status_code == 200, seen.text
        assert seen.json()["path"] == "/hello?x=1"
        assert seen.json()["tls"].startswith("TLSv1.")  # the server was reached over TLS
        payload = bytes(range(256)) * 4096  # 1 MiB: many TLS records each way
        echoed = http.post("/upload", content=payload, headers=_routing(sandbox, HTTPS_PORT))
        assert echoed.status_code == 201
        assert echoed.content == payload


def test_websocket_to_a_self_signed_wss_server(
    local_service: RunningService, sandbox: Sandbox
) -> None:
    sandbox.files.write("/home/user/wss_echo.py", WSS_ECHO_SERVER)
    sandbox.commands.run("python wss_echo.py", background=True, timeout=0)
    with httpx.Client(base_url=local_service.url) as http:
        plain_get = _wait_listening(http, _routing(sandbox, WSS_PORT))
        assert plain_get.status_code == 426  # websockets' answer to a GET: TLS got through
    url = local_service.url.replace("http://", "ws://") + "/echo"
    with ws_connect(url, additional_headers=_routing(sandbox, WSS_PORT), max_size=None) as ws:
        ws.send("text frame ✓")
        assert ws.recv() == "text frame ✓"
        big = bytes(range(256)) * 8192  # 2 MiB: more than one TLS record and tunnel read
        ws.send(big)
        assert ws.recv() == big


def test_tls_server_on_a_port_not_in_https_ports_is_a_502(
    local_service: RunningService, sandbox: Sandbox
) -> None:
    with httpx.Client(base_url=local_service.url, timeout=60) as http:
        reply = _wait_listening(http, _routing(sandbox, UNLISTED_TLS_PORT))
    assert reply.status_code == 502
    assert reply.json()["code"] == 502
    assert reply.json()["message"] != PORT_NOT_OPEN


def test_plain_http_server_on_an_https_port_is_a_clear_502(
    local_service: RunningService, sandbox: Sandbox
) -> None:
    sandbox.commands.run(f"python -m http.server {PLAIN_PORT}", background=True, timeout=0)
    with httpx.Client(base_url=local_service.url, timeout=60) as http:
        reply = _wait_listening(http, _routing(sandbox, PLAIN_PORT))
    assert reply.status_code == 502, reply.text
    body = reply.json()
    assert body["sandboxId"] == sandbox.sandbox_id
    assert body["code"] == 502
    assert f"port {PLAIN_PORT} is in https_ports" in body["message"]
    assert "TLS" in body["message"]
    url = local_service.url.replace("http://", "ws://")
    with pytest.raises(Exception) as refused:
        ws_connect(url, additional_headers=_routing(sandbox, PLAIN_PORT)).close()
    assert "502" in str(refused.value)


def test_https_port_whose_server_never_answers_is_a_502_not_a_hang(
    local_service: RunningService, sandbox: Sandbox
) -> None:
    sandbox.files.write("/home/user/silent.py", SILENT_SERVER)
    sandbox.commands.run("python silent.py", background=True, timeout=0)
    wait_for(lambda: sandbox.files.exists("/tmp/silent.ready"), 30, "the silent server")
    started = time.monotonic()
    reply = httpx.get(local_service.url, headers=_routing(sandbox, SILENT_PORT), timeout=60)
    assert reply.status_code == 502, reply.text
    assert "did not complete a TLS handshake" in reply.json()["message"]
    assert time.monotonic() - started < 30  # the handshake's deadline, not the caller's


def test_the_service_offers_a_sandbox_server_no_finite_field_dhe(
    local_service: RunningService, sandbox: Sandbox
) -> None:
    """With DHE the server picks the group, and a 10,000-bit one made the service's shared
    loop compute for most of a second per request (another sandbox's calls stalled 2.8 s).
    E2B's proxy (Go) offers elliptic-curve key exchange only; so does the service now, and a
    server that speaks nothing else gets E2B's handshake 502."""
    sandbox.commands.run(f"python https_server.py {DHE_PORT} dhe", background=True, timeout=0)
    with httpx.Client(base_url=local_service.url, timeout=60) as http:
        reply = _wait_listening(http, _routing(sandbox, DHE_PORT))
    assert reply.status_code == 502, reply.text
    assert "did not complete a TLS handshake" in reply.json()["message"]


def test_https_ports_survive_update_network(
    local_service: RunningService, sandbox: Sandbox
) -> None:
    # E2B's update body carries egress fields only: https_ports stays, as mask_request_host.
    sandbox.update_network({"deny_out": ["192.0.2.0/24"]})
    expected = {"allow_out": [], "deny_out": ["192.0.2.0/24"], "https_ports": HTTPS_PORTS}
    assert sandbox.get_info().network == expected
    with httpx.Client(base_url=local_service.url, timeout=60) as http:
        seen = _wait_listening(http, _routing(sandbox, HTTPS_PORT))
        assert seen.status_code == 200, seen.text
        assert json.loads(seen.text)["tls"].startswith("TLSv1.")
