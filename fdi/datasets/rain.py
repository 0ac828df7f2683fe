"""Rain streak sets: Rain100H, Rain100L (both JORDER releases and the common repacks).

Layouts, pairing rules and counts: docs/datasets.md.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from .core import Context, Dataset, Found, Release, find_dir, image_files, index_by_stem, pair_by_rule

_RAIN = re.compile(r"^rain-(\d+)$", re.IGNORECASE)
_RAIN_X2 = re.compile(r"^norain-(\d+)x2$", re.IGNORECASE)


def _flat_rain(p: Path) -> Optional[str]:
    """``rain-N`` → ``norain-N``; ``norain-N``, ``rainregion-N``, ``rainstreak-N`` are not degraded images."""
    m = _RAIN.match(p.stem)
    return f"norain-{m.group(1)}" if m else None


def _x2_rain(p: Path) -> Optional[str]:
    """``rain/X2/norain-Nx2`` → ``norain/norain-N``."""
    m = _RAIN_X2.match(p.stem)
    return f"norain-{m.group(1)}" if m else None


def _rain100(level: str, letter: str) -> Dataset:
    """Rain100H (``level="Heavy"``) or Rain100L (``"Light"``)."""
    train_new = f"rain_data_train_{level}"
    test_new = f"rain_{level.lower()}_test"
    flat = {
        "train": (f"rain_data_train_{level}", f"RainTrain{letter}"),
        "test": (f"rain_data_test_{level}", f"Rain100{letter}"),
    }

    def scan_new(root: Path, split: str, ctx: Context) -> Optional[Found]:
        top = find_dir(root, train_new if split == "train" else test_new)
        if top is None or not (top / "rain" / "X2").is_dir():
            return None
        clean = index_by_stem(image_files(top / "norain"))
        pairs, missing = pair_by_rule(
            image_files(top / "rain" / "X2"), clean, _x2_rain, lambda p: _x2_rain(p) or p.stem
        )
        return Found(pairs, missing, top)

    def scan_repack(root: Path, split: str, ctx: Context) -> Optional[Found]:
        if split != "test":
            return None
        top = find_dir(root, f"Rain100{letter}")
        if top is None or not (top / "input").is_dir() or not (top / "target").is_dir():
            return None
        pairs, missing = pair_by_rule(
            image_files(top / "input"), index_by_stem(image_files(top / "target")), lambda p: p.stem
        )
        return Found(pairs, missing, top)

    def scan_flat(root: Path, split: str, ctx: Context) -> Optional[Found]:
        top = find_dir(root, *flat[split])
        if top is None:
            return None
        files = image_files(top)
        pairs, missing = pair_by_rule(files, index_by_stem(files), _flat_rain)
        return Found(pairs, missing, top)

    return Dataset(
        name=f"rain100{letter.lower()}",
        title=f"Rain100{letter}",
        tasks=("rainstreak",),
        splits=("train", "test"),
        releases=(
            Release(
                "2018 release (JORDER site, updated)",
                f"{train_new}/rain/X2/norain-Nx2.png + {train_new}/norain/norain-N.png\n"
                f"{test_new}/rain/X2/norain-Nx2.png + {test_new}/norain/norain-N.png",
                scan_new,
            ),
            Release(
                "MPRNet/Restormer test repack",
                f"Rain100{letter}/input/N.png + Rain100{letter}/target/N.png (test only)",
                scan_repack,
            ),
            Release(
                "2017 release (original; also PReNet's RainTrain/Rain100 folders)",
                f"{flat['train'][0]}/ or {flat['train'][1]}/: rain-N.png + norain-N.png\n"
                "    (rainregion-N, rainstreak-N skipped)\n"
                f"{flat['test'][0]}/ or {flat['test'][1]}/: rain-N.png + norain-N.png",
                scan_flat,
            ),
        ),
        published={"train": 1800, "test": 100},
        metric="y",
        source="https://www.icst.pku.edu.cn/struct/Projects/joint_rain_removal.html (JORDER, Yang et al. CVPR 2017)",
        note="two releases: 2017 (the paper's) and 2018 (1800 train / 200 test); see docs/datasets.md",
    )


READERS = (_rain100("Heavy", "H"), _rain100("Light", "L"))
