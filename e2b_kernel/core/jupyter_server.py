"""Where the sandbox's Jupyter Server is, whether it answers, and its kernels' REST API.

E2B's code-interpreter template runs a Jupyter Server on port 8888 (no token). Every sandbox
port is reached the way the SDK reaches ``/execute`` (port 49999): the sandbox URL from the
SDK's ``ConnectionConfig`` plus the ``E2b-Sandbox-Id``/``E2b-Sandbox-Port`` headers, and the
traffic token when public traffic is restricted. ``JupyterEndpoint`` is that seam (base URL +
headers): the same code reaches E2B cloud, the local service, or a server on loopback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import rest

__all__ = [
    "JUPYTER_PORT",
    "JupyterEndpoint",
    "JupyterServerError",
    "choose_transport",
    "endpoint_at",
    "endpoint_for",
]

JUPYTER_PORT = 8888
CONTEXTS_PORT = 49999  # the code-interpreter server's (/execute, /contexts)
TRAFFIC_TOKEN_HEADER = "E2B-Traffic-Access-Token"
# The Jupyter Server answers at once when it runs; a sandbox without one answers the proxy's
# "port is not open" at once too. Only a network problem takes long.
_PROBE_TIMEOUT = 10.0
_REST_TIMEOUT = 30.0


# Answers asked for ahead, as a new sandbox was created (see .create_ahead): each is given
# once, to the first request of its kind at its endpoint (the kernel's first probe and its
# first look for the default context's kernel then cost no round trip), and never after.
_answered_ahead: dict[tuple[str, frozenset[tuple[str, str]], str], Any] = {}


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

    def answer_ahead(self, question: str, answer: Any) -> None:
        """Keep ``answer`` for this endpoint's next ``question`` (a method's name)."""
        _answered_ahead[self._key(question)] = answer

    def forget_answers_ahead(self) -> None:
        """Drop what :meth:`answer_ahead` kept for this endpoint and not given yet."""
        for question in ("probe", "list_contexts", "list_kernels"):
            _answered_ahead.pop(self._key(question), None)

    def _key(self, question: str) -> tuple[str, frozenset[tuple[str, str]], str]:
        return (self.base_url, frozenset(self.headers.items()), question)

    def _taken_ahead(self, question: str) -> tuple[bool, Any]:
        key = self._key(question)
        return (key in _answered_ahead, _answered_ahead.pop(key, None))

    # ---- REST ----------------------------------------------------------------------------

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            reply = await rest.request(
                method, self.url(path), headers=self.headers, timeout=_REST_TIMEOUT, **kwargs
            )
        except rest.NoAnswer as exc:
            raise JupyterServerError(f"{method} {path}: {exc}") from None
        if reply.status >= 300:
            raise JupyterServerError(f"{method} {path}: HTTP {reply.status} {reply.text[:200]}")
        try:
            return reply.json()
        except ValueError:
            raise JupyterServerError(f"{method} {path}: the reply is not JSON") from None

    async def list_contexts(self) -> list[dict[str, Any]]:
        """The code contexts of the sandbox's ``/execute`` server (an endpoint of port 49999)."""
        found, contexts = self._taken_ahead("list_contexts")
        return list(contexts if found else await self._request("GET", "contexts"))

    async def list_kernels(self) -> list[dict[str, Any]]:
        found, kernels = self._taken_ahead("list_kernels")
        return list(kernels if found else await self._request("GET", "api/kernels"))

    async def start_kernel(self, name: str = "python3") -> str:
        reply = await self._request("POST", "api/kernels", json_body={"name": name})
        return str(reply["id"])

    async def interrupt(self, kernel_id: str) -> None:
        await self._request("POST", f"api/kernels/{kernel_id}/interrupt")

    async def restart(self, kernel_id: str) -> None:
        await self._request("POST", f"api/kernels/{kernel_id}/restart")

    async def delete(self, kernel_id: str) -> None:
        await self._request("DELETE", f"api/kernels/{kernel_id}")

    async def probe(self) -> str | None:
        """None when a Jupyter Server answers ``GET /api``; otherwise why not, in words."""
        found, problem = self._taken_ahead("probe")
        if found:
            return problem
        try:
            reply = await rest.request(
                "GET", self.url("api"), headers=self.headers, timeout=_PROBE_TIMEOUT
            )
        except rest.NoAnswer as exc:
            return f"no answer from {self.describe()} ({exc})"
        if reply.status != 200:
            try:  # E2B's proxy explains itself: "The sandbox is running but port is not open"
                detail = str(reply.json().get("message") or reply.text)
            except (ValueError, AttributeError):
                detail = reply.text
            return f"HTTP {reply.status} from port {JUPYTER_PORT}: {detail[:120]}"
        try:
            version = reply.json().get("version")
        except (ValueError, AttributeError):
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
