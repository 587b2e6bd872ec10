"""Small JSON requests with the standard library: creating a sandbox and asking its servers.

The kernel makes a few such requests on its way to the first cell (see quick_create.py and
jupyter_server.py). httpx, which the SDK brings, would cost about 0.15 s of CPU there: its
import, then on the first request its transport stack (httpcore, anyio, h2). ``urllib`` is
loaded already and honours the same proxy variables (``HTTP(S)_PROXY``, ``NO_PROXY``); TLS is
verified against certifi's CA bundle, as httpx verifies it. Redirects are not followed (as
httpx does not): a redirected request would carry the API key or traffic token elsewhere.
Each request runs on a worker thread, so the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import functools
import http.client
import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from .telemetry import http_client_span

__all__ = ["NoAnswer", "Reply", "request", "tls_context"]


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The verifying TLS context (certifi's CA bundle), built once: building one reads the
    bundle (0.1-0.2 s of CPU on a small VM). Plain http never builds it."""
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


@dataclass(frozen=True)
class Reply:
    """An HTTP reply: any status, and the whole body."""

    status: int
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body as JSON (None when empty); ValueError when it is not JSON."""
        return json.loads(self.body) if self.body else None


class NoAnswer(Exception):
    """No HTTP reply came. ``sent`` is False when the connection was refused, so the request
    cannot have reached the server (asking again cannot do anything twice)."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class _KeepRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx reply is returned as it is


@functools.cache
def _opener(https: bool) -> urllib.request.OpenerDirector:
    handlers: list[urllib.request.BaseHandler] = [_KeepRedirects()]
    if https:
        handlers.append(urllib.request.HTTPSHandler(context=tls_context()))
    return urllib.request.build_opener(*handlers)


async def request(
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    json_body: Any = None,
    timeout: float,
) -> Reply:
    """Send one request (``json_body`` as compact JSON) and return the reply, whatever its
    status; raises ``NoAnswer`` when none came within ``timeout`` seconds per step. Traced as
    the SDK's requests are (see ``telemetry.http_client_span``)."""
    sent = dict(headers or {})
    with http_client_span(method, url, sent) as replied:
        reply = await asyncio.to_thread(_request, method, url, sent, json_body, timeout)
        replied(reply.status)
        return reply


def _request(
    method: str, url: str, headers: dict[str, str], json_body: Any, timeout: float
) -> Reply:
    sent_headers = {"Accept": "*/*", **headers}
    data = None
    if json_body is not None:
        data = json.dumps(json_body, separators=(",", ":"), ensure_ascii=False).encode()
        sent_headers.setdefault("Content-Type", "application/json")
    outgoing = urllib.request.Request(url, data=data, headers=sent_headers, method=method)
    try:
        with _opener(url.startswith("https:")).open(outgoing, timeout=timeout) as response:
            return Reply(response.status, response.read())
    except urllib.error.HTTPError as exc:  # a reply, with a status of 300 or more
        with exc:
            return Reply(exc.code, exc.read())
    except urllib.error.URLError as exc:
        reason = exc.reason
        refused = isinstance(reason, ConnectionRefusedError)
        raise NoAnswer(f"{type(reason).__name__}: {reason}", sent=not refused) from None
    except (OSError, http.client.HTTPException) as exc:  # timeouts and broken replies
        raise NoAnswer(f"{type(exc).__name__}: {exc}", sent=True) from None
