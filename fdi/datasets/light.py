"""Low-light sets: LOL-v1 (Wei et al. 2018) and the 17 MEF images used for low-light testing (no ground truth).

Layouts, releases and counts: docs/datasets.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence, Tuple

from ..data import Pair
from .core import Context, Dataset, Found, Release, candidates, child, image_files, index_by_stem, pair_by_rule


def _same_names(root: Path, tails: Sequence[str], degraded: str, clean: str) -> Optional[Found]:
    """Pairs of equal stems in ``<top>/<degraded>`` and ``<top>/<clean>``, top = first folder found for ``tails``."""
    for top in candidates(root, tails):
        d, c = child(top, (degraded,)), child(top, (clean,))
        if d is None or c is None:
            continue
        pairs, missing = pair_by_rule(image_files(d), index_by_stem(image_files(c)), lambda p: p.stem)
        return Found(pairs, missing, top)
    return None


def _release(name: str, layout: str, tails: Mapping[str, Tuple[str, ...]], degraded: str, clean: str) -> Release:
    def scan(root: Path, split: str, ctx: Context) -> Optional[Found]:
        return _same_names(root, tails[split], degraded, clean) if split in tails else None

    return Release(name, layout, scan)


_LOL = Dataset(
    name="lol",
    title="LOL-v1",
    tasks=("lowlight",),
    splits=("train", "test"),
    releases=(
        _release(
            "LOL release (LOLdataset)",
            "our485/low/N.png + our485/high/N.png (train, 485)\neval15/low/N.png + eval15/high/N.png (test, 15)\n"
            "(usually under LOLdataset/)",
            {"train": ("our485",), "test": ("eval15",)},
            "low",
            "high",
        ),
        _release(
            "Retinexformer repack",
            "LOLv1/Train/input/N.png + LOLv1/Train/target/N.png\nLOLv1/Test/input/N.png + LOLv1/Test/target/N.png",
            {"train": ("LOLv1/Train",), "test": ("LOLv1/Test",)},
            "input",
            "target",
        ),
    ),
    published={"train": 485, "test": 15},
    metric="rgb",
    source="https://daooshee.github.io/BMVC2018website/ (RetinexNet, Wei et al. BMVC 2018)",
    note="485 training and 15 test pairs, low/N.png with high/N.png",
)


def _scan_mef(root: Path, split: str, ctx: Context) -> Optional[Found]:
    for top in candidates(root, ("MEF",)):
        files = image_files(top)
        if files:
            return Found([Pair(p.stem, p, p) for p in files], [], top)
    return None


_MEF = Dataset(
    name="mef",
    title="MEF (low-light test images)",
    tasks=("lowlight",),
    splits=("test",),
    releases=(
        Release(
            "low-light test folder",
            "MEF/<scene>.png, one under-exposed image per scene (MEF/Lamp.png, MEF/Balloons.png, …; 17 in all)",
            _scan_mef,
        ),
    ),
    published={"test": 17},
    metric="rgb",
    source="Ma et al. 2015 (MEF database); the 17-image low-light folder ships with LIME/NPE/DICM/VV test bundles",
    note="no ground truth: restore only (each pair's clean is its input); PSNR/SSIM do not apply",
    reference=False,
)

READERS = (_LOL, _MEF)
