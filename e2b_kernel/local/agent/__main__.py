"""Run the agent: ``python -I -m e2b_agent --listen-fd N [--switch-user | --pdeathsig]``."""

from __future__ import annotations

import argparse
import os

# Importing the op modules registers their handlers with the server (ports: the connect op).
from . import files, ports, processes, server  # noqa: F401


def main() -> None:
    parser = argparse.ArgumentParser(prog="e2b_agent")
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--switch-user", action="store_true", help="inside a sandbox")
    parser.add_argument("--pdeathsig", action="store_true", help="on the host: die with parent")
    parser.add_argument(
        "--path-map", action="append", default=[], metavar="SANDBOX=HOST", help="isolation none"
    )
    args = parser.parse_args()
    processes.Settings.switch_user = args.switch_user
    processes.Settings.pdeathsig = args.pdeathsig
    os.set_inheritable(args.listen_fd, False)
    # File ops: where /home/user and /tmp are, and whether requests switch ids.
    roots = dict(item.split("=", 1) for item in args.path_map)
    files.configure(roots=roots, switch_ids=args.switch_user)
    server.serve(args.listen_fd)


main()
