"""The kernel's ports, held while its private service starts (``backends.kernel_ports``).

Checked in a network namespace of its own (``unshare``) whose ephemeral port range is four
ports wide: without the holders, the system would hand the kernel's ports to other binds and
connections three times in four.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from e2b_kernel.backends import kernel_ports

# Another process, as the service is: it binds port 0 and connects, many times.
_OTHER = textwrap.dedent(
    """
    import socket
    taken = []
    for _ in range(20):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        taken.append(s.getsockname()[1])
        s.close()
    listeners = [socket.create_server(("127.0.0.1", 50000 + i)) for i in range(20)]
    clients = [socket.create_connection(l.getsockname()) for l in listeners]
    taken += [c.getsockname()[1] for c in clients]
    print(*taken)
    """
)

_KERNEL = textwrap.dedent(
    """
    import subprocess, sys
    from pathlib import Path
    import zmq
    from e2b_kernel.backends import kernel_ports
    Path("/proc/sys/net/ipv4/ip_local_port_range").write_text("40000 40003")
    ports = frozenset({40000, 40001, 40002})
    holders = kernel_ports.hold("127.0.0.1", ports)
    other = subprocess.run([sys.executable, sys.argv[1]], capture_output=True, text=True)
    print("OTHER", other.stdout.strip(), other.stderr.strip()[-300:])
    # The kernel still binds and serves every one of them, the holders open.
    context = zmq.Context()
    for port in sorted(ports):
        server = context.socket(zmq.REP)
        server.bind(f"tcp://127.0.0.1:{port}")
        client = context.socket(zmq.REQ)
        client.connect(f"tcp://127.0.0.1:{port}")
        client.send(b"ping")
        assert server.recv() == b"ping"
    print("KERNEL BOUND", len(holders))
    """
)


def _in_own_network_namespace(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("unshare") is None:
        pytest.skip("util-linux's unshare is not installed")
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"unprivileged network namespaces are unavailable: {probe.stderr!r}")
    (tmp_path / "kernel.py").write_text(_KERNEL)
    (tmp_path / "other.py").write_text(_OTHER)
    script = f"ip link set lo up 2>/dev/null; exec {sys.executable} kernel.py other.py"
    return subprocess.run(
        ["unshare", "-rn", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


def test_held_ports_go_to_no_other_bind_or_connection_yet_the_kernel_binds_them(
    tmp_path: Path,
) -> None:
    result = _in_own_network_namespace(tmp_path)
    assert result.returncode == 0, result.stderr
    other = next(line for line in result.stdout.splitlines() if line.startswith("OTHER"))
    assert set(other.split()[1:]) == {"40003"}, other
    assert "KERNEL BOUND 3" in result.stdout


def test_a_port_something_else_listens_on_is_skipped() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert kernel_ports.hold("127.0.0.1", frozenset({port})) == []


@pytest.mark.parametrize(
    ("contents", "expected"),
    [
        ('{"ip": "127.0.0.1", "shell_port": 5, "hb_port": 6, "key": "k"}', ("127.0.0.1", {5, 6})),
        ('{"transport": "ipc", "shell_port": 5}', ("", set())),
        ("not json", None),
        ('{"shell_port": "x"}', None),
    ],
)
def test_the_ports_are_read_from_the_connection_file(
    tmp_path: Path, contents: str, expected: tuple[str, set[int]] | None
) -> None:
    path = tmp_path / "kernel-1.json"
    path.write_text(contents)
    assert kernel_ports.read(str(path)) == expected
    assert kernel_ports.read(str(tmp_path / "missing.json")) is None


@pytest.mark.parametrize("ip", ["127.0.0.1", "0.0.0.0", "*"])
def test_the_kernel_binds_a_held_port_on_its_address(ip: str) -> None:
    """Loopback or all interfaces (ZeroMQ's ``*`` too), as connection files name them."""
    import zmq

    host = "0.0.0.0" if ip == "*" else ip
    with socket.socket() as probe:
        probe.bind((host, 0))
        port = probe.getsockname()[1]
    holders = kernel_ports.hold(ip, frozenset({port}))
    context = zmq.Context()
    try:
        assert len(holders) == 1
        with socket.socket() as other, pytest.raises(OSError, match="in use"):
            other.bind((host, port))
        server = context.socket(zmq.REP)
        server.bind(f"tcp://{ip}:{port}")  # as ipykernel binds it
        client = context.socket(zmq.REQ)
        client.connect(f"tcp://127.0.0.1:{port}")
        client.send(b"ping")
        assert server.poll(10_000) and server.recv() == b"ping"
    finally:
        context.destroy(linger=0)
        for holder in holders:
            holder.close()
