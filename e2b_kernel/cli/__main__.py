"""``python -m e2b_kernel.cli``: the ``e2b-kernel`` command."""

import sys

from e2b_kernel.cli import main

sys.exit(main())
