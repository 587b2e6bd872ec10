"""Create a sandbox with one plain HTTP request, before the E2B SDK is imported.

Importing the SDK takes about 0.5 s of CPU, more than a ``python3`` kernel needs to start; the
kernel's first cell on the ``jupyter`` transport needs no SDK at all, only the sandbox's id,
its URL and its traffic token. So where every sandbox port is reached at one explicit URL
(``E2B_SANDBOX_URL``: the local service, private or standing), the kernel sends the create
request itself, with the body and headers the SDK would send (a test compares them),
and builds the SDK's sandbox object after its first cell. Against E2B cloud (sandbox hosts
derived from the domain), in the SDK's debug mode, or when the reply is anything but a
created sandbox, ``create`` returns None and the caller uses the SDK, which then applies its
own retries and error messages.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from packaging.version import Version

from ..errors import SandboxUnavailable
from . import rest

if TYPE_CHECKING:
    from ..config import SessionConfig

__all__ = [
    "ALLOW_PUBLIC_TRAFFIC",
    "CreatedSandbox",
    "QuickTarget",
    "create",
    "create_body",
    "create_settings",
    "delete",
    "quick_target",
    "refresh",
]

# The SDK options this path understands; any other (proxy, headers, ...) means: use the SDK.
_OPTIONS = frozenset({"api_key", "api_url", "sandbox_url", "domain", "request_timeout"})
_REQUEST_TIMEOUT = 60.0  # the SDK's default
# The sandbox's Jupyter Server (port 8888) has no token: without the traffic token no one who
# learns the sandbox id can reach its ports.
ALLOW_PUBLIC_TRAFFIC = False


@dataclass(frozen=True)
class QuickTarget:
    """Where the control plane is and where every sandbox port is reached (never log: key)."""

    api_url: str
    api_key: str = field(repr=False)
    sandbox_url: str
    request_timeout: float


@dataclass(frozen=True)
class CreatedSandbox:
    """What the create reply says about a new sandbox (never log: tokens)."""

    sandbox_id: str
    sandbox_url: str
    sandbox_domain: str | None
    envd_version: str
    envd_access_token: str | None = field(repr=False)
    traffic_access_token: str | None = field(repr=False)


def quick_target(opts: dict[str, Any]) -> QuickTarget | None:
    """The target for ``opts`` (the SDK keyword arguments), or None when the SDK must be used."""
    if set(opts) - _OPTIONS or os.environ.get("E2B_DEBUG", "false").lower() == "true":
        return None
    api_key = opts.get("api_key") or os.environ.get("E2B_API_KEY")
    api_url = opts.get("api_url") or os.environ.get("E2B_API_URL")
    sandbox_url = opts.get("sandbox_url") or os.environ.get("E2B_SANDBOX_URL")
    if not (api_key and api_url and sandbox_url):
        return None
    timeout = opts.get("request_timeout")
    return QuickTarget(
        api_url=api_url.rstrip("/"),
        api_key=api_key,
        sandbox_url=sandbox_url,
        request_timeout=_REQUEST_TIMEOUT if timeout is None else float(timeout),
    )


@functools.cache
def _sdk_headers() -> dict[str, str]:
    """The headers the SDK's API client sends with every request (``e2b.api``)."""
    from importlib.metadata import version

    sdk_version = version("e2b")
    return {
        "lang": "python",
        "lang_version": platform.python_version(),
        "package_version": sdk_version,
        "publisher": "e2b",
        "sdk_runtime": "python",
        "system": platform.system(),
        "User-Agent": f"e2b-python-sdk/{sdk_version}",
    }


def create_settings(config: SessionConfig) -> dict[str, Any]:
    """The keyword arguments of the SDK's ``create`` (and of :func:`create_body`) that
    ``config`` asks for, except the network's."""
    lifecycle: dict[str, Any] | None = None
    if config.idle == "pause":
        lifecycle = {"on_timeout": "pause", "auto_resume": True}
    return {
        "template": config.template,
        "timeout": config.sandbox_timeout,
        "metadata": dict(config.metadata) or None,
        "envs": config.forwarded_env() or None,
        "lifecycle": lifecycle,
    }


def create_body(
    *,
    template: str,
    timeout: int | None,
    metadata: dict[str, str] | None,
    envs: dict[str, str] | None,
    lifecycle: dict[str, Any] | None,
    allow_public_traffic: bool | None,
) -> dict[str, Any]:
    """The JSON body of ``POST /v2/sandboxes`` as the SDK builds it, key order included."""
    body: dict[str, Any] = {"templateID": template}
    if timeout is not None:
        body["timeout"] = timeout
    if lifecycle is not None:
        on_timeout = lifecycle.get("on_timeout")
        if on_timeout is not None:
            body["autoPause"] = on_timeout == "pause"
        if lifecycle.get("auto_resume"):
            body["autoResume"] = {"enabled": True}
    if allow_public_traffic is not None:
        body["network"] = {"allowPublicTraffic": allow_public_traffic}
    body["metadata"] = dict(metadata or {})
    body["envVars"] = dict(envs or {})
    return body


async def create(target: QuickTarget, body: dict[str, Any]) -> CreatedSandbox | None:
    """Send the create request; None when nothing was created (no answer, or any reply but
    201), so the caller asks again through the SDK and gets the SDK's retries and errors."""
    url = f"{target.api_url}/v2/sandboxes"
    headers = {**_sdk_headers(), "X-API-KEY": target.api_key}
    try:
        reply = await rest.request(
            "POST", url, headers=headers, json_body=body, timeout=target.request_timeout
        )
    except rest.NoAnswer as exc:
        if not exc.sent:
            return None  # refused: asking again cannot create a second sandbox
        raise SandboxUnavailable(
            f"creating the sandbox failed ({exc}); run the cell again"
        ) from None
    if reply.status != 201:
        return None
    try:
        created = reply.json()
        sandbox_id = str(created["sandboxID"])
        envd_version = str(created["envdVersion"])
        too_old = Version(envd_version) < Version("0.1.0")  # InvalidVersion is a ValueError
    except (ValueError, KeyError, TypeError):
        raise SandboxUnavailable(
            f"the sandbox service at {target.api_url} answered the create request with no "
            "sandbox id or envd version; is E2B_API_URL right?"
        ) from None
    if too_old:  # as the SDK does: kill it and explain
        await delete(target, sandbox_id)
        raise SandboxUnavailable("You need to update the template to use the new SDK.")
    return CreatedSandbox(
        sandbox_id=sandbox_id,
        sandbox_url=target.sandbox_url,
        sandbox_domain=_text(created.get("domain")),
        envd_version=envd_version,
        envd_access_token=_text(created.get("envdAccessToken")),
        traffic_access_token=_text(created.get("trafficAccessToken")),
    )


async def delete(target: QuickTarget, sandbox_id: str) -> None:
    """Kill a sandbox (``DELETE /sandboxes/{id}``), whatever the reply."""
    await rest.request(
        "DELETE",
        f"{target.api_url}/sandboxes/{sandbox_id}",
        headers={**_sdk_headers(), "X-API-KEY": target.api_key},
        timeout=target.request_timeout,
    )


async def refresh(target: QuickTarget, sandbox_id: str, timeout: int) -> bool:
    """Set a sandbox's timeout to ``timeout`` seconds from now (``POST
    /sandboxes/{id}/timeout``, as the SDK's ``set_timeout``); whether it was set (any other
    reply is the SDK's to explain)."""
    reply = await rest.request(
        "POST",
        f"{target.api_url}/sandboxes/{sandbox_id}/timeout",
        headers={**_sdk_headers(), "X-API-KEY": target.api_key},
        json_body={"timeout": timeout},
        timeout=target.request_timeout,
    )
    return reply.status == 204


def _text(value: Any) -> str | None:
    """As the SDK reads optional string fields: anything but a string counts as absent."""
    return value if isinstance(value, str) else None
