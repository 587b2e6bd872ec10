"""Where the sandbox's Jupyter Server is, whether it answers, and its kernels' REST API.

E2B's code-interpreter template runs a Jupyter Server on port 8888 (no token). Every sandbox
port is reached the way the SDK reaches ``/execute`` (port 49999): the sandbox URL from the
SDK's ``ConnectionConfig`` plus the ``E2b-Sandbox-Id``/``E2b-Sandbox-Port`` headers, and the
traffic token when public traffic is restricted. ``JupyterEndpoint`` is that seam (base URL +
headers): the same code reaches E2B cloud, the local service, or a server on loopback.
"""

from __future__ import annotations

import functools
import ssl
from dataclasses import dataclass, field
from typing import Any

import httpx

__all__ = [
    "JUPYTER_PORT",
    "JupyterEndpoint",
    "JupyterServerError",
    "choose_transport",
    "client_verify",
    "endpoint_at",
    "endpoint_for",
]

JUPYTER_PORT = 8888
TRAFFIC_TOKEN_HEADER = "E2B-Traffic-Access-Token"
# The Jupyter Server answers at once when it runs; a sandbox without one answers the proxy's
# "port is not open" at once too. Only a network problem takes long.
_PROBE_TIMEOUT = 10.0
_REST_TIMEOUT = 30.0


@functools.cache
def tls_context() -> ssl.SSLContext:
    """httpx's default TLS context, built once: each client would build its own, reading the
    CA bundle again (about 20 ms, on the way to the first cell)."""
    return httpx.create_ssl_context()


def client_verify(url: str) -> ssl.SSLContext | bool:
    """httpx's ``verify`` for a client of ``url``: the shared context for https. For plain
    http (the local service) none is built: no TLS is spoken, and building one reads the CA
    bundle (0.1-0.2 s of CPU on a small VM, on the way to the first cell)."""
    return tls_context() if url.startswith("https:") else False


class JupyterServerError(Exception):
    """The sandbox's Jupyter Server refused a request or could not be reached."""


@dataclass(frozen=True)
class JupyterEndpoint:
    """A Jupyter Server's base URL and the headers every request (and WebSocket) carries."""

    base_url: str
    headers: dict[str, str] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return f"{self.base_url.rstrip('/')}/{path.lstrip('/')}"

    def ws_url(self, path: str) -> str:
        url = self.url(path)
        return "ws" + url[4:] if url.startswith("http") else url

    def describe(self) -> str:
        """The URL only: headers hold the traffic token and are never logged."""
        return self.base_url

    # ---- REST ----------------------------------------------------------------------------

    def _client(self, timeout: float) -> httpx.AsyncClient:
        verify = client_verify(self.base_url)
        return httpx.AsyncClient(headers=self.headers, timeout=timeout, verify=verify)

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            async with self._client(_REST_TIMEOUT) as client:
                response = await client.request(method, self.url(path), **kwargs)
        except httpx.HTTPError as exc:
            raise JupyterServerError(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        if response.status_code >= 300:
            raise JupyterServerError(
                f"{method} {path}: HTTP {response.status_code} {response.text[:200]}"
            )
        return response.json() if response.content else None

    async def list_contexts(self) -> list[dict[str, Any]]:
        """The code contexts of the sandbox's ``/execute`` server (an endpoint of port 49999)."""
        return list(await self._request("GET", "contexts"))

    async def list_kernels(self) -> list[dict[str, Any]]:
        return list(await self._request("GET", "api/kernels"))

    async def start_kernel(self, name: str = "python3") -> str:
        reply = await self._request("POST", "api/kernels", json={"name": name})
        return str(reply["id"])

    async def interrupt(self, kernel_id: str) -> None:
        await self._request("POST", f"api/kernels/{kernel_id}/interrupt")

    async def restart(self, kernel_id: str) -> None:
        await self._request("POST", f"api/kernels/{kernel_id}/restart")

    async def delete(self, kernel_id: str) -> None:
        await self._request("DELETE", f"api/kernels/{kernel_id}")

    async def probe(self) -> str | None:
        """None when a Jupyter Server answers ``GET /api``; otherwise why not, in words."""
        try:
            async with self._client(_PROBE_TIMEOUT) as client:
                response = await client.get(self.url("api"))
        except httpx.HTTPError as exc:
            return f"no answer from {self.describe()} ({type(exc).__name__})"
        if response.status_code != 200:
            try:  # E2B's proxy explains itself: "The sandbox is running but port is not open"
                detail = str(response.json().get("message") or response.text)
            except (ValueError, AttributeError):
                detail = response.text
            return f"HTTP {response.status_code} from port {JUPYTER_PORT}: {detail[:120]}"
        try:
            version = response.json().get("version")
        except ValueError:
            version = None
        if not version:
            return f"port {JUPYTER_PORT} answers, but not as a Jupyter Server"
        return None


def endpoint_for(
    sandbox: Any, base_url: str | None = None, port: int = JUPYTER_PORT
) -> JupyterEndpoint:
    """The endpoint of port ``port`` (by default the Jupyter Server's) of the SDK's ``sandbox``,
    routed as the SDK routes ``/execute``.

    ``base_url`` replaces the sandbox URL (development: a server on loopback); the routing
    headers are sent anyway, so a real E2B-style proxy in front of it still works.
    """
    if base_url is None:
        base_url = sandbox.connection_config.get_sandbox_url(
            sandbox.sandbox_id, sandbox.sandbox_domain, port=port
        )
    token = getattr(sandbox, "traffic_access_token", None)
    return endpoint_at(base_url, sandbox.sandbox_id, port, token)


def endpoint_at(
    base_url: str, sandbox_id: str, port: int, traffic_token: str | None
) -> JupyterEndpoint:
    """The endpoint of ``port`` of sandbox ``sandbox_id`` behind an E2B-style proxy at
    ``base_url`` (the sandbox URL, or a development server)."""
    headers = {"E2b-Sandbox-Id": sandbox_id, "E2b-Sandbox-Port": str(port)}
    if traffic_token:
        headers[TRAFFIC_TOKEN_HEADER] = traffic_token
    return JupyterEndpoint(base_url.rstrip("/"), headers)


async def choose_transport(setting: str, endpoint: JupyterEndpoint | None) -> tuple[str, str]:
    """Resolve ``auto|jupyter|execute`` to ``jupyter`` or ``execute``, and say why."""
    if setting == "execute":
        return "execute", "E2B_KERNEL_TRANSPORT=execute"
    if endpoint is None:
        return "execute", "no sandbox to probe"
    problem = await endpoint.probe()
    if setting == "jupyter":
        if problem is not None:
            raise JupyterServerError(
                f"E2B_KERNEL_TRANSPORT=jupyter, but the sandbox's Jupyter Server does not "
                f"answer: {problem}"
            )
        return "jupyter", "E2B_KERNEL_TRANSPORT=jupyter"
    if problem is None:
        return "jupyter", f"auto: the sandbox's Jupyter Server answers at {endpoint.describe()}"
    return "execute", f"auto: the sandbox's Jupyter Server does not answer ({problem})"
