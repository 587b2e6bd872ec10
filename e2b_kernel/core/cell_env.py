"""Environment variables for one cell, on a transport whose requests carry none (Jupyter's).

Two silent requests surround the cell, as ``/execute`` does around its cells: one reads and
sets the variables, one puts the previous values back. Both are single expressions over
``os.environ``, so neither leaves a name in the user's namespace, and silent requests leave
no output, history entry or execution count. The values never enter the cell's code.
"""

from __future__ import annotations

import ast
from typing import Any

__all__ = ["previous_values", "restore_code", "set_expression"]


def set_expression(env_vars: dict[str, str]) -> str:
    """A user expression that sets ``env_vars`` and evaluates to their previous values."""
    return (
        "(lambda e, new: ({k: e.get(k) for k in new}, e.update(new))[0])"
        f"(__import__('os').environ, {env_vars!r})"
    )


def previous_values(result: dict[str, Any]) -> dict[str, str | None]:
    """The previous values from the user expression's result (None: was unset)."""
    previous = ast.literal_eval(result["data"]["text/plain"])
    return {str(k): (None if v is None else str(v)) for k, v in previous.items()}


def restore_code(previous: dict[str, str | None]) -> str:
    """Code that puts ``previous`` back (unsetting the variables that were unset)."""
    return (
        "(lambda e, old: [e.pop(k, None) if v is None else e.__setitem__(k, v)"
        f" for k, v in old.items()])(__import__('os').environ, {previous!r})"
    )
