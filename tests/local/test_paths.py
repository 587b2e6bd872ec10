"""Sandbox-path to host-path mapping for isolation "none" (symlinks resolved in sandbox space).

File operations do not use it: they run in the agent (see test_agent_files.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from e2b_kernel.local.sandbox.paths import SandboxPaths


@pytest.fixture
def layout(tmp_path: Path) -> tuple[SandboxPaths, Path, Path]:
    home = tmp_path / "home"
    tmp = tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    return SandboxPaths(home, tmp), home, tmp


def test_home_and_tmp_map_to_private_dirs(layout: tuple[SandboxPaths, Path, Path]) -> None:
    paths, home, tmp = layout
    assert paths.to_host("/home/user/a/b.txt").host == home / "a" / "b.txt"
    assert paths.to_host("rel.txt").host == home / "rel.txt"
    assert paths.to_host("/tmp/x").host == tmp / "x"
    assert paths.to_host("/home/user/a/b.txt").writable


def test_everything_else_is_the_read_only_host(layout: tuple[SandboxPaths, Path, Path]) -> None:
    paths, _home, _tmp = layout
    resolved = paths.to_host("/etc/passwd")
    assert resolved.host == Path("/etc/passwd")
    assert not resolved.writable
    with pytest.raises(PermissionError):
        resolved.require_writable()


def test_dotdot_cannot_climb_out_of_a_mount(layout: tuple[SandboxPaths, Path, Path]) -> None:
    paths, _home, _tmp = layout
    resolved = paths.to_host("/home/user/../../etc/shadow")
    assert resolved.sandbox == "/etc/shadow"
    assert not resolved.writable


def test_absolute_symlink_resolves_in_sandbox_space(
    layout: tuple[SandboxPaths, Path, Path],
) -> None:
    paths, home, tmp = layout
    (home / "to_etc").symlink_to("/etc/passwd")
    (home / "to_tmp").symlink_to("/tmp/target.txt")
    etc = paths.to_host("/home/user/to_etc")
    assert etc.sandbox == "/etc/passwd"
    assert not etc.writable
    # "/tmp" inside a sandbox is its private tmp dir, not the host's /tmp.
    assert paths.to_host("/home/user/to_tmp").host == tmp / "target.txt"


def test_relative_symlink_and_directory_links(layout: tuple[SandboxPaths, Path, Path]) -> None:
    paths, home, _tmp = layout
    (home / "d").mkdir()
    (home / "d" / "f").write_text("x")
    (home / "link").symlink_to("d")
    (home / "up").symlink_to("../../etc")
    assert paths.to_host("/home/user/link/f").host == home / "d" / "f"
    assert paths.to_host("/home/user/up/hosts").sandbox == "/etc/hosts"


def test_no_follow_keeps_the_final_link(layout: tuple[SandboxPaths, Path, Path]) -> None:
    paths, home, _tmp = layout
    (home / "to_etc").symlink_to("/etc/passwd")
    resolved = paths.to_host("/home/user/to_etc", follow=False)
    assert resolved.host == home / "to_etc"
    assert resolved.writable


def test_symlink_loops_are_reported(layout: tuple[SandboxPaths, Path, Path]) -> None:
    paths, home, _tmp = layout
    (home / "a").symlink_to("b")
    (home / "b").symlink_to("a")
    with pytest.raises(OSError, match="symbolic links"):
        paths.to_host("/home/user/a")


def test_nul_bytes_are_rejected(layout: tuple[SandboxPaths, Path, Path]) -> None:
    paths, _home, _tmp = layout
    with pytest.raises(ValueError):
        paths.to_host("/home/user/a\x00b")


def test_to_sandbox_maps_back(layout: tuple[SandboxPaths, Path, Path]) -> None:
    paths, home, tmp = layout
    assert paths.to_sandbox(home / "a" / "b") == "/home/user/a/b"
    assert paths.to_sandbox(tmp) == "/tmp"


def test_missing_bubblewrap_is_refused_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    from e2b_kernel.local import IsolationUnavailable
    from e2b_kernel.local.sandbox import isolation

    monkeypatch.setattr(isolation.shutil, "which", lambda name: None)
    with pytest.raises(IsolationUnavailable, match=r"install it.*--no-isolation"):
        isolation.resolve_isolation("auto")
    assert isolation.resolve_isolation("none").describe().startswith("NONE")
