"""notebooks/python3-parity.ipynb, made on python3, comes back the same on E2B Python.

nbclient applies ``clear_output`` and ``update_display_data`` as a front end does (nbval does
not), so this compares every output of every cell, the display updated in place and the
``clear_output`` loop included, with the outputs python3 made.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "python3-parity.ipynb"

pytestmark = pytest.mark.timeout(300)


def comparable(output: dict[str, Any]) -> dict[str, Any]:
    """What must match: everything but counters, transient ids and traceback formatting."""
    output = copy.deepcopy(dict(output))
    output.pop("execution_count", None)
    output.pop("transient", None)
    if output.get("output_type") == "error":
        output.pop("traceback", None)  # file names and frames differ; name and value must not
    return output


def run_on(kernel_name: str) -> nbformat.NotebookNode:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    env = {k: v for k, v in os.environ.items() if k != "E2B_API_KEY"}
    env["E2B_KERNEL_BACKEND"] = "local"
    client = NotebookClient(notebook, kernel_name=kernel_name, timeout=120, allow_errors=True)
    return client.execute(env=env)  # handed on to the kernel manager


def test_the_reference_outputs_are_python3s() -> None:
    """The committed outputs are what python3 makes today (the reference is not stale)."""
    reference = nbformat.read(NOTEBOOK, as_version=4)
    fresh = run_on("python3")
    for old, new in zip(reference.cells, fresh.cells, strict=True):
        if old.cell_type == "code":
            assert [comparable(o) for o in new.outputs] == [comparable(o) for o in old.outputs]


def test_e2b_python_gives_python3s_outputs() -> None:
    reference = nbformat.read(NOTEBOOK, as_version=4)
    ran = run_on("e2b-python")
    for old, new in zip(reference.cells, ran.cells, strict=True):
        if old.cell_type != "code":
            continue
        assert [comparable(o) for o in new.outputs] == [comparable(o) for o in old.outputs], (
            old.source
        )
