"""List the sandboxes your E2B settings can see, or kill them.

Uses the SDK's own settings: ``E2B_API_KEY`` and ``E2B_DOMAIN`` for E2B cloud, or
``E2B_API_URL``/``E2B_SANDBOX_URL`` for a separately started ``e2b-kernel local``.
"""

from __future__ import annotations

import argparse
import os
import sys

import httpx
from e2b import Sandbox, SandboxInfo, SandboxQuery
from e2b.exceptions import AuthenticationException, SandboxException

from ..config import parse_pairs
from ..core.sdk_errors import api_location, short_reason


def list_sandboxes(metadata: dict[str, str] | None = None) -> list[SandboxInfo]:
    """Every sandbox visible with the current settings, following all pages."""
    paginator = Sandbox.list(query=SandboxQuery(metadata=metadata or None))
    found: list[SandboxInfo] = []
    while paginator.has_next:
        found.extend(paginator.next_items())
    return found


def format_row(info: SandboxInfo) -> str:
    """One line per sandbox: id, state, template, end time, metadata."""
    meta = ",".join(f"{k}={v}" for k, v in sorted(info.metadata.items()))
    ends = info.end_at.strftime("%Y-%m-%d %H:%M:%S")
    return f"{info.sandbox_id:22} {info.state:8} {info.template_id:22} ends {ends}  {meta}"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the `e2b-kernel sandboxes` options."""
    parser.add_argument(
        "--metadata", action="append", default=[], metavar="KEY=VALUE", help="filter (repeatable)"
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--kill", nargs="+", metavar="ID", help="kill these sandboxes")
    action.add_argument(
        "--kill-all", action="store_true", help="kill every listed sandbox (after the filter)"
    )


def run(args: argparse.Namespace) -> int:
    """List or kill; returns the exit status."""
    if not os.environ.get("E2B_API_KEY"):
        print(
            "e2b-kernel sandboxes: E2B_API_KEY is not set. Set it for E2B cloud, or export the "
            "three settings printed by `e2b-kernel local`.",
            file=sys.stderr,
        )
        return 2
    try:
        metadata = parse_pairs(args.metadata, "--metadata")
    except ValueError as exc:
        print(f"e2b-kernel sandboxes: {exc}", file=sys.stderr)
        return 2
    try:
        if args.kill:
            missing = [sid for sid in args.kill if not Sandbox.kill(sid)]
            for sid in missing:
                print(f"{sid}: not found", file=sys.stderr)
            return 1 if missing else 0
        sandboxes = list_sandboxes(metadata)
        if args.kill_all:
            for info in sandboxes:
                Sandbox.kill(info.sandbox_id)
                print(f"killed {info.sandbox_id}")
            return 0
        for info in sandboxes:
            print(format_row(info))
        if not sandboxes:
            print("no sandboxes")
        return 0
    except (AuthenticationException, SandboxException) as exc:
        print(f"e2b-kernel sandboxes: {exc}", file=sys.stderr)
        return 1
    except httpx.TransportError as exc:  # refused, unresolvable, timed out: no HTTP answer
        print(
            f"e2b-kernel sandboxes: cannot reach the E2B API at {api_location()} "
            f"({short_reason(exc)}). Check "
            "E2B_API_URL / E2B_DOMAIN and the network; for a local service, export the settings "
            "`e2b-kernel local` printed while it runs.",
            file=sys.stderr,
        )
        return 1
