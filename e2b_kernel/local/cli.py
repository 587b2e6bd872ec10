"""Run the local E2B-compatible sandbox service.

Point the unmodified E2B SDK at it with the three `export` lines it prints on start. Every
sandbox runs in its own Linux namespaces (bubblewrap) with a read-only host, a private
/home/user and /tmp, no network unless asked for, and memory/process limits; where that is
impossible the service refuses to start unless --no-isolation is given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import importlib
import logging
import os
import resource
import signal
import sys
from typing import TYPE_CHECKING, Any

from . import ISOLATION_UNAVAILABLE_EXIT
from .host_dirs import UnsafeHostDir
from .sandbox.isolation import (
    DEFAULT_DISK_MB,
    DEFAULT_MAX_PIDS,
    DEFAULT_MEMORY_MB,
    IsolationUnavailable,
)
from .service.settings import (
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_POOL_SIZE,
    check_server_settings,
)

if TYPE_CHECKING:
    from .service.sandboxes import ServiceSandboxes

_PR_SET_PDEATHSIG = 1
_MOST_OPEN_FILES = 1 << 20  # the kernel's default fs.nr_open, the most a process may have


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the `e2b-kernel local` options."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback)")
    parser.add_argument("--port", type=int, default=49982, help="TCP port; 0 picks a free one")
    parser.add_argument(
        "--no-isolation",
        action="store_true",
        help="run sandbox code directly on this host (no namespaces); shown everywhere",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("E2B_KERNEL_LOCAL_API_KEY"),
        help="the API key clients must send (default: $E2B_KERNEL_LOCAL_API_KEY, else a "
        "random key per start, printed in the export lines)",
    )
    parser.add_argument(
        "--memory-mb", type=int, default=DEFAULT_MEMORY_MB, help="memory limit per sandbox (MiB)"
    )
    parser.add_argument(
        "--max-pids", type=int, default=DEFAULT_MAX_PIDS, help="process limit per sandbox"
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=DEFAULT_HEADER_TIMEOUT,
        help="seconds a connection may take to send a request head before it is closed",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=DEFAULT_MAX_CONNECTIONS,
        help="open connections beyond which idle ones are closed",
    )
    parser.add_argument(
        "--disk",
        "--disk-mb",
        dest="disk_mb",
        type=int,
        default=DEFAULT_DISK_MB,
        help="disk cap per sandbox for /home/user + /tmp (MiB)",
    )
    parser.add_argument(
        "--pool-size",
        type=int,
        default=DEFAULT_POOL_SIZE,
        help="ready sandboxes kept warm so create is fast (default 1; 0 turns the pool off)",
    )
    parser.add_argument(
        "--no-pool-refill",
        dest="pool_refill",
        action="store_false",
        help="start the pool's sandboxes once, with the service, and never replace them "
        "(a kernel's private service, which needs exactly one)",
    )
    parser.add_argument(
        "--log-level",
        default="warning",
        type=str.lower,
        choices=["debug", "info", "warning", "error"],
        help="what the service logs on stderr (default: warning)",
    )
    parser.add_argument("--die-with-parent", action="store_true", help=argparse.SUPPRESS)
    # A kernel's private service: stop once no process holds this lease (see lease.py).
    parser.add_argument("--lease", metavar="FILE", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    """Start the service, print the settings to export, serve until SIGTERM or Ctrl-C."""
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    if args.die_with_parent:
        _die_with_parent()
    _raise_open_files_limit()
    from .service.sandboxes import ServiceSandboxes

    if not 0 <= args.port <= 65535:
        print(f"e2b-kernel local: --port must be 0..65535, got {args.port}", file=sys.stderr)
        return 2
    try:
        check_server_settings(args.header_timeout, args.max_connections)
        sandboxes = ServiceSandboxes(
            isolation="none" if args.no_isolation else "auto",
            memory_mb=args.memory_mb,
            max_pids=args.max_pids,
            disk_mb=args.disk_mb,
            pool_size=args.pool_size,
            pool_refill=args.pool_refill,
        )
    except ValueError as exc:
        print(f"e2b-kernel local: {exc}", file=sys.stderr)
        return 2
    except UnsafeHostDir as exc:
        print(f"e2b-kernel local: {exc}", file=sys.stderr)
        print(f"# error: {exc}", flush=True)  # read by start_subprocess()
        return 2
    except IsolationUnavailable as exc:
        print(f"e2b-kernel local: {exc}", file=sys.stderr)
        print(f"# error: {exc}", flush=True)  # read by start_subprocess()
        return ISOLATION_UNAVAILABLE_EXIT
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"e2b-kernel local: warning: listening on {args.host}, not loopback: anyone who can "
            "reach this address can run code here (the API key is the only check)",
            file=sys.stderr,
        )
    return asyncio.run(_serve(sandboxes, args))


async def _serve(sandboxes: ServiceSandboxes, args: argparse.Namespace) -> int:
    from .service.lease import serve_while_leased

    # The warm pool's first sandbox starts first, and the web stack is imported once its
    # processes run: for a kernel's private service, that sandbox's Jupyter Server is what the
    # kernel's first cell waits for longest, and the kernel sends its first request (create,
    # which that sandbox answers) only once its own imports are done.
    sandboxes.start()
    try:
        await sandboxes.registry.pool.begun()
        server = importlib.import_module(f"{__package__}.service.server")
        core = server.ServiceCore(
            args.host,
            args.port,
            api_key=args.api_key,
            header_timeout=args.header_timeout,
            max_connections=args.max_connections,
            sandboxes=sandboxes,
        )
    except BaseException:
        await sandboxes.close()
        raise
    task = asyncio.create_task(core.serve())
    while not core.server.started:
        if task.done():
            try:
                await task
            except server.CannotListen as exc:
                print(
                    f"e2b-kernel local: {exc} (the error above says why): check --host, or "
                    "choose another --port (--port 0 picks a free one)",
                    file=sys.stderr,
                )
                return 2
            return 1
        await asyncio.sleep(0.01)
    try:
        _print_banner(core)
    except BrokenPipeError:
        if args.lease is None:
            raise
        # The kernel that launched us died before reading it: the lease, which it no longer
        # holds, ends this service in the usual way (sandboxes killed, state removed) instead
        # of a crash in the middle of the start.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if args.lease is not None:
        await serve_while_leased(args.lease, task)
        await core.shutdown()
    await task
    return 0


def _print_banner(core: Any) -> None:
    url = core.url()
    print(f"export E2B_API_URL={url}")
    print(f"export E2B_SANDBOX_URL={url}")
    print(f"export E2B_API_KEY={core.api_key}")  # stdout only: the key is never logged
    print(f"# isolation: {core.isolation}", flush=True)


def _raise_open_files_limit() -> None:
    """Take the open-files limit up to the hard limit: every sandbox costs the service files
    (its agent's sockets, streams, the network filter's connections), and the usual soft 1024
    of shells and systemd units is meant to be raised by programs that need more. Sandbox
    processes and network helpers get limits of their own (sandbox.isolation, .network)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = _MOST_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, _MOST_OPEN_FILES)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _die_with_parent() -> None:
    """Get SIGTERM when the parent dies, so a test's service (and its sandboxes) never leak."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
