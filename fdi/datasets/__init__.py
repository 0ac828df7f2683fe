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
from pathlib import Path
from typing import Dict, List, Optional

from ..errors import FDIError
from ..files import atomic_write
from ..progress import ProgressCallback
from .core import SPLITS, Dataset, DatasetSplit, LayoutNotFound, PathLike

__all__ = [
    "SPLITS",
    "Dataset",
    "DatasetSplit",
    "LayoutNotFound",
    "dataset_names",
    "get_dataset",
    "read_dataset",
    "write_pairs_csv",
]

#: reader modules of this package; each defines ``READERS``
MODULES = ("rain", "clean", "daclip")


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


def write_pairs_csv(split: DatasetSplit, path: PathLike) -> Path:
    """Write ``name,degraded,clean`` with absolute paths, atomically; returns the path."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["name", "degraded", "clean"])
    for p in split.pairs:
        writer.writerow([p.name, str(Path(p.degraded).resolve()), str(Path(p.clean).resolve())])
    with atomic_write(path, "w") as fh:
        fh.write(buf.getvalue())
    return Path(path)
