"""TLS to a sandbox port, for E2B's ``https_ports``: the proxy re-encrypts its hop inside.

E2B's proxy terminates the caller's TLS and, for a port listed in ``https_ports``, opens a
new TLS connection to the sandbox's server without checking its certificate (self-signed
ones work); it is not TLS passthrough. Here the caller speaks plain HTTP to the service, and
the hop into the sandbox is TLS over the agent's byte stream: an ``ssl.SSLObject`` on memory
buffers, fed from and drained into the ``AgentStream``, so the same h11 framing and the same
WebSocket splice run over it unchanged.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import TypeVar

from ..sandbox.agent_client import AgentStream

# Go's http.Transport waits this long for a backend's handshake (TLSHandshakeTimeout); a
# server that never answers a ClientHello (a plain one waiting for a request line) must not
# hold the caller forever.
HANDSHAKE_TIMEOUT = 10.0
_CHUNK = 65536
_T = TypeVar("_T")


class TlsHandshakeError(ConnectionError):
    """The server on the port did not complete a TLS handshake (no TLS, or it hung up)."""


def _backend_context() -> ssl.SSLContext:
    """A client context that trusts any certificate, as E2B's proxy does towards sandboxes."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    # The relayed protocols are HTTP/1.1 and its WebSocket upgrade, never h2.
    context.set_alpn_protocols(["http/1.1"])
    # TLS 1.2 key exchange by elliptic curves only, as E2B's proxy (Go's crypto/tls has no
    # finite-field DHE): with DHE the sandbox's server picks the group, and a 10,000-bit one
    # cost the service's shared loop most of a second per handshake. (TLS 1.3 offers named
    # groups only.)
    context.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20:ECDHE+AES")
    return context


_CONTEXT = _backend_context()  # shared by every connection: it holds no per-connection state


class TlsStream:
    """TLS (as the client) over an open agent stream, with the byte-stream methods of
    ``AgentStream`` that the proxy and the WebSocket splice use."""

    def __init__(self, raw: AgentStream) -> None:
        self._raw = raw
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        # No server_hostname: the hop goes to 127.0.0.1 inside the sandbox, which gets no SNI.
        self._tls = _CONTEXT.wrap_bio(self._incoming, self._outgoing, server_side=False)
        self._goodbye_due = False  # set once the handshake is done, cleared once said

    @classmethod
    async def connect(cls, raw: AgentStream) -> TlsStream:
        """Run the handshake over ``raw``; TlsHandshakeError if the server does not take part
        within HANDSHAKE_TIMEOUT (``raw`` is closed then)."""
        stream = cls(raw)
        try:
            await asyncio.wait_for(stream._until_done(stream._tls.do_handshake), HANDSHAKE_TIMEOUT)
        except asyncio.TimeoutError:  # first: on 3.11 it is also an OSError
            failure = f"no answer within {HANDSHAKE_TIMEOUT:g} s"
        except OSError as exc:  # ssl.SSLError, or the connection went away
            failure = _reason(exc)
        except BaseException:  # cancelled: the caller left or the service is closing
            raw.close_nowait()
            raise
        else:
            stream._goodbye_due = True
            return stream
        raw.close_nowait()
        raise TlsHandshakeError(failure)

    async def read_chunk(self, max_bytes: int = _CHUNK) -> bytes:
        """Whatever decrypted bytes are there (up to max_bytes); b"" at EOF."""
        try:
            return await self._until_done(lambda: self._tls.read(max_bytes))
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            # A close without close_notify ends the stream too (Python's own servers do it,
            # and Go's proxy takes a TCP EOF at a record boundary as the end).
            return b""
        except ssl.SSLError as exc:
            broke = f"the TLS connection to the sandbox server broke: {_reason(exc)}"
            raise ConnectionResetError(broke) from None

    async def write(self, data: bytes) -> None:
        self.write_nowait(data)
        await self._raw.drain()

    def write_nowait(self, data: bytes) -> None:
        """Encrypt and queue bytes without waiting (see :meth:`buffered` and :meth:`drain`)."""
        self._tls.write(data)
        self._flush()

    def buffered(self) -> int:
        """Bytes queued and not yet sent (all encrypted already)."""
        return self._raw.buffered()

    async def drain(self) -> None:
        await self._raw.drain()

    def close_nowait(self) -> None:
        self._close_notify()
        self._raw.close_nowait()

    async def close(self) -> None:
        self._close_notify()
        await self._raw.close()

    async def __aenter__(self) -> TlsStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _until_done(self, operation: Callable[[], _T]) -> _T:
        """``operation`` on the TLS object, feeding it what the server sends until it has
        enough; whatever TLS has to say in between (handshake, key updates) goes out first."""
        while True:
            try:
                result = operation()
            except ssl.SSLWantReadError:
                self._flush()
                data = await self._raw.read_chunk(_CHUNK)
                if data:
                    self._incoming.write(data)
                else:
                    self._incoming.write_eof()  # the next try raises SSLEOFError
                continue
            self._flush()
            return result

    def _flush(self) -> None:
        # Taken and queued in one step, so bytes from reads and writes keep their order.
        data = self._outgoing.read()
        if data:
            self._raw.write_nowait(data)

    def _close_notify(self) -> None:
        """Say goodbye in TLS once (as Go's tls.Conn.Close does); never waits for the
        server's answer."""
        if not self._goodbye_due:
            return
        self._goodbye_due = False
        try:
            self._tls.unwrap()
        except ssl.SSLError:
            pass  # SSLWantReadError: the server's close_notify is not awaited
        try:
            self._flush()
        except (OSError, RuntimeError):
            pass  # the connection is gone already: nothing is left to say goodbye on


def _reason(exc: BaseException) -> str:
    """The short cause of a TLS failure (``wrong version number``), not OpenSSL's whole line."""
    reason = getattr(exc, "reason", None)
    return str(reason).lower().replace("_", " ") if reason else str(exc) or type(exc).__name__
