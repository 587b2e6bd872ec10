"""``%%e2b`` and ``%e2b``: single cells of any IPython kernel in E2B sandboxes.

- :mod:`.magics`: the two magics and their sessions, one per sandbox name;
- :mod:`.commands`: the ``%e2b`` command table (parser, help and handlers from one list);
- :mod:`.arguments`: splitting, ``-h`` and KEY=VALUE parsing;
- :mod:`.display`: streamed output, the cell's result and the one mapping of failures;
- :mod:`.transfer`: ``-i``/``-o`` variables as pickles; :mod:`.files`: upload/download/ls;
- :mod:`.loop_thread`: the private asyncio loop in a daemon thread (no ``nest_asyncio``).
"""

from .magics import E2BMagics, load_ipython_extension, unload_ipython_extension

__all__ = ["E2BMagics", "load_ipython_extension", "unload_ipython_extension"]
