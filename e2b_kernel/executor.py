"""``SandboxExecutor``: run code in one persistent sandbox from a Python program.

Built for "generate → run → read the error → fix" loops::

    async with SandboxExecutor(default_timeout=30) as ex:
        result = await ex.execute({"code": "print(6 * 7)"})
        result["output"]       # "42\\n"

``execute`` returns exactly ``output, error, execution_time, success, logs, sandbox_id``.
A failure of the *code* (an exception, a timeout) is a result with ``success=False``; a failure
of the *infrastructure* (no sandbox, sandbox lost) raises an ``E2BKernelError`` subclass.
Python state persists across calls; nothing is ever silently thrown away.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypedDict

from .config import SessionConfig, check_env_vars
from .core import SandboxSession
from .core.outputs import strip_ansi
from .errors import ExecutionTimeout

__all__ = ["ExecutionRecord", "ExecutionResult", "SandboxExecutor"]

_REQUEST_KEYS = frozenset({"code", "timeout", "env_vars", "language"})


class ExecutionResult(TypedDict):
    """What ``SandboxExecutor.execute`` returns (the TTA.dev ``CodeOutput`` contract)."""

    output: str  # everything the code wrote to stdout, as written
    error: str | None  # "Name: value" then the full remote traceback; None on success
    execution_time: float  # wall-clock seconds of the execution
    success: bool  # True when the code ran to completion without an exception or timeout
    logs: list[str]  # stdout/stderr lines in arrival order, prefixed "[stdout] " / "[stderr] "
    sandbox_id: str  # the sandbox that ran the code


@dataclass
class ExecutionRecord:
    """Everything the last execution produced, beyond the returned contract."""

    results: list[dict[str, Any]] = field(default_factory=list)  # display/execute_result
    error: dict[str, Any] | None = None  # {"name", "value", "traceback": [lines, plain text]}
    stdout: str = ""
    stderr: str = ""


class SandboxExecutor:
    """Async context manager that runs code in one persistent E2B (or local) sandbox.

    Parameters
    ----------
    default_timeout
        Seconds an execution may take when the request names no ``timeout``.
    template
        Sandbox template; defaults to ``E2B_KERNEL_TEMPLATE`` or ``code-interpreter-v1``.
    config
        A full ``SessionConfig`` (backend, sandbox timeout, metadata, ...).
    keep_sandbox
        Leave the sandbox running on exit (its id stays in ``sandbox_id``).
    """

    def __init__(
        self,
        default_timeout: float = 30,
        *,
        template: str | None = None,
        config: SessionConfig | None = None,
        keep_sandbox: bool = False,
        log: logging.Logger | None = None,
    ) -> None:
        self.default_timeout = _check_timeout(default_timeout, "default_timeout")
        if config is None:
            config = SessionConfig(**({"template": template} if template else {}))
        elif template:
            config.template = template
        self.keep_sandbox = keep_sandbox
        self.log = log or logging.getLogger("e2b_kernel.executor")
        self._session = SandboxSession(config, name="executor", log=self.log)
        self.last_execution = ExecutionRecord()

    @property
    def session(self) -> SandboxSession:
        """The underlying ``SandboxSession`` (for files, restart, status)."""
        return self._session

    @property
    def sandbox_id(self) -> str | None:
        """Id of the sandbox in use, or None before the first start."""
        return self._session.sandbox_id

    @property
    def last_results(self) -> list[dict[str, Any]]:
        """Rich results (``{"type", "data", "metadata"}``) of the last execution."""
        return self.last_execution.results

    async def __aenter__(self) -> SandboxExecutor:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Create the sandbox now rather than on the first execution; idempotent."""
        await self._session.start()

    async def close(self) -> str | None:
        """Kill the sandbox (or keep it when ``keep_sandbox``); returns the id if kept."""
        return await self._session.close(keep=self.keep_sandbox)

    async def execute(self, request: Mapping[str, Any]) -> ExecutionResult:
        """Run ``request["code"]`` and return the result contract.

        ``request`` keys: ``code`` (str, required), ``timeout`` (seconds), ``env_vars``
        (dict of str to str, set as real environment variables for this execution only) and
        ``language`` (a context language such as ``"python"`` or ``"bash"``).
        """
        code, timeout, env_vars, language = _parse_request(request, self.default_timeout)
        await self._session.start()
        record = ExecutionRecord()
        self.last_execution = record
        logs: list[str] = []
        pending = {"stdout": "", "stderr": ""}
        started = time.perf_counter()
        try:
            async for kind, content in self._session.execute(
                code, timeout=timeout, env_vars=env_vars, language=language, front_end="executor"
            ):
                _collect(kind, content, record, logs, pending)
        except ExecutionTimeout as exc:
            record.error = {
                "name": "TimeoutError",
                "value": str(exc),
                "traceback": [f"TimeoutError: {exc}"],
            }
        for name, rest in pending.items():
            if rest:
                logs.append(f"[{name}] {rest}")
        return ExecutionResult(
            output=record.stdout,
            error=_error_text(record.error),
            execution_time=time.perf_counter() - started,
            success=record.error is None,
            logs=logs,
            sandbox_id=self._session.sandbox_id or "",
        )


def _collect(
    kind: str,
    content: dict[str, Any],
    record: ExecutionRecord,
    logs: list[str],
    pending: dict[str, str],
) -> None:
    """Fold one session event into the record and the prefixed log lines."""
    if kind == "stream":
        name = "stderr" if content.get("name") == "stderr" else "stdout"
        text = str(content.get("text", ""))
        setattr(record, name, getattr(record, name) + text)
        # Chunks may split lines; only whole lines become log entries until the end.
        *complete, pending[name] = (pending[name] + text).split("\n")
        logs.extend(f"[{name}] {line}" for line in complete)
    elif kind in ("display_data", "execute_result"):
        record.results.append(
            {"type": kind, "data": content.get("data", {}), "metadata": content.get("metadata", {})}
        )
    elif kind == "error":
        record.error = {
            "name": str(content.get("ename", "Error")),
            "value": str(content.get("evalue", "")),
            "traceback": [strip_ansi(line) for line in content.get("traceback", [])],
        }


def _error_text(error: dict[str, Any] | None) -> str | None:
    """``Name: value``, a blank line, then the traceback in plain text (no ANSI colours)."""
    if error is None:
        return None
    head = f"{error['name']}: {error['value']}" if error["value"] else error["name"]
    body = "\n".join(error["traceback"]).strip("\n")
    return head if not body or body == head else f"{head}\n\n{body}"


def _check_timeout(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a positive number of seconds, got {value!r}")
    return float(value)


def _parse_request(
    request: Mapping[str, Any], default_timeout: float
) -> tuple[str, float, dict[str, str] | None, str | None]:
    """Validate an execute request; errors name the key and the expected form."""
    if not isinstance(request, Mapping):
        raise TypeError(f'execute() takes a dict like {{"code": "..."}}, got {type(request)}')
    unknown = set(request) - _REQUEST_KEYS
    if unknown:
        raise ValueError(
            f"unknown request keys {sorted(unknown)}; allowed: {sorted(_REQUEST_KEYS)}"
        )
    code = request.get("code")
    if "code" not in request:
        raise ValueError('request["code"] is missing: it must be a string of source code to run')
    if not isinstance(code, str):
        raise ValueError(f'request["code"] must be a string of source code, got {code!r:.80}')
    timeout = request.get("timeout")
    timeout = default_timeout if timeout is None else _check_timeout(timeout, 'request["timeout"]')
    env_vars = request.get("env_vars") or None
    if env_vars is not None:
        if not isinstance(env_vars, Mapping):
            raise ValueError('request["env_vars"] must map str names to str values')
        env_vars = check_env_vars(env_vars, 'request["env_vars"]')
    language = request.get("language")
    if language is not None and not isinstance(language, str):
        raise ValueError(f'request["language"] must be a string such as "python", got {language!r}')
    return code, timeout, env_vars, language
