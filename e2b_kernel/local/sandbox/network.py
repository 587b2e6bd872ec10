"""Outbound network for sandboxes with internet access: pasta, a user-mode network stack.

The sandbox always has its own network namespace. With internet access, ``pasta`` (from the
passt package), run by the service, gives that namespace a tap device whose connections it
re-makes as ordinary sockets on the host. The gateway is not mapped to the host
(``--no-map-gw``), no port is forwarded either way, and every address of the host is made
unreachable by ``prohibit`` routes inside the namespace, so the sandbox cannot reach the
service or any host-local port. ``nsenter`` is used only by the service to add those routes;
no sandbox process is ever started with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from pathlib import Path

_NO_FORWARDING = ["-t", "none", "-u", "none", "-T", "none", "-U", "none"]


class NetworkError(OSError):
    """The user-mode network could not be set up."""


class Network:
    """A running pasta for one sandbox (it also quits by itself when the namespace goes)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    async def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


def available() -> bool:
    return shutil.which("pasta") is not None and shutil.which("ip") is not None


async def _run(*argv: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace")


async def host_addresses() -> list[str]:
    """Every address of every host interface (v4 and v6), as ip(8) lists them."""
    code, out = await _run("ip", "-o", "addr", "show")
    if code != 0:
        raise NetworkError(f"cannot list host addresses: {out.strip()}")
    found = []
    for line in out.splitlines():
        parts = line.split()
        for family in ("inet", "inet6"):
            if family in parts:
                found.append(parts[parts.index(family) + 1].split("/")[0])
    return found


async def connect(init_pid: int, pid_file: Path) -> Network:
    """Give the sandbox whose pid 1 is init_pid outbound access; host addresses prohibited."""
    pasta = shutil.which("pasta")
    if pasta is None:
        raise NetworkError("internet access needs pasta (Debian/Ubuntu: apt-get install passt)")
    netns = f"/proc/{init_pid}/ns/net"
    argv = [pasta, "--quiet", "--netns", netns, "--netns-only", "--pid", str(pid_file)]
    argv += ["--config-net", "--no-map-gw", *_NO_FORWARDING]
    # pasta goes to the background once the namespace's interface is configured, so its
    # first process exiting is the readiness signal.
    code, out = await _run(*argv)
    if code != 0:
        raise NetworkError(f"pasta could not set up the sandbox network: {out.strip()}")
    network = Network(int(pid_file.read_text().strip()))
    try:
        for address in await host_addresses():
            if address.startswith("127.") or address == "::1":
                continue  # the namespace's own loopback, not the host's
            family = "-6" if ":" in address else "-4"
            suffix = "/128" if ":" in address else "/32"
            code, out = await _run(
                "nsenter", f"--net={netns}", "ip", family, "route", "replace",
                "prohibit", address + suffix,
            )  # fmt: skip
            if code != 0:
                raise NetworkError(f"cannot fence off host address {address}: {out.strip()}")
    except BaseException:
        await network.close()
        raise
    return network
