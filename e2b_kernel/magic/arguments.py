"""Argument parsing shared by ``%%e2b`` and ``%e2b``: shell-like splitting, ``-h``, KEY=VALUE."""

from __future__ import annotations

import argparse
import inspect
import shlex
from typing import Any

from IPython.core.error import UsageError

from ..config import check_env_vars, parse_pairs

__all__ = ["parse_env", "parse_line", "sandbox_name", "split_line"]


def split_line(line: str) -> list[str]:
    """Split magic arguments as a POSIX shell does: quotes group words and are removed."""
    try:
        return shlex.split(line)
    except ValueError as exc:  # e.g. "No closing quotation"
        raise UsageError(f"cannot split the arguments ({exc}): {line}") from None


def parse_line(parser: Any, line: str, help_text: str | None) -> Any:
    """Parse magic arguments; print ``help_text`` and return None for ``-h`` / ``--help``."""
    argv = split_line(line)
    if {"-h", "--help"} & set(argv):
        print(inspect.cleandoc(help_text or parser.format_help()))
        return None
    return parser.parse_args(argv)


def parse_env(pairs: list[str], option: str = "--env") -> dict[str, str]:
    """Turn ``KEY=VALUE`` strings into variables for the sandbox; a bad one is a usage error."""
    try:
        return check_env_vars(parse_pairs(pairs, option), option)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def sandbox_name(text: str) -> str:
    """A ``--sandbox NAME`` value: any non-blank text (it is only a name in this session)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("a sandbox name cannot be blank, e.g. --sandbox scratch")
    return text
