"""The E2B Python kernel (kernelspec ``e2b-python``): every cell runs in one sandbox.

- :mod:`.kernel`: ``E2BKernel``, an ipykernel ``Kernel`` whose cells run through the session;
- :mod:`.history`: the cells of this kernel process, for ``history_request``.
"""

from .kernel import E2BKernel, main

__all__ = ["E2BKernel", "main"]
