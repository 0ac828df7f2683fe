"""Rain sets: Rain100H, Rain100L (both JORDER releases and the common repacks), Rain1400 (DDN), RainDrop
(AttentiveGAN), RainDS (synthetic and real) and Outdoor-Rain (heavy rain: streaks and haze).

Layouts, pairing rules and counts: docs/datasets.md.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

from .core import (
    Context,
    Dataset,
    Found,
    Release,
    find_dir,
    find_with,
    image_files,
    index_by_stem,
    pair_by_rule,
)

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


# ---------------------------------------------------------------------------------------------- helpers
def _holds_named(folder: Path, rule: "re.Pattern[str]") -> bool:
    """Whether ``folder`` holds an image whose stem follows ``rule`` (a set's own name rule)."""
    return any(rule.match(p.stem) for p in image_files(folder))


def _scan_pairs(degraded: Path, clean: Path, top: Path, key: Callable[[Path], Optional[str]]) -> Found:
    """Pair the images of ``degraded`` with those of ``clean`` by ``key`` (pair name: the degraded stem)."""
    pairs, missing = pair_by_rule(image_files(degraded), index_by_stem(image_files(clean)), key)
    return Found(pairs, missing, top)


def _key(rule: "re.Pattern[str]", clean: str) -> Callable[[Path], Optional[str]]:
    """A clean-name rule: the degraded stem matched by ``rule``, expanded by ``clean`` (``r"\\1"``)."""

    def key(p: Path) -> Optional[str]:
        m = rule.match(p.stem)
        return m.expand(clean) if m else None

    return key


# ---------------------------------------------------------------------------------------------- Rain1400
_RAIN1400 = re.compile(r"^(\d+)_\d+$")


def _rain1400_release(name: str, tails: Dict[str, str], layout: str) -> Release:
    def scan(root: Path, split: str, ctx: Context) -> Optional[Found]:
        top = find_with(root, (tails[split],), ("rainy_image", "ground_truth"))
        if top is None:
            return None
        return _scan_pairs(top / "rainy_image", top / "ground_truth", top, _key(_RAIN1400, r"\1"))

    return Release(name, layout, scan)


RAIN1400 = Dataset(
    name="rain1400",
    title="Rain1400",
    tasks=("rainstreak",),
    splits=("train", "test"),
    releases=(
        _rain1400_release(
            "DDN release (Fu et al. site)",
            {"train": "training", "test": "testing"},
            "training/rainy_image/N_K.jpg + training/ground_truth/N.jpg (K = 1..14; scenes 1-900)\n"
            "testing/rainy_image/N_K.jpg + testing/ground_truth/N.jpg (scenes 901-1000)",
        ),
        _rain1400_release(
            "PReNet folders",
            {"train": "Rain12600", "test": "Rain1400"},
            "Rain12600/rainy_image/N_K.jpg + Rain12600/ground_truth/N.jpg\n"
            "Rain1400/rainy_image/N_K.jpg + Rain1400/ground_truth/N.jpg",
        ),
    ),
    published={"train": 3780, "test": 1400},
    metric="y",
    source="https://xueyangfu.github.io/projects/cvpr2017.html (DDN, Fu et al. CVPR 2017)",
    note="14 rain images per scene; the test 1400 is the release's, the train 3780 is an unpublished subset",
)


# ---------------------------------------------------------------------------------------------- RainDrop
_RAINDROP = re.compile(r"^(.+)_rain$", re.IGNORECASE)


def _scan_raindrop(root: Path, split: str, ctx: Context) -> Optional[Found]:
    top = find_with(
        root,
        ("train" if split == "train" else "test_a",),
        ("data", "gt"),
        lambda d: _holds_named(d / "data", _RAINDROP),
    )
    if top is None:
        return None
    return _scan_pairs(top / "data", top / "gt", top, _key(_RAINDROP, r"\1_clean"))


RAINDROP = Dataset(
    name="raindrop",
    title="RainDrop",
    tasks=("raindrop",),
    splits=("train", "test"),
    releases=(
        Release(
            "AttentiveGAN release (Qian et al.)",
            "train/data/N_rain.png + train/gt/N_clean.png (often under raindrop_data/)\n"
            "test_a/data/N_rain.png + test_a/gt/N_clean.png (test_b/ is not read)",
            _scan_raindrop,
        ),
    ),
    published={"train": 861, "test": 58},
    metric="y",
    source="https://github.com/rui1996/DeRaindrop (Google Drive link in its README)",
    note="test = test_a (58 well-aligned pairs, the paper's count); N_rain pairs with N_clean, not by sorted order",
)


# ---------------------------------------------------------------------------------------------- RainDS
#: a task's folder in a RainDS split, and the prefix of its degraded images in RainDS_syn
_RAINDS_TASKS: Dict[str, Tuple[str, str]] = {
    "rainstreak+raindrop": ("rainstreak_raindrop", "rd-rain"),
    "rainstreak": ("rainstreak", "rain"),
    "raindrop": ("raindrop", "rd"),
}


def _rainds(kind: str) -> Dataset:
    """RainDS_syn (``kind="syn"``: ``[pie-]rd-rain-N`` ↔ ``[pie-]norain-N``) or RainDS_real (same names)."""
    folder = f"RainDS_{kind}"

    def scan(root: Path, split: str, ctx: Context) -> Optional[Found]:
        sub, prefix = _RAINDS_TASKS[ctx.task]
        # RainDS_syn copies come with train_set/ or train/; RainDS_real with train_set/ (docs/datasets.md)
        tails = (f"{folder}/{split}_set", f"{folder}/{split}") if kind == "syn" else (f"{folder}/{split}_set",)
        top = find_with(root, tails, ("gt", sub))
        if top is None:
            return None
        if kind == "real":
            return _scan_pairs(top / sub, top / "gt", top, lambda p: p.stem)
        rule = re.compile(rf"^(pie-)?{re.escape(prefix)}-(\d+)$", re.IGNORECASE)
        return _scan_pairs(top / sub, top / "gt", top, _key(rule, r"\g<1>norain-\2"))

    if kind == "syn":
        names = (
            "gt/[pie-]norain-N.png + rainstreak_raindrop/[pie-]rd-rain-N.png\n"
            "    (--task rainstreak: rainstreak/[pie-]rain-N.png; raindrop: raindrop/[pie-]rd-N.png)"
        )
    else:
        names = "gt/N.png + rainstreak_raindrop/N.png (same name; --task rainstreak, raindrop: those folders)"
    return Dataset(
        name=f"rainds-{kind}",
        title=f"RainDS ({folder})",
        tasks=tuple(_RAINDS_TASKS),
        splits=("train", "test"),
        releases=(
            Release(
                "RainDS release (Quan et al.)",
                f"{folder}/train_set/ and {folder}/test_set/"
                + (" (or train/, test/)" if kind == "syn" else "")
                + f", each:\n    {names}",
                scan,
            ),
        ),
        published={"train": 1000, "test": 200} if kind == "syn" else {},
        metric="y",
        source="https://github.com/Songforrr/RainDS_CCN (Google Drive link in its README)",
        note=(
            "the supplement's RainDS counts (1000/200) are this synthetic part; pie- scenes keep their prefix"
            if kind == "syn"
            else "real captures; the supplement gives no counts for this part"
        ),
    )


# ---------------------------------------------------------------------------------------------- Outdoor-Rain
_OUTDOOR = re.compile(r"^(im_\d+)_s\d+_a\d+$", re.IGNORECASE)


def _rain_dir(top: Path) -> Optional[Path]:
    """The degraded-image folder of an Outdoor-Rain split: ``in/`` (the release) or ``data/`` (repacks)."""
    for name in ("in", "data"):
        if _holds_named(top / name, _OUTDOOR):
            return top / name
    return None


def _outdoor_release(name: str, tails: Dict[str, str], layout: str) -> Release:
    def scan(root: Path, split: str, ctx: Context) -> Optional[Found]:
        if split not in tails:
            return None
        top = find_with(root, (tails[split],), ("gt",), lambda d: _rain_dir(d) is not None)
        if top is None:
            return None
        return _scan_pairs(_rain_dir(top), top / "gt", top, _key(_OUTDOOR, r"\1"))

    return Release(name, layout, scan)


OUTDOOR_RAIN = Dataset(
    name="outdoor-rain",
    title="Outdoor-Rain",
    tasks=("rainstreak+haze",),
    splits=("train", "test"),
    releases=(
        _outdoor_release(
            "Outdoor-Rain release (Li et al., CVPR19RainTrain)",
            {"train": "CVPR19RainTrain/train", "test": "CVPR19RainTrain/test"},
            "CVPR19RainTrain/train/in/im_NNNN_sS_aA.png + CVPR19RainTrain/train/gt/im_NNNN.png\n"
            "    (data/ for in/ in some copies; streak/, trans/, atm/ skipped)\n"
            "CVPR19RainTrain/test/in/ or data/ + CVPR19RainTrain/test/gt/ (same names)",
        ),
        _outdoor_release(
            "Test1 (HeavyRainRemoval repository layout)",
            {"test": "Test1"},
            "Test1/in/im_NNNN_sS_aA.png + Test1/gt/im_NNNN.png (test only)",
        ),
    ),
    published={"train": 750, "test": 50},
    metric="y",
    source="https://github.com/liruoteng/HeavyRainRemoval (Dropbox 'Outdoor-Rain', 7 GB)",
    note="rain streaks + rain veil (haze); the supplement's 750/50 is an unpublished subset",
)


READERS = (
    _rain100("Heavy", "H"),
    _rain100("Light", "L"),
    RAIN1400,
    RAINDROP,
    _rainds("syn"),
    _rainds("real"),
    OUTDOOR_RAIN,
)
