"""Start-up file of the local service's python kernels: E2B's `e2b/data` and JSON formatters.

As E2B's code-interpreter template: `e2b/data` comes from an object's `_repr_e2b_data_` (and
from pandas DataFrames, as `df.to_dict(orient="list")` with ISO timestamps), and a `list` or
`dict` result also carries `application/json` (metadata `{"expanded": True}`), which the SDK
gives as `Result.json`. E2B serialises that with orjson (numpy values, non-string keys as
strings); this does the same in plain Python, and like orjson gives up (no JSON) on a value it
cannot serialise.

Executed by IPython (`IPKernelApp.exec_files`) in the user namespace, so everything happens inside
one function that deletes itself afterwards and leaves the namespace clean.
"""


def _e2b_install_formatters():
    # What the derived copies (a DataFrame's e2b/data, a list's or dict's JSON) may hold: the
    # local service passes on at most 2**18 JSON values in one kernel message
    # (interpreter/kernel_bridge.py MAX_VALUES) and drops the whole message past that, the
    # result's text and HTML with it; this leaves room for the rest of the message.
    MAX_JSON_VALUES = 200_000
    import dataclasses
    import datetime
    import enum
    import math
    import uuid

    from IPython import get_ipython
    from IPython.core.formatters import BaseFormatter, JSONFormatter
    from traitlets import ObjectName, Unicode

    shell = get_ipython()
    if shell is None:
        return

    def plain(value):
        if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
            return value.isoformat()
        if isinstance(value, float) and not math.isfinite(value):
            return None  # NaN/inf are not valid JSON
        if hasattr(value, "isoformat"):  # pandas Timestamp/Timedelta subclasses
            return value.isoformat()
        if hasattr(value, "item"):  # numpy scalars
            return plain(value.item())
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        return str(value)

    def dataframe_data(frame):
        if frame.size > MAX_JSON_VALUES:
            return None  # no e2b/data (see MAX_JSON_VALUES); its text and HTML still show
        columns = frame.to_dict(orient="list")
        return {str(name): [plain(value) for value in values] for name, values in columns.items()}

    class E2BDataFormatter(BaseFormatter):
        """`e2b/data`: `_repr_e2b_data_`, and pandas DataFrames."""

        format_type = Unicode("e2b/data")
        print_method = ObjectName("_repr_e2b_data_")
        _return_type = (dict, str)

    def key_text(key):
        # orjson's OPT_NON_STR_KEYS: scalars, dates, enums and UUIDs become strings.
        if isinstance(key, str):
            return key
        if isinstance(key, bool) or key is None:
            return {True: "true", False: "false", None: "null"}[key]
        if isinstance(key, (int, float)):
            return str(key)
        if isinstance(key, (datetime.datetime, datetime.date, datetime.time)):
            return key.isoformat()
        if isinstance(key, enum.Enum):
            return key_text(key.value)
        if isinstance(key, uuid.UUID):
            return str(key)
        raise TypeError(f"dict key must be str, not {type(key).__name__}")

    class TooLarge(Exception):
        pass

    def jsonable(value, depth=0, budget=None):
        # A budget of values (MAX_JSON_VALUES): a result of many (`list(range(10**6))`, whose
        # text IPython shortens) would make a message the local service refuses to decode,
        # and its text would be lost with it. E2B's template has no such bound.
        budget = budget if budget is not None else [MAX_JSON_VALUES]
        budget[0] -= 1
        if budget[0] < 0:
            raise TooLarge()
        if depth > 254:  # orjson's recursion limit
            raise TypeError("recursion limit reached")
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, int):
            if not -(2**63) <= value < 2**64:
                raise TypeError("integer exceeds 64-bit range")
            return int(value)
        if isinstance(value, float):
            return float(value) if math.isfinite(value) else None
        if isinstance(value, dict):
            return {key_text(k): jsonable(v, depth + 1, budget) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [jsonable(v, depth + 1, budget) for v in value]
        if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
            return value.isoformat()
        if isinstance(value, enum.Enum):
            return jsonable(value.value, depth + 1, budget)
        if isinstance(value, uuid.UUID):
            return str(value)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
            return jsonable(fields, depth + 1, budget)
        if type(value).__module__ == "numpy":  # OPT_SERIALIZE_NUMPY: arrays and scalars
            if hasattr(value, "tolist"):
                return jsonable(value.tolist(), depth + 1, budget)
        raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")

    class E2BJSONFormatter(JSONFormatter):
        """`application/json` for `list` and `dict` results too, marked `expanded`."""

        def __call__(self, obj):
            if isinstance(obj, (list, dict)):
                try:
                    return jsonable(obj), {"expanded": True}
                except Exception:  # as orjson's TypeError: no JSON, the text stays
                    pass
            return super().__call__(obj)

    formatters = shell.display_formatter.formatters
    data_formatter = E2BDataFormatter(parent=shell.display_formatter)
    # pandas >= 3 reports DataFrame.__module__ as "pandas"; older versions "pandas.core.frame".
    for module in ("pandas", "pandas.core.frame"):
        data_formatter.for_type_by_name(module, "DataFrame", dataframe_data)
    formatters["e2b/data"] = data_formatter
    formatters["application/json"] = E2BJSONFormatter(parent=shell.display_formatter)


_e2b_install_formatters()
del _e2b_install_formatters
