"""Domain entries of ``allowOut``, checked per connection as E2B's egress firewall checks them.

E2B matches a host name only on TCP port 80 (the HTTP ``Host`` header) and 443 (the TLS SNI);
every other port is filtered by address alone. Its firewall accepts the connection on a
sandbox-side proxy, reads the name, and then either closes it (the sandbox sees a connection
that opened and was closed) or dials the NAME itself, not the address the sandbox connected
to, so a sandbox that points an allowed name at another address (``/etc/hosts``) or sends an
allowed SNI to any address still only reaches the allowed name; an allowed name resolving
into a private or local range is refused.

Here the same, inside the sandbox's own network namespace, without netfilter:
- ``egress.EgressTable`` sends TCP to ports 80 and 443 of every DENIED prefix (allowed ones
  are routed before it) to a routing table whose only route is ``local 0.0.0.0/0``, so those
  connections are delivered inside the namespace, to the two listeners below; their source is
  ``REDIRECT_SOURCE``, an address the table's route names and the loopback carries;
- the listeners and the filter's own outbound sockets belong to the SERVICE: it makes them
  from a short-lived thread that has joined the namespace (``setns``), so no sandbox process
  holds them. The listeners are ``IP_TRANSPARENT`` (to answer for addresses that are not
  theirs); outbound sockets carry ``PROXY_MARK``, which a rule ahead of every sandbox rule
  sends to the main table: out through the user-mode network, where the host fence's
  ``prohibit`` routes still hold. Sandbox processes can set neither option (no CAP_NET_ADMIN)
  nor bind ports below 1024.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import functools
import ipaddress
import logging
import os
import resource
import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from . import hostnames
from .network import UNREACHABLE_RANGES

# Refusals are logged at debug level: a sandbox decides how many there are.
log = logging.getLogger("e2b_kernel.local")

PORTS = {80: hostnames.http_host, 443: hostnames.tls_server_name}
PROXY_MARK = 0xE2B  # SO_MARK of the filter's own outbound connections
REDIRECT_TABLE = 3636
REDIRECT_SOURCE = "169.254.36.36"  # on the sandbox's loopback, the redirected source address
# E2B's firewall never dials these for a matched name (``DeniedSandboxCIDRs``), IPv4 part.
ALWAYS_DENIED = tuple(ipaddress.ip_network(block) for block in UNREACHABLE_RANGES)
PEEK_TIMEOUT = 10.0  # for the name to arrive
PEEK_READS = 64  # ... in at most this many reads
DIAL_TIMEOUT = 30.0  # E2B's upstream dial timeout
MAX_CONNECTIONS = 256  # open through the filter at once, per sandbox
# ... and in all, for every sandbox of the service together: each costs the SERVICE up to two
# files (the accepted socket, the upstream one), so a few sandboxes holding their 256 could
# otherwise take every file the service may open (at a soft limit of 1024, four did), and
# then no other sandbox's request could be served. A quarter of the service's open-files
# limit leaves it at least half.
SERVICE_SHARE = 4
_open_in_service = 0  # connections open through every filter of this process (its loop)
# Names are resolved by threads of their own, not the loop's default pool: the sandbox picks
# the names, and a domain whose name server never answers holds a thread for the resolver's
# whole timeout. In the default pool (six threads on two cores), 40 such connections held up
# everything else the service runs in threads, sandbox starts among them. A sandbox resolves
# at most RESOLVING names at once, so one sandbox cannot take all the resolver's threads.
RESOLVER_THREADS = 8
RESOLVING = 2
_resolver: concurrent.futures.ThreadPoolExecutor | None = None
_CHUNK = 65536
_CLONE_NEWNET = 0x40000000
_SO_MARK = 36
_IP_TRANSPARENT = 19
_libc = ctypes.CDLL(None, use_errno=True)

T = TypeVar("T")


def service_budget() -> int:
    """How many connections all filters of this process may hold open at once."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS * 64
    return max(16, soft // SERVICE_SHARE)


def matches(name: str, patterns: list[str]) -> bool:
    """Whether ``name`` is allowed by an entry: equal, ``*`` (everything), or ``*.suffix``
    (any name under suffix, not suffix itself), without regard to case."""
    for pattern in patterns:
        pattern = pattern.lower().removesuffix(".")
        if pattern in ("*", name) or (pattern.startswith("*.") and name.endswith(pattern[1:])):
            return True
    return False


async def in_namespace(netns: str, make: Callable[[], T]) -> T:
    """``make()`` run on a new thread that joined the network namespace ``netns`` (a path
    such as ``/proc/PID/ns/net``): sockets it creates belong to that namespace. The thread
    ends with the call, so no other work ever runs in the namespace."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def deliver(result: T | None, error: BaseException | None) -> None:
        if done.cancelled():
            if isinstance(result, socket.socket):
                result.close()
        elif error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, _CLONE_NEWNET) != 0:
                    code = ctypes.get_errno()
                    raise OSError(code, f"cannot enter {netns}: {os.strerror(code)}")
            finally:
                os.close(fd)
            result = make()
        except BaseException as exc:
            loop.call_soon_threadsafe(deliver, None, exc)
        else:
            loop.call_soon_threadsafe(deliver, result, None)

    threading.Thread(target=run, name="e2b-netns", daemon=True).start()
    return await done


def _accept_local_sources() -> None:
    """Let answers to the filter's own connections in: the kernel checks an arriving packet's
    source by looking up the way back, and for ports 80/443 the redirect table answers that
    lookup with a ``local`` route, which it takes for a spoofed local source unless
    ``accept_local`` is on. Only slirp4netns sends into the namespace (no port is forwarded
    in), so nothing else can use it. Run in the namespace: /proc/sys/net is per namespace."""
    with open("/proc/sys/net/ipv4/conf/all/accept_local", "w") as setting:
        setting.write("1")


def _listener(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_IP, _IP_TRANSPARENT, 1)
        sock.bind(("0.0.0.0", port))
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _outbound() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, _SO_MARK, PROXY_MARK)
    sock.setblocking(False)
    return sock


class DomainFilter:
    """The listeners of one sandbox and the allowed names they check against."""

    def __init__(self, netns: str, sandbox_id: str) -> None:
        self.netns = netns
        self.sandbox_id = sandbox_id
        self.allowed: list[str] = []  # the domain entries of allowOut; set by EgressTable
        self._servers: list[asyncio.Server] = []
        self._connections: set[asyncio.Task[None]] = set()
        self._resolving = asyncio.Semaphore(RESOLVING)

    async def start(self) -> None:
        """Listen on ports 80 and 443 in the namespace (once; later calls do nothing)."""
        if self._servers:
            return
        await in_namespace(self.netns, _accept_local_sources)
        for port in PORTS:
            sock = await in_namespace(self.netns, functools.partial(_listener, port))
            self._servers.append(await asyncio.start_server(self._accepted, sock=sock))

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        self._servers.clear()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(list(self._connections))

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        global _open_in_service
        if len(self._connections) >= MAX_CONNECTIONS or _open_in_service >= service_budget():
            writer.close()
            return
        self._connections.add(task)
        _open_in_service += 1
        try:
            await self._relay(reader, writer)
        except (ConnectionError, OSError, asyncio.TimeoutError) as exc:
            log.debug("sandbox %s: egress connection ended: %r", self.sandbox_id, exc)
        except asyncio.CancelledError:
            pass  # close(): the sandbox has ended (asyncio would log a cancelled handler)
        finally:
            self._connections.discard(task)
            _open_in_service -= 1
            writer.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        destination, port = writer.get_extra_info("sockname")[:2]
        head, name = await _peek(reader, PORTS[port])
        if name is None or not matches(name, self.allowed):
            log.debug(
                "sandbox %s: egress to %s:%d refused (host name %r is not allowed)",
                self.sandbox_id, destination, port, name,
            )  # fmt: skip
            return
        upstream = await self._dial(name, port)
        if upstream is None:
            return
        up_reader, up_writer = upstream
        try:
            up_writer.write(head)
            await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
        finally:
            up_writer.close()

    async def _dial(
        self, name: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A connection to ``name`` (resolved here, as E2B's firewall resolves it) from the
        sandbox's namespace; None when it resolves nowhere public or nothing answers."""
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(self._resolve(name, port), DIAL_TIMEOUT)
        except (OSError, asyncio.TimeoutError):
            log.debug("sandbox %s: allowed host %s does not resolve", self.sandbox_id, name)
            return None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        public = [a for a in addresses if not _always_denied(a)]
        if not public:
            log.debug(
                "sandbox %s: allowed host %s resolves only to private or local addresses %s:"
                " refused, as on E2B", self.sandbox_id, name, addresses,
            )  # fmt: skip
            return None
        for address in public:
            sock = await in_namespace(self.netns, _outbound)
            try:
                await asyncio.wait_for(loop.sock_connect(sock, (address, port)), DIAL_TIMEOUT)
            except (OSError, asyncio.TimeoutError) as exc:
                sock.close()
                log.debug("sandbox %s: %s (%s) port %d: %r", self.sandbox_id, name, address,
                         port, exc)  # fmt: skip
                continue
            return await asyncio.open_connection(sock=sock)
        return None

    async def _resolve(self, name: str, port: int) -> list[Any]:
        """``getaddrinfo`` in the resolver's threads; the sandbox's share of them is held
        until the lookup itself ends, even when its caller stopped waiting."""
        global _resolver
        if _resolver is None:
            _resolver = concurrent.futures.ThreadPoolExecutor(
                RESOLVER_THREADS, thread_name_prefix="e2b-kernel-resolver"
            )
        await self._resolving.acquire()
        lookup = functools.partial(
            socket.getaddrinfo, name, port, socket.AF_INET, socket.SOCK_STREAM
        )
        try:
            future = asyncio.get_running_loop().run_in_executor(_resolver, lookup)
        except BaseException:
            self._resolving.release()
            raise
        future.add_done_callback(lambda _: self._resolving.release())
        return await asyncio.shield(future)


def _always_denied(address: str) -> bool:
    parsed = ipaddress.ip_address(address)
    return any(parsed in block for block in ALWAYS_DENIED)


async def _peek(
    reader: asyncio.StreamReader, read_name: Callable[[bytes], str | None]
) -> tuple[bytes, str | None]:
    """The bytes read until the host name was known, and the name (None: it has none).

    Each read parses all that came so far: a head dripped a byte at a time would cost the
    service's loop time growing with the square of its length, so after ``PEEK_READS``
    reads without a name (clients need one to three) the connection has none."""
    data = bytearray()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PEEK_TIMEOUT
    for _ in range(PEEK_READS):
        chunk = await asyncio.wait_for(reader.read(_CHUNK), max(0.0, deadline - loop.time()))
        if not chunk:
            break
        data += chunk
        name = read_name(bytes(data))
        if name != hostnames.NEED_MORE or len(data) >= hostnames.MAX_HEAD:
            return bytes(data), name or None
    return bytes(data), None


async def _pump(source: asyncio.StreamReader, target: asyncio.StreamWriter) -> None:
    """Copy until ``source`` ends, then pass the end on (a half-close, not a close); a broken
    side closes the other, which ends the opposite pump too."""
    try:
        while chunk := await source.read(_CHUNK):
            target.write(chunk)
            await target.drain()
        if target.can_write_eof():
            target.write_eof()
    except (ConnectionError, OSError):
        target.close()
