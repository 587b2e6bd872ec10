"""The host-name readers of the domain filter, on what a sandbox may send: real ClientHellos
(one record or split over several), HTTP heads, and malformed bytes, which must never raise."""

from __future__ import annotations

import random
import ssl

from e2b_kernel.local.sandbox.domain_filter import matches
from e2b_kernel.local.sandbox.hostnames import NEED_MORE, http_host, tls_server_name


def client_hello(name: str | None) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    out = ssl.MemoryBIO()
    tls = ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname=name)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


def test_sni_of_a_real_client_hello_whole_split_and_partial() -> None:
    hello = client_hello("Api.Example.COM.")
    assert tls_server_name(hello) == "api.example.com"
    body = hello[5:]

    def record(chunk: bytes) -> bytes:
        return bytes([22, 3, 1]) + len(chunk).to_bytes(2, "big") + chunk

    split = record(body[:40]) + record(body[40:100]) + record(body[100:])
    assert tls_server_name(split) == "api.example.com"
    for cut in (1, 5, 60, len(split) - 1):
        assert tls_server_name(split[:cut]) == NEED_MORE
    assert tls_server_name(client_hello(None)) is None  # no SNI: no name
    sixteen = b"".join(record(body[n * 20 : (n + 1) * 20]) for n in range(15))
    assert tls_server_name(sixteen + record(body[300:])) == "api.example.com"
    # Dripped a byte a record, each read would walk thousands of records: a hello that 16
    # records do not complete has no name.
    dripped = b"".join(record(body[n : n + 1]) for n in range(len(body)))
    assert tls_server_name(dripped[: 6 * 15]) == NEED_MORE
    assert tls_server_name(dripped[: 6 * 16]) is None


def test_http_host_with_port_case_and_refusals() -> None:
    assert http_host(b"GET / HTTP/1.1\r\nHost: A.b.com:8080\r\n\r\n") == "a.b.com"
    assert http_host(b"GET / HT") == NEED_MORE
    assert http_host(b"\x16\x03\x01") is None  # TLS on port 80: not HTTP
    assert http_host(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n") is None  # ambiguous
    assert http_host(b"GET / HTTP/1.0\r\n\r\n") is None  # no Host
    assert http_host(b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n") is None
    assert http_host(b"GET / HTTP/1.1\r\nHost: bad name\r\n\r\n") is None
    assert http_host(b"PROPPATCH") == NEED_MORE
    assert http_host(b"A" * 17) is None  # longer than any method: looked at no further


def test_malformed_bytes_never_raise() -> None:
    rng = random.Random(7)
    hello = client_hello("example.com")
    for _ in range(3000):
        noise = rng.randbytes(rng.randint(0, 400))
        flipped = bytearray(hello)
        for _ in range(rng.randint(1, 8)):
            flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        for data in (noise, bytes(flipped), bytes([22, 3, 1, 1, 0]) + noise):
            # An exception here would end the filter's handling of that connection uncleanly.
            name = tls_server_name(data)
            assert name is None or isinstance(name, str)
            http_host(data + b"\r\n\r\n")


def test_wildcards_match_names_under_them_only() -> None:
    assert matches("a.example.com", ["*.example.com"])
    assert matches("x.y.example.com", ["*.Example.com."])
    assert not matches("example.com", ["*.example.com"])
    assert not matches("badexample.com", ["*.example.com"])
    assert matches("anything.test", ["*"])
    assert matches("example.com", ["EXAMPLE.com"])
    assert not matches("example.org", ["example.com", "*.com"])
