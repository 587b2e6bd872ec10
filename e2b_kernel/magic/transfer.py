"""Move Python variables between the local namespace and a sandbox (``%%e2b -i`` / ``-o``).

Values travel as pickles through files in the sandbox's ``/tmp`` (the SDK's file API), not
inside code: code cells have size limits, files do not need base64. A size cap applies both
ways with an error that names the variable, its size and the setting to raise.

Pulling a value means unpickling bytes produced by sandboxed, possibly untrusted code on the
user's machine. Unpickling can call arbitrary functions, so by default only plain data is
accepted: builtin containers and scalars, datetime/decimal/uuid values, numpy arrays and
pandas objects. ``allow_any_type=True`` (``%%e2b --unsafe-pickle``) lifts that restriction.
"""

from __future__ import annotations

import importlib
import io
import pickle
import uuid
from typing import TYPE_CHECKING, Any

from ..core.hidden import parse_reply, wrap
from ..errors import TransferError

if TYPE_CHECKING:
    from ..core import SandboxSession

__all__ = [
    "DEFAULT_LIMIT_BYTES",
    "TransferError",
    "dumps_for_sandbox",
    "pull",
    "pull_code",
    "push",
    "push_code",
    "read_pull_report",
    "safe_loads",
]

DEFAULT_LIMIT_BYTES = 200 * 1024 * 1024
# Protocol 4 is readable by every Python >= 3.4, so the sandbox's Python may differ from ours.
PROTOCOL = 4
REMOTE_DIR = "/tmp/.e2b-kernel-transfer"


def _size(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MiB" if n >= 1024 * 1024 else f"{n} bytes"


def dumps_for_sandbox(name: str, value: Any, limit: int) -> bytes:
    """Pickle a local value for ``-i``, enforcing the size cap."""
    try:
        data = pickle.dumps(value, protocol=PROTOCOL)
    except Exception as exc:
        raise TransferError(
            f"-i {name}: {type(value).__name__} cannot be pickled ({exc}); "
            "send a picklable value (plain data, numpy arrays, pandas objects) or write it to a "
            "file and use %e2b upload"
        ) from None
    if len(data) > limit:
        raise TransferError(
            f"-i {name}: pickled size {_size(len(data))} exceeds the transfer limit of "
            f"{_size(limit)}; raise it with %config E2BMagics.transfer_limit = <bytes>, or use "
            "%e2b upload for large files"
        )
    return data


def new_remote_path(name: str) -> str:
    """A fresh file path in the sandbox for one transferred variable."""
    return f"{REMOTE_DIR}/{name}-{uuid.uuid4().hex}.pkl"


_PUSH = """
import os, pickle
(paths,) = ARGS
for name, path in paths.items():
    with open(path, "rb") as f:
        __import__("IPython").get_ipython().user_ns[name] = pickle.load(f)
    os.remove(path)
"""

_PULL = """
import json, os, pickle
paths, limit, protocol = ARGS
user_globals = __import__("IPython").get_ipython().user_ns
report = {}
for name, path in paths.items():
    if name not in user_globals:
        report[name] = {"status": "missing"}
        continue
    try:
        data = pickle.dumps(user_globals[name], protocol=protocol)
    except Exception as exc:
        report[name] = {"status": "unpicklable", "detail": type(exc).__name__ + ": " + str(exc)}
        continue
    if len(data) > limit:
        report[name] = {"status": "too_big", "size": len(data)}
        continue
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    report[name] = {"status": "ok", "size": len(data)}
print(MARKER + json.dumps(report))
"""

_CLEANUP = """
import os
(paths,) = ARGS
for path in paths:
    if os.path.exists(path):
        os.remove(path)
"""


def push_code(paths: dict[str, str]) -> str:
    """Hidden code that loads pushed pickles into the sandbox's globals and deletes the files."""
    return wrap(_PUSH, dict(paths))


def pull_code(paths: dict[str, str], limit: int) -> str:
    """Hidden code that pickles sandbox globals into files and prints one JSON report."""
    return wrap(_PULL, dict(paths), int(limit), PROTOCOL)


def cleanup_code(paths: list[str]) -> str:
    """Hidden code that deletes transfer files (missing ones are fine)."""
    return wrap(_CLEANUP, list(paths))


def read_pull_report(stdout: str, limit: int) -> dict[str, int]:
    """Parse the pull report; return sizes of the ready variables or raise for the first problem."""
    report = parse_reply(stdout)
    if report is None:
        raise TransferError(
            "-o: the sandbox did not report on the requested variables; "
            f"its output was: {stdout.strip()[:500]!r}"
        )
    sizes: dict[str, int] = {}
    for name, entry in report.items():
        status = entry.get("status")
        if status == "missing":
            raise TransferError(
                f"-o {name}: the sandbox has no variable named {name!r} after the cell; "
                "assign it in the cell (or check the spelling)"
            )
        if status == "unpicklable":
            raise TransferError(
                f"-o {name}: the sandbox cannot pickle it ({entry.get('detail')}); "
                "convert it to plain data first, or save it to a file and use %e2b download"
            )
        if status == "too_big":
            raise TransferError(
                f"-o {name}: pickled size {_size(int(entry['size']))} exceeds the transfer limit "
                f"of {_size(limit)}; raise it with %config E2BMagics.transfer_limit = <bytes>, or "
                "save it to a file and use %e2b download"
            )
        sizes[name] = int(entry["size"])
    return sizes


# Plain-data types a pickle of user data legitimately refers to.
_SAFE_GLOBALS = {
    "builtins": {
        "bool",
        "bytearray",
        "bytes",
        "complex",
        "dict",
        "float",
        "frozenset",
        "int",
        "list",
        "range",
        "set",
        "slice",
        "str",
        "tuple",
        "NoneType",
        "Ellipsis",
        "NotImplemented",
    },
    "copyreg": {"_reconstructor"},
    "collections": {"OrderedDict", "defaultdict", "deque", "Counter", "ChainMap"},
    "datetime": {"date", "datetime", "time", "timedelta", "timezone", "tzinfo"},
    "decimal": {"Decimal"},
    "fractions": {"Fraction"},
    "uuid": {"UUID", "SafeUUID"},
    "zoneinfo": {"ZoneInfo"},
    "numpy": {"ndarray", "dtype", "bool_", "matrix"},
    "numpy.core.multiarray": {"_reconstruct", "scalar"},
    "numpy._core.multiarray": {"_reconstruct", "scalar"},
    "numpy.core.numeric": {"_frombuffer"},
    "numpy._core.numeric": {"_frombuffer"},
    "numpy.ma": {"MaskedArray"},
    "numpy.ma.core": {"_mareconstruct", "MaskedArray"},
}
# Classes (not functions) defined in these pandas packages are data containers.
_SAFE_PANDAS_CLASS_PREFIXES = ("pandas.core.", "pandas._libs.", "pandas.arrays")
_UNSAFE_PREFIXES = ("pandas.core.computation", "pandas.io")
# pandas' own reconstruction helpers are module-level functions with these name prefixes.
_SAFE_FUNCTION_PREFIXES = (
    "_new_",
    "_unpickle",
    "__pyx_unpickle",
    "_reconstruct",
    "_timedelta_",
    "_nat_unpickle",
)


def _may_import(module: str, name: str) -> bool:
    """Whether ``module`` may be imported to look ``name`` up: only the modules of the plain
    data types (the rest is judged on the object, by :func:`_allowed`)."""
    if module in _SAFE_GLOBALS and not module.startswith("numpy"):
        return name in _SAFE_GLOBALS[module]
    package = module.split(".", 1)[0]
    if package not in ("numpy", "pandas") or "__main__" in module.split("."):
        return False
    return not module.startswith(_UNSAFE_PREFIXES)


def _allowed(module: str, name: str, obj: Any) -> bool:
    if name in _SAFE_GLOBALS.get(module, ()):
        return True
    if module.startswith("numpy"):
        # Only dtypes and scalar types: other numpy classes (memmap) touch files when built.
        import numpy

        return isinstance(obj, type) and issubclass(obj, (numpy.generic, numpy.dtype))
    if not (module == "pandas" or module.startswith("pandas.")):
        return False
    defined_in = getattr(obj, "__module__", "") or ""
    if defined_in.startswith(_UNSAFE_PREFIXES):
        return False
    if isinstance(obj, type):
        if defined_in == "pandas":
            # pandas relabels its public classes (HDFStore too), so judge them by ancestry.
            return issubclass(obj, _pandas_data_bases())
        return defined_in.startswith(_SAFE_PANDAS_CLASS_PREFIXES)
    return name.startswith(_SAFE_FUNCTION_PREFIXES)


def _pandas_data_bases() -> tuple[type, ...]:
    import pandas
    from pandas.api.extensions import ExtensionArray, ExtensionDtype
    from pandas.core.base import PandasObject
    from pandas.tseries.offsets import BaseOffset

    scalars = (pandas.Timestamp, pandas.Timedelta, pandas.Period, pandas.Interval)
    return (PandasObject, ExtensionArray, ExtensionDtype, BaseOffset, type(pandas.NaT), *scalars)


class _PlainDataUnpickler(pickle.Unpickler):
    """Unpickler that refuses anything but plain data types (see module docstring)."""

    def find_class(self, module: str, name: str) -> Any:
        if not _may_import(module, name):
            # Judged before importing: the sandbox names the module, and an import runs its
            # top-level code on this host ("this" prints, a __main__ module runs main()).
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the sandbox")
        try:
            obj = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            raise pickle.UnpicklingError(f"{module}.{name} is not available locally") from None
        if not _allowed(module, name, obj):
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the sandbox")
        return obj


def safe_loads(name: str, data: bytes, *, allow_any_type: bool = False) -> Any:
    """Unpickle a pulled value; only plain data unless ``allow_any_type``."""
    try:
        if allow_any_type:
            return pickle.loads(data)
        return _PlainDataUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as exc:
        hint = (
            "; pass --unsafe-pickle to %%e2b if you trust the code in the sandbox"
            if "refusing" in str(exc)
            else ""
        )
        raise TransferError(f"-o {name}: {exc}{hint}") from None
    except Exception as exc:
        raise TransferError(
            f"-o {name}: could not rebuild the value locally ({type(exc).__name__}: {exc}); "
            "are numpy/pandas versions in the sandbox and here compatible?"
        ) from None


async def push(session: SandboxSession, values: dict[str, Any], limit: int) -> None:
    """Send local values into the sandbox's globals (pickles through /tmp files)."""
    paths = {}
    for name, value in values.items():
        data = dumps_for_sandbox(name, value, limit)
        paths[name] = new_remote_path(name)
        await session.write_file(paths[name], data)
    await _run_hidden(session, push_code(paths), "-i")


async def pull(
    session: SandboxSession, names: list[str], limit: int, allow_any_type: bool = False
) -> dict[str, Any]:
    """Fetch sandbox globals as pickles and rebuild them here."""
    paths = {name: new_remote_path(name) for name in names}
    sizes = read_pull_report(await _run_hidden(session, pull_code(paths, limit), "-o"), limit)
    blobs = {}
    try:
        for name in sizes:
            blobs[name] = await session.read_file(paths[name])
    finally:
        await _run_hidden(session, cleanup_code(list(paths.values())), "-o")
    return {
        name: safe_loads(name, data, allow_any_type=allow_any_type) for name, data in blobs.items()
    }


async def _run_hidden(session: SandboxSession, code: str, option: str) -> str:
    """Run helper code in the sandbox; return its stdout or raise on a remote error."""
    result = await session.run_hidden(code)
    if result.error is not None:
        ename = result.error.get("ename")
        hint = ""
        if option == "-i" and ename in ("AttributeError", "ModuleNotFoundError"):
            hint = (
                "; the sandbox must know the value's type: define classes from this "
                "notebook in a %%e2b cell first, or install the module in the sandbox"
            )
        raise TransferError(
            f"{option}: the sandbox failed to move the variables "
            f"({ename}: {result.error.get('evalue')}){hint}"
        )
    return result.stdout
