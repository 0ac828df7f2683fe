"""The machinery every data set reader shares: finding a tree under ROOT, listing images, pairing by rule.

A reader is a :class:`Dataset` with one or more :class:`Release` (the ways the set is found on disk).
``Dataset.read(root, split)`` tries the releases in order and returns a :class:`DatasetSplit`; a ROOT that
holds none of them raises :class:`LayoutNotFound` (expected layout and what was found). Layouts, rules
and counts of every set: docs/datasets.md.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from ..data import Pair
from ..errors import FDIError
from ..images import IMAGE_SUFFIXES
from ..progress import ProgressCallback

PathLike = Union[str, os.PathLike]

SPLITS = ("train", "test")
METRICS = ("y", "rgb")
#: single degradations, by the supplement's ten tasks (plus DA-CLIP's inpainting); a mixed task joins several
#: with ``+`` in this order (``rainstreak+raindrop``)
TASKS = (
    "rainstreak",
    "raindrop",
    "haze",
    "snow",
    "lowlight",
    "noise",
    "motion-blur",
    "defocus-blur",
    "shadow",
    "jpeg",
    "inpainting",
)

#: folder names that archives and operating systems leave beside the data
JUNK_DIRS = frozenset(
    {"__MACOSX", ".git", ".svn", "@eaDir", "$RECYCLE.BIN", ".ipynb_checkpoints", "System Volume Information"}
)
#: file names that are never data
JUNK_FILES = frozenset({"Thumbs.db", "desktop.ini", ".DS_Store"})


class LayoutNotFound(FDIError):
    """ROOT does not hold the named data set in any layout its reader knows."""


# ---------------------------------------------------------------------------------------------- files
def is_junk(path: Path) -> bool:
    """Archive and OS debris: ``__MACOSX`` and hidden folders, ``._*`` resource forks, ``Thumbs.db``."""
    return any(p in JUNK_DIRS or p.startswith(".") for p in path.parts[:-1]) or (
        path.name in JUNK_FILES or path.name.startswith(".")
    )


def natural_key(text: str) -> Tuple:
    """Sort key that orders ``rain-2`` before ``rain-10``."""
    return tuple(int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text))


def image_files(folder: Path, recursive: bool = False) -> List[Path]:
    """Image files of ``folder`` (and its sub-folders when ``recursive``), junk skipped, in natural order."""
    if not folder.is_dir():
        return []
    entries = folder.rglob("*") if recursive else folder.iterdir()
    out = [
        p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES and not is_junk(p.relative_to(folder)) and p.is_file()
    ]
    return sorted(out, key=lambda p: natural_key(str(p.relative_to(folder))))


def _walk_dirs(root: Path, max_depth: int) -> Iterable[Path]:
    yield root
    if max_depth <= 0:
        return
    try:
        children = sorted((c for c in root.iterdir() if c.is_dir()), key=lambda c: natural_key(c.name))
    except OSError:
        return
    for child in children:
        if child.name in JUNK_DIRS or child.name.startswith("."):
            continue
        yield from _walk_dirs(child, max_depth - 1)


def find_dirs(root: Path, tail: str, max_depth: int = 4) -> List[Path]:
    """Folders at or under ``root`` (``max_depth`` levels) whose path ends with ``tail``.

    ``tail`` is ``/``-separated; each part is a case-insensitive glob (``Rain100H``, ``rain_data_*_Heavy``).
    Matching the end of the absolute path lets ROOT be the unpack folder or any folder of the tail itself
    (``tail="SOTS/indoor"`` is found from ``…/data``, ``…/data/SOTS`` or ``…/data/SOTS/indoor``).
    """
    parts = [p.lower() for p in tail.strip("/").split("/")]
    found = []
    for d in _walk_dirs(root.resolve(), max_depth):
        tail_parts = [p.lower() for p in d.parts[-len(parts) :]]
        if len(tail_parts) == len(parts) and all(fnmatch.fnmatchcase(a, b) for a, b in zip(tail_parts, parts)):
            found.append(d)
    return found


def find_dir(root: Path, *tails: str, max_depth: int = 4) -> Optional[Path]:
    """The first folder found for the first ``tail`` that matches (see :func:`find_dirs`), or ``None``."""
    for tail in tails:
        hits = find_dirs(root, tail, max_depth)
        if hits:
            return hits[0]
    return None


def find_with(
    root: Path,
    tails: Iterable[str],
    subdirs: Sequence[str],
    accept: Optional[Callable[[Path], bool]] = None,
    max_depth: int = 4,
) -> Optional[Path]:
    """The first folder found for ``tails`` (see :func:`find_dirs`) that holds every one of ``subdirs``
    and passes ``accept``; ``None`` when none does. Lets a generic tail (``train``, ``all``) stand for a set's
    folder without picking up another set's folder of the same name."""
    for tail in tails:
        for d in find_dirs(root, tail, max_depth):
            if all((d / s).is_dir() for s in subdirs) and (accept is None or accept(d)):
                return d
    return None


def child(top: Path, names: Sequence[str]) -> Optional[Path]:
    """The sub-folder of ``top`` named one of ``names`` (case-insensitive, first name first), or ``None``."""
    try:
        subs = sorted((c for c in top.iterdir() if c.is_dir()), key=lambda c: natural_key(c.name))
    except OSError:
        return None
    for name in names:
        for c in subs:
            if c.name.lower() == name.lower():
                return c
    return None


def candidates(root: Path, tails: Sequence[str]) -> Iterator[Path]:
    """Every folder found for each of ``tails`` in turn (see :func:`find_dirs`): a ROOT may
    hold several ``train/`` folders of which only one is this set's."""
    for tail in tails:
        yield from find_dirs(root, tail)


def describe_tree(root: Path, limit: int = 12) -> str:
    """A short listing of what ROOT holds (folders with their image counts, a few files), for errors."""
    root = Path(root)
    if not root.is_dir():
        return f"{root} is not a folder"
    lines = []
    for d in list(_walk_dirs(root, 2))[1:]:
        n = len(image_files(d))
        lines.append(f"  {d.relative_to(root).as_posix()}/" + (f" ({n} images)" if n else ""))
        if len(lines) >= limit:
            lines.append("  …")
            break
    files = image_files(root)
    if files:
        lines.insert(0, f"  {len(files)} images at the top (e.g. {files[0].name})")
    return "\n".join(lines) if lines else "  nothing (no folders, no images)"


# ---------------------------------------------------------------------------------------------- pairing
def index_by_stem(files: Iterable[Path], key: Callable[[str], str] = str.lower) -> Dict[str, Path]:
    """``{key(stem): path}``; two files with one key (``a.png`` and ``a.jpg``) are an error naming both."""
    out: Dict[str, Path] = {}
    for p in files:
        k = key(p.stem)
        if k in out:
            raise FDIError(
                f"two images answer to the name {p.stem!r}: {out[k]} and {p}; "
                "the data set holds a duplicate, remove one of them"
            )
        out[k] = p
    return out


def pair_by_rule(
    degraded: Sequence[Path],
    clean: Mapping[str, Path],
    clean_key: Callable[[Path], Optional[str]],
    name: Callable[[Path], str] = lambda p: p.stem,
) -> Tuple[List[Pair], List[Path]]:
    """Pair each degraded file with ``clean[clean_key(file)]``: ``(pairs, degraded files without ground truth)``.

    ``clean_key`` returning ``None`` means "not a degraded image of this set" (a side map): the file is skipped
    silently. Pair names (``name``) must be unique; a repeat is an error, as it would merge two outputs.
    """
    pairs: List[Pair] = []
    missing: List[Path] = []
    seen: Dict[str, Path] = {}
    for d in degraded:
        k = clean_key(d)
        if k is None:
            continue
        c = clean.get(k.lower())
        if c is None:
            missing.append(d)
            continue
        n = name(d)
        if n in seen:
            raise FDIError(f"two degraded images get the pair name {n!r}: {seen[n]} and {d}; report this layout")
        seen[n] = d
        pairs.append(Pair(n, d, c))
    return pairs, missing


# ---------------------------------------------------------------------------------------------- readers
@dataclass(frozen=True)
class Context:
    """What a release scan may need beyond ROOT and the split.

    Attributes:
        task: the task asked for (``--task``; a set's only task otherwise).
        cache: folder where synthesized degraded images are written once (clean-only sets); ``None`` = refuse.
        seed: seed of synthesized degradations.
        progress: called ``(done, total)`` while synthesizing.
    """

    task: str
    cache: Optional[Path] = None
    seed: int = 0
    progress: Optional[ProgressCallback] = None


@dataclass(frozen=True)
class Found:
    """What a release found: its pairs, the degraded images without ground truth, the tree's top folder."""

    pairs: List[Pair]
    missing: List[Path]
    top: Path


@dataclass(frozen=True)
class Release:
    """One way a data set is found on disk: a name (``"2017 release"``), its tree for messages, and a scan.

    ``scan(root, split, context)`` returns ``None`` when ROOT does not hold this release's folders for
    ``split``, else what it found there.
    """

    name: str
    layout: str
    scan: Callable[[Path, str, Context], Optional[Found]]


@dataclass
class DatasetSplit:
    """The pairs of one split of one data set, as found under ROOT.

    Attributes:
        dataset, split, task, release: what was read.
        top: the data set's folder found under ROOT.
        pairs: ``(name, degraded, clean)`` in the set's order.
        missing_gt: degraded images skipped because their ground truth is absent.
        warnings: one line each (missing ground truth, counts unlike the supplement's).
        metric: ``"y"`` (BT.601 luma) or ``"rgb"``: how the field reports PSNR/SSIM on this set.
        crop_border: pixels cut from each edge before the metrics.
        reference: whether the pairs hold ground truth (see :class:`Dataset`).
    """

    dataset: str
    split: str
    task: str
    release: str
    top: Path
    pairs: List[Pair]
    missing_gt: List[Path] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    metric: str = "rgb"
    crop_border: int = 0
    reference: bool = True


@dataclass(frozen=True)
class Dataset:
    """A data set reader (see the module doc).

    Attributes:
        name: the CLI name (``rain100h``).
        title: the set's own name (``Rain100H``).
        tasks: the tasks it serves; the first is the default of ``--task``.
        splits: the splits it has (``train``, ``test``).
        releases: the layouts it is found in, tried in order.
        published: the supplement's pair counts per split (absent where the paper gives none).
        metric: ``"y"`` or ``"rgb"`` (see :class:`DatasetSplit`).
        crop_border: see :class:`DatasetSplit`.
        source: where to download it (one line).
        note: one line on the paper's use or the release's traps, for ``datasets list``.
        reference: ``False`` for a set without ground truth (each pair's ``clean`` is its degraded image, for
            ``restore``; full-reference metrics are refused).
    """

    name: str
    title: str
    tasks: Tuple[str, ...]
    splits: Tuple[str, ...]
    releases: Tuple[Release, ...]
    published: Mapping[str, int] = field(default_factory=dict)
    metric: str = "rgb"
    crop_border: int = 0
    source: str = ""
    note: str = ""
    reference: bool = True

    def __post_init__(self) -> None:
        assert self.metric in METRICS and self.tasks and self.releases
        assert all(part in TASKS for task in self.tasks for part in task.split("+")), self.tasks
        assert all(s in SPLITS for s in self.splits)

    @property
    def layout(self) -> str:
        """Every release's expected tree, for ``datasets list`` and errors."""
        return "\n".join(
            f"{r.name}:\n" + "\n".join("    " + line for line in r.layout.splitlines()) for r in self.releases
        )

    def check(self, split: str, task: Optional[str]) -> str:
        """Refuse an unknown split or task (before any scan); returns the task to use."""
        if split not in self.splits:
            raise FDIError(
                f"{self.name} has no {split!r} split (it has: {', '.join(self.splits)}); "
                + ("use another data set for training (see 'python -m fdi datasets list')" if split == "train" else "")
            )
        if task is None:
            return self.tasks[0]
        if task not in self.tasks:
            raise FDIError(f"{self.name} has no task {task!r}; use --task with one of: {', '.join(self.tasks)}")
        return task

    def read(
        self,
        root: PathLike,
        split: str,
        task: Optional[str] = None,
        cache: Optional[PathLike] = None,
        seed: int = 0,
        progress: Optional[ProgressCallback] = None,
    ) -> DatasetSplit:
        """The pairs of ``split`` under ``root`` (see :class:`DatasetSplit`).

        Raises :class:`LayoutNotFound` when no release is found, :class:`FDIError` for a bad split or task.
        """
        task = self.check(split, task)
        r = Path(root).expanduser()
        if not r.is_dir():
            raise FDIError(
                f"data folder {str(r)!r} does not exist or is not a folder; "
                f"give the folder you unpacked {self.title} into"
            )
        ctx = Context(task, Path(cache) if cache is not None else None, seed, progress)
        for release in self.releases:
            found = release.scan(r, split, ctx)
            if found is not None and (found.pairs or found.missing):
                return self._split(release, found, split, task)
        raise LayoutNotFound(
            f"{str(r)!r} does not hold {self.title} ({self.name}, {split} split) in any layout this reader knows.\n"
            f"Expected (under the folder you unpacked into, or that folder itself):\n"
            + "\n".join("  " + line for line in self.layout.splitlines())
            + f"\nFound:\n{describe_tree(r)}\nUnpack the download as it comes, or point at the right folder "
            f"(docs/datasets.md, '{self.name}')."
        )

    def _split(self, release: Release, found: Found, split: str, task: str) -> DatasetSplit:
        warnings = []
        if found.missing:
            names = ", ".join(p.name for p in found.missing[:8]) + (" …" if len(found.missing) > 8 else "")
            warnings.append(
                f"{self.name} {split}: skipped {len(found.missing)} degraded image(s) that have no ground truth: "
                f"{names}"
            )
        expected = self.published.get(split)
        if expected is not None and expected != len(found.pairs):
            warnings.append(
                f"{self.name} {split}: {len(found.pairs)} pairs found, the paper's supplement reports {expected}; "
                f"this tree is the {release.name}, see docs/datasets.md ('{self.name}') for which release the "
                "paper's counts belong to"
            )
        if not self.reference:
            warnings.append(
                f"{self.name} has no ground truth: each pair's clean image is its degraded input, for restore only; "
                "PSNR/SSIM/LPIPS do not apply, judge the restored images by eye or with a no-reference score"
            )
        return DatasetSplit(
            self.name,
            split,
            task,
            release.name,
            found.top,
            found.pairs,
            found.missing,
            warnings,
            self.metric,
            self.crop_border,
            self.reference,
        )
