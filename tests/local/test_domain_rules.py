"""Domain entries of ``allow_out``, attacked from inside a sandbox: E2B matches a name only on
port 80 (HTTP ``Host``) and 443 (TLS SNI), dials the NAME itself (never the address the
sandbox connected to), and refuses names that resolve into private or local ranges.

Everything is local. A target in a network namespace this test creates answers on ports 80,
443 and 8099 of a public-looking address (198.18.0.0/15, the benchmarking range), and of a
private one (10.x); it says which address a connection reached. The service runs in a mount
namespace of its own whose ``/etc/hosts`` names those addresses, so its resolver (which the
domain filter uses, as E2B's firewall uses its own) knows the test's names.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2b import Sandbox
from local_helpers import remove_target_netns

from e2b_kernel.local import read_banner

# In the target's namespace: answer every connection on 80, 443 and 8099 with the address it
# reached, after its first bytes, and log that address.
TARGET = r"""
import asyncio, sys
log = open(sys.argv[1], "a", buffering=1)
async def serve(reader, writer):
    here = writer.get_extra_info("sockname")
    try:
        await asyncio.wait_for(reader.read(65536), 5)
    except asyncio.TimeoutError:
        pass
    log.write(f"{here[0]} {here[1]}\n")
    writer.write(f"TARGET {here[0]}\n".encode())
    await writer.drain()
    writer.close()
async def main():
    for port in (80, 443, 8099):
        await asyncio.start_server(serve, "0.0.0.0", port)
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""

# In the sandbox: for each [address, port, kind, name] connect, send an HTTP request with that
# Host, a TLS ClientHello with that SNI, or plain bytes, and print what came back.
# In the sandbox: the TLS ClientHello a client sends for ``name`` (no SNI when empty).
CLIENT_HELLO = r"""
import ssl
def client_hello(name):
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    out = ssl.MemoryBIO()
    tls = ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname=name or None)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()
"""

PROBE = (
    CLIENT_HELLO
    + r"""
import json, socket, sys
results = []
for address, port, kind, name in json.loads(sys.argv[1]):
    s = socket.socket()
    s.settimeout(8)
    if kind == "marked":
        try:
            s.setsockopt(socket.SOL_SOCKET, 36, 0xE2B)  # SO_MARK: the filter's own mark
            results.append("mark set")
            continue
        except OSError as exc:
            kind = "raw"  # refused: try the connection anyway
    try:
        s.connect((address, port))
    except OSError as exc:
        results.append(f"connect error {exc.errno}")
        continue
    if kind == "http":
        s.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\n\r\n".encode())
    elif kind == "tls":
        s.sendall(client_hello(name))
    else:
        s.sendall(b"hello\n")
    try:
        answer = s.recv(100).decode().strip()
    except OSError as exc:
        answer = f"recv error {exc.errno}"
    results.append(answer or "closed")
print(json.dumps(results))
"""
)


@dataclass
class Net:
    public: str  # the target's allowed address (what allowed names resolve to)
    other: str  # another public address of the target, which no name points at
    private: str  # the target's 10.x address
    host: str  # the host's end of the veth (a host address)
    log: Path

    def reached(self) -> list[str]:
        return self.log.read_text().split("\n")[:-1] if self.log.exists() else []


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def _free(prefix: str, second: range, used: str) -> str:
    for _ in range(50):
        subnet = f"{prefix}.{random.choice(second)}.{random.randint(0, 255)}"
        if f"{subnet}." not in used:
            return subnet
    pytest.skip(f"no free {prefix}.x /24 for the test's network namespace")


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    if os.geteuid() != 0 or not all(shutil.which(t) for t in ("ip", "unshare", "bwrap")):
        pytest.skip("needs root, ip(8), unshare(1) and bubblewrap (isolated sandboxes)")
    used = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    used += subprocess.run(["ip", "route"], capture_output=True, text=True).stdout
    public, private = _free("198", range(18, 20), used), _free("10", range(200, 250), used)
    tag = uuid.uuid4().hex[:6]
    netns, host_end, far_end = f"e2bdr-{tag}", f"e2bdr{tag}a", f"e2bdr{tag}b"
    log = tmp_path_factory.mktemp("target") / "reached.log"
    server = None
    try:
        _ip("netns", "add", netns)
        _ip("link", "add", host_end, "type", "veth", "peer", "name", far_end)
        _ip("link", "set", far_end, "netns", netns)
        for subnet in (public, private):
            _ip("addr", "add", f"{subnet}.1/24", "dev", host_end)
        _ip("link", "set", host_end, "up")
        for address in (f"{public}.2", f"{public}.3", f"{private}.2"):
            _ip("-n", netns, "addr", "add", f"{address}/24", "dev", far_end)
        _ip("-n", netns, "link", "set", far_end, "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        server = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-c", TARGET, str(log)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        yield Net(f"{public}.2", f"{public}.3", f"{private}.2", f"{public}.1", log)
    finally:
        remove_target_netns(server, host_end, netns)


@contextlib.contextmanager
def _service_with_own(
    files: dict[str, str], folder: Path, open_files: int | None = None
) -> Iterator[dict[str, str]]:
    """A local service in a private mount namespace where each of ``files`` (``/etc/hosts``,
    ``/etc/resolv.conf``) has the given text; nothing else on the host sees them. With
    ``open_files``, that is its open-files limit, soft and hard."""
    script, binds = "", []
    for index, (target, text) in enumerate(files.items(), start=1):
        source = folder / f"file{index}"
        source.write_text(text)
        script += f'mount --bind "${index}" {target} && '
        binds.append(str(source))
    script += f'shift {len(binds)} && exec "$@"'
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "e2bk", *binds]
    if open_files is not None:
        argv += ["prlimit", f"--nofile={open_files}:{open_files}"]
    argv += [sys.executable, "-m", "e2b_kernel.local", "--host", "127.0.0.1", "--port", "0"]
    argv += ["--die-with-parent", "--pool-size", "0"]
    env = {k: v for k, v in os.environ.items() if k != "E2B_API_KEY"}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    found = read_banner(proc.stdout)
    try:
        assert "E2B_API_URL" in found, "the test's service did not start"
        yield {
            "E2B_API_URL": found["E2B_API_URL"],
            "E2B_SANDBOX_URL": found["E2B_API_URL"],
            "E2B_API_KEY": found["E2B_API_KEY"],
        }
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _hosts(net: Net) -> str:
    return (
        "127.0.0.1 localhost\n"
        f"{net.public} allowed.test api.wild.test deep.x.wild.test wild.test other.test\n"
        f"{net.private} private.test\n"
        f"{net.host} hostaddr.test\n"
    )


@pytest.fixture(scope="module")
def service_env(net: Net, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A local service whose resolver knows the test's names."""
    with _service_with_own({"/etc/hosts": _hosts(net)}, tmp_path_factory.mktemp("etc")) as env:
        yield env


@pytest.fixture
def sandbox(service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    for name, value in service_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("E2B_DEBUG", raising=False)
    monkeypatch.delenv("E2B_DOMAIN", raising=False)
    allow = ["allowed.test", "*.wild.test", "private.test", "hostaddr.test"]
    sbx = Sandbox.create(timeout=120, network={"allow_out": allow, "deny_out": ["0.0.0.0/0"]})
    sbx.files.write("/tmp/probe.py", PROBE)
    try:
        yield sbx
    finally:
        sbx.kill()


def _probe(sbx: Sandbox, attempts: list[tuple[str, int, str, str]]) -> list[str]:
    result = sbx.commands.run(f"python3 /tmp/probe.py '{json.dumps(attempts)}'", timeout=120)
    return json.loads(result.stdout)


def test_allowed_names_are_reached_on_80_and_443_and_nothing_else(
    sandbox: Sandbox, net: Net
) -> None:
    before = len(net.reached())
    results = _probe(
        sandbox,
        [
            (net.public, 80, "http", "allowed.test"),
            (net.public, 443, "tls", "api.wild.test"),
            (net.public, 443, "tls", "deep.x.wild.test"),
            (net.public, 80, "http", "ALLOWED.test."),  # case and a trailing dot
            (net.public, 443, "tls", "wild.test"),  # *.wild.test is not wild.test itself
            (net.public, 80, "http", "other.test"),
            (net.public, 443, "tls", ""),  # no SNI: no name
            (net.public, 80, "raw", ""),  # not HTTP
            (net.public, 8099, "raw", ""),  # domains open only 80 and 443
        ],
    )
    reached = f"TARGET {net.public}"
    assert results[:4] == [reached] * 4
    assert results[4:8] == ["closed"] * 4  # accepted, then closed, as on E2B
    assert results[8] == "connect error 13"  # EACCES: refused by address
    # Only the four allowed connections reached the target (the order is the probe's).
    expected = [f"{net.public} {port}" for port in (80, 443, 443, 80)]
    assert net.reached()[before:] == expected
    assert sandbox.get_info().network["allow_out"] == [
        "allowed.test", "*.wild.test", "private.test", "hostaddr.test",
    ]  # fmt: skip


def test_an_allowed_name_sent_to_another_address_reaches_only_the_name(
    sandbox: Sandbox, net: Net
) -> None:
    """Domain fronting: an allowed Host or SNI sent to a refused address. E2B dials the name,
    so the other address is never contacted."""
    before = len(net.reached())
    results = _probe(
        sandbox,
        [(net.other, 80, "http", "allowed.test"), (net.other, 443, "tls", "api.wild.test")],
    )
    assert results == [f"TARGET {net.public}"] * 2
    assert all(not line.startswith(net.other) for line in net.reached()[before:])


def test_allowed_names_resolving_to_private_or_host_addresses_are_refused(
    sandbox: Sandbox, net: Net
) -> None:
    host_80 = socket.create_server((net.host, 80))  # the host, where an attacker would aim
    host_80.settimeout(0.2)
    accepted: list[object] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                accepted.append(host_80.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    before = len(net.reached())
    try:
        results = _probe(
            sandbox,
            [
                (net.public, 80, "http", "private.test"),
                (net.public, 443, "tls", "private.test"),
                (net.public, 80, "http", "hostaddr.test"),
            ],
        )
    finally:
        stop.set()
        thread.join(timeout=5)
        host_80.close()
    assert results == ["closed"] * 3
    assert accepted == []
    assert all(not line.startswith(net.private) for line in net.reached()[before:])


def test_the_dns_server_a_domain_entry_opens_is_open_on_port_53_only(sandbox: Sandbox) -> None:
    """Names must resolve, so 8.8.8.8 (E2B's default DNS server) is allowed; on port 53 only,
    or "only allowed.test" would open it to DNS over HTTPS and anything else."""
    script = "; ".join(
        f"ip route get 8.8.8.8 ipproto {proto} dport {port} >/dev/null 2>&1 && echo open"
        f" || echo refused"
        for proto, port in (("udp", 53), ("tcp", 53), ("tcp", 853), ("udp", 9999), ("tcp", 22))
    )
    result = sandbox.commands.run(script, timeout=30)
    assert result.stdout.split() == ["open", "open", "refused", "refused", "refused"]
    # Port 443 of it is any denied address's: the filter's, which wants an allowed name.
    assert _probe(sandbox, [("8.8.8.8", 443, "raw", "")]) == ["closed"]


def test_the_filters_own_mark_is_out_of_a_sandboxs_reach(sandbox: Sandbox, net: Net) -> None:
    """The mark that routes the filter's own connections past the rules cannot be set by a
    sandbox process, so it cannot use it to go around them."""
    assert _probe(sandbox, [(net.public, 8099, "marked", "")]) == ["connect error 13"]


def test_update_network_changes_the_names_at_once(sandbox: Sandbox, net: Net) -> None:
    attempt = [(net.public, 80, "http", "other.test"), (net.public, 80, "http", "allowed.test")]
    assert _probe(sandbox, attempt) == ["closed", f"TARGET {net.public}"]
    sandbox.update_network({"allow_out": ["other.test"], "deny_out": ["0.0.0.0/0"]})
    assert _probe(sandbox, attempt) == [f"TARGET {net.public}", "closed"]
    sandbox.update_network({"allow_out": [net.public], "deny_out": ["0.0.0.0/0"]})
    # An address entry: any name, any port of that address, straight through.
    both = [*attempt, (net.public, 8099, "raw", "")]
    assert _probe(sandbox, both) == [f"TARGET {net.public}"] * 3


def test_malformed_domain_entries_are_refused(sandbox: Sandbox) -> None:
    from e2b.exceptions import SandboxException

    for entry in ("exa mple.com", "http://example.com", "example.com:443", "a.*.example.com"):
        with pytest.raises(SandboxException, match="400"):
            sandbox.update_network({"allow_out": [entry], "deny_out": ["0.0.0.0/0"]})


# In the sandbox: send argv[3]'s bytes to argv[1]:argv[2] one small segment at a time (one
# TLS record per byte of a ClientHello on 443, one byte per segment on 80) and print how many
# went before the filter hung up, or all of them.
DRIP = r"""
import select, socket, sys, time
address, port, what = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if what == "tls":
    hello = bytes([1]) + (16000).to_bytes(3, "big") + bytes([3, 3]) + bytes(15994)
    pieces = [bytes([22, 3, 1, 0, 1, b]) for b in hello[:400]]
else:
    pieces = [bytes([b]) for b in b"GET /" + b"a" * 395]
s = socket.create_connection((address, port), timeout=10)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
sent = 0
for piece in pieces:
    if select.select([s], [], [], 0)[0] and not s.recv(100):
        break  # hung up on
    try:
        s.send(piece)
    except OSError:
        break
    sent += 1
    time.sleep(0.005)  # the drip's pace: each piece arrives on its own
print(sent)
"""


@pytest.mark.parametrize("port, what", [(443, "tls"), (80, "http")])
def test_a_head_dripped_a_byte_at_a_time_is_hung_up_on_early(
    sandbox: Sandbox, net: Net, port: int, what: str
) -> None:
    """Each read parses the whole head so far: dripped in thousands of pieces it cost the
    service time growing with the square of its length (64 connections of one sandbox kept its
    loop busy 27 s in 31). The filter hangs up after 16 TLS records or 64 reads."""
    sandbox.files.write("/tmp/drip.py", DRIP)
    result = sandbox.commands.run(f"python3 /tmp/drip.py {net.public} {port} {what}", timeout=60)
    sent = int(result.stdout)
    # Unfiltered, all 400 go. A loaded loop reads several pieces at once, so more than 64
    # pieces can go in 64 reads: the bound leaves room for that.
    assert sent < 200, f"{sent} of 400 pieces went before the filter hung up"


# In the sandbox: open argv[2] connections to argv[1]:443, each with a ClientHello naming a
# different host of a domain whose name server never answers, say so, and keep them open.
SLOW_NAMES = (
    CLIENT_HELLO
    + r"""
import socket, sys, time
held = []
for n in range(int(sys.argv[2])):
    s = socket.create_connection((sys.argv[1], 443), timeout=10)
    s.sendall(client_hello(f"n{n}.slow.test"))
    held.append(s)
print("sent", flush=True)
time.sleep(60)  # holding the connections open is the attack
"""
)


def _attack_started(box: Sandbox, command: str) -> bool:
    """Run ``command`` in ``box`` on a thread of its own (until it ends or the sandbox is
    killed); whether it printed "sent" within 60 s."""
    sent = threading.Event()

    def attack() -> None:
        with contextlib.suppress(Exception):  # ends when the sandbox is killed
            box.commands.run(
                command,
                timeout=120,
                on_stdout=lambda line: sent.set() if "sent" in line else None,
            )

    threading.Thread(target=attack, daemon=True).start()
    return sent.wait(60)


@pytest.fixture(scope="module")
def silent_dns_env(net: Net, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A local service whose DNS server takes every query and never answers (as a domain's
    own name server can), 5 s per lookup."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        silent.bind(("127.0.0.77", 53))
    except OSError as exc:
        silent.close()
        pytest.skip(f"cannot listen on 127.0.0.77:53 for a silent DNS server: {exc}")
    files = {
        "/etc/hosts": _hosts(net),
        "/etc/resolv.conf": "nameserver 127.0.0.77\noptions timeout:5 attempts:1\n",
    }
    try:
        with _service_with_own(files, tmp_path_factory.mktemp("etc")) as env:
            yield env
    finally:
        silent.close()


def test_names_that_never_resolve_do_not_hold_up_the_service(
    silent_dns_env: dict[str, str], net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sandbox allowed every domain opens 40 connections naming hosts whose name server
    never answers. Resolving them took the service's shared thread pool (six threads on two
    cores) for 5 s each, and what else runs there, a new sandbox's start among it, waited
    about 35 s; now a sandbox resolves two names at once, in the resolver's own threads."""
    for name, value in silent_dns_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("E2B_DOMAIN", raising=False)
    attacker = Sandbox.create(timeout=120, network={"allow_out": ["*"], "deny_out": ["0.0.0.0/0"]})
    try:
        attacker.files.write("/tmp/slow.py", SLOW_NAMES)
        started = _attack_started(attacker, f"python3 /tmp/slow.py {net.public} 40")
        assert started, "the attack did not start"
        began = time.monotonic()
        other = Sandbox.create(timeout=60)
        took = time.monotonic() - began
        other.kill()
        assert took < 20, f"another sandbox took {took:.1f} s to start during the attack"
    finally:
        attacker.kill()


# In the sandbox: keep ``count`` connections open to port 80 of a denied address (the domain
# filter of the service accepts each and waits for a host name that never comes), opening
# again those the filter closes.
HOLD_CONNECTIONS = r"""
import socket, sys, time
address, count = sys.argv[1], int(sys.argv[2])
held = []
def fill():
    while len(held) < count:
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect((address, 80))
        except BlockingIOError:
            pass
        held.append(s)
fill()
print("sent", flush=True)
end = time.time() + 90
while time.time() < end:
    time.sleep(0.2)
    for s in list(held):
        try:
            if s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                held.remove(s); s.close()
        except BlockingIOError:
            pass
        except OSError:
            held.remove(s); s.close()
    fill()
"""


def test_sandboxes_holding_filtered_connections_leave_the_service_its_files(
    net: Net, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each connection a sandbox opens to port 80 or 443 of a denied address costs the service
    a file while it waits for a host name. Three sandboxes holding 300 each took every file a
    service with 512 may open, and then another sandbox's commands and every create failed
    (EMFILE); now the filters of a service hold at most a quarter of its limit in all."""
    with _service_with_own({}, tmp_path, open_files=512) as service_env:
        for name, value in service_env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("E2B_DOMAIN", raising=False)
        victim = Sandbox.create(timeout=120)
        rules = {"allow_out": ["allowed.test"], "deny_out": ["0.0.0.0/0"]}
        attackers = [Sandbox.create(timeout=120, network=rules) for _ in range(3)]
        for attacker in attackers:
            attacker.files.write("/tmp/hold.py", HOLD_CONNECTIONS)
            started = _attack_started(attacker, f"python3 /tmp/hold.py {net.public} 300")
            # (on the old filter the service could not start the third attacker's command)
            assert started, "the service could not start an attacker's command"
        for _ in range(3):
            assert victim.commands.run("echo ok", timeout=30).stdout == "ok\n"
        Sandbox.create(timeout=60).kill()
        for box in (victim, *attackers):
            box.kill()
