"""How the sandbox's kernel is made to look to a notebook as ``python3`` does.

E2B's code-interpreter template starts its kernels with ``InteractiveShell.colors =
"NoColor"`` (its ``/execute`` clients want plain text), so every traceback and help text in a
notebook would be monochrome. The kernel and ``%%e2b`` put IPython's own default scheme back
in the kernel they use, once per kernel process, with this statement: through ``%colors``,
which on IPython 8 also recolours the traceback handlers and the inspector (on 9 setting the
trait does).
"""

from __future__ import annotations

__all__ = ["PYTHON3_COLOURS"]

PYTHON3_COLOURS = "get_ipython().run_line_magic('colors', type(get_ipython()).colors.default_value)"
