"""DA-CLIP's "universal" data set (Luo et al., ICLR 2024): ``{train,val}/<degradation>/{LQ,GT}``, one folder per task.

``--task`` picks the degradation folder. Its pair counts depend on the task, so the reader carries them per task
(:class:`TaskCountsDataset`). Layout, pairing rules and counts: docs/datasets.md, "daclip".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional

from ..progress import ProgressCallback
from .core import (
    TASKS,
    Context,
    Dataset,
    DatasetSplit,
    Found,
    PathLike,
    Release,
    find_dirs,
    image_files,
    index_by_stem,
    pair_by_rule,
)
from .synth import SYNTHESES, synthesize

#: our task → DA-CLIP's degradation folder (their README and options/test.yml ``distortion``)
FOLDERS: Dict[str, str] = {
    "motion-blur": "motion-blurry",
    "haze": "hazy",
    "jpeg": "jpeg-compressed",
    "lowlight": "low-light",
    "noise": "noisy",
    "raindrop": "raindrop",
    "rainstreak": "rainy",
    "shadow": "shadowed",
    "snow": "snowy",
    "inpainting": "uncompleted",
}
#: our split → DA-CLIP's split folder
SPLIT_FOLDERS = {"train": "train", "test": "val"}

#: the supplement's counts per task, where its sets are DA-CLIP's (docs/datasets.md, "daclip"); inpainting has none
COUNTS: Dict[str, Dict[str, int]] = {
    "rainstreak": {"train": 1800, "test": 100},
    "raindrop": {"train": 861, "test": 58},
    "haze": {"train": 6000, "test": 1000},
    "snow": {"train": 1872, "test": 601},
    "lowlight": {"train": 485, "test": 15},
    "noise": {"train": 3440, "test": 68},
    "motion-blur": {"train": 2103, "test": 1111},
    "shadow": {"train": 2680, "test": 408},
    "jpeg": {"train": 3440, "test": 29},
}

_RAIN100 = re.compile(r"^rain-(\d+)$", re.IGNORECASE)
_RAINDROP = re.compile(r"^(\d+)_rain$", re.IGNORECASE)
_RESIDE = re.compile(r"^([^_]+)_[\d.]+_[\d.]+$")


def _rainy(stem: str) -> List[str]:
    """Rain100H's own names: ``rain-N`` ↔ ``norain-N``."""
    m = _RAIN100.match(stem)
    return [f"norain-{m.group(1)}"] if m else []


def _raindrop(stem: str) -> List[str]:
    """RainDrop's own names: ``N_rain`` ↔ ``N_clean``."""
    m = _RAINDROP.match(stem)
    return [f"{m.group(1)}_clean"] if m else []


def _hazy(stem: str) -> List[str]:
    """RESIDE's own names: ``0001_0.8_0.2`` (OTS/SOTS) or ``1_1_0.90179`` (ITS) ↔ ``0001``, ``1``."""
    m = _RESIDE.match(stem)
    return [m.group(1)] if m else []


def _shadowed(stem: str) -> List[str]:
    """SRD's own names: ``X`` ↔ ``X_no_shadow`` (train) or ``X_free`` (test)."""
    return [f"{stem}_no_shadow", f"{stem}_free"]


#: GT names other than the LQ's own, per degradation folder: the source sets' names, kept by users who copy a
#: set's degraded images into LQ and its clean ones into GT (DA-CLIP pairs the two folders by sorted order)
SOURCE_NAMES: Dict[str, Callable[[str], List[str]]] = {
    "rainy": _rainy,
    "raindrop": _raindrop,
    "hazy": _hazy,
    "shadowed": _shadowed,
}


def _gt_key(folder: str, clean: Mapping[str, Path]) -> Callable[[Path], str]:
    """LQ file → the GT stem: the same name when GT has it, else the source set's name that GT has, else the same
    name (so that the file is reported without ground truth)."""
    rule = SOURCE_NAMES.get(folder, lambda stem: [])

    def key(p: Path) -> str:
        for candidate in [p.stem, *rule(p.stem)]:
            if candidate.lower() in clean:
                return candidate
        return p.stem

    return key


def _scan(root: Path, split: str, ctx: Context) -> Optional[Found]:
    folder = FOLDERS[ctx.task]
    for top in find_dirs(root, f"{SPLIT_FOLDERS[split]}/{folder}", max_depth=5):
        gt = image_files(top / "GT")
        lq = image_files(top / "LQ")
        if not gt:
            continue
        if not lq and ctx.task in SYNTHESES:
            # DA-CLIP ships noisy/ and jpeg-compressed/ as GT only; its scripts/generate_LQ.py makes LQ
            return Found(synthesize("daclip", split, [p.stem for p in gt], gt, ctx), [], top)
        clean = index_by_stem(gt)
        pairs, missing = pair_by_rule(lq, clean, _gt_key(folder, clean))
        return Found(pairs, missing, top)
    return None


@dataclass(frozen=True)
class TaskCountsDataset(Dataset):
    """A :class:`Dataset` whose published counts depend on the task: ``counts[task][split]``.

    ``published`` stays empty; :meth:`read` compares the counts of the task read, with the core's warning.
    """

    counts: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

    def read(
        self,
        root: PathLike,
        split: str,
        task: Optional[str] = None,
        cache: Optional[PathLike] = None,
        seed: int = 0,
        progress: Optional[ProgressCallback] = None,
    ) -> DatasetSplit:
        """As :meth:`Dataset.read`, with the count warning against ``counts[task]``."""
        task = self.check(split, task)
        plain = {f.name: getattr(self, f.name) for f in fields(Dataset)}
        plain["published"] = self.counts.get(task, {})
        return Dataset(**plain).read(root, split, task=task, cache=cache, seed=seed, progress=progress)


_LAYOUT = (
    "universal/train/<degradation>/LQ/*.png + universal/train/<degradation>/GT/*.png (train)\n"
    "universal/val/<degradation>/LQ/*.png + universal/val/<degradation>/GT/*.png (test)\n"
    "<degradation> by --task: "
    + ", ".join(f"{t} → {FOLDERS[t]}" for t in TASKS if t in FOLDERS)
    + "\nLQ ↔ GT by name (or the source set's names: rain-N ↔ norain-N, N_rain ↔ N_clean,\n"
    "0001_0.8_0.2 ↔ 0001, X ↔ X_no_shadow / X_free); noisy/ and jpeg-compressed/ may hold GT only\n"
    "(LQ synthesized: σ = 50, JPEG quality 10)"
)

READERS = (
    TaskCountsDataset(
        name="daclip",
        title="DA-CLIP universal",
        tasks=tuple(t for t in TASKS if t in FOLDERS),
        splits=("train", "test"),
        releases=(Release("DA-CLIP universal tree (train/ and val/ per degradation)", _LAYOUT, _scan),),
        metric="rgb",
        source="https://github.com/Algolzw/daclip-uir#dataset-preparation (Luo et al., ICLR 2024)",
        note="ten tasks in one tree, --task picks the folder; counts per task are the supplement's (docs/datasets.md)",
        counts=COUNTS,
    ),
)
