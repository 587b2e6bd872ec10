"""``python -m e2b_kernel.local``: the same as ``e2b-kernel local``."""

import argparse
import sys

from e2b_kernel.local import cli

parser = argparse.ArgumentParser(prog="e2b-kernel local", description=cli.__doc__)
cli.configure_parser(parser)
sys.exit(cli.run(parser.parse_args()))
