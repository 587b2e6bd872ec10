"""Start-up file of the local service's python kernels: the `e2b/data` formatter, as E2B has.

Executed by IPython (`IPKernelApp.exec_files`) in the user namespace, so everything happens inside
one function that deletes itself afterwards and leaves the namespace clean.
"""


def _e2b_install_formatters():
    import datetime
    import math

    from IPython import get_ipython
    from IPython.core.formatters import JSONFormatter
    from traitlets import Unicode

    shell = get_ipython()
    if shell is None:
        return

    class E2BDataFormatter(JSONFormatter):
        """`e2b/data` for pandas DataFrames: `df.to_dict(orient="list")` with ISO timestamps."""

        format_type = Unicode("e2b/data")

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
        columns = frame.to_dict(orient="list")
        return {str(name): [plain(value) for value in values] for name, values in columns.items()}

    formatter = E2BDataFormatter(parent=shell.display_formatter)
    shell.display_formatter.formatters["e2b/data"] = formatter
    # pandas >= 3 reports DataFrame.__module__ as "pandas"; older versions "pandas.core.frame".
    for module in ("pandas", "pandas.core.frame"):
        formatter.for_type_by_name(module, "DataFrame", dataframe_data)


_e2b_install_formatters()
del _e2b_install_formatters
