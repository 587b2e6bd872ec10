"""Helpers shared by the code-interpreter tests."""

from __future__ import annotations

from e2b_kernel.local import RunningService


def sdk_options(service: RunningService) -> dict[str, str]:
    """Explicit SDK connection options (public SDK API), so module fixtures need no env vars."""
    return {"api_key": service.api_key, "api_url": service.url, "sandbox_url": service.url}
