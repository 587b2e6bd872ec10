"""``Idempotency-Key`` on sandbox creation, as E2B's API honours it.

The SDK sends the caller's ``idempotency_key`` as this header and retries a create that
failed on the way (a 502, a reset connection) with the same key: the retry must get the
sandbox the first attempt made, not a second one. So the first successful answer for a key is
kept and replayed; a request still being served makes its repeats wait for it; the same key
with another request is refused (E2B's ``idempotency_request_mismatch``). A failed create is
not kept: retried, it tries again. Keys are kept a day, and at most ``limit`` of them.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import Response

from .errors import ServiceError

__all__ = ["IdempotentCreates"]

KEY_PATTERN = re.compile(r"[a-z0-9-]{1,255}")  # the SDK's own rule (e2b/retry.py)
KEPT_FOR = 24 * 3600.0


@dataclass
class _Outcome:
    digest: str
    answered: asyncio.Future[tuple[int, bytes] | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    at: float = field(default_factory=time.monotonic)


class IdempotentCreates:
    """Replays a create's first answer to the requests that repeat its key."""

    def __init__(self, kept_for: float = KEPT_FOR, limit: int = 4096) -> None:
        self.kept_for = kept_for
        self.limit = limit
        self._outcomes: collections.OrderedDict[str, _Outcome] = collections.OrderedDict()

    async def run(
        self,
        key: str | None,
        body: dict[str, Any],
        create: Callable[[], Awaitable[Response]],
    ) -> Response:
        """``create()``'s answer, or the answer already given to ``key``."""
        if key is None:
            return await create()
        if not KEY_PATTERN.fullmatch(key):
            raise ServiceError(
                400,
                "Idempotency-Key must be 1 to 255 lowercase letters, digits and hyphens",
            )
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        while True:
            self._forget_old()
            outcome = self._outcomes.get(key)
            if outcome is None:
                break
            if outcome.digest != digest:
                raise ServiceError(
                    409,
                    f"Idempotency-Key {key!r} was used for another request "
                    "(idempotency_request_mismatch); use a new key for a new sandbox",
                )
            answer = await asyncio.shield(outcome.answered)
            if answer is not None:
                status, content = answer
                return Response(content, status, media_type="application/json")
            # The first attempt failed and was forgotten: this one tries again.
        outcome = self._outcomes[key] = _Outcome(digest)
        try:
            response = await create()
        except BaseException:
            self._outcomes.pop(key, None)
            outcome.answered.set_result(None)
            raise
        if 200 <= response.status_code < 300:
            outcome.answered.set_result((response.status_code, bytes(response.body)))
        else:
            self._outcomes.pop(key, None)
            outcome.answered.set_result(None)
        return response

    def _forget_old(self) -> None:
        oldest = time.monotonic() - self.kept_for
        while self._outcomes:
            key, outcome = next(iter(self._outcomes.items()))
            if outcome.at >= oldest and len(self._outcomes) <= self.limit:
                return
            if not outcome.answered.done():
                return  # still being served: its repeats wait for it
            del self._outcomes[key]
