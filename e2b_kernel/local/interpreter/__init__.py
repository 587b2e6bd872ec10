"""The code interpreter on port 49999: E2B's ``/execute`` (NDJSON) and ``/contexts`` API.

- :mod:`.app`: the ASGI app; :mod:`.ndjson`: the stream format;
- :mod:`.contexts`: code contexts and executions; :mod:`.kernels`: the Jupyter kernels behind
  them, started in the sandbox through its agent; :mod:`.kernel_startup`: code those kernels
  run at start (E2B's formatters).
"""

from .app import CodeInterpreter

__all__ = ["CodeInterpreter"]
