"""The service's listening port, chosen outside ports a kernel is about to bind.

Checked in a network namespace of its own (``unshare``) whose ephemeral port range is four
ports wide, so that a plain ``bind(port 0)`` would land on an avoided port three times in four.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest

from e2b_kernel.local.service.server import listening_socket_avoiding

_CHECK = textwrap.dedent(
    """
    from pathlib import Path
    Path("/proc/sys/net/ipv4/ip_local_port_range").write_text("40000 40003")
    from e2b_kernel.local.service.server import listening_socket_avoiding
    avoid = frozenset({40000, 40001, 40002})
    for _ in range(40):
        sock = listening_socket_avoiding("127.0.0.1", avoid)
        print(sock.getsockname()[1])
        sock.close()
    """
)


def _in_own_network_namespace(code: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("unshare") is None:
        pytest.skip("util-linux's unshare is not installed")
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"unprivileged network namespaces are unavailable: {probe.stderr!r}")
    script = f"ip link set lo up 2>/dev/null; exec {sys.executable} -c '{code}'"
    return subprocess.run(
        ["unshare", "-rn", "sh", "-c", script], capture_output=True, text=True, timeout=60
    )


def test_the_port_is_never_one_of_the_kernels() -> None:
    result = _in_own_network_namespace(_CHECK)
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == {"40003"}


def test_no_free_port_outside_them_is_a_clear_error() -> None:
    code = _CHECK.replace("40002})", "40002, 40003})")
    result = _in_own_network_namespace(code)
    assert result.returncode != 0
    assert "OSError: no free port on 127.0.0.1 outside [40000, 40001, 40002, 40003]" in (
        result.stderr
    )


def test_its_connections_have_nagle_off() -> None:
    """asyncio turns Nagle's algorithm off only on connections of an IPPROTO_TCP socket; with
    it on, each small request or WebSocket message waits up to 40 ms for an acknowledgement
    (every cell's round trip went from 9 to 48 ms)."""

    async def accepted_nodelay() -> int:
        sock = listening_socket_avoiding("127.0.0.1", frozenset({1}))
        options: list[int] = []

        def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            raw = writer.get_extra_info("socket")
            options.append(raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_connect, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
            while not options:
                await asyncio.sleep(0.01)
            writer.close()
        return options[0]

    assert asyncio.run(accepted_nodelay()) != 0
