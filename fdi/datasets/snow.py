"""Snow sets: Snow100K (DesnowNet, Liu et al. 2018), as its training and test archives unpack.

Layout, pairing rule and counts: docs/datasets.md, "snow100k".
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from ..data import Pair
from .core import Context, Dataset, Found, Release, find_dirs, find_with, image_files, index_by_stem, pair_by_rule

#: the test archive nests them under Snow100K-testset/media/jdway/GameSSD/overlapping/test/ (7 levels)
_TEST_DEPTH = 8


def _pairs(top: Path, prefix: str = "") -> Found:
    """``synthetic/X`` ↔ ``gt/X`` (same name) in ``top``; ``mask/`` (snow masks) is never read."""
    pairs, missing = pair_by_rule(
        image_files(top / "synthetic"),
        index_by_stem(image_files(top / "gt")),
        lambda p: p.stem,
        lambda p: prefix + p.stem,
    )
    return Found(pairs, missing, top)


def _scan_snow100k(root: Path, split: str, ctx: Context) -> Optional[Found]:
    if split == "train":
        top = find_with(root, ("Snow100K-training/all", "all"), ("synthetic", "gt"))
        return None if top is None else _pairs(top)
    # Snow100K-S, -M, -L (light, medium, heavy snow), in that order
    subsets = [d for d in find_dirs(root, "Snow100K-[SML]", _TEST_DEPTH) if (d / "synthetic").is_dir()]
    subsets.sort(key=lambda d: "SML".index(d.name[-1].upper()))
    if not subsets:
        return None
    pairs: List[Pair] = []
    missing: List[Path] = []
    for d in subsets:
        found = _pairs(d, f"{d.name}-")
        pairs += found.pairs
        missing += found.missing
    return Found(pairs, missing, subsets[0] if len(subsets) == 1 else subsets[0].parent)


READERS = (
    Dataset(
        name="snow100k",
        title="Snow100K",
        tasks=("snow",),
        splits=("train", "test"),
        releases=(
            Release(
                "DesnowNet release (Liu et al.)",
                "Snow100K-training/all/synthetic/X.jpg + Snow100K-training/all/gt/X.jpg (all/mask/ skipped)\n"
                "Snow100K-testset/media/jdway/GameSSD/overlapping/test/Snow100K-{S,M,L}/synthetic/X.jpg\n"
                "    + …/Snow100K-{S,M,L}/gt/X.jpg (mask/ skipped; pair names Snow100K-S-X …)",
                _scan_snow100k,
            ),
        ),
        published={"train": 1872, "test": 601},
        metric="rgb",
        source="https://sites.google.com/view/yunfuliu/desnownet (archives on desnownet.s3.amazonaws.com)",
        note="the supplement's 1872/601 is DA-CLIP's unpublished subset; the reader reads the whole release",
    ),
)
