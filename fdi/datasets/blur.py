"""Blur sets: GoPro (motion blur, Nah et al. 2017) and DPDD (defocus blur, Abuolaim & Brown 2020).

Layouts, releases and counts: docs/datasets.md.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, Optional

from ..data import Pair
from ..errors import FDIError
from .core import (
    Context,
    Dataset,
    Found,
    Release,
    candidates,
    child,
    find_dirs,
    image_files,
    index_by_stem,
    pair_by_rule,
)


# ---------------------------------------------------------------------------------------------- GoPro
def _sequences(split_dir: Path) -> List[Path]:
    """The sequence folders (``GOPR0372_07_00``) of a GOPRO_Large split: those holding ``blur/`` and ``sharp/``."""
    subs = [c for c in sorted(split_dir.iterdir()) if c.is_dir() and not c.name.startswith(".")]
    return [c for c in subs if child(c, ("blur",)) is not None and child(c, ("sharp",)) is not None]


def _scan_gopro_large(root: Path, split: str, ctx: Context) -> Optional[Found]:
    for top in find_dirs(root, split):
        seqs = _sequences(top)
        if not seqs:
            continue
        pairs, missing = [], []
        for seq in seqs:
            sharp = index_by_stem(image_files(child(seq, ("sharp",))))
            p, m = pair_by_rule(
                image_files(child(seq, ("blur",))), sharp, lambda f: f.stem, lambda f, s=seq.name: f"{s}-{f.stem}"
            )
            pairs += p
            missing += m
        return Found(pairs, missing, top)
    return None


def _scan_gopro_repack(root: Path, split: str, ctx: Context) -> Optional[Found]:
    for top in candidates(root, (f"GoPro/{split}", f"{split}/GoPro")):
        inp, target = child(top, ("input",)), child(top, ("target",))
        if inp is None or target is None:
            continue
        pairs, missing = pair_by_rule(image_files(inp), index_by_stem(image_files(target)), lambda f: f.stem)
        return Found(pairs, missing, top)
    return None


_GOPRO = Dataset(
    name="gopro",
    title="GoPro",
    tasks=("motion-blur",),
    splits=("train", "test"),
    releases=(
        Release(
            "GOPRO_Large release",
            "GOPRO_Large/train/GOPR0372_07_00/blur/000047.png + …/GOPR0372_07_00/sharp/000047.png\n"
            "GOPRO_Large/test/GOPR0384_11_00/blur/000001.png + …/sharp/000001.png\n"
            "(blur/ is read; blur_gamma/ is ignored; pair names GOPR0372_07_00-000047)",
            _scan_gopro_large,
        ),
        Release(
            "MPRNet/Restormer repack",
            "GoPro/train/input/GOPR0372_07_00-000047.png + GoPro/train/target/GOPR0372_07_00-000047.png\n"
            "GoPro/test/input/… + GoPro/test/target/… (Restormer: test/GoPro/input, test/GoPro/target)",
            _scan_gopro_repack,
        ),
    ),
    published={"train": 2103, "test": 1111},
    metric="rgb",
    source="https://seungjunnah.github.io/Datasets/gopro.html (Nah et al. CVPR 2017)",
    note="per-sequence folders whose frame numbers repeat: pairs are named <sequence>-<frame>; blur/, not blur_gamma/",
)


# ---------------------------------------------------------------------------------------------- DPDD
_CAPTURE = re.compile(r"(\d+)$")
#: the largest capture-number gap between a DPDD source and its target in the release's own lists (±1, once 2)
MAX_CAPTURE_GAP = 2


def pair_dpdd(sources: List[Path], targets: List[Path], where: str) -> List[Pair]:
    """DPDD's rule: the ``k``-th source (sorted by name) with the ``k``-th target.

    The f/22 target is a separate exposure with its own capture number (source ``1P0A0917`` → target
    ``1P0A0916``), so names never match; the authors' loader pairs the two sorted lists. A missing file would
    shift every later pair, so unequal counts and pairs whose capture numbers lie apart are errors.
    """
    if len(sources) != len(targets):
        raise FDIError(
            f"DPDD {where}: {len(sources)} source and {len(targets)} target images; DPDD pairs them by sorted "
            "order (their names differ), so a missing file would shift every later pair; unpack the archive again"
        )
    pairs = []
    for s, t in zip(sorted(sources, key=lambda p: p.name), sorted(targets, key=lambda p: p.name)):
        ms, mt = _CAPTURE.search(s.stem), _CAPTURE.search(t.stem)
        if ms is None or mt is None or abs(int(ms.group(1)) - int(mt.group(1))) > MAX_CAPTURE_GAP:
            raise FDIError(
                f"DPDD {where}: source {s.name} and target {t.name} are not one scene (capture numbers more than "
                f"{MAX_CAPTURE_GAP} apart); the folders do not hold DPDD's matching lists, unpack the archive again"
            )
        pairs.append(Pair(s.stem, s, t))
    return pairs


def _scan_dpdd(root: Path, split: str, ctx: Context) -> Optional[Found]:
    for top in candidates(root, (f"{split}_c",)):
        source, target = child(top, ("source",)), child(top, ("target",))
        if source is not None and target is not None:
            return Found(pair_dpdd(image_files(source), image_files(target), top.name), [], top)
    return None


_DPDD = Dataset(
    name="dpdd",
    title="DPDD (Canon)",
    tasks=("defocus-blur",),
    splits=("train", "test"),
    releases=(
        Release(
            "DPDD Canon release",
            "dd_dp_dataset_png/train_c/source/1P0A0890.png + dd_dp_dataset_png/train_c/target/1P0A0891.png\n"
            "dd_dp_dataset_png/test_c/source/1P0A0917.png + dd_dp_dataset_png/test_c/target/1P0A0916.png\n"
            "(also dd_dp_dataset_canon/, Restormer's DPDD/test_c; pairs by sorted order within each folder;\n"
            "val_c/ and the dual-pixel views *_l/, *_r/ are not read)",
            _scan_dpdd,
        ),
    ),
    published={"train": 350, "test": 150},
    metric="rgb",
    source="https://github.com/Abdullah-Abuolaim/defocus-deblurring-dual-pixel (ECCV 2020)",
    note="test = test_c (76); the supplement's 150 = val_c 74 + test_c 76; 16-bit PNGs",
)

READERS = (_GOPRO, _DPDD)
