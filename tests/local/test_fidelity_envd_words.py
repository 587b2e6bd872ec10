"""envd's own rules and words, through the unmodified SDK: ``~`` and relative paths resolved
from the user's home (files and a command's cwd), errors naming the resolved path, a command's
``error``, stdin and pty refusals, make_dir on a file, one upload per path, and an empty
command exiting 0. Each as E2B's envd answers it (infra ``packages/envd``)."""

from __future__ import annotations

import asyncio

import pytest
from e2b import AsyncSandbox, CommandExitException, PtySize, Sandbox
from e2b.exceptions import (
    FileNotFoundException,
    InvalidArgumentException,
    SandboxException,
)
from e2b.sandbox.filesystem.filesystem import WriteEntry
from local_helpers import sdk_options

from e2b_kernel.local import RunningService


def test_tilde_and_relative_paths_resolve_from_the_users_home(sbx: Sandbox) -> None:
    info = sbx.files.write("~/tilde/t.txt", "t")
    assert info.path == "/home/user/tilde/t.txt"
    assert sbx.files.read("/home/user/tilde/t.txt") == "t"
    assert sbx.files.read("~/tilde/t.txt") == "t"
    assert sbx.files.exists("~") and sbx.files.exists("~/tilde")
    assert [e.path for e in sbx.files.list("~/tilde")] == ["/home/user/tilde/t.txt"]
    assert sbx.files.make_dir("~/made") is True
    assert sbx.files.rename("~/tilde/t.txt", "~/made/t.txt").path == "/home/user/made/t.txt"
    assert sbx.files.get_info("~/made/t.txt").size == 1
    assert not sbx.files.exists("/home/user/~")  # never a folder named "~"
    # An empty path is the user's home, as envd's ExpandAndResolve makes it.
    assert sbx.files.exists("") and sbx.files.get_info("").path == "/home/user"
    assert "/home/user/tilde" in {e.path for e in sbx.files.list("")}
    assert sbx.files.make_dir("") is False  # it exists

    assert sbx.files.write("~/r.txt", "r", user="root").path == "/root/r.txt"
    assert sbx.files.write("rel.txt", "r", user="root").path == "/root/rel.txt"

    with pytest.raises(InvalidArgumentException, match="cannot expand user-specific home dir"):
        sbx.files.read("~bob/x")
    with pytest.raises(InvalidArgumentException, match="cannot expand user-specific home dir"):
        sbx.files.list("~bob")
    with pytest.raises(InvalidArgumentException, match="cannot expand user-specific home dir"):
        sbx.files.write("~bob/x", "x")


def test_errors_name_the_resolved_path(sbx: Sandbox) -> None:
    with pytest.raises(FileNotFoundException, match=r"'/home/user/nope\.txt' does not exist"):
        sbx.files.read("nope.txt")
    with pytest.raises(FileNotFoundException, match="/home/user/nope-dir"):
        sbx.files.list("~/nope-dir")
    with pytest.raises(InvalidArgumentException, match="cwd '/home/user/no-such' does not exist"):
        sbx.commands.run("pwd", cwd="no-such")
    # envd cannot open it: a 500 with Go's words, not a 403.
    with pytest.raises(SandboxException, match=r"^500: error opening file '/etc/shadow'"):
        sbx.files.read("/etc/shadow")


def test_a_commands_cwd_resolves_as_envd_resolves_it(sbx: Sandbox) -> None:
    sbx.files.make_dir("/home/user/relcwd/inner")
    assert sbx.commands.run("pwd", cwd="~").stdout == "/home/user\n"
    assert sbx.commands.run("pwd", cwd="~/relcwd").stdout == "/home/user/relcwd\n"
    assert sbx.commands.run("pwd", cwd="relcwd/inner").stdout == "/home/user/relcwd/inner\n"
    assert sbx.commands.run("pwd", cwd="~", user="root").stdout == "/root\n"
    with pytest.raises(InvalidArgumentException, match="cannot expand user-specific home dir"):
        sbx.commands.run("pwd", cwd="~bob")


def test_make_dir_on_a_file_is_refused(sbx: Sandbox) -> None:
    sbx.files.write("plain.txt", "x")
    with pytest.raises(
        InvalidArgumentException,
        match=r"path already exists but it is not a directory: /home/user/plain\.txt",
    ):
        sbx.files.make_dir("plain.txt")
    assert sbx.files.make_dir("/home/user") is False  # a directory: False, as on E2B


def test_one_upload_writes_one_file_per_path(sbx: Sandbox) -> None:
    entries = [
        WriteEntry(path="dup.txt", data="first"),
        WriteEntry(path="/home/user/dup.txt", data="second"),
    ]
    with pytest.raises(InvalidArgumentException, match="multiple files to the same path"):
        sbx.files.write_files(entries)
    assert sbx.files.read("dup.txt") == "first"  # envd keeps the first and refuses the rest


def test_a_commands_error_says_how_it_ended(sbx: Sandbox) -> None:
    assert sbx.commands.run("true").error is None
    with pytest.raises(CommandExitException) as exited:
        sbx.commands.run("exit 3")
    assert exited.value.error == "exit status 3" and exited.value.exit_code == 3
    with pytest.raises(CommandExitException) as killed:
        sbx.commands.run("kill -9 $$")
    assert killed.value.error == "signal: killed"
    with pytest.raises(CommandExitException) as terminated:
        sbx.commands.run("kill -TERM $$")
    assert terminated.value.error == "signal: terminated"

    terminal = sbx.pty.create(PtySize(rows=24, cols=80))
    sbx.pty.send_stdin(terminal.pid, b"exit 7\n")
    with pytest.raises(CommandExitException) as shell:
        terminal.wait()
    assert shell.value.error == "exit status 7"


def test_an_empty_command_succeeds(sbx: Sandbox) -> None:
    assert sbx.commands.run("").exit_code == 0
    assert sbx.commands.run("# only a comment").exit_code == 0


def test_stdin_and_pty_input_refusals(sbx: Sandbox) -> None:
    no_stdin = sbx.commands.run("sleep 30", background=True)
    try:
        sbx.commands.close_stdin(no_stdin.pid)  # nothing to close: no error, as on E2B
        with pytest.raises(SandboxException, match="stdin not enabled or closed"):
            sbx.commands.send_stdin(no_stdin.pid, "x")
        with pytest.raises(SandboxException, match="tty not assigned to process"):
            sbx.pty.resize(no_stdin.pid, PtySize(rows=10, cols=10))
    finally:
        no_stdin.kill()

    # The wait keeps the process there for the second close (cat ends at the first).
    with_stdin = sbx.commands.run(
        "cat; until [ -e /tmp/closed ]; do sleep 0.05; done", background=True, stdin=True
    )
    sbx.commands.send_stdin(with_stdin.pid, "once\n")
    sbx.commands.close_stdin(with_stdin.pid)
    sbx.commands.close_stdin(with_stdin.pid)  # closing twice is no error either
    sbx.files.write("/tmp/closed", "")
    assert with_stdin.wait().stdout == "once\n"

    terminal = sbx.pty.create(PtySize(rows=24, cols=80))
    try:
        with pytest.raises(SandboxException, match="send Ctrl\\+D"):
            sbx.commands.close_stdin(terminal.pid)
    finally:
        terminal.kill()


def test_paths_cwd_and_error_async(local_service: RunningService) -> None:
    async def scenario() -> None:
        sbx = await AsyncSandbox.create(timeout=120, **sdk_options(local_service))
        try:
            assert (await sbx.files.write("~/a.txt", "a")).path == "/home/user/a.txt"
            await sbx.files.make_dir("~/sub")
            assert (await sbx.commands.run("pwd", cwd="sub")).stdout == "/home/user/sub\n"
            with pytest.raises(CommandExitException) as exited:
                await sbx.commands.run("exit 5")
            assert exited.value.error == "exit status 5"
        finally:
            await sbx.kill()

    asyncio.run(scenario())


def test_a_failed_rename_is_worded_as_envd_words_it(sbx: Sandbox) -> None:
    """envd's Move: Go's rename error naming both paths, an internal error (the SDK's plain
    SandboxException) unless the source is missing (the directory was named as the file)."""
    sbx.files.write("/home/user/mv/a.txt", "a")
    sbx.files.make_dir("/home/user/mv/d/inner")
    with pytest.raises(SandboxException) as onto_dir:
        sbx.files.rename("mv/a.txt", "mv/d")
    assert not isinstance(onto_dir.value, InvalidArgumentException)
    assert "error renaming: rename /home/user/mv/a.txt /home/user/mv/d: " in str(onto_dir.value)
    with pytest.raises(SandboxException) as onto_file:
        sbx.files.rename("mv/d", "mv/a.txt")
    assert "rename /home/user/mv/d /home/user/mv/a.txt: not a directory" in str(onto_file.value)
    with pytest.raises(FileNotFoundException, match="source file not found: rename "):
        sbx.files.rename("mv/none.txt", "mv/x.txt")


def test_async_watch_ends_at_its_deadline_and_names_its_own_folder_dot(
    local_service: RunningService,
) -> None:
    """envd's WatchDir stream ends at its deadline (the SDK's default is 60 s; it ran for
    ever here), and an event about the watched folder itself is named "." (it was "")."""

    async def scenario() -> None:
        sbx = await AsyncSandbox.create(timeout=120, **sdk_options(local_service))
        try:
            await sbx.files.make_dir("/home/user/watched")
            events: list = []
            exits: list = []
            ended = asyncio.Event()

            def on_exit(error: Exception | None) -> None:
                exits.append(error)
                ended.set()

            handle = await sbx.files.watch_dir(
                "/home/user/watched", events.append, on_exit=on_exit, timeout=1
            )
            await asyncio.wait_for(ended.wait(), 30)
            assert exits and exits[0] is not None  # ended by its deadline, not by stop()
            await sbx.files.write("/home/user/watched/late.txt", "x")
            await handle.stop()
            assert events == []

            gone: list = []
            removed = asyncio.Event()

            def on_event(event) -> None:
                gone.append((event.name, event.type.name))
                if event.name == ".":  # the folder itself: its removal comes after its files'
                    removed.set()

            watch = await sbx.files.watch_dir("/home/user/watched", on_event, timeout=30)
            await sbx.commands.run("rm -rf /home/user/watched")
            await asyncio.wait_for(removed.wait(), 15)
            await watch.stop()
            assert (".", "REMOVE") in gone, gone
        finally:
            await sbx.kill()

    asyncio.run(scenario())
