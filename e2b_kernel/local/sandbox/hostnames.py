"""The host name a TCP connection asks for, from its first bytes: the HTTP ``Host`` header
(port 80) or the TLS SNI (port 443), as E2B's egress firewall reads them.

Both readers are given everything received so far and answer ``NEED_MORE`` (wait for more
bytes), ``None`` (the bytes are not that protocol, or name no host: the connection has no
host name) or the name, lower-cased, without a port or a trailing dot. They never raise on
what a sandbox sends, however malformed. The caller bounds how much it reads (``MAX_HEAD``):
still ``NEED_MORE`` by then means no name.
"""

from __future__ import annotations

import re
from typing import Final

import h11

NEED_MORE: Final = ""  # falsy, and never a valid name
MAX_HEAD = 32 * 1024  # more than this without a complete request head or ClientHello: no name
# Records one ClientHello may span. Clients send it in one (16 KiB fits any real one), or two;
# each read walks the records again, so a hello dripped in one-byte records cost the service
# time that grew with the square of its length.
MAX_RECORDS = 16

_NAME = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*$")
_TLS_HANDSHAKE = 22
_CLIENT_HELLO = 1
_SERVER_NAME_EXTENSION = 0
_HOST_NAME_TYPE = 0


def normalise(name: str) -> str | None:
    """A DNS name, lower-cased and without its trailing dot; None if it is not one."""
    name = name.lower().removesuffix(".")
    if len(name) > 253 or not _NAME.match(name):
        return None
    return name


def http_host(data: bytes) -> str | None:
    """The ``Host`` of the first HTTP/1.x request in ``data``."""
    if b"\r\n\r\n" not in data:
        return NEED_MORE if _could_be_http(data) else None
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    try:
        conn.receive_data(data)
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    if not isinstance(event, h11.Request):
        return None
    hosts = [value for name, value in event.headers if name == b"host"]
    if len(hosts) != 1:
        return None  # h11 refuses requests without one; two are ambiguous
    host = hosts[0].decode("ascii", "replace")
    if host.startswith("["):
        return None  # an IPv6 literal names no domain
    return normalise(host.rsplit(":", 1)[0] if ":" in host else host)


def _could_be_http(data: bytes) -> bool:
    """Whether ``data`` may still become an HTTP request head (a method token so far)."""
    first = data[:17].split(b" ", 1)[0]  # a method has 16 letters at most
    return first.isalpha() and first.isupper() and len(first) <= 16 if first else True


def tls_server_name(data: bytes) -> str | None:
    """The SNI host name of the TLS ClientHello that ``data`` starts with."""
    hello = _client_hello(data)
    if hello is None:
        return None
    return _server_name(hello) if hello else NEED_MORE


def _client_hello(data: bytes) -> bytes | None:
    """The ClientHello handshake message's body, reassembled from its TLS records; b"" when
    more records are needed, None when this is not a TLS ClientHello."""
    handshake = bytearray()
    offset = 0
    records = 0
    while True:
        if len(handshake) >= 4:
            if handshake[0] != _CLIENT_HELLO:
                return None
            length = int.from_bytes(handshake[1:4], "big")
            if length > MAX_HEAD:
                return None
            if len(handshake) >= 4 + length:
                return bytes(handshake[4 : 4 + length])
        if records == MAX_RECORDS:
            return None  # split over more records than a client makes
        if len(data) < offset + 5:
            return b""
        kind, major = data[offset], data[offset + 1]
        record_length = int.from_bytes(data[offset + 3 : offset + 5], "big")
        if kind != _TLS_HANDSHAKE or major != 3 or record_length == 0:
            return None
        if len(data) < offset + 5 + record_length:
            return b""
        handshake += data[offset + 5 : offset + 5 + record_length]
        offset += 5 + record_length
        records += 1


def _server_name(hello: bytes) -> str | None:
    """The host_name entry of a ClientHello body's server_name extension."""
    reader = _Reader(hello)
    reader.skip(2 + 32)  # legacy_version, random
    reader.skip(reader.number(1))  # legacy_session_id
    reader.skip(reader.number(2))  # cipher_suites
    reader.skip(reader.number(1))  # legacy_compression_methods
    extensions = _Reader(reader.take(reader.number(2)))
    while extensions.ok and extensions.remaining:
        kind = extensions.number(2)
        body = _Reader(extensions.take(extensions.number(2)))
        if kind != _SERVER_NAME_EXTENSION:
            continue
        names = _Reader(body.take(body.number(2)))
        while names.ok and names.remaining:
            name_type = names.number(1)
            name = names.take(names.number(2))
            if names.ok and name_type == _HOST_NAME_TYPE:
                try:
                    return normalise(name.decode("ascii"))
                except UnicodeDecodeError:
                    return None
        return None
    return None


class _Reader:
    """Bounds-checked reads over bytes: past the end, ``ok`` turns False and reads give 0."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0
        self.ok = True

    @property
    def remaining(self) -> int:
        return len(self._data) - self._at

    def take(self, count: int) -> bytes:
        if count > self.remaining:
            self.ok = False
            self._at = len(self._data)
            return b""
        chunk = self._data[self._at : self._at + count]
        self._at += count
        return chunk

    def skip(self, count: int) -> None:
        self.take(count)

    def number(self, size: int) -> int:
        chunk = self.take(size)
        return int.from_bytes(chunk, "big") if self.ok else 0
