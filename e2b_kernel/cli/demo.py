"""``make demo``: run a notebook on the E2B Python kernel and print what each cell shows.

With ``E2B_API_KEY`` unset the kernel starts its private local sandbox service; with it set,
the cells run in E2B cloud. Usage: ``python -m e2b_kernel.cli.demo notebooks/quickstart.ipynb``.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

KERNEL_NAME = "e2b-python"


def describe_output(output: dict) -> str:
    """One readable block per output: text as is, rich data by its MIME types."""
    kind = output["output_type"]
    if kind == "stream":
        return output["text"]
    if kind == "error":
        return f"{output['ename']}: {output['evalue']}\n"
    data = output.get("data", {})
    if "text/plain" in data and len(data) == 1:
        return data["text/plain"] + "\n"
    rich = ", ".join(sorted(k for k in data if k != "text/plain"))
    plain = data.get("text/plain", "")
    return f"[{rich}] {plain}\n"


def main(argv: list[str] | None = None) -> int:
    """Run the notebook and print each cell with its outputs; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook")
    parser.add_argument("--timeout", type=int, default=300, help="per-cell timeout in seconds")
    args = parser.parse_args(argv)

    backend = "E2B cloud" if os.environ.get("E2B_API_KEY") else "the local sandbox service"
    print(f"Running {args.notebook} on the {KERNEL_NAME} kernel, using {backend}.\n")
    notebook = nbformat.read(args.notebook, as_version=4)
    client = NotebookClient(
        notebook, kernel_name=KERNEL_NAME, timeout=args.timeout, allow_errors=False
    )
    try:
        client.execute()
    except CellExecutionError as exc:
        print(f"A cell failed:\n{exc}", file=sys.stderr)
        return 1
    for number, cell in enumerate(notebook.cells, 1):
        if cell.cell_type != "code":
            continue
        print(f"--- cell {number} ---")
        print(textwrap.indent(cell.source, "  >>> ", lambda _line: True))
        for output in cell.get("outputs", []):
            print(describe_output(output), end="")
        print()
    print("Done: every cell ran in a sandbox.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
