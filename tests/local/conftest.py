"""Fixtures of the local-service tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from e2b import Sandbox
from local_helpers import sdk_options

from e2b_kernel.local import RunningService


@pytest.fixture(scope="module")
def sbx(local_service: RunningService) -> Iterator[Sandbox]:
    """One sandbox shared by a test module, killed at its end."""
    sandbox = Sandbox.create(timeout=600, **sdk_options(local_service))
    try:
        yield sandbox
    finally:
        sandbox.kill()
