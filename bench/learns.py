"""``python bench/learns.py --out DIR``: the small world, end to end (``bench/smallworld/learns_main.py`` says how).

The small world and its probes live in ``bench/smallworld/``; this entry keeps the command the README names.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "smallworld"))

from learns_main import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
