"""How the sandbox's kernel is made to look to a notebook as ``python3`` does.

E2B's code-interpreter template starts its kernels for its ``/execute`` clients, not for a
notebook, and the kernel and ``%%e2b`` undo that in the kernel they use, once per kernel
process, with :data:`PYTHON3_LOOK` (hidden code, see :mod:`.hidden`):

- it starts them with ``InteractiveShell.colors = "NoColor"`` (plain text), so every traceback
  and help text would be monochrome: IPython's default scheme is put back through ``%colors``,
  which on IPython 8 also recolours the traceback handlers and the inspector;
- it derives outputs of its own from results (``e2b/data``: every value of a DataFrame;
  ``e2b/chart``: every point of a plot; an ``application/json`` copy of every list and dict),
  which a notebook never shows (the kernel drops them) but which cost their full size in time
  and memory: a DataFrame of a million rows took 9 s to show instead of 0.7 s, one of six
  million killed the kernel. Those formatters are turned off;
- it makes ``PIL`` display every image saved to a path (so also every ``plt.savefig``) and
  every ``Image.show()``: the patched methods are put back (their originals are what the patch
  wraps, closes over or names ``original_*``).
"""

from __future__ import annotations

from .hidden import wrap

__all__ = ["PYTHON3_LOOK", "notebook_session"]

_LOOK = """
import sys
from IPython import get_ipython
from IPython.core.formatters import JSONFormatter

shell = get_ipython()


def original_of(patched, module):
    found = [getattr(patched, "__wrapped__", None)]
    found += [cell.cell_contents for cell in getattr(patched, "__closure__", None) or ()]
    names = getattr(patched, "__globals__", {})
    found += [value for key, value in names.items() if key.startswith("original_")]
    for candidate in found:
        if callable(candidate) and getattr(candidate, "__module__", None) == module:
            return candidate
    return None


if shell is not None:
    shell.run_line_magic("colors", type(shell).colors.default_value)
    formatters = shell.display_formatter.formatters
    for name, formatter in list(formatters.items()):
        if name.startswith("e2b/"):
            formatter.enabled = False
    derived = formatters.get("application/json")
    if isinstance(derived, JSONFormatter) and type(derived) is not JSONFormatter:
        derived.__class__ = JSONFormatter  # IPython's own: no copy of lists and dicts
    for module, owner_name, names in (
        ("PIL.Image", "Image", ("save", "show")),
        ("PIL.ImageShow", "UnixViewer", ("show",)),
    ):
        owner = getattr(sys.modules.get(module), owner_name, None)
        for name in names:
            patched = getattr(owner, name, None)
            wrapper = hasattr(patched, "__wrapped__")  # functools.wraps copies __module__
            if patched is None or (not wrapper and getattr(patched, "__module__", "") == module):
                continue  # PIL's own
            original = original_of(patched, module)
            if original is not None:
                setattr(owner, name, original)
"""

# One statement, run in a namespace of its own: it leaves nothing in the user's.
PYTHON3_LOOK = wrap(_LOOK)


# ipykernel names the notebook in ``__session__`` (from the ``JPY_SESSION_NAME`` its Jupyter
# Server passes: the notebook's path); the sandbox's kernel got its own server's session id.
_SESSION = """
import os
from IPython import get_ipython

name, shell = ARGS[0], get_ipython()
if name is None:
    os.environ.pop("JPY_SESSION_NAME", None)
    if shell is not None:
        shell.user_ns.pop("__session__", None)
else:
    os.environ["JPY_SESSION_NAME"] = name
    if shell is not None:
        shell.user_ns["__session__"] = name
"""


def notebook_session(name: str | None) -> str:
    """Hidden code that gives the sandbox's kernel the notebook's ``__session__`` and
    ``JPY_SESSION_NAME`` as ipykernel sets them from ``name`` (none when None), so code that
    names its runs after the notebook sees what it would see on ``python3``."""
    return wrap(_SESSION, name)
