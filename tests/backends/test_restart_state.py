"""The restart hand-off file."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from e2b_kernel.backends import restart_state


@pytest.fixture(autouse=True)
def runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path))
    return tmp_path


def test_put_then_take_once(tmp_path: Path) -> None:
    connection = str(tmp_path / "kernel-1.json")
    restart_state.put(connection, {"sandbox_id": "abc"})
    path = restart_state.state_path(connection)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert restart_state.take(connection)["sandbox_id"] == "abc"  # type: ignore[index]
    assert restart_state.take(connection) is None


def test_other_connection_files_do_not_see_it(tmp_path: Path) -> None:
    restart_state.put(str(tmp_path / "a.json"), {"sandbox_id": "abc"})
    assert restart_state.take(str(tmp_path / "b.json")) is None


def test_stale_state_is_ignored(tmp_path: Path) -> None:
    connection = str(tmp_path / "kernel-2.json")
    path = restart_state.state_path(connection)
    path.write_text(json.dumps({"sandbox_id": "old", "written_at": time.time() - 3600}))
    assert restart_state.take(connection) is None
    assert not path.exists()


def test_no_connection_file_is_a_no_op() -> None:
    restart_state.put(None, {"sandbox_id": "x"})
    assert restart_state.take(None) is None
