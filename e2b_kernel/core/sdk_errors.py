"""Classify E2B SDK exceptions into our hierarchy, with messages that name the fix."""

from __future__ import annotations

import os

__all__ = ["api_location", "is_sandbox_gone", "is_sdk_error", "short_reason", "unavailable_message"]

# Substrings of SDK messages that mean "the sandbox does not exist any more".
_GONE_MARKERS = (
    "sandbox was killed",  # run_code: stream aborted and is_running() is False
    "was not found",  # the proxy's 502 for an unknown or killed sandbox
    "likely due to sandbox timeout",  # code-interpreter 502 mapped by the SDK
)


_SDK_PACKAGES = ("e2b", "e2b_code_interpreter")


def is_sdk_error(exc: BaseException) -> bool:
    """True when ``exc`` was raised by the E2B SDK (``e2b`` or ``e2b_code_interpreter``)."""
    package = type(exc).__module__.split(".", 1)[0]
    return package in _SDK_PACKAGES


def is_sandbox_gone(exc: BaseException) -> bool:
    """True when ``exc`` says the sandbox was killed, expired or is unknown."""
    if not is_sdk_error(exc):
        return False
    # Imported here: an SDK exception means the SDK is loaded (see sdk.py for why it is late).
    from e2b import (
        NotFoundException,
        SandboxNotFoundException,
        SandboxNotRunningException,
        TimeoutException,
    )

    if isinstance(exc, (SandboxNotFoundException, SandboxNotRunningException)):
        return True
    text = str(exc)
    if isinstance(exc, NotFoundException):
        # A 404 from the code interpreter names a context, not the sandbox.
        return "context" not in text.lower()
    if isinstance(exc, TimeoutException):
        return any(marker in text for marker in _GONE_MARKERS)
    return False


def unavailable_message(exc: BaseException, backend: str) -> str:
    """A user-facing message for a failure to create or reach a sandbox."""
    if _is_authentication_error(exc) or "401" in str(exc) or "403" in str(exc):
        return (
            "E2B rejected the API key. Set E2B_API_KEY to a valid key from your E2B dashboard, "
            "or set E2B_KERNEL_BACKEND=local to run sandboxes on this machine."
        )
    where = api_location() if backend == "cloud" or os.environ.get("E2B_API_URL") else "local"
    reason = short_reason(exc)
    if backend == "local":
        return f"The private local E2B service could not create a sandbox: {reason}"
    return (
        f"Could not create or reach an E2B sandbox via {where}: {reason}. Check E2B_API_URL / "
        "E2B_DOMAIN and the network, or set E2B_KERNEL_BACKEND=local."
    )


def api_location() -> str:
    """Where the SDK sends control-plane requests: ``E2B_API_URL``, else E2B's API host."""
    return os.environ.get("E2B_API_URL") or f"api.{os.environ.get('E2B_DOMAIN') or 'e2b.app'}"


def short_reason(exc: BaseException) -> str:
    """``Type: first line of the message`` (or the type alone), for one-line errors."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _is_authentication_error(exc: BaseException) -> bool:
    if not is_sdk_error(exc):
        return False
    from e2b import AuthenticationException

    return isinstance(exc, AuthenticationException)
