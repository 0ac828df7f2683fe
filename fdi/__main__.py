"""``python -m fdi …``: see :mod:`fdi.cli`."""

import sys

from .cli import main

sys.exit(main(prog="python -m fdi"))
