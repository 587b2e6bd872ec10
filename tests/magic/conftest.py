"""Fixtures for the magic tests: an IPython shell with the extension, talking to the local
service through the unmodified SDK (the service's URLs and key in the environment)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from IPython.core.interactiveshell import InteractiveShell


@pytest.fixture
def shell(
    request: pytest.FixtureRequest, sdk_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[InteractiveShell]:
    """InteractiveShell with ``%load_ext e2b_kernel``; unloading kills its sandboxes.

    E2B_KERNEL_TRANSPORT is ``auto`` (jupyter: the local service's sandboxes serve Jupyter)
    unless a test parametrizes ``shell`` indirectly with a transport.
    """
    monkeypatch.setenv("E2B_KERNEL_TRANSPORT", getattr(request, "param", "auto"))
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "e2b_kernel")
    try:
        yield ip
    finally:
        ip.run_line_magic("unload_ext", "e2b_kernel")
        ip.reset(new_session=False)  # the shell is a singleton: no variable of this test stays
