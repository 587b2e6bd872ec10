"""``read_banner``: the lines a starting local service prints, as its starters read them."""

from __future__ import annotations

from e2b_kernel.local import read_banner


def test_a_serving_service_gives_its_settings_and_isolation_and_nothing_after() -> None:
    lines = iter(
        [
            "# E2B-compatible service\n",
            "export E2B_API_URL=http://127.0.0.1:41234\n",
            "export E2B_SANDBOX_URL=http://127.0.0.1:41234\n",
            "export E2B_API_KEY=e2b_secret\n",
            "# isolation: bubblewrap namespaces\n",
            "a log line that must stay unread\n",
        ]
    )
    assert read_banner(lines) == {
        "E2B_API_URL": "http://127.0.0.1:41234",
        "E2B_SANDBOX_URL": "http://127.0.0.1:41234",
        "E2B_API_KEY": "e2b_secret",
        "isolation": "bubblewrap namespaces",
    }
    assert next(lines) == "a log line that must stay unread\n"


def test_a_service_that_could_not_start_gives_its_error_and_no_isolation() -> None:
    found = read_banner(["# error: namespaces are not available here\n"])
    assert found == {"error": "namespaces are not available here"}
    assert read_banner([]) == {}
