"""The service's one error type, and the single place it becomes an HTTP answer.

Every plane raises ServiceError; ServiceApp turns it into a response once. The body takes
the shape the SDK parses for that plane: E2B's {"code", "message"} for the control plane,
envd and the code interpreter; the proxy's {"sandboxId", "message", "code"} for routing
failures; Connect's {"code": "<name>", "message"} for envd's Connect-RPC routes.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

# Statuses the SDK retries unless told not to (e2b/retry.py).
_RETRIED = (429, 502, 503, 504)

# Connect's error names for the HTTP statuses the guards answer with.
_CONNECT_CODES = {
    400: "invalid_argument",
    401: "unauthenticated",
    403: "permission_denied",
    404: "not_found",
    413: "resource_exhausted",
}


class ServiceError(Exception):
    """An answer that is an error: HTTP status, message, and optional extra JSON fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        sandbox_id: str | None = None,
        connect: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.sandbox_id = sandbox_id  # set: E2B's proxy shape (unknown sandbox, closed port)
        self.connect = connect  # set: the request was Connect-RPC, answer in Connect's shape

    def response(self) -> JSONResponse:
        """The JSON answer the SDK expects for this error."""
        body: dict[str, Any]
        if self.connect:
            body = {"code": _CONNECT_CODES.get(self.status, "internal"), "message": self.message}
        elif self.sandbox_id is not None:
            body = {"sandboxId": self.sandbox_id, "message": self.message, "code": self.status}
        else:
            body = {"code": self.status, "message": self.message}
        headers = {"Should-Retry": "false"} if self.status in _RETRIED else None
        return JSONResponse(body, self.status, headers=headers)


def not_found(sandbox_id: str) -> ServiceError:
    """E2B's control-plane message for a sandbox that does not exist (or was killed)."""
    message = f"Sandbox \"{sandbox_id}\" doesn't exist or you don't have access to it"
    return ServiceError(404, message)


def proxy_not_found(sandbox_id: str) -> ServiceError:
    """E2B's proxy answer for an unknown, killed or paused sandbox (the SDK keys on it)."""
    return ServiceError(502, "The sandbox was not found", sandbox_id=sandbox_id)


def port_not_open(sandbox_id: str) -> ServiceError:
    """E2B's proxy answer for a port nothing listens on."""
    message = "The sandbox is running but port is not open"
    return ServiceError(502, message, sandbox_id=sandbox_id)
