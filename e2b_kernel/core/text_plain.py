"""Exact ``text/plain`` on the ``execute`` transport, through a carrier E2B forwards.

E2B's ``/execute`` strips one pair of quotes from every ``text/plain`` (``'a'`` arrives as
``a``), but forwards unknown MIME types untouched in ``Result.extra``. So the session installs,
once per Python context, an IPython formatter that copies the real ``text/plain`` of ``str``
objects into a private MIME type; :func:`restore` puts it back and drops the carrier. The
carrier also marks list and dict results, whose ``application/json`` E2B derived, and the
same hidden code gives the kernel python3's look (:mod:`.remote_look`). Hidden
code installs it (see :mod:`.hidden`), so it works the same on E2B cloud and the local service.
"""

from __future__ import annotations

from typing import Any

from .hidden import wrap
from .remote_look import PYTHON3_LOOK

__all__ = ["CARRIER_MIME", "install_code", "restore"]

CARRIER_MIME = "application/x-e2b-kernel-text-plain+json"

_INSTALL = """
from IPython import get_ipython
from IPython.core.formatters import JSONFormatter
from traitlets import Unicode

shell = get_ipython()
if shell is not None:
    exec(ARGS[1])  # python3's look (colours, none of E2B's derived outputs)
if shell is not None and ARGS[0] not in shell.display_formatter.formatters:
    class TextPlainCarrier(JSONFormatter):
        format_type = Unicode(ARGS[0])

    plain = shell.display_formatter.formatters["text/plain"]
    carrier = TextPlainCarrier(parent=shell.display_formatter)
    shell.display_formatter.formatters[ARGS[0]] = carrier
    # Only str loses its quotes; every other type's text/plain arrives intact.
    carrier.for_type(str, lambda value: {"text": plain(value)})
    # E2B's startup gives list and dict results an application/json copy: say it is one.
    carrier.for_type(list, lambda value: {"derived_json": True})
    carrier.for_type(dict, lambda value: {"derived_json": True})
"""


def install_code() -> str:
    """Hidden code that installs the carrier formatter in the current IPython (idempotent)."""
    return wrap(_INSTALL, CARRIER_MIME, PYTHON3_LOOK)


def restore(bundle: dict[str, Any]) -> dict[str, Any]:
    """``bundle`` with the carried ``text/plain`` put back, the JSON copy E2B derived from a
    list or dict dropped (``python3`` shows their text), and the carrier removed."""
    carried = bundle.pop(CARRIER_MIME, None)
    if isinstance(carried, dict) and isinstance(carried.get("text"), str):
        bundle["text/plain"] = carried["text"]
    if isinstance(carried, dict) and carried.get("derived_json") is True:
        bundle.pop("application/json", None)
    return bundle
