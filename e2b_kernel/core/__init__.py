"""The core every front end shares: one ``SandboxSession`` per sandbox.

- :mod:`.session`: lifecycle (background start, keep-alive, loss, restart, shutdown), streaming
  execution with its telemetry span, hidden code, files and connection options;
- :mod:`.streaming`, :mod:`.outputs`: ``run_code`` callbacks as Jupyter-shaped events
  (the mapping is pure);
- :mod:`.jupyter_server`, :mod:`.kernel_channels`, :mod:`.remote_kernel`: the sandbox's
  Jupyter Server (REST, the kernel channels' WebSocket, which remote kernel to use), shared by
  the kernel's relay and ``%%e2b``; :mod:`.jupyter_cells`: cells run there as events;
- :mod:`.keepalive`, :mod:`.sdk_errors`, :mod:`.telemetry`;
- :mod:`.hidden`, :mod:`.introspection`: code run in the user's context on our behalf.

Nothing here imports a front end (kernel, magic, executor, cli).

The session's names are imported on first use (PEP 562): ``python -m e2b_kernel`` sends its
create request (:mod:`.create_ahead`) before the kernel imports the session and all it needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .session import NEW_SANDBOX_NOTICE, Event, HiddenResult, SandboxSession

__all__ = ["NEW_SANDBOX_NOTICE", "Event", "HiddenResult", "SandboxSession"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import session

    return getattr(session, name)
