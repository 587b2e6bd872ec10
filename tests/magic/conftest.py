"""Fixtures for the magic tests: an IPython shell with the extension, talking to the local
service through the unmodified SDK (the service's URLs and key in the environment)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from IPython.core.interactiveshell import InteractiveShell


@pytest.fixture
def shell(sdk_env: dict[str, str]) -> Iterator[InteractiveShell]:
    """InteractiveShell with ``%load_ext e2b_kernel``; unloading kills its sandboxes."""
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "e2b_kernel")
    try:
        yield ip
    finally:
        ip.run_line_magic("unload_ext", "e2b_kernel")
