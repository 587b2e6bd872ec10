"""The ``e2b-kernel`` command: ``install``, ``local`` and ``sandboxes`` (plus ``demo``).

Each subcommand lives in its own module, which exposes ``configure_parser(parser)`` and
``run(args) -> int``; this module only wires them together.

- :mod:`.install`: the kernelspec into another Jupyter environment;
- :mod:`.sandboxes`: list or kill the sandboxes your settings can see;
- :mod:`.demo`: ``make demo``, a notebook run on the E2B Python kernel;
- ``local`` is the local service's own command line, :mod:`e2b_kernel.local.cli`.
"""

from __future__ import annotations

import argparse
from importlib import import_module

_SUBCOMMANDS = {
    "install": ("e2b_kernel.cli.install", "install the E2B Python kernelspec"),
    "local": ("e2b_kernel.local.cli", "run the local E2B-compatible sandbox service"),
    "sandboxes": ("e2b_kernel.cli.sandboxes", "list or kill sandboxes"),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``e2b-kernel`` parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="e2b-kernel",
        description="Run Jupyter notebooks in E2B sandboxes.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in _SUBCOMMANDS.items():
        module = import_module(module_name)
        subparser = sub.add_parser(name, help=help_text, description=module.__doc__)
        module.configure_parser(subparser)
        subparser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``e2b-kernel``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        return 130
