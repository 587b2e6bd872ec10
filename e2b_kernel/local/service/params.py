"""Request parameters the control plane's routes share: timeouts, integers, page tokens."""

from __future__ import annotations

import base64
import re
from typing import Any
from urllib.parse import unquote_plus

from .errors import ServiceError
from .registry import MAX_TIMEOUT

__all__ = ["decode_token", "encode_token", "int_param", "metadata_filter", "timeout_field"]

_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


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


def metadata_filter(raw: str | None) -> dict[str, str]:
    """The ``metadata`` query parameter of a sandbox list as E2B's API reads it: the SDK
    quotes each key and value and then url-encodes the pairs, so the (once decoded) parameter
    is unescaped whole, split into ``key=value`` pairs on ``&``, and each side unescaped again.
    """
    if not raw:
        return {}
    wanted: dict[str, str] = {}
    for pair in _unescape(raw).split("&"):
        sides = pair.split("=")
        if len(sides) != 2:
            raise ServiceError(
                400,
                f"invalid key value pair in query: {pair!r} (the metadata filter takes "
                "key=value pairs joined by '&')",
            )
        wanted[_unescape(sides[0])] = _unescape(sides[1])
    return wanted


def _unescape(text: str) -> str:
    """Go's ``url.QueryUnescape``: ``+`` is a space; a ``%`` needs two hex digits."""
    if _BAD_ESCAPE.search(text):
        raise ServiceError(400, f"invalid URL escape in the metadata filter {text!r}")
    return unquote_plus(text)
