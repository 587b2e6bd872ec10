"""Outbound network for sandboxes: slirp4netns, a user-mode stack.

The sandbox always has its own network namespace, with only its loopback until something may
go out (internet access, or an allowed destination), at create or at a later
``update_network``. Then ``slirp4netns``, run by the service and attached to the namespace by
the pid of the sandbox's init, gives it a tap device (10.0.2.100, gateway 10.0.2.2, DNS
10.0.2.3) whose connections it re-makes as ordinary sockets on the host. The gateway is not
mapped to the host's loopback (``--disable-host-loopback``), no port is forwarded into the
sandbox, slirp4netns itself runs in its own empty mount namespace with its capabilities
dropped and a seccomp filter, and every address of the host is made unreachable by
``prohibit`` routes inside the namespace, added BEFORE the tap device exists, so the sandbox
cannot reach the service or any host-local port from its network's first packet; addresses
the host gains later (DHCP, a VPN, a floating IP) are fenced off in every connected sandbox as
``ip monitor`` reports them (:class:`HostAddressWatch`). So are the
private, shared (CGNAT) and link-local ranges (:data:`UNREACHABLE_RANGES`), whatever the
egress rules allow: the host's LAN, its VPN or container bridges (whose addresses may come
after the sandbox's network started) and a cloud VM's metadata service (169.254.169.254) are
no more reachable than from an E2B sandbox. ``nsenter`` is used only by the service to add
those routes; no sandbox process is ever started with it.

(pasta would do as well, but it refuses to run as root and /dev/net/tun is root-only on some
hosts, such as this project's CI.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import shutil
import weakref
from collections.abc import Callable

from .subprocesses import HELPER_ENV, start_process

log = logging.getLogger("e2b_kernel.local")

RESOLV_CONF = "nameserver 10.0.2.3\n"  # slirp4netns's DNS forwarder
# E2B's DeniedSandboxCIDRs (IPv4). 127/8 is the namespace's own loopback; the tap's
# 10.0.2.0/24 is more specific than 10/8 and stays routed (gateway and DNS forwarder).
UNREACHABLE_RANGES = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.168.0.0/16",
)  # fmt: skip
_READY_TIMEOUT = 10.0
SLIRP_MAX_FILES = 16384  # one per connection of the sandbox (its own processes may hold more)
_TAP = "tap0"
_MTU = 65520
# slirp4netns's own --configure, done by the service instead: its default route would be
# refused, as the egress rules are in place before the tap exists and refuse the gateway when
# they deny everything; "onlink" adds the route without looking the gateway up.
_CONFIGURE = [
    f"link set {_TAP} mtu {_MTU} up",
    f"addr add 10.0.2.100/24 dev {_TAP}",
    f"route add default via 10.0.2.2 dev {_TAP} onlink",
]


class NetworkError(OSError):
    """The user-mode network could not be set up."""


class HostAddressWatch:
    """Keeps the host fence of every connected sandbox whole as the host's addresses change.

    slirp4netns makes the sandbox's connections from the host's network namespace, where any
    address the host gains later is local: a sandbox fenced only at its start would reach the
    host's ports through it. While any sandbox is connected, ``ip -o monitor address`` runs,
    and each address it reports is prohibited in every connected namespace (routes to
    addresses the host has dropped stay: they are harmless).
    """

    def __init__(self) -> None:
        self._namespaces: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._monitor: asyncio.subprocess.Process | None = None
        self._started = asyncio.Event()
        self._stopping = False  # the monitor was told to end: the next add waits for it

    async def add(self, netns: str) -> None:
        """Watch for ``netns``; returns once the monitor runs, so that the fence made after
        this call misses no address."""
        self._namespaces.add(netns)
        if self._task is not None and self._stopping:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._task)
        if self._task is None or self._task.done():
            self._stopping = False
            self._started = asyncio.Event()
            self._task = asyncio.ensure_future(self._watch())
        await self._started.wait()

    async def discard(self, netns: str) -> None:
        """Stop watching for ``netns``; the last one out ends the monitor and waits for it
        (a monitor left to a closing loop is reaped twice, and asyncio logs it)."""
        self._namespaces.discard(netns)
        if not self._namespaces and self._monitor is not None and self._task is not None:
            self._stopping = True
            with contextlib.suppress(ProcessLookupError):
                self._monitor.kill()
            with contextlib.suppress(Exception):
                await asyncio.shield(self._task)

    async def _watch(self) -> None:
        """Run the monitor while sandboxes are connected; one that ends by itself is started
        again, and every fence made whole (it may have missed addresses)."""
        first, quick_ends = True, 0
        loop = asyncio.get_running_loop()
        while self._namespaces and not self._stopping:
            started = loop.time()
            try:
                # Killed with the service, even a SIGKILLed one (it would block for ever).
                self._monitor = await start_process(
                    "setpriv", "--pdeathsig", "KILL", "ip", "-o", "monitor", "address",
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.DEVNULL,
                    env=HELPER_ENV,
                )  # fmt: skip
            except OSError as exc:
                log.warning("host addresses gained from now on stay unfenced: %s", exc)
                return
            finally:
                self._started.set()
            if not first:
                for netns in list(self._namespaces):
                    await self._fence(netns, None)
            first = False
            try:
                await self._follow(self._monitor)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    self._monitor.kill()
                await self._monitor.wait()
                self._monitor = None
            if self._namespaces and not self._stopping:
                quick_ends = quick_ends + 1 if loop.time() - started < 1.0 else 0
                if quick_ends >= 3:  # it cannot run here: say so once, do not spin
                    log.warning(
                        "the host address monitor keeps ending: new host addresses stay unfenced"
                    )
                    return
                log.warning("the host address monitor ended; starting it again")

    async def _follow(self, monitor: asyncio.subprocess.Process) -> None:
        assert monitor.stdout is not None
        async for line in monitor.stdout:
            address = _added_address(line.decode(errors="replace"))
            if address is not None:
                for netns in list(self._namespaces):
                    await self._fence(netns, address)

    @staticmethod
    async def _fence(netns: str, address: str | None) -> None:
        """Prohibit ``address`` (None: every host address) in ``netns``, logging failures."""
        try:
            await (_fence_host(netns) if address is None else _prohibit(netns, address))
        except OSError as exc:  # the sandbox may be going (NetworkError too)
            log.warning("a host address may stay unfenced in %s: %s", netns, exc)


def _added_address(line: str) -> str | None:
    """The address an ``ip -o monitor address`` line adds (None for a deletion)."""
    parts = line.split()
    if not parts or parts[0] == "Deleted":
        return None
    for family in ("inet", "inet6"):
        if family in parts[:-1]:
            return parts[parts.index(family) + 1].split("/")[0]
    return None


_watches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, HostAddressWatch]
_watches = weakref.WeakKeyDictionary()


def _host_address_watch() -> HostAddressWatch:
    """The running loop's watch (a process may run several services, each on its own loop)."""
    return _watches.setdefault(asyncio.get_running_loop(), HostAddressWatch())


class Network:
    """A running slirp4netns for one sandbox; closing our end of its exit pipe stops it."""

    def __init__(
        self, proc: asyncio.subprocess.Process, exit_fd: int, netns: str, watch: HostAddressWatch
    ) -> None:
        self._proc = proc
        self._exit_fd = exit_fd
        self._netns = netns
        self._watch = watch

    @property
    def pid(self) -> int:
        return self._proc.pid

    async def close(self) -> None:
        await self._watch.discard(self._netns)
        if self._exit_fd >= 0:
            os.close(self._exit_fd)
            self._exit_fd = -1
        try:
            await asyncio.wait_for(self._proc.wait(), 5.0)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            await self._proc.wait()


def available() -> bool:
    return shutil.which("slirp4netns") is not None and shutil.which("ip") is not None


async def _run(*argv: str) -> tuple[int, str]:
    proc = await start_process(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=HELPER_ENV,
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


async def connect(init_pid: int, charge: Callable[[int], None] = lambda pid: None) -> Network:
    """Give the sandbox whose pid 1 is init_pid outbound access; host addresses prohibited
    first (the sandbox may be running code already: the fence must come before the tap).

    ``charge`` moves slirp4netns, once its tap is up, into the sandbox's cgroups: each
    connection the sandbox opens is a socket and buffers in slirp4netns, which the sandbox
    must pay for, not the service (not before: a paused sandbox's frozen group would stop it
    before it is ready). Its open files are bounded (SLIRP_MAX_FILES).
    """
    slirp = shutil.which("slirp4netns")
    if slirp is None:
        raise NetworkError(
            "internet access needs slirp4netns (Debian/Ubuntu: apt-get install slirp4netns)"
        )
    netns = f"/proc/{init_pid}/ns/net"
    watch = _host_address_watch()
    try:
        await watch.add(netns)
        await _fence_host(netns)
    except BaseException:
        await watch.discard(netns)
        raise
    ready_read, ready_write = os.pipe2(os.O_CLOEXEC)
    exit_read, exit_write = os.pipe2(os.O_CLOEXEC)
    argv = [slirp, f"--mtu={_MTU}", "--disable-host-loopback"]
    argv += ["--enable-sandbox", "--enable-seccomp"]
    argv += [f"--ready-fd={ready_write}", f"--exit-fd={exit_read}", str(init_pid), _TAP]
    try:
        proc = await start_process(
            *argv,
            pass_fds=(ready_write, exit_read),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=HELPER_ENV,
            start_new_session=True,
        )
    except BaseException:
        for fd in (ready_read, ready_write, exit_read, exit_write):
            os.close(fd)
        await watch.discard(netns)
        raise
    finally:
        with contextlib.suppress(OSError):
            os.close(ready_write)
        with contextlib.suppress(OSError):
            os.close(exit_read)
    network = Network(proc, exit_write, netns, watch)
    try:
        try:
            # It writes "1" once the tap device exists (EOF if it dies first).
            ready = await asyncio.wait_for(
                asyncio.to_thread(os.read, ready_read, 1), _READY_TIMEOUT
            )
        finally:
            os.close(ready_read)
        if ready != b"1":
            assert proc.stderr is not None
            err = (await proc.stderr.read()).decode(errors="replace").strip()
            raise NetworkError(f"slirp4netns could not set up the sandbox network: {err}")
        code, out = await ip_batch(f"/proc/{init_pid}/ns/net", _CONFIGURE)
        if code != 0:
            raise NetworkError(f"cannot configure the sandbox network: {out.strip()}")
        _bound_files(proc.pid)
        charge(proc.pid)
    except BaseException:
        await network.close()
        raise
    return network


def _bound_files(pid: int) -> None:
    """At most SLIRP_MAX_FILES open files (never above the service's own hard limit)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    limit = SLIRP_MAX_FILES if hard == resource.RLIM_INFINITY else min(SLIRP_MAX_FILES, hard)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, limit))


async def _fence_host(netns: str) -> None:
    """Prohibit routes to every host address, so no host-local port is reachable, and to the
    private and link-local ranges."""
    lines = [f"route replace prohibit {block}" for block in UNREACHABLE_RANGES]
    code, out = await ip_batch(netns, lines)
    if code != 0:
        raise NetworkError(f"cannot fence off the private ranges: {out.strip()}")
    for address in await host_addresses():
        await _prohibit(netns, address)


async def _prohibit(netns: str, address: str) -> None:
    """Route a host address to nowhere in a sandbox's namespace (IPv6 where it has IPv6)."""
    if address.startswith("127.") or address == "::1":
        return  # the namespace's own loopback, not the host's
    family = "-6" if ":" in address else "-4"
    suffix = "/128" if ":" in address else "/32"
    code, out = await _run(
        "nsenter", f"--net={netns}", "ip", family, "route", "replace",
        "prohibit", address + suffix,
    )  # fmt: skip
    if code != 0 and family == "-4":
        raise NetworkError(f"cannot fence off host address {address}: {out.strip()}")


async def ip_batch(netns: str, lines: list[str]) -> tuple[int, str]:
    """Run ip(8) commands (IPv4) in a sandbox's network namespace, as the service."""
    proc = await start_process(
        "nsenter", f"--net={netns}", "ip", "-4", "-force", "-batch", "-",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=HELPER_ENV,
    )  # fmt: skip
    out, _ = await proc.communicate(("\n".join(lines) + "\n").encode())
    return proc.returncode or 0, out.decode(errors="replace")
