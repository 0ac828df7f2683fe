"""Data set readers: the pairs of restoration data sets as their downloads unpack.

``read_dataset("rain100h", ROOT, "test")`` → :class:`DatasetSplit` (pairs, skipped images, warnings, the
metric the field reports on the set). ROOT is the folder the archive(s) were unpacked into, or the set's own
top folder. ``write_pairs_csv`` writes the ``degraded,clean`` list that ``extract``/``train``/``eval`` read.
Each set's layout, pairing rule, split and counts: docs/datasets.md.
"""

from __future__ import annotations

import csv
import importlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..data import Pair
from ..errors import FDIError
from ..files import atomic_write
from ..progress import ProgressCallback
from .core import SPLITS, Dataset, DatasetSplit, LayoutNotFound, PathLike

__all__ = [
    "SPLITS",
    "Dataset",
    "DatasetSource",
    "DatasetWarning",
    "DatasetSplit",
    "LayoutNotFound",
    "cache_beside",
    "dataset_names",
    "dataset_source",
    "get_dataset",
    "read_dataset",
    "write_pairs_csv",
]

#: reader modules of this package; each defines ``READERS``
MODULES = ("rain", "snow", "haze", "light", "blur", "shadow", "clean", "daclip")


def _registry() -> Dict[str, Dataset]:
    out: Dict[str, Dataset] = {}
    for module in MODULES:
        for reader in importlib.import_module(f".{module}", __name__).READERS:
            assert reader.name not in out, reader.name
            out[reader.name] = reader
    return dict(sorted(out.items()))


DATASETS: Dict[str, Dataset] = _registry()


def dataset_names() -> List[str]:
    """The reader names, sorted."""
    return list(DATASETS)


def get_dataset(name: str) -> Dataset:
    """The reader called ``name``; an unknown name is an error listing the known ones."""
    reader = DATASETS.get(name.strip().lower())
    if reader is None:
        raise FDIError(f"unknown data set {name!r}; use one of: {', '.join(DATASETS)} ('python -m fdi datasets list')")
    return reader


def read_dataset(
    name: str,
    root: PathLike,
    split: str,
    task: Optional[str] = None,
    cache: Optional[PathLike] = None,
    seed: int = 0,
    progress: Optional[ProgressCallback] = None,
) -> DatasetSplit:
    """The pairs of ``split`` of data set ``name`` under ``root`` (see :meth:`Dataset.read`)."""
    if split not in SPLITS:
        raise FDIError(f"unknown split {split!r}; use one of: {', '.join(SPLITS)}")
    return get_dataset(name).read(root, split, task=task, cache=cache, seed=seed, progress=progress)


def write_pairs_csv(pairs: Sequence[Pair], path: PathLike) -> Path:
    """Write ``name,degraded,clean`` (absolute paths) of ``pairs`` (a split's, a subset's), atomically; returns the
    path."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["name", "degraded", "clean"])
    for p in pairs:
        writer.writerow([p.name, str(Path(p.degraded).resolve()), str(Path(p.clean).resolve())])
    with atomic_write(path, "w") as fh:
        fh.write(buf.getvalue())
    return Path(path)


class DatasetWarning(UserWarning):
    """A data set reader's warning: degraded images without ground truth, counts unlike the supplement's."""


@dataclass(frozen=True)
class DatasetSource:
    """Pairs named by a data set (``--dataset NAME --data ROOT``): what :func:`fdi.data.collect_pairs` reads.

    Attributes:
        name, root, split, task: see :func:`read_dataset`.
        cache: folder for synthesized degraded images (clean-only sets), by convention
            ``<output folder>/fdi-datasets``.
        seed: seed of those synthesized images.
    """

    name: str
    root: str
    split: str = "train"
    task: Optional[str] = None
    cache: Optional[str] = None
    seed: int = 0

    def read(self, progress: Optional[ProgressCallback] = None) -> DatasetSplit:
        """:func:`read_dataset` of these fields; each of the split's warnings is issued as a :class:`DatasetWarning`."""
        split = read_dataset(self.name, self.root, self.split, self.task, self.cache, self.seed, progress)
        for message in split.warnings:
            warnings.warn(message, DatasetWarning, stacklevel=2)
        return split


def cache_beside(output: PathLike) -> Path:
    """The synthesized-image cache of an output file or folder: ``fdi-datasets`` in the folder that holds it."""
    return Path(output).expanduser().absolute().parent / "fdi-datasets"


def dataset_source(
    name: Optional[str],
    root: Optional[PathLike],
    split: str,
    task: Optional[str] = None,
    output: Optional[PathLike] = None,
    seed: int = 0,
) -> Optional[DatasetSource]:
    """The :class:`DatasetSource` of the ``--dataset``/``--data``/``--task`` options (``None`` when no data set is
    named), checked without reading ROOT; its cache is :func:`cache_beside` ``output``."""
    if name is None:
        if root is not None:
            raise FDIError("--data ROOT needs --dataset NAME (which data set is unpacked there)")
        if task is not None:
            raise FDIError("--task needs --dataset NAME (it picks one of the data set's tasks)")
        return None
    if root is None:
        raise FDIError(f"--dataset {name} needs --data ROOT, the folder it was unpacked into")
    get_dataset(name).check(split, task)
    cache = str(cache_beside(output)) if output is not None else None
    return DatasetSource(name, str(Path(root).expanduser()), split, task, cache, seed)
