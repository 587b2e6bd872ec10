"""Input checks made before a request reaches a plane, so bad input is a 400, not a 500.

Deeply nested JSON makes Python's parsers recurse until they fail (and protobuf's parser can
crash the process); env var names with '=' or NUL and path components over 255 bytes make
the OS calls deep inside the planes raise. Catching them here answers E2B's error shape.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from .errors import ServiceError

MAX_JSON_DEPTH = 100  # far beyond any body the SDK sends (it nests 3 levels)
NAME_MAX = 255  # bytes in one path component (Linux NAME_MAX)
PATH_MAX = 4096

_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_FS_PATH_FIELDS = ("path", "source", "destination")


def json_too_deep(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON text nests arrays/objects deeper than limit.

    Works at C speed on any size: strings are cut out (brackets in them do not count),
    everything but brackets is dropped, then each pass removes the innermost pairs.
    What is left of unbalanced (invalid) input counts as deep when it is long: a parser
    would recurse into it before finding the error.
    """
    brackets = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    for _ in range(limit):
        if not brackets:
            return False
        shorter = brackets.replace(b"[]", b"").replace(b"{}", b"")
        if shorter == brackets:  # unbalanced: no pair left to remove
            return len(brackets) > limit
        brackets = shorter
    return bool(brackets)


def check_json_depth(body: bytes, *, connect: bool = False) -> None:
    """400 when the body nests too deeply to parse safely."""
    if json_too_deep(body):
        raise ServiceError(400, f"JSON nested deeper than {MAX_JSON_DEPTH} levels", connect=connect)


def check_env_names(envs: Any, what: str, *, connect: bool = False) -> None:
    """400 unless envs maps names valid for execve (no '=', no NUL) to NUL-free values."""
    if not isinstance(envs, dict):
        return  # the plane reports a wrong type itself
    for name, value in envs.items():
        if not isinstance(name, str) or not name or "=" in name or "\0" in name:
            message = f"{what}: invalid environment variable name {name!r} (no '=' or NUL)"
            raise ServiceError(400, message, connect=connect)
        if isinstance(value, str) and "\0" in value:
            message = f"{what}: the value of {name!r} contains a NUL byte"
            raise ServiceError(400, message, connect=connect)


def check_path(path: Any, what: str, *, connect: bool = False) -> None:
    """400 for a path the OS cannot take: NUL bytes, or a component over 255 bytes."""
    if not isinstance(path, str):
        return
    if "\0" in path:
        raise ServiceError(400, f"{what} contains a NUL byte", connect=connect)
    encoded = path.encode("utf-8", "surrogateescape")
    if len(encoded) > PATH_MAX:
        raise ServiceError(400, f"{what} is longer than {PATH_MAX} bytes", connect=connect)
    for part in encoded.split(b"/"):
        if len(part) > NAME_MAX:
            message = f"{what}: file name longer than {NAME_MAX} bytes"
            raise ServiceError(400, message, connect=connect)


def check_strings(values: Iterable[Any], what: str, *, connect: bool = False) -> None:
    """400 when a string that becomes an argv entry or a path holds a NUL byte."""
    for value in values:
        if isinstance(value, str) and "\0" in value:
            raise ServiceError(400, f"{what} contains a NUL byte", connect=connect)


def check_rpc_message(route: str, message: bytes) -> None:
    """Check one envd Connect-RPC request message (JSON) for route /Service/Method."""
    check_json_depth(message, connect=True)
    try:
        body = json.loads(message) if message.strip() else {}
    except ValueError:
        return  # connectrpc answers malformed JSON itself
    if not isinstance(body, dict):
        return
    if route.startswith("/filesystem.Filesystem/"):
        for name in _FS_PATH_FIELDS:
            check_path(body.get(name), name, connect=True)
    elif route == "/process.Process/Start":
        process = body.get("process")
        if isinstance(process, dict):
            check_env_names(process.get("envs"), "process.envs", connect=True)
            check_path(process.get("cwd"), "process.cwd", connect=True)
            args = process.get("args")
            check_strings(
                [process.get("cmd"), *(args if isinstance(args, list) else [])],
                "process.cmd/args",
                connect=True,
            )


def check_interpreter_body(path: str, body: bytes) -> None:
    """Check a code-interpreter request body (/execute, /contexts)."""
    check_json_depth(body)
    try:
        parsed = json.loads(body) if body.strip() else {}
    except ValueError:
        return  # the interpreter answers malformed JSON itself
    if isinstance(parsed, dict):
        check_env_names(parsed.get("env_vars"), "env_vars")
        check_path(parsed.get("cwd"), "cwd")
