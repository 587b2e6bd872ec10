"""Install the E2B Python kernelspec into another Jupyter environment.

``pip install e2b-kernel`` already registers ``e2b-python`` in the environment it installs into
(wheel shared-data). Use this command when Jupyter runs from a different environment, or to
register a second copy under another name.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from jupyter_client.kernelspec import KernelSpecManager

if TYPE_CHECKING:
    from importlib.abc import Traversable

KERNEL_NAME = "e2b-python"
DISPLAY_NAME = "E2B Python"


def kernelspec_dir() -> Traversable:
    """The shipped kernelspec folder: inside the wheel, or the checkout's top-level folder."""
    packaged = resources.files("e2b_kernel").joinpath("kernelspec")
    if packaged.is_dir():
        return packaged
    # An editable install: the folder lives beside the package in the source tree.
    return resources.files("e2b_kernel").joinpath("..").joinpath("kernelspec")


def kernel_json(display_name: str = DISPLAY_NAME, python: str | None = None) -> dict:
    """The kernel.json written by this command: it pins the current interpreter."""
    shipped = json.loads(kernelspec_dir().joinpath("kernel.json").read_text())
    shipped["argv"][0] = python or sys.executable
    shipped["display_name"] = display_name
    return shipped


def install_kernelspec(
    *,
    user: bool = False,
    prefix: str | None = None,
    name: str = KERNEL_NAME,
    display_name: str = DISPLAY_NAME,
) -> str:
    """Write the kernelspec (kernel.json and logos) and return the folder it was installed to.

    Parameters
    ----------
    user
        Install for the current user (``~/.local/share/jupyter/kernels``).
    prefix
        Install under ``PREFIX/share/jupyter/kernels``; ``sys.prefix`` for ``--sys-prefix``.
    name, display_name
        Kernelspec name and the name shown in launchers.
    """
    spec_dir = kernelspec_dir()
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / name
        staged.mkdir()
        for logo in ("logo-32x32.png", "logo-64x64.png"):
            with resources.as_file(spec_dir.joinpath(logo)) as source:
                shutil.copy(source, staged / logo)
        (staged / "kernel.json").write_text(json.dumps(kernel_json(display_name), indent=2) + "\n")
        return KernelSpecManager().install_kernel_spec(
            str(staged), kernel_name=name, user=user, prefix=prefix
        )


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the `e2b-kernel install` options."""
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--user", action="store_true", help="install for the current user")
    where.add_argument(
        "--sys-prefix", action="store_true", help=f"install into sys.prefix ({sys.prefix})"
    )
    where.add_argument("--prefix", metavar="PREFIX", help="install into PREFIX/share/jupyter")
    parser.add_argument("--name", default=KERNEL_NAME, help="kernelspec name (%(default)s)")
    parser.add_argument(
        "--display-name", default=DISPLAY_NAME, help="name shown in launchers (%(default)s)"
    )


def run(args: argparse.Namespace) -> int:
    """Install the kernelspec; returns the exit status."""
    prefix = sys.prefix if args.sys_prefix else args.prefix
    try:
        dest = install_kernelspec(
            user=args.user, prefix=prefix, name=args.name, display_name=args.display_name
        )
    except ValueError as exc:  # jupyter_client's check of the name, which says what is allowed
        print(f"e2b-kernel install: --name: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = "the user's Jupyter folder" if args.user else f"{prefix}/share/jupyter"
        print(
            f"e2b-kernel install: cannot write the kernelspec into {where}: {exc}. Choose a "
            "folder you can write to (--user, --sys-prefix or --prefix PREFIX).",
            file=sys.stderr,
        )
        return 1
    print(f"Installed kernelspec {args.name!r} ({args.display_name}) in {dest}")
    return 0
