"""The service under hostile input: half-open connections, bad input, heavy requests."""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from e2b import InvalidArgumentException, Sandbox
from local_helpers import sandbox_headers, sdk_options

from e2b_kernel.local import RunningService, start_in_thread
from e2b_kernel.local.service.metrics import SAMPLE_INTERVAL
from e2b_kernel.local.service.settings import DEFAULT_HEADER_TIMEOUT

DEEP = b"[" * 50_000 + b"]" * 50_000


@pytest.fixture(scope="module")
def sbx(local_service: RunningService) -> Iterator[Sandbox]:
    sandbox = Sandbox.create(timeout=600, **sdk_options(local_service))
    try:
        yield sandbox
    finally:
        sandbox.kill()


def _health_seconds(service: RunningService, sandbox: Sandbox) -> float:
    started = time.monotonic()
    reply = httpx.get(f"{service.url}/health", headers=sandbox_headers(sandbox), timeout=30)
    assert reply.status_code == 204
    return time.monotonic() - started


@pytest.mark.timeout(120)
def test_half_open_connections_are_closed_and_health_still_answers(
    local_service: RunningService, sbx: Sandbox
) -> None:
    address = urlsplit(local_service.url)
    held: list[socket.socket] = []
    selector = selectors.DefaultSelector()
    try:
        for _ in range(1500):
            conn = socket.create_connection((address.hostname, address.port), timeout=10)
            conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # a request head never ended
            conn.setblocking(False)
            selector.register(conn, selectors.EVENT_READ)
            held.append(conn)
        # A service starved by them would answer only once their header timeout frees it;
        # a bound below that timeout, not a speed target (1.2 s seen on a loaded CI machine).
        assert _health_seconds(local_service, sbx) < DEFAULT_HEADER_TIMEOUT - 1
        open_ones = set(held)
        deadline = time.monotonic() + 20  # the header timeout is 5 s by default
        while open_ones and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.5):
                conn = key.fileobj
                assert isinstance(conn, socket.socket)
                try:
                    data = conn.recv(4096)
                except ConnectionError:
                    data = b""
                if not data:
                    selector.unregister(conn)
                    open_ones.discard(conn)
        assert not open_ones, f"{len(open_ones)} half-open connections still held"
        assert _health_seconds(local_service, sbx) < DEFAULT_HEADER_TIMEOUT - 1
    finally:
        selector.close()
        for conn in held:
            conn.close()


def test_deeply_nested_json_is_400(local_service: RunningService, sbx: Sandbox) -> None:
    json_type = {"Content-Type": "application/json"}
    with httpx.Client(base_url=local_service.url, timeout=60) as http:
        control = http.post(
            "/v2/sandboxes",
            content=b'{"metadata": ' + DEEP + b"}",
            headers={"X-API-Key": local_service.api_key, **json_type},
        )
        assert control.status_code == 400 and control.json()["code"] == 400
        execute = http.post(
            "/execute",
            content=b'{"code": ' + DEEP + b"}",
            headers={**sandbox_headers(sbx, 49999), **json_type},
        )
        assert execute.status_code == 400 and execute.json()["code"] == 400
        rpc = http.post(
            "/filesystem.Filesystem/Stat",
            content=b'{"path": ' + DEEP + b"}",
            headers={**sandbox_headers(sbx), **json_type},
        )
        assert rpc.status_code == 400 and rpc.json()["code"] == "invalid_argument"
    assert sbx.commands.run("echo alive").stdout == "alive\n"


@pytest.mark.parametrize("name", ["A=B", "A\0B"])
def test_bad_env_var_names_are_400(local_service: RunningService, sbx: Sandbox, name: str) -> None:
    reply = httpx.post(
        f"{local_service.url}/v2/sandboxes",
        json={"envVars": {name: "x"}},
        headers={"X-API-Key": local_service.api_key},
        timeout=60,
    )
    assert reply.status_code == 400 and "environment variable" in reply.json()["message"]
    with pytest.raises(InvalidArgumentException):
        sbx.commands.run("true", envs={name: "x"})
    execute = httpx.post(
        f"{local_service.url}/execute",
        json={"code": "1", "env_vars": {name: "x"}},
        headers=sandbox_headers(sbx, 49999),
        timeout=60,
    )
    assert execute.status_code == 400 and execute.json()["code"] == 400


def test_file_names_over_255_bytes_are_400(sbx: Sandbox) -> None:
    long_path = "/home/user/" + "n" * 300
    for call in (
        lambda: sbx.files.write(long_path, "x"),
        lambda: sbx.files.read(long_path),
        lambda: sbx.files.make_dir(long_path),
        lambda: sbx.files.get_info(long_path),
    ):
        with pytest.raises(InvalidArgumentException, match="255 bytes"):
            call()


def test_an_early_error_answer_waits_for_the_requests_small_body(
    local_service: RunningService, sbx: Sandbox
) -> None:
    """The service refuses an upload to a too-long path before it reads the body. It answered
    at once and uvicorn closed the connection with the body unread; the kernel then resets it,
    and the reset could reach the client before the 400 (seen once in CI as a connection
    error in files.write). Now a small body is read first: no answer comes while it is
    missing (one came within milliseconds), and the whole 400 comes once it is sent."""
    address = urlsplit(local_service.url)
    headers = sandbox_headers(sbx)
    head = f"POST /files?path=/home/user/{'n' * 300} HTTP/1.1\r\nHost: x\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    head += "Content-Type: application/octet-stream\r\nContent-Length: 5\r\n\r\n"
    with socket.create_connection((address.hostname, address.port), timeout=30) as conn:
        conn.sendall(head.encode())
        conn.settimeout(1.0)  # a bound on a wrong early answer, not a wait for a right one
        with pytest.raises(TimeoutError):
            conn.recv(4096)
        conn.settimeout(30)
        conn.sendall(b"hello")
        answer = _read_response(conn)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"255 bytes" in answer


@pytest.mark.timeout(300)
def test_a_heavy_metrics_walk_does_not_stall_another_sandbox(
    local_service: RunningService, sbx: Sandbox
) -> None:
    heavy = Sandbox.create(timeout=300, **sdk_options(local_service))
    try:
        made = heavy.commands.run(
            "mkdir -p ~/many && cd ~/many && seq 150000 | xargs touch && echo done",
            timeout=240,
        )
        assert made.stdout == "done\n"
        stop = threading.Event()
        walks = []

        def walk() -> None:
            while not stop.is_set():
                walks.append(heavy.get_metrics())

        walker = threading.Thread(target=walk)
        walker.start()
        latencies = []
        # One client for every probe: each new httpx client reads the CA bundle again (0.1 s
        # on a slow machine), which is not the service's time.
        try:
            with httpx.Client(headers=sandbox_headers(sbx), timeout=30) as client:
                # Probe throughout several whole walks and two of the service's own samples of
                # the heavy sandbox's disk use, not just the start of one.
                began = time.monotonic()
                while len(walks) < 3 or time.monotonic() - began < 2 * SAMPLE_INTERVAL:
                    assert time.monotonic() - began < 120, "the metrics calls did not finish"
                    started = time.monotonic()
                    assert client.get(f"{local_service.url}/health").status_code == 204
                    latencies.append(time.monotonic() - started)
        finally:
            stop.set()
            walker.join(timeout=120)
        # A walk done on the service's loop stalls it once per walk and per sample (four or
        # more slow probes of 0.3 s or more, seen with a 0.3 s stall put in each walk); one or
        # two slow probes are this 2-core machine giving the service no core for a moment
        # (278 ms was seen once in CI, with both cores busy with other tests and the walk).
        slow = sorted(latency for latency in latencies if latency >= 0.25)
        assert len(slow) <= 2 and max(latencies) < 2.0, (
            f"another sandbox's health was slow {len(slow)} times of {len(latencies)}: "
            + ", ".join(f"{latency * 1000:.0f} ms" for latency in slow)
        )
    finally:
        heavy.kill()


@pytest.mark.timeout(120)
def test_refused_requests_that_hold_back_their_body_leave_room_for_the_owner() -> None:
    """Any local user, without a key, sent 1,500 request heads that announce a body and never
    send it: each refused connection waited 10 s for that body, none could be closed to make
    room, and every new connection (the owner's too) was dropped at once."""
    service = start_in_thread(max_connections=100, pool_size=0)
    address = urlsplit(service.url)
    held: list[socket.socket] = []
    head = (
        b"POST /sandboxes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000\r\n\r\n"
    )
    try:
        for _ in range(150):
            conn = socket.create_connection((address.hostname, address.port), timeout=10)
            conn.sendall(head)
            held.append(conn)
        listed = httpx.get(
            f"{service.url}/sandboxes", headers={"X-API-Key": service.api_key}, timeout=30
        )
        assert listed.status_code == 200, listed.text
    finally:
        for conn in held:
            conn.close()
        service.stop()


@pytest.mark.parametrize("port", [b"\xb3", b"\xd9\xa3", b"0x50"])  # superscript 3, Arabic 3
def test_a_port_that_is_not_ascii_digits_is_a_closed_port_not_a_500(
    local_service: RunningService, sbx: Sandbox, port: bytes
) -> None:
    """str.isdigit() takes '³' and int() then fails: any client, with no key, got a 500 and
    a traceback in the service's log."""
    address = urlsplit(local_service.url)
    with socket.create_connection((address.hostname, address.port), timeout=30) as conn:
        conn.sendall(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"E2b-Sandbox-Id: " + sbx.sandbox_id.encode() + b"\r\n"
            b"E2b-Sandbox-Port: " + port + b"\r\n\r\n"
        )
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    status = answer.split(b"\r\n", 1)[0]
    assert status == b"HTTP/1.1 502 Bad Gateway", answer[:300]
    assert b"port is not open" in answer


@pytest.fixture(scope="module")
def quick_heads() -> Iterator[RunningService]:
    """A service that wants request heads within half a second (the default is 5 s)."""
    service = start_in_thread(isolation="none", header_timeout=0.5, pool_size=0)
    try:
        yield service
    finally:
        service.stop()


def _health_request(service: RunningService) -> bytes:
    return f"GET /health HTTP/1.1\r\nHost: {urlsplit(service.url).netloc}\r\n\r\n".encode()


def _read_response(conn: socket.socket) -> bytes:
    """One whole response (head and Content-Length body); b"" when the server closed."""
    data = b""
    while b"\r\n\r\n" not in data or len(data) < _response_length(data):
        chunk = conn.recv(4096)
        if not chunk:
            return b""
        data += chunk
    return data


def _response_length(data: bytes) -> int:
    head, _, _ = data.partition(b"\r\n\r\n")
    lengths = [line for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")]
    return len(head) + 4 + (int(lengths[0].split(b":")[1]) if lengths else 0)


def test_an_idle_keep_alive_connection_outlives_the_head_deadline(
    quick_heads: RunningService,
) -> None:
    """The E2B SDK keeps pooled connections 300 s and sends its next request on one: a
    service that closed idle ones after its head deadline (5 s) made a call after a pause
    fail with an httpx error when the close met the request."""
    address = urlsplit(quick_heads.url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as conn:
        conn.sendall(_health_request(quick_heads))
        assert _read_response(conn).startswith(b"HTTP/1.1 ")
        time.sleep(1.5)  # idle for three head deadlines
        conn.sendall(_health_request(quick_heads))
        assert _read_response(conn).startswith(b"HTTP/1.1 "), "the idle connection was closed"


def test_the_next_request_head_on_a_kept_connection_must_still_come_in_time(
    quick_heads: RunningService,
) -> None:
    address = urlsplit(quick_heads.url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as conn:
        conn.sendall(_health_request(quick_heads))
        assert _read_response(conn).startswith(b"HTTP/1.1 ")
        time.sleep(1.0)  # idle: allowed
        conn.sendall(b"GET /health HTTP/1.1\r\n")  # a head begun and never ended
        began = time.monotonic()
        assert conn.recv(4096) == b""  # closed by the server ...
        assert time.monotonic() - began < 5  # ... at its head deadline, not the keep-alive's
