"""Shadow sets: SRD (Qu et al., DeshadowNet, CVPR 2017).

SRD names a shadow-free image after its shadow image with a suffix that differs between the splits
(``train/shadow_free/X_no_shadow.jpg``, ``test/shadow_free/X_free.jpg``); repacks keep those names. Layouts,
releases and counts: docs/datasets.md.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

from .core import Context, Dataset, Found, Release, candidates, child, image_files, index_by_stem, pair_by_rule

_FREE_SUFFIX = re.compile(r"_(no_shadow|free)$")


def shadow_free_key(stem: str) -> str:
    """``X_no_shadow`` and ``X_free`` → ``x`` (a name without either suffix is kept): the shadow image's name."""
    return _FREE_SUFFIX.sub("", stem.lower())


def scan_srd(root: Path, tails: Sequence[str], shadow: str, free: str) -> Optional[Found]:
    """Pairs of ``<top>/<shadow>/X`` with ``<top>/<free>/X[_no_shadow|_free]``, top = first of ``tails`` found
    holding both folders; mask folders beside them are not read."""
    for top in candidates(root, tails):
        s, f = child(top, (shadow,)), child(top, (free,))
        if s is None or f is None:
            continue
        clean = index_by_stem(image_files(f), key=shadow_free_key)
        pairs, missing = pair_by_rule(image_files(s), clean, lambda p: p.stem)
        return Found(pairs, missing, top)
    return None


def _release(name: str, layout: str, where: Dict[str, Tuple[Tuple[str, ...], str, str]]) -> Release:
    def scan(root: Path, split: str, ctx: Context) -> Optional[Found]:
        return scan_srd(root, *where[split]) if split in where else None

    return Release(name, layout, scan)


READERS = (
    Dataset(
        name="srd",
        title="SRD",
        tasks=("shadow",),
        splits=("train", "test"),
        releases=(
            _release(
                "authors' release",
                "Train/shadow/X.jpg + Train/shadow_free/X_no_shadow.jpg\n"
                "SRD_Test/SRD/shadow/X.jpg + SRD_Test/SRD/shadow_free/X_free.jpg (or Test/shadow, Test/shadow_free)",
                {
                    "train": (("train",), "shadow", "shadow_free"),
                    "test": (("SRD_Test/*", "test"), "shadow", "shadow_free"),
                },
            ),
            _release(
                "A/B/C repack (DHAN masks; ShadowDiffusion, SMGDM)",
                "SRD*/train/train_A/X.jpg + SRD*/train/train_C/X_no_shadow.jpg (train_B: masks, not read)\n"
                "SRD*/test/test_A/X.jpg + SRD*/test/test_C/X_free.jpg (test_B: masks)",
                {
                    "train": (("SRD*/train",), "train_A", "train_C"),
                    "test": (("SRD*/test",), "test_A", "test_C"),
                },
            ),
            _release(
                "DC-ShadowNet layout",
                "SRD/trainA/X.jpg + SRD/trainB/<shadow-free X> (trainC: chromaticity maps, not read)\n"
                "SRD/testA/X.jpg + SRD/testB/<shadow-free X>",
                {"train": (("SRD*",), "trainA", "trainB"), "test": (("SRD*",), "testA", "testB")},
            ),
        ),
        published={"train": 2680, "test": 408},
        metric="rgb",
        source="DeshadowNet (Qu et al. CVPR 2017): https://github.com/Liangqiong/DeShadowNet (links to the data)",
        note="shadow-free names carry _no_shadow (train) or _free (test); masks in other folders are not read",
    ),
)
