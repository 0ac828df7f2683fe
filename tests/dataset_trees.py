"""Miniature data set trees for the reader tests: the real file names of a layout, a few tiny images each.

``make_tree(root, ["Rain100H/rain-1.png", ...])`` writes each listed file: an image (8×8 by default, a colour
derived from its path so that two files never hold the same pixels) for image suffixes, an empty file otherwise.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, List, Tuple

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def make_tree(root: Path, files: Iterable[str], size: Tuple[int, int] = (8, 8)) -> List[Path]:
    """Create ``files`` (``/``-separated, relative to ``root``); returns their paths."""
    from PIL import Image

    out = []
    for rel in files:
        p = Path(root) / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.suffix.lower() in IMAGE_SUFFIXES:
            seed = int.from_bytes(hashlib.sha256(rel.encode()).digest()[:4], "little")
            rng = np.random.default_rng(seed)
            arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(arr).save(p)
        else:
            p.write_bytes(b"")
        out.append(p)
    return out


def numbered(pattern: str, numbers: Iterable[int]) -> List[str]:
    """``numbered("rain-{}.png", [1, 2])`` → ``["rain-1.png", "rain-2.png"]``."""
    return [pattern.format(n) for n in numbers]


def rel_pairs(split, root: Path) -> List[Tuple[str, str, str]]:
    """A :class:`~fdi.datasets.DatasetSplit`'s pairs as ``(name, degraded, clean)`` with paths relative to ``root``
    (``/``-separated; a path outside ``root`` is given whole)."""

    def rel(p: Path) -> str:
        p, r = Path(p).resolve(), Path(root).resolve()
        return p.relative_to(r).as_posix() if p.is_relative_to(r) else p.as_posix()

    return [(p.name, rel(p.degraded), rel(p.clean)) for p in split.pairs]
