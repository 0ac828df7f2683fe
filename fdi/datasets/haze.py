"""Haze sets: RESIDE-6K (DehazeFormer's mix of ITS and OTS), SOTS indoor and outdoor (RESIDE's test sets).

RESIDE names a hazy image after its clear one (``1400_1.png`` → ``1400.png``, ``0001_0.8_0.2.jpg`` →
``0001.png``); repacks that copy the clear image under the hazy name pair by equal names. Layouts, releases and
counts: docs/datasets.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, Tuple

from .core import (
    Context,
    Dataset,
    Found,
    Release,
    candidates,
    child,
    image_files,
    index_by_stem,
    pair_by_rule,
)

#: folder names of the clear images: RESIDE's ``gt``, DehazeFormer's ``GT``, DEA-Net's ``clear``
CLEAR = ("gt", "clear")


def reside_key(clean: Mapping[str, Path]) -> Callable[[Path], Optional[str]]:
    """RESIDE's rule: a hazy image answers to the clear image of its own stem if there is one (repacks), else to
    the part of its stem before the first ``_`` (``1400_1``, ``0001_0.8_0.2``, ITS's ``1_1_0.90179``)."""

    def key(p: Path) -> Optional[str]:
        stem = p.stem.lower()
        return stem if stem in clean else stem.split("_", 1)[0]

    return key


def scan_hazy(root: Path, tails: Sequence[str], clear: Sequence[str] = CLEAR) -> Optional[Found]:
    """Pairs of the first folder found for ``tails`` that holds ``hazy/`` and a clear folder (``clear`` names)."""
    for top in candidates(root, tails):
        hazy, gt = child(top, ("hazy",)), child(top, clear)
        if hazy is None or gt is None:
            continue
        clean = index_by_stem(image_files(gt))
        pairs, missing = pair_by_rule(image_files(hazy), clean, reside_key(clean))
        return Found(pairs, missing, top)
    return None


def _release(name: str, layout: str, tails: Mapping[str, Tuple[str, ...]]) -> Release:
    def scan(root: Path, split: str, ctx: Context) -> Optional[Found]:
        return scan_hazy(root, tails[split]) if split in tails else None

    return Release(name, layout, scan)


_RESIDE6K = Dataset(
    name="reside6k",
    title="RESIDE-6K",
    tasks=("haze",),
    splits=("train", "test"),
    releases=(
        _release(
            "DehazeFormer release",
            "RESIDE-6K/train/hazy/<name> + RESIDE-6K/train/GT/<name> (6000, ITS and OTS images)\n"
            "RESIDE-6K/test/hazy/<name> + RESIDE-6K/test/GT/<name> (1000, SOTS indoor and outdoor)\n"
            "(a hazy name like 1400_1.png or 0001_0.8_0.2.jpg also finds GT/1400.png, GT/0001.png)",
            {"train": ("RESIDE-6K/train",), "test": ("RESIDE-6K/test",)},
        ),
    ),
    published={"train": 6000, "test": 1000},
    metric="rgb",
    source="https://github.com/IDKiro/DehazeFormer (data links in its README)",
    note="DehazeFormer's 6000/1000 mix of RESIDE indoor and outdoor; the supplement's haze set",
)


def _sots(where: str, repack: str, deanet: str, example: str) -> Dataset:
    """SOTS ``where`` ("indoor" or "outdoor"); ``repack``: DehazeFormer's folder, ``deanet``: DEA-Net's."""
    official = (f"SOTS/{where}", "nyuhaze500") if where == "indoor" else (f"SOTS/{where}",)
    v0 = "\nSOTS/nyuhaze500/hazy + SOTS/nyuhaze500/gt (RESIDE v0; also under SOTS/indoor/)" if where == "indoor" else ""
    return Dataset(
        name=f"sots-{where}",
        title=f"SOTS {where}",
        tasks=("haze",),
        splits=("test",),
        releases=(
            _release(
                "RESIDE release",
                f"SOTS/{where}/hazy/{example} + SOTS/{where}/gt/{example.split('_')[0]}.png (or clear/){v0}",
                {"test": official},
            ),
            _release(
                "DehazeFormer repack",
                f"{repack}/test/hazy/<name> + {repack}/test/GT/<name>",
                {"test": (f"{repack}/test",)},
            ),
            _release(
                "DEA-Net repack",
                f"{deanet}/test/hazy/{example} + {deanet}/test/clear/{example.split('_')[0]}.png",
                {"test": (f"{deanet}/test",)},
            ),
        ),
        metric="rgb",
        source="https://sites.google.com/view/reside-dehaze-datasets (RESIDE, Li et al. 2019)",
        note=f"test only, 500 hazy images; hazy {example} pairs with its clear image by the name before '_'",
    )


READERS = (
    _RESIDE6K,
    _sots("indoor", "RESIDE-IN", "ITS", "1400_1.png"),
    _sots("outdoor", "RESIDE-OUT", "OTS", "0001_0.8_0.2.jpg"),
)
