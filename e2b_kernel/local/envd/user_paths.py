"""Paths as envd resolves them for the requesting user, before anything touches them.

E2B's envd expands ``~`` and ``~/...`` to the user's home and takes any other relative path
from that home (``root``'s is ``/root``), for files and for a command's ``cwd`` alike;
``~name`` is refused. Absolute paths are left as given. Error messages then name the resolved
path, as envd's do.
"""

from __future__ import annotations

import posixpath

from ..sandbox import SANDBOX_HOME

__all__ = ["HOMES", "UnresolvablePath", "resolve_user_path", "unknown_user"]

HOMES = {"user": SANDBOX_HOME, "root": "/root"}


def unknown_user(name: str) -> str:
    """envd's words for a user the sandbox lacks (its authentication middleware refuses the
    request, whichever service it is for)."""
    return f"invalid username: '{name}' (this sandbox has 'user' and 'root')"


class UnresolvablePath(ValueError):
    """The path names another user's home (``~name``), which envd cannot expand."""


def resolve_user_path(raw: str, user: str) -> str:
    """The absolute path envd would use for ``raw`` requested by ``user``."""
    home = HOMES[user]
    path = raw
    if path.startswith("~"):
        if len(path) > 1 and path[1] != "/":
            raise UnresolvablePath(
                f"failed to expand path '{raw}' for user '{user}': "
                "cannot expand user-specific home dir"
            )
        path = posixpath.normpath(home + path[1:])
    if path.startswith("/"):
        return path
    return posixpath.normpath(posixpath.join(home, path))
