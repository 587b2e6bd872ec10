"""Egress rules of a sandbox (E2B's ``network.allowOut`` / ``denyOut``), as policy routing.

E2B filters a sandbox's outbound traffic by destination: a destination matching ``denyOut``
is refused unless it also matches ``allowOut`` (allowed entries always win), and with no
``denyOut`` everything goes out. ``allow_internet_access=False`` counts as denying
0.0.0.0/0.

Here the sandbox's outbound traffic leaves through slirp4netns (see network.py), so the
rules live in the sandbox's own network namespace, as ``ip rule`` entries the SERVICE (host
root) adds with ``nsenter --net``: sandbox processes have no capabilities there and cannot
change them. Rules are looked up in priority order, so allowed prefixes get lower numbers
("lookup main": routed normally) than denied ones ("prohibit": connect() fails at once with
EACCES inside the sandbox). The host fence of network.py (``prohibit`` routes for every host
address in the main table) still applies to allowed destinations, since they are looked up
in that table: allowing 0.0.0.0/0 never opens the host.

Only the ``ip`` tool is needed (no nftables or iptables, which many hosts and CI images
lack). Domain names in ``allowOut`` (exact, ``*.suffix`` or ``*``) are matched as E2B matches
them, per connection by the HTTP ``Host`` (port 80) and TLS SNI (port 443) of connections to
denied addresses, which rules here send to the service's filter (domain_filter.py); on other
ports a domain allows nothing. The DNS forwarder and ``dnsServers`` are then allowed on port
53 (UDP and TCP), as E2B allows its DNS servers for names to resolve.
"""

from __future__ import annotations

import contextlib
import ipaddress
from dataclasses import dataclass, field

from . import domain_filter, hostnames
from .network import ip_batch

DNS_FORWARDER = "10.0.2.3"  # slirp4netns's, the sandbox's only nameserver
ALL_TRAFFIC = "0.0.0.0/0"
MAX_ENTRIES = 256  # per list: each entry is one rule in the namespace
# E2B API's words (ErrMsgDomainsRequireBlockAll): a domain in allowOut, 0.0.0.0/0 not denied.
DOMAINS_NEED_DENY_ALL = (
    "When specifying allowed domains in allow out, you must include 'ALL_TRAFFIC' in deny out to "
    "block all other traffic."
)
_ALLOW_BASE = 1000  # rule priorities: allowed < denied < the main table (32766)
_DENY_BASE = 5000
_GUARD_PRIORITY = 900  # a deny-all held while the rules are swapped (fail closed)
_FILTER_OWN_PRIORITY = 950  # the domain filter's own connections: routed before any rule
_REDIRECT_BASE = 3000  # ports 80/443 of denied prefixes, to the domain filter


class EgressError(ValueError):
    """The rules are malformed (the API answers 400)."""


@dataclass
class EgressRules:
    """What the caller asked for, as E2B's API fields."""

    allow_out: list[str] = field(default_factory=list)
    deny_out: list[str] = field(default_factory=list)
    dns_servers: list[str] | None = None  # None: E2B's default, 8.8.8.8

    @property
    def filters(self) -> bool:
        """Whether anything is refused at all (with no deny entry everything goes out)."""
        return bool(self.deny_out)

    def to_json(self) -> dict[str, list[str]]:
        body = {"allowOut": list(self.allow_out), "denyOut": list(self.deny_out)}
        if self.dns_servers is not None:
            body["dnsServers"] = list(self.dns_servers)
        return body


def parse(body: dict, *, internet: bool) -> EgressRules:
    """Rules from a create or update body's network fields; EgressError when malformed."""
    allow = _string_list(body, "allowOut")
    deny = _string_list(body, "denyOut")
    dns = body.get("dnsServers")
    if dns is not None:
        dns = _string_list(body, "dnsServers")
        for server in dns:
            _network(server, "dnsServers")
    for entry in deny:
        _network(entry, "denyOut")  # E2B: domain names are not supported for deny rules
    for entry in allow:
        if _is_domain(entry):
            _check_domain(entry)
        else:
            _network(entry, "allowOut")
    if any(_is_domain(entry) for entry in allow) and ALL_TRAFFIC not in deny:
        # E2B's API refuses this (judging the lists as sent, whatever allow_internet_access
        # says): with other traffic allowed, a domain rule would mean nothing.
        raise EgressError(DOMAINS_NEED_DENY_ALL)
    if not internet and ALL_TRAFFIC not in deny:
        deny.append(ALL_TRAFFIC)
    return EgressRules(allow, deny, dns)


def _string_list(body: dict, name: str) -> list[str]:
    value = body.get(name) or []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise EgressError(f"{name} must be a list of non-empty strings")
    if len(value) > MAX_ENTRIES:
        raise EgressError(f"{name} has {len(value)} entries; at most {MAX_ENTRIES} are allowed")
    return list(value)


def _network(entry: str, name: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:
        raise EgressError(f"{name}: {entry!r} is not an IP address or CIDR block") from None


def _check_domain(entry: str) -> None:
    name = entry[2:] if entry.startswith("*.") else entry
    if entry != "*" and hostnames.normalise(name) is None:
        raise EgressError(
            f"allowOut: {entry!r} is neither an IP address, a CIDR block nor a domain name"
            " (a name, *.name for every name under it, or * for all; no port or scheme)"
        )


def _is_domain(entry: str) -> bool:
    try:
        ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return True
    return False


def domains(rules: EgressRules) -> list[str]:
    """The domain entries of allowOut, which the domain filter checks names against."""
    return [entry for entry in rules.allow_out if _is_domain(entry)]


def plan(rules: EgressRules) -> tuple[list[str], list[str]]:
    """The allowed IPv4 selectors (``ip rule`` words) and denied IPv4 prefixes to install.

    Domain entries need names resolved: the DNS servers are then allowed, on port 53 only
    (unless an entry allows a server's address whole), so that "only api.example.com" does
    not open 8.8.8.8 to DNS over HTTPS or anything else."""
    addresses = [str(_network(e, "allowOut")) for e in rules.allow_out if not _is_domain(e)]
    allowed = [f"to {prefix}" for prefix in dict.fromkeys(addresses) if ":" not in prefix]
    if domains(rules):
        dns = rules.dns_servers if rules.dns_servers is not None else ["8.8.8.8"]
        for server in dict.fromkeys([DNS_FORWARDER, *dns]):
            if f"{server}/32" not in addresses and ":" not in server:
                allowed += [f"to {server}/32 ipproto {proto} dport 53" for proto in _DNS_PROTOS]
    denied = [str(_network(entry, "denyOut")) for entry in rules.deny_out]
    return allowed, [p for p in dict.fromkeys(denied) if ":" not in p]


_DNS_PROTOS = ("udp", "tcp")


class EgressTable:
    """The rules installed in one sandbox's network namespace (the service's side)."""

    def __init__(self, netns: str, sandbox_id: str) -> None:
        self.netns = netns  # /proc/<pid>/ns/net
        self._installed: list[int] = []  # priorities of our rules
        self._filter = domain_filter.DomainFilter(netns, sandbox_id)

    async def apply(self, rules: EgressRules) -> None:
        """Replace every rule at once: one ``ip -batch`` run, behind a deny-all guard so
        that no destination is open for an instant that either rule set refuses."""
        allowed, denied = plan(rules) if rules.filters else ([], [])
        by_name = domains(rules) if rules.filters else []
        lines = [f"rule add to {ALL_TRAFFIC} prohibit priority {_GUARD_PRIORITY}"]
        lines += [f"rule del priority {p}" for p in self._installed]
        new: list[int] = []
        for index, selector in enumerate(allowed):
            new.append(_ALLOW_BASE + index)
            lines.append(f"rule add {selector} lookup main priority {new[-1]}")
        if by_name and denied:
            await self._filter.start()
            lines += self._redirect_setup()
            new.append(_FILTER_OWN_PRIORITY)
            mark = domain_filter.PROXY_MARK
            lines.append(f"rule add fwmark {mark} lookup main priority {new[-1]}")
            table, redirects = domain_filter.REDIRECT_TABLE, 0
            for prefix in denied:
                for port in domain_filter.PORTS:
                    new.append(_REDIRECT_BASE + redirects)
                    redirects += 1
                    lines.append(
                        f"rule add to {prefix} ipproto tcp dport {port} lookup {table}"
                        f" priority {new[-1]}"
                    )
        for index, prefix in enumerate(denied):
            new.append(_DENY_BASE + index)
            lines.append(f"rule add to {prefix} prohibit priority {new[-1]}")
        lines.append(f"rule del priority {_GUARD_PRIORITY}")
        self._filter.allowed = by_name  # before the rules that send connections to it
        code, out = await ip_batch(self.netns, lines)
        if code != 0:
            with contextlib.suppress(OSError):  # never leave the guard: it blocks everything
                await ip_batch(self.netns, [f"rule del priority {_GUARD_PRIORITY}"])
            raise OSError(f"cannot apply the sandbox's egress rules: {out.strip()}")
        self._installed = new

    @staticmethod
    def _redirect_setup() -> list[str]:
        """The routing table that delivers redirected connections inside the namespace (its
        source address on the loopback first: the route names it); ``replace`` makes it
        idempotent, so every apply that redirects states it again."""
        source, table = domain_filter.REDIRECT_SOURCE, domain_filter.REDIRECT_TABLE
        return [
            f"addr replace {source}/32 dev lo",
            f"route replace local 0.0.0.0/0 dev lo src {source} table {table}",
        ]

    async def close(self) -> None:
        """Stop the domain filter's listeners and connections (the sandbox has ended)."""
        await self._filter.close()
