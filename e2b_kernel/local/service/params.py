"""Request parameters the control plane's routes share: timeouts, integers, page tokens."""

from __future__ import annotations

import base64
from typing import Any

from .errors import ServiceError
from .registry import MAX_TIMEOUT

__all__ = ["decode_token", "encode_token", "int_param", "timeout_field"]


def timeout_field(body: dict[str, Any], name: str, *, default: int | None) -> Any:
    """The integer seconds field ``name`` of a JSON body, checked; ``default`` when absent."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ServiceError(400, f"{name} must be an integer number of seconds, got {value!r}")
    if value < 0 or value > MAX_TIMEOUT:
        raise ServiceError(400, f"{name} must be between 0 and {MAX_TIMEOUT} seconds, got {value}")
    return value


def int_param(raw: str | None, name: str, *, default: int, low: int, high: int) -> int:
    """A query parameter as an integer in ``[low, high]``; ``default`` when absent."""
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ServiceError(400, f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise ServiceError(400, f"{name} must be between {low} and {high}, got {value}")
    return value


def decode_token(token: str | None) -> int:
    """The list offset a ``nextToken`` stands for (0 without one)."""
    if not token:
        return 0
    try:
        return max(0, int(base64.urlsafe_b64decode(token.encode()).decode()))
    except ValueError:
        raise ServiceError(400, "nextToken is not a token this service issued") from None


def encode_token(offset: int) -> str:
    """The ``x-next-token`` for the page that starts at ``offset``."""
    return base64.urlsafe_b64encode(str(offset).encode()).decode()
