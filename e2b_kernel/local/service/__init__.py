"""The service itself: its HTTP app, the planes' front doors, credentials and server.

``server.ServiceCore`` builds and serves one instance, whose sandboxes (registry, warm pool)
``sandboxes.ServiceSandboxes`` holds apart from the web stack; ``app.ServiceApp`` routes requests;
``control`` is the control plane; ``envd`` and ``interpreter_front`` check requests before
the sandbox planes; ``auth`` holds the credentials; ``guards`` the input checks;
``connections`` uvicorn's protocol with a header deadline and a connection bound.

The server is loaded on first use, so importing ``e2b_kernel.local`` stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["STATE_ROOT", "ServiceCore", "sweep_stale_state"]


def __getattr__(name: str) -> Any:
    if name == "ServiceCore":
        from . import server

        return server.ServiceCore
    if name in __all__:
        from . import sandboxes

        return getattr(sandboxes, name)
    raise AttributeError(name)
