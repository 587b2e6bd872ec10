"""Helpers shared by the local-service tests: polling with deadlines, host process checks."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from e2b_kernel.local import RunningService
from e2b_kernel.local.sandbox.bwrap import RUNTIME_ROOT
from e2b_kernel.local.sandbox.runtime import ID_FILE


def wait_for(condition: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll condition until it is true; fail with `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def sandbox_host_dir(sandbox_id: str) -> Path | None:
    """The host dir of a sandbox of any of this user's services (found as root does: through
    the root-only id file in each, since the dir is named at random)."""
    for id_file in RUNTIME_ROOT.glob(f"svc-*/*/{ID_FILE}"):
        try:
            if id_file.read_text() == sandbox_id:
                return id_file.parent
        except OSError:
            continue
    return None


def marker() -> str:
    """A unique string to tag a sandbox process's command line with."""
    return f"e2bk-marker-{uuid.uuid4().hex[:12]}"


def host_pids_with(text: str) -> list[int]:
    """Host pids whose command line contains text (excluding this test process)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if text.encode() in cmdline:
            found.append(int(entry.name))
    return found


def sdk_options(service: RunningService) -> dict[str, str]:
    """Explicit SDK connection options (public SDK API), so module fixtures need no env vars."""
    return {"api_key": service.api_key, "api_url": service.url, "sandbox_url": service.url}


def sandbox_headers(sandbox: Any, port: int = 49983) -> dict[str, str]:
    """Raw-HTTP headers for one of a sandbox's ports, with its envd access token as the SDK
    sends it (every local sandbox is secured, as on E2B)."""
    headers = {"E2b-Sandbox-Id": sandbox.sandbox_id, "E2b-Sandbox-Port": str(port)}
    token = sandbox._envd_access_token  # the SDK keeps it private; raw clients need it too
    if token:
        headers["X-Access-Token"] = token
    return headers


def remove_target_netns(server: subprocess.Popen | None, host_end: str, netns: str) -> None:
    """Stop a network test's target server and remove its veth pair and namespace."""
    if server is not None:
        server.kill()
        server.wait()
    subprocess.run(["ip", "link", "del", host_end], capture_output=True, timeout=10)
    subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=10)
