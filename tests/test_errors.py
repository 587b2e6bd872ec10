"""The error hierarchy and its Jupyter content."""

from __future__ import annotations

import pytest

from e2b_kernel.errors import (
    ConfigurationError,
    E2BKernelError,
    ExecutionInterrupted,
    ExecutionTimeout,
    SandboxLost,
    SandboxUnavailable,
    error_content,
    exception_line,
)


@pytest.mark.parametrize(
    "cls", [ConfigurationError, SandboxUnavailable, SandboxLost, ExecutionTimeout]
)
def test_our_errors_are_short_and_named(cls: type[E2BKernelError]) -> None:
    content = error_content(cls("what happened; how to fix it"))
    assert content["ename"] == cls.__name__
    assert content["evalue"] == "what happened; how to fix it"
    assert len(content["traceback"]) == 1
    assert "what happened; how to fix it" in content["traceback"][0]


def test_interrupt_is_a_keyboard_interrupt() -> None:
    content = error_content(ExecutionInterrupted("stopped"))
    assert content["ename"] == "KeyboardInterrupt"


def test_foreign_errors_show_no_traceback_of_internals() -> None:
    content = error_content(RuntimeError("boom"))
    assert content == {
        "ename": "RuntimeError",
        "evalue": "boom",
        "traceback": [exception_line("RuntimeError", "boom")],
    }


def test_our_error_lines_are_coloured_as_the_installed_ipython_colours_them() -> None:
    """python3 on IPython 9 sends ``raise SystemExit('bye')``'s last line as below (each
    colour closed on its own); ours used IPython 8's resets."""
    import IPython

    if IPython.version_info[0] < 9:
        assert exception_line("SystemExit", "bye") == "\x1b[0;31mSystemExit\x1b[0m: bye"
    else:
        expected = "\x1b[31mSystemExit\x1b[39m\x1b[31m:\x1b[39m bye"
        assert exception_line("SystemExit", "bye") == expected
