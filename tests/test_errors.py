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
        "traceback": ["\x1b[0;31mRuntimeError\x1b[0m: boom"],
    }
