"""The extension on the local backend (no E2B key): one private service for all named sandboxes."""

from __future__ import annotations

import httpx
import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output


@pytest.mark.timeout(180)
def test_named_sandboxes_share_one_private_service(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("E2B_API_KEY", "E2B_API_URL", "E2B_SANDBOX_URL", "E2B_DOMAIN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("E2B_KERNEL_BACKEND", "local")
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "e2b_kernel")
    magics = shell._e2b_magics
    try:
        assert shell.run_cell("%%e2b\nx = 'from default'").error_in_exec is None
        assert shell.run_cell("%%e2b --sandbox other\nx = 'other'").error_in_exec is None
        first = magics.sessions["default"].sandbox_id
        with capture_output() as listed:
            shell.run_cell("%e2b list")
        assert "2 running sandbox(es)" in listed.stdout
        assert shell.run_cell(f"%e2b connect {first} --sandbox third").error_in_exec is None
        with capture_output() as captured:
            shell.run_cell("%%e2b --sandbox third\nprint(x)")
        assert captured.stdout == "from default\n"
        with capture_output() as status:
            shell.run_cell("%e2b status")
        assert "backend:    local" in status.stdout
        url = magics.local_service._service.url
        other = magics.sessions["other"].sandbox_id
    finally:
        with capture_output() as unloaded:
            shell.run_line_magic("unload_ext", "e2b_kernel")
    # Said, so that %reload_ext does not lose the sandboxes' state silently.
    assert f"[e2b] killed sandbox {other} ('other'): its state is gone" in unloaded.stdout
    assert magics.local_service._service is None
    with pytest.raises(httpx.ConnectError):  # the service stopped with the extension
        httpx.get(f"{url}/health", timeout=5)
