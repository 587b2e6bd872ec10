"""The kernel's sandbox, asked for as the kernel process starts, from a running service.

Where the environment alone says the kernel will create its sandbox with one plain request
(the cloud backend, with every sandbox port at one ``E2B_SANDBOX_URL``: a local service left
running; the ``jupyter`` transport, which defers the SDK), ``python -m e2b_kernel`` sends that
request before it imports ipykernel (core.create_ahead), so that the service creates the
sandbox while the kernel imports. Not after a restart: the new process reconnects to the
sandbox it inherits. The default private service is started ahead by :mod:`.early` instead.
"""

from __future__ import annotations

import os

from . import restart_state
from .early import private_service_isolation

__all__ = ["create_early"]


def create_early(connection_file: str | None) -> None:
    """Send the create request the kernel started with ``connection_file`` would send, when
    the environment says which it will be (the session claims it, or it is deleted)."""
    if private_service_isolation(os.environ) is not None:
        return  # the kernel's private service, started ahead by .early, creates it
    if (os.environ.get("E2B_KERNEL_TRANSPORT") or "auto").lower() == "execute":
        return  # that transport creates the sandbox through the SDK
    if connection_file is None or restart_state.state_path(connection_file).exists():
        return
    from ..config import SessionConfig
    from ..core import create_ahead, quick_create
    from ..errors import ConfigurationError

    try:
        config = SessionConfig()  # the environment's settings; the kernel reports any error
    except ConfigurationError:
        return
    if config.resolved_backend() != "cloud":
        return
    target = quick_create.quick_target({"domain": config.domain} if config.domain else {})
    if target is None:
        return  # the SDK creates it (E2B cloud's own hosts, or E2B_DEBUG)
    body = quick_create.create_body(
        **quick_create.create_settings(config),
        allow_public_traffic=quick_create.ALLOW_PUBLIC_TRAFFIC,
    )
    create_ahead.send(target, body)
