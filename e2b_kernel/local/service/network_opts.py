"""E2B's sandbox network options: ``network`` on create, ``PUT /sandboxes/{id}/network``.

The egress lists (``allowOut`` / ``denyOut`` / ``dnsServers`` and ``allow_internet_access``)
are enforced in the sandbox's network namespace (sandbox/egress.py). ``allowPublicTraffic``
becomes the traffic access token (control.py), ``maskRequestHost`` the Host header the
port proxy (proxy.py) gives the requests it relays into the sandbox, and ``httpsPorts`` the
ports the proxy speaks TLS to (tls_tunnel.py).
What cannot be done here (an egress SOCKS proxy, per-host request transforms) is refused
with a 400 that says so, instead of being silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..sandbox.egress import EgressError, EgressRules, parse
from .errors import ServiceError

MASK_PORT = "${PORT}"  # replaced by the target port in maskRequestHost, as E2B's proxy does
UNSUPPORTED = {
    "egressProxy": "an egress proxy",
    "rules": "per-host request transform rules",
}


@dataclass
class NetworkOptions:
    """A sandbox's network settings as the caller gave them (reported by get_info)."""

    internet: bool  # allow_internet_access as asked (False denies 0.0.0.0/0)
    rules: EgressRules = field(default_factory=EgressRules)
    given: bool = False  # whether the caller sent network options at all
    shown: dict[str, Any] = field(default_factory=dict)  # the fields as the caller sent them

    @property
    def needs_stack(self) -> bool:
        """Whether the sandbox needs its user-mode network: internet, or some allowed
        destination (allowed entries win even over allow_internet_access=False)."""
        return self.internet or bool(self.rules.allow_out)

    def request_host(self, port: int) -> str | None:
        """The Host of a request relayed to ``port`` inside the sandbox: maskRequestHost with
        ``${PORT}`` replaced, or None to keep the caller's."""
        mask = self.shown.get("maskRequestHost")
        return mask.replace(MASK_PORT, str(port)) if mask else None

    def https_port(self, port: int) -> bool:
        """Whether the proxy's hop to ``port`` inside the sandbox is TLS (httpsPorts)."""
        return port in (self.shown.get("httpsPorts") or ())

    def to_json(self) -> dict[str, Any] | None:
        return dict(self.shown) if self.given else None


_SHOWN = (
    "allowOut",
    "denyOut",
    "dnsServers",
    "allowPublicTraffic",
    "maskRequestHost",
    "httpsPorts",
)


_EGRESS = ("allowOut", "denyOut", "dnsServers")


def _shown(network: dict[str, Any], kept: dict[str, Any] | None = None) -> dict[str, Any]:
    """The fields get_info reports: a create's as given; after an update the update's egress
    fields and every other field as it was (E2B's update body has only egress fields, so an
    update neither clears nor changes allowPublicTraffic, maskRequestHost or httpsPorts)."""
    if kept is None:
        shown = {k: network[k] for k in _SHOWN if network.get(k) is not None}
    else:
        shown = {k: v for k, v in kept.items() if k not in _EGRESS}
        shown |= {k: network[k] for k in _EGRESS if network.get(k) is not None}
    shown.setdefault("allowOut", [])
    shown.setdefault("denyOut", [])
    return shown


def _refuse_unsupported(network: dict[str, Any]) -> None:
    for name, what in UNSUPPORTED.items():
        if network.get(name):
            raise ServiceError(400, f"the local E2B service does not support {what} ({name})")


def _check_mask(network: dict[str, Any]) -> None:
    """maskRequestHost becomes a header value: visible ASCII only (E2B wants ASCII too)."""
    mask = network.get("maskRequestHost")
    if mask is None:
        return
    if not isinstance(mask, str) or not all("!" <= c <= "~" for c in mask):
        raise ServiceError(400, "maskRequestHost must be a host name: visible ASCII, no spaces")


def _is_port(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536


def _check_https_ports(network: dict[str, Any]) -> None:
    ports = network.get("httpsPorts")
    if ports is None:
        return
    if not isinstance(ports, list) or not all(_is_port(port) for port in ports):
        raise ServiceError(400, "httpsPorts must be a list of port numbers (1-65535)")


def from_create(body: dict[str, Any], internet: bool) -> NetworkOptions:
    """The options of a create body (its ``network`` object and allow_internet_access)."""
    network = body.get("network")
    if network is None:
        return NetworkOptions(internet, parse({}, internet=internet))
    if not isinstance(network, dict):
        raise ServiceError(400, "network must be an object")
    _refuse_unsupported(network)
    _check_mask(network)
    _check_https_ports(network)
    try:
        rules = parse(network, internet=internet)
    except EgressError as exc:
        raise ServiceError(400, str(exc)) from None
    return NetworkOptions(internet, rules, True, _shown(network))


async def update_network(control: Any, request: Request) -> Response:
    """PUT /sandboxes/{id}/network: replace every egress rule at once (omitted = cleared);
    204, 404 for an unknown sandbox, 400 for malformed rules (or rules that refuse anything,
    without isolation)."""
    entry = control._entry(request.path_params["sandbox_id"])
    body = await control._json(request)
    _refuse_unsupported(body)
    internet = body.get("allow_internet_access", True)
    if not isinstance(internet, bool):
        raise ServiceError(400, "allow_internet_access must be a boolean")
    try:
        rules = parse(body, internet=internet)
        # Internet or an allowed entry starts the sandbox's network if it has none yet.
        await entry.sandbox.set_egress(rules, reach=internet or bool(rules.allow_out))
    except EgressError as exc:
        raise ServiceError(400, str(exc)) from None
    except OSError as exc:
        raise ServiceError(500, str(exc)) from None
    old: NetworkOptions | None = entry.network
    kept = old.shown if old is not None else {}
    entry.network = NetworkOptions(internet, rules, True, _shown(body, kept))
    return Response(status_code=204)
