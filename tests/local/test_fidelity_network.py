"""Network options through the unmodified SDK (sync and async): ``allow_out`` / ``deny_out``
on create and ``update_network`` decide, inside the sandbox, which destinations are reached;
``update_network`` opens the network of a sandbox created without one.

The target is a small HTTP server in a network namespace this test creates, behind a veth
pair with addresses of the test's own choosing (a free /24 of the benchmarking range
198.18.0.0/15, which looks public, and a free 10.x /24, which is private); the sandbox
reaches the first through its user-mode network (slirp4netns) as it would an internet host,
and never the second. Only those addresses are ever contacted, and everything is removed at
the end.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlparse

import pytest
from attack_helpers import HostListener, PacketWatch, connect_probe
from e2b import ALL_TRAFFIC, AsyncSandbox, Sandbox
from e2b.exceptions import SandboxException
from local_helpers import remove_target_netns, wait_for

from e2b_kernel.local import RunningService

PORT = 8099
# Connects to each address given and prints "<address> ok" or "<address> err <errno>".
PROBE = """import socket, sys
for host in sys.argv[2:]:
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect((host, int(sys.argv[1])))
        print(host, "ok")
    except OSError as exc:
        print(host, "err", exc.errno)
"""


@dataclass
class Target:
    """Two addresses of one HTTP server, reachable from the host only through the veth, and
    the host's own address on that veth (a host address, which sandboxes never reach)."""

    first: str
    second: str
    host: str
    private: str  # the server's address in a private range


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def _free_subnet(first: str, second: range) -> str:
    used = (
        subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
        + subprocess.run(["ip", "route"], capture_output=True, text=True, check=True).stdout
    )
    for _ in range(20):
        subnet = f"{first}.{random.choice(second)}.{random.randint(0, 255)}"
        if f"{subnet}." not in used:
            return subnet
    pytest.skip(f"no free {first}.x /24 for the test's network namespace")


@pytest.fixture(scope="module")
def target(local_service: RunningService) -> Iterator[Target]:
    if os.geteuid() != 0 or shutil.which("ip") is None or local_service.isolation == "none":
        pytest.skip("needs root, ip(8) and isolated sandboxes (a user-mode network)")
    tag = uuid.uuid4().hex[:6]
    netns, host_end, far_end = f"e2bkt-{tag}", f"e2bkt{tag}a", f"e2bkt{tag}b"
    subnet, private = _free_subnet("198", range(18, 20)), _free_subnet("10", range(200, 250))
    server = None
    try:
        _ip("netns", "add", netns)
        _ip("link", "add", host_end, "type", "veth", "peer", "name", far_end)
        _ip("link", "set", far_end, "netns", netns)
        _ip("addr", "add", f"{subnet}.1/24", "dev", host_end)
        _ip("addr", "add", f"{private}.1/24", "dev", host_end)
        _ip("link", "set", host_end, "up")
        for address in (f"{subnet}.2", f"{subnet}.3", f"{private}.2"):
            _ip("-n", netns, "addr", "add", f"{address}/24", "dev", far_end)
        _ip("-n", netns, "link", "set", far_end, "up")
        server = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-m", "http.server",
             "--bind", "0.0.0.0", str(PORT)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

        def listening() -> bool:
            with socket.socket() as probe:
                probe.settimeout(1)
                return probe.connect_ex((f"{subnet}.2", PORT)) == 0

        wait_for(listening, 15, "the test's HTTP server")
        yield Target(f"{subnet}.2", f"{subnet}.3", f"{subnet}.1", f"{private}.2")
    finally:
        remove_target_netns(server, host_end, netns)


def _reached(output: str) -> dict[str, bool]:
    return {line.split()[0]: line.split()[1] == "ok" for line in output.splitlines()}


def _probe(sbx: Sandbox, target: Target) -> dict[str, bool]:
    sbx.files.write("/tmp/probe.py", PROBE)
    result = sbx.commands.run(f"python3 /tmp/probe.py {PORT} {target.first} {target.second}")
    return _reached(result.stdout)


def test_deny_out_allow_out_and_update_network_sync(
    target: Target, sdk_env: dict[str, str]
) -> None:
    sbx = Sandbox.create(
        timeout=120, allow_internet_access=True, network={"deny_out": [target.second]}
    )
    try:
        assert _probe(sbx, target) == {target.first: True, target.second: False}
        assert sbx.get_info().network == {"allow_out": [], "deny_out": [target.second]}

        # Allowed entries win over denied ones: everything but the first address is refused.
        sbx.update_network({"allow_out": [target.first], "deny_out": ["0.0.0.0/0"]})
        assert _probe(sbx, target) == {target.first: True, target.second: False}
        sbx.update_network({"allow_out": [f"{target.second}/32"], "deny_out": ["0.0.0.0/0"]})
        assert _probe(sbx, target) == {target.first: False, target.second: True}
        sbx.update_network({})  # every rule cleared
        assert _probe(sbx, target) == {target.first: True, target.second: True}

        with pytest.raises(SandboxException, match="400"):
            sbx.update_network({"deny_out": ["example.com"]})  # E2B: no domains in deny
    finally:
        sbx.kill()


def test_private_and_link_local_ranges_stay_out_of_reach_even_when_allowed(
    target: Target, sdk_env: dict[str, str]
) -> None:
    """The host's LAN, VPN and container bridges, and a cloud VM's metadata service, are no
    more reachable than from an E2B sandbox: not by default, and not by an allow_out."""
    for network in ({}, {"allow_out": [f"{target.private}/32", "169.254.0.0/16"]}):
        sbx = Sandbox.create(timeout=120, allow_internet_access=True, network=network)
        try:
            sbx.files.write("/tmp/probe.py", PROBE)
            run = f"python3 /tmp/probe.py {PORT} {target.first} {target.private}"
            reached = _reached(sbx.commands.run(run).stdout)
            assert reached == {target.first: True, target.private: False}, network
            # Decided by the routes, before any packet: no probe of the metadata address.
            routes = sbx.commands.run("ip route show").stdout.splitlines()
            assert "prohibit 169.254.0.0/16" in [r.strip() for r in routes], routes
        finally:
            sbx.kill()


def test_allow_out_without_internet_and_update_async(
    target: Target, sdk_env: dict[str, str]
) -> None:
    async def scenario() -> None:
        # allow_internet_access=False denies 0.0.0.0/0, but allowed entries still win.
        sbx = await AsyncSandbox.create(
            timeout=120, allow_internet_access=False, network={"allow_out": [target.first]}
        )
        try:
            await sbx.files.write("/tmp/probe.py", PROBE)
            run = f"python3 /tmp/probe.py {PORT} {target.first} {target.second}"
            reached = _reached((await sbx.commands.run(run)).stdout)
            assert reached == {target.first: True, target.second: False}
            assert (await sbx.get_info()).allow_internet_access is False

            await sbx.update_network({"deny_out": [target.first]})
            reached = _reached((await sbx.commands.run(run)).stdout)
            assert reached == {target.first: False, target.second: True}
        finally:
            await sbx.kill()

    asyncio.run(scenario())


def test_update_network_opens_a_sandbox_created_without_network(
    local_service: RunningService, target: Target, sdk_env: dict[str, str]
) -> None:
    sbx = Sandbox.create(timeout=120, allow_internet_access=False)
    try:
        assert _probe(sbx, target) == {target.first: False, target.second: False}
        assert "tap0" not in sbx.commands.run("cat /proc/net/dev").stdout  # loopback only

        # E2B opens the network per the new rules; here its user-mode network starts now,
        # and not one connection to a refused address gets through while it does.
        watch = PacketWatch(sbx, target.second, PORT)
        sbx.update_network({"allow_out": [target.first], "deny_out": ["0.0.0.0/0"]})
        assert _probe(sbx, target) == {target.first: True, target.second: False}
        assert watch.sent() == 0
        sbx.update_network({})  # nothing refused: still never the host nor the service
        assert _probe(sbx, target) == {target.first: True, target.second: True}
        service = urlparse(local_service.url).port
        assert service
        listener = HostListener()  # on every host address, the veth's host end among them
        try:
            hosts = ("127.0.0.1", target.host)
            targets = [(h, p) for h in hosts for p in (service, listener.port)]
            results = connect_probe(sbx, targets, never={target.first, target.second})
        finally:
            listener.close()
        assert [t for t, outcome in results.items() if outcome == "connected"] == []
        assert listener.accepted == 0

        # A domain allows only ports 80 and 443, by name (test_domain_rules.py): never this
        # port of any address.
        sbx.update_network({"allow_out": ["*.example.com"], "deny_out": ["0.0.0.0/0"]})
        assert _probe(sbx, target) == {target.first: False, target.second: False}
        assert sbx.get_info().network["allow_out"] == ["*.example.com"]
    finally:
        sbx.kill()


def test_a_domain_in_allow_out_needs_all_traffic_denied_as_e2b_asks(
    sdk_env: dict[str, str],
) -> None:
    """E2B's API refuses a domain in ``allow_out`` unless ``deny_out`` holds ``ALL_TRAFFIC``
    (with everything else allowed the rule would mean nothing), at create and in
    ``update_network``; here both were accepted, so code tried locally failed on E2B."""
    for deny in ([], ["10.0.0.0/8"]):
        with pytest.raises(SandboxException) as refused:
            Sandbox.create(timeout=60, network={"allow_out": ["example.com"], "deny_out": deny})
        assert "must include 'ALL_TRAFFIC' in deny out" in str(refused.value)
    sbx = Sandbox.create(timeout=60, allow_internet_access=False)
    try:
        with pytest.raises(SandboxException) as refused:
            sbx.update_network({"allow_out": ["example.com"]})
        assert "must include 'ALL_TRAFFIC' in deny out" in str(refused.value)
        sbx.update_network({"allow_out": ["example.com"], "deny_out": [ALL_TRAFFIC]})
        assert sbx.get_info().network["allow_out"] == ["example.com"]
    finally:
        sbx.kill()
    # E2B judges the lists as sent: no internet access does not stand in for the deny entry.
    with pytest.raises(SandboxException) as refused:
        Sandbox.create(
            timeout=60, allow_internet_access=False, network={"allow_out": ["example.com"]}
        )
    assert "must include 'ALL_TRAFFIC' in deny out" in str(refused.value)
