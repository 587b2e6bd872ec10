"""Credentials as E2B checks them: the service's API key, envd access tokens, signed file
URLs and traffic tokens.

Every secret comparison is constant-time (hmac.compare_digest), so response timing does not
leak how much of a guess was right. Nothing here logs a secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable, Mapping
from typing import TypeVar

from .errors import ServiceError

ACCESS_TOKEN_HEADER = "x-access-token"
TRAFFIC_TOKEN_HEADER = "e2b-traffic-access-token"

T = TypeVar("T")


def new_api_key() -> str:
    """A fresh service key, shaped like E2B's (e2b_ and 40 hex digits)."""
    return "e2b_" + secrets.token_hex(20)


def new_token() -> str:
    """A fresh envd access token or traffic token."""
    return secrets.token_hex(32)


def same_secret(given: str | None, expected: str) -> bool:
    """Constant-time comparison; a missing value never matches."""
    if not given:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode())


def require_api_key(given: str | None, expected: str) -> None:
    """The control plane's check: 401 in E2B's shape unless the key is the service's."""
    if not same_secret(given, expected):
        raise ServiceError(401, "Invalid API key: set E2B_API_KEY to the service's key")


def file_signature(path: str, operation: str, user: str, token: str, expiration: int | None) -> str:
    """envd's v1 signature of a file URL (the SDK computes the same in get_signature)."""
    raw = f"{path}:{operation}:{user}:{token}"
    if expiration is not None:
        raw += f":{expiration}"
    digest = hashlib.sha256(raw.encode("utf-8")).digest()
    return "v1_" + base64.b64encode(digest).rstrip(b"=").decode("ascii")


def signature_matches(query: Mapping[str, str], operation: str, token: str) -> bool:
    """Whether the URL's signature was made with this token (expiry is checked apart)."""
    signature = query.get("signature")
    if not signature:
        return False
    expiration = _expiration(query)
    path = query.get("path", "")
    user = query.get("username", "")
    expected = file_signature(path, operation, user, token, expiration)
    return hmac.compare_digest(signature.encode("utf-8", "surrogateescape"), expected.encode())


def check_signed_url(query: Mapping[str, str], operation: str, token: str) -> None:
    """Refuse a /files request whose signature is missing, wrong or expired (401)."""
    if not query.get("signature"):
        raise ServiceError(401, "missing signature query parameter (or X-Access-Token header)")
    if not signature_matches(query, operation, token):
        raise ServiceError(401, "invalid signature")
    expiration = _expiration(query)
    if expiration is not None and expiration < int(time.time()):
        raise ServiceError(401, "signature is already expired")


def find_signer(
    candidates: Iterable[tuple[T, str]], query: Mapping[str, str], operation: str
) -> T | None:
    """The candidate whose token signed this URL, if any (URLs carry no sandbox id)."""
    for item, token in candidates:
        if signature_matches(query, operation, token):
            return item
    return None


def file_operation(method: str) -> str:
    """The signature's operation for a /files request: downloads read, uploads write."""
    return "write" if method == "POST" else "read"


def _expiration(query: Mapping[str, str]) -> int | None:
    raw = query.get("signature_expiration")
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ServiceError(400, "signature_expiration must be a Unix time in seconds") from None
