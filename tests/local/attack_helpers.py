"""Helpers of the attack suite: run probes inside sandboxes through the unmodified SDK and
check the outcome on the host. Every loop here is bounded by count and by time."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

from e2b import PtySize
from e2b.sandbox.commands.command_handle import CommandExitException
from e2b_code_interpreter import Sandbox
from local_helpers import host_pids_with, sandbox_host_dir, wait_for

from e2b_kernel.local.sandbox.bwrap import RUNTIME_ROOT

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CAP_FIELDS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")
MiB = 1024 * 1024


def sh(box: Sandbox, command: str, user: str | None = None, timeout: float = 60) -> tuple[int, str]:
    """Run a shell command inside; (exit code, stdout + stderr). Never raises on a failed exit."""
    try:
        result = box.commands.run(command, user=user, timeout=timeout)  # type: ignore[arg-type]
    except CommandExitException as failed:
        return failed.exit_code, failed.stdout + failed.stderr
    return result.exit_code, result.stdout + result.stderr


def py(box: Sandbox, code: str, timeout: float = 60) -> str:
    """Run Python in the sandbox's code context; its stdout (fails on an error)."""
    execution = box.run_code(code, timeout=timeout)
    assert execution.error is None, execution.error
    return "".join(execution.logs.stdout)


def pty_run(box: Sandbox, command: str, user: str | None = None) -> str:
    """Run one command in an interactive pty shell; everything the terminal showed."""
    output = bytearray()
    handle = box.pty.create(PtySize(rows=50, cols=250), user=user, timeout=30)  # type: ignore[arg-type]
    box.pty.send_stdin(handle.pid, f"{command}; exit\n".encode())
    try:
        handle.wait(on_pty=output.extend)
    except CommandExitException:
        pass
    return output.decode(errors="replace").replace("\r", "")


def status_fields(text: str) -> dict[str, str]:
    """Fields of a /proc/PID/status dump found anywhere in text."""
    fields = {}
    for line in text.splitlines():
        match = re.match(r"^(Uid|Gid|Cap\w+|NoNewPrivs|Seccomp):\s+(.*)$", line.strip())
        if match:
            fields[match.group(1)] = match.group(2).strip()
    return fields


def privileged_fields(fields: dict[str, str]) -> dict[str, str]:
    """The fields of a status dump that differ from a sandboxed process with no privileges."""
    bad = {name: fields.get(name, "missing") for name in CAP_FIELDS}
    bad = {name: value for name, value in bad.items() if value == "missing" or int(value, 16)}
    if fields.get("NoNewPrivs") != "1":
        bad["NoNewPrivs"] = fields.get("NoNewPrivs", "missing")
    if fields.get("Seccomp") != "2":
        bad["Seccomp"] = fields.get("Seccomp", "missing")
    return bad


def maps_host_root(id_map: str) -> list[str]:
    """The lines of a uid_map/gid_map whose outside range covers host id 0."""
    bad = []
    for line in id_map.splitlines():
        parts = line.split()
        if len(parts) == 3 and int(parts[1]) <= 0 < int(parts[1]) + int(parts[2]):
            bad.append(line.strip())
    return bad


def tagged_process(box: Sandbox, user: str | None = None) -> tuple[str, int]:
    """Start a long sleep tagged with a unique name inside; (tag, its host pid)."""
    tag = f"e2bk-attack-{uuid.uuid4().hex[:12]}"
    box.commands.run(
        f"setsid bash -c 'exec -a {tag} sleep 300' >/dev/null 2>&1 &",
        user=user,  # type: ignore[arg-type]
    )
    found: list[int] = []
    wait_for(lambda: bool(found.extend(host_pids_with(tag)) or found), what=f"process {tag}")
    return tag, found[0]


def host_status(pid: int) -> dict[str, str]:
    """The /proc status of a host process, read on the host."""
    return status_fields(Path(f"/proc/{pid}/status").read_text())


def served(box: Sandbox, path: str) -> str | None:
    """What files.read returns for path, or None when the files API refuses it."""
    try:
        return str(box.files.read(path, request_timeout=30))
    except Exception:
        return None


def state_roots() -> list[Path]:
    """Host folders where the service keeps sandbox state (and where earlier versions did)."""
    roots = [RUNTIME_ROOT, Path("/tmp/e2b-kernel-local"), Path("/run/e2b-kernel-local")]
    return [root for root in dict.fromkeys(roots) if root.is_dir()]


def sandbox_roots(sandbox_id: str) -> list[Path]:
    """Host folders of a sandbox: its named dir, and any folder named after its id that the
    mounts or its processes' command lines show (none should)."""
    named = sandbox_host_dir(sandbox_id)
    texts = [Path("/proc/self/mountinfo").read_text()]
    for pid in host_pids_with(sandbox_id):
        try:
            texts.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    roots = {named} if named is not None else set()
    for word in " ".join(texts).split():
        if word.startswith("/") and f"/{sandbox_id}" in word:
            roots.add(Path(word.split(f"/{sandbox_id}")[0]) / sandbox_id)
    return sorted(root for root in roots if root.is_dir())


def host_paths_of(name: str, sandbox_id: str, max_entries: int = 200_000) -> list[Path]:
    """Host paths of the files called name that belong to a sandbox (bounded walk)."""
    found: set[Path] = set()
    seen = 0
    deadline = time.monotonic() + 20
    roots = sandbox_roots(sandbox_id)
    for root in dict.fromkeys(r for r in roots if r.is_dir()):
        for folder, dirs, files in os.walk(root):
            seen += len(dirs) + len(files)
            if name in files:
                found.add(Path(folder) / name)
            if seen > max_entries or time.monotonic() > deadline:
                return sorted(found)
    return sorted(found)


def host_addresses() -> list[str]:
    """Every IPv4 and IPv6 address of this machine's interfaces (loopback included)."""
    text = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True).stdout
    addresses = []
    for line in text.splitlines():
        match = re.search(r"\binet6?\s+([0-9a-fA-F:.]+)/", line)
        if match and not match.group(1).lower().startswith("fe80"):
            addresses.append(match.group(1))
    return addresses


def host_gateways() -> set[str]:
    """The host's default IPv4 gateways: addresses of other machines, never to be probed."""
    gateways = set()
    for line in Path("/proc/net/route").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) > 2 and fields[1] == "00000000":
            gateways.add(socket.inet_ntoa(int(fields[2], 16).to_bytes(4, "little")))
    return gateways


class HostListener:
    """A TCP listener on every host address; counts connections that reach it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("0.0.0.0", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


PROBE = r"""
import json, socket, sys
targets, never = json.loads(sys.argv[1]), set(json.loads(sys.argv[2]))
gateways = []
try:
    for line in open('/proc/net/route').read().splitlines()[1:]:
        f = line.split()
        if f[1] == '00000000':
            gateways.append(socket.inet_ntoa(int(f[2], 16).to_bytes(4, 'little')))
except OSError:
    pass
ports = sorted({port for _, port in targets})
targets += [[gw, port] for gw in gateways if gw not in never for port in ports]
result = {}
for host, port in targets[:64]:
    try:
        socket.create_connection((host, port), timeout=3).close()
        result[f'{host}:{port}'] = 'connected'
    except OSError as exc:
        result[f'{host}:{port}'] = type(exc).__name__
print(json.dumps(result))
"""


def connect_probe(box: Sandbox, targets: list[tuple[str, int]], never: set[str]) -> dict[str, str]:
    """Try TCP connections from inside; {host:port: 'connected' or the error's name}."""
    box.files.write("/tmp/e2bk_probe.py", PROBE)
    args = " ".join(shlex.quote(json.dumps(x)) for x in (targets, sorted(never)))
    code, output = sh(box, f"python3 /tmp/e2bk_probe.py {args}", timeout=240)
    assert code == 0, output
    return dict(json.loads(output.strip().splitlines()[-1]))


_WATCH = """import os, select, socket, sys
target = (sys.argv[1], int(sys.argv[2]))
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
changes = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
changes.bind((0, 0x40 | 0x10))  # RTMGRP_IPV4_ROUTE | RTMGRP_IPV4_IFADDR
changes.setblocking(False)
sent = 0
open("/tmp/e2bk_watching", "w").close()
while not os.path.exists("/tmp/e2bk_stop"):
    select.select([changes], [], [], 0.05)
    try:
        while changes.recv(65536):
            pass
    except BlockingIOError:
        pass
    for _ in range(20):
        try:
            udp.sendto(b"x", target)
            sent += 1
        except OSError:
            pass
print("sent", sent)
"""


class PacketWatch:
    """From inside a sandbox: UDP datagrams to one address, sent again and again and at once
    whenever the sandbox's routes or addresses change (rtnetlink). ``sent()`` stops it and
    says how many the sandbox's routing let out: any is a packet that went past a rule or
    the host fence, e.g. while the sandbox's network was being set up."""

    def __init__(self, box: Sandbox, host: str, port: int) -> None:
        box.files.write("/tmp/e2bk_watch.py", _WATCH)
        self._box = box
        self._handle = box.commands.run(
            f"python3 /tmp/e2bk_watch.py {host} {port}", background=True, timeout=0
        )
        wait_for(lambda: box.files.exists("/tmp/e2bk_watching"), 30, "the packet watch to start")

    def sent(self) -> int:
        self._box.files.write("/tmp/e2bk_stop", "")
        return int(self._handle.wait().stdout.split()[-1])


# What a server in a sandbox can answer every request with to make the service work hardest:
# the head it sends first, then the part it sends again without end (one MiB or so each).
_OK = "b'HTTP/1.1 200 OK\\r\\n'"
FLOODS = {
    # JSON whitespace: costs the sandbox one MiB, whatever it sends
    "endless body": (_OK + " + b'Content-Length: %d\\r\\n\\r\\n' % (1 << 40)", "b' ' * (1 << 20)"),
    # no bytes of answer, but a parse each
    "1xx heads": ("b''", "b'HTTP/1.1 102 Processing\\r\\n\\r\\n' * 40000"),
    "one-byte chunks": (
        _OK + " + b'Transfer-Encoding: chunked\\r\\n\\r\\n'",
        "b'1\\r\\na\\r\\n' * 200000",
    ),
}


def flood_server(port: int, flood: str, *, end_jupyter: bool = False) -> str:
    """Source of a server on ``port`` that answers with ``FLOODS[flood]``; it creates
    /tmp/listening-<port> once it listens. ``end_jupyter``: first end the sandbox's Jupyter
    Server (it runs as the sandbox's user) and take its port."""
    head, endless = FLOODS[flood]
    lines = ["import os, socket, threading, time"]
    if end_jupyter:
        lines += [
            "for pid in os.listdir('/proc'):",
            "    try:",
            "        if b'jupyter_server' in open(f'/proc/{pid}/cmdline', 'rb').read():",
            "            os.kill(int(pid), 9)",
            "    except (OSError, ValueError):",
            "        pass",
        ]
    lines += [
        f"head, endless = {head}, {endless}",
        "server = socket.socket()",
        "server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)",
        "for _ in range(100):  # a port just freed may take a moment",
        "    try:",
        f"        server.bind(('127.0.0.1', {port}))",
        "        break",
        "    except OSError:",
        "        time.sleep(0.1)",
        "server.listen(16)",
        f"open('/tmp/listening-{port}', 'w').close()",
        "def answer(client):",
        "    client.recv(65536)",
        "    try:",
        "        client.sendall(head)",
        "        while True:",
        "            client.sendall(endless)",
        "    except OSError:",
        "        client.close()",
        "while True:",
        "    client, _ = server.accept()",
        "    threading.Thread(target=answer, args=(client,), daemon=True).start()",
    ]
    return "\n".join(lines) + "\n"
