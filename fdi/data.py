"""Paired training data: (degraded, clean) images, cropped and flipped together, deterministically.

Sources of pairs
    * two folders matched by file stem (:func:`fdi.images.pair_folders`: ``rain_001.png`` pairs with
      ``rain_001.jpg``);
    * a list file: CSV with a header that has the columns ``degraded`` and ``clean``, or JSONL with
      one object per line holding the keys ``degraded`` and ``clean``. Relative paths are relative to
      the list file's folder (so a dataset folder with its list can be moved as a whole). Blank lines
      and JSONL lines starting with ``#`` are skipped; a ``name`` column/key is optional.

Augmentation (decisions; the paper trains at 512 px, see docs/design.md "Training")
    1. The degraded image is resized (bicubic, antialiased, clamped to 0..1) so that its *shorter*
       side equals ``resolution``, keeping its aspect ratio. The clean image is resized to exactly the
       same ``(H', W')``: pairs whose two images differ in size (a dataset that stores the clean image
       at another scale) are therefore resized together, not refused.
    2. A ``resolution × resolution`` window is cropped at the same place from both images: uniformly
       random in training, centred otherwise.
    3. Both images are flipped horizontally together with probability 0.5 (training only).

Determinism
    The crop position and the flip of sample ``index`` in epoch ``epoch`` come from a generator seeded
    with ``(seed, epoch, index)`` only, never from global RNG state, so a sample is the same whatever
    the number of data-loader workers or processes and whatever happened before — which is what makes
    a resumed training run identical to an uninterrupted one. The order in which samples are visited
    is :class:`PairStream`'s business (one seeded permutation per epoch).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from .errors import FDIError
from .images import IMAGE_SUFFIXES, load_image, pair_folders
from .seeds import seeded_generator

if TYPE_CHECKING:
    from .datasets import DatasetSource

PathLike = Union[str, os.PathLike]

LIST_SUFFIXES = (".csv", ".jsonl")


@dataclass(frozen=True)
class Pair:
    """One training pair: a name (the stem, for logs) and the two image paths."""

    name: str
    degraded: Path
    clean: Path


# ---------------------------------------------------------------------------------------------- sources
def _list_path(base: Path, value, lineno: int, key: str, source: str) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise FDIError(f"{source} line {lineno}: {key!r} is empty or not a string; give the path of the {key} image")
    p = Path(value.strip())
    p = p if p.is_absolute() else base / p
    if p.suffix.lower() not in IMAGE_SUFFIXES:
        raise FDIError(
            f"{source} line {lineno}: {key} path {value!r} is not an image file name (accepted: "
            f"{' '.join(IMAGE_SUFFIXES)}); fix the list"
        )
    if not p.is_file():
        raise FDIError(
            f"{source} line {lineno}: {key} image {str(p)!r} does not exist; "
            "fix the path (relative paths are relative to the list file's folder)"
        )
    return p


def read_pairs_file(path: PathLike) -> List[Pair]:
    """Read a CSV or JSONL list of pairs (see the module doc). Every listed file must exist."""
    p = Path(path)
    source = p.name
    if not p.is_file():
        raise FDIError(f"pairs file {str(p)!r} does not exist; check the path")
    suffix = p.suffix.lower()
    if suffix not in LIST_SUFFIXES:
        raise FDIError(
            f"pairs file {p.name!r} must be a .csv (columns degraded,clean) or a .jsonl (keys degraded, clean) file"
        )
    base = p.parent
    rows: List[Tuple[int, dict]] = []
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise FDIError(f"pairs file {p.name!r} is not UTF-8 text; save it as UTF-8") from None
    if suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        fields = [f.strip() for f in (reader.fieldnames or [])]
        if "degraded" not in fields or "clean" not in fields:
            raise FDIError(
                f"pairs file {source!r} needs a header line with the columns 'degraded' and 'clean' (found: "
                f"{', '.join(fields) or 'none'}); add it"
            )
        for i, row in enumerate(reader, start=2):
            row = {(k or "").strip(): v for k, v in row.items()}
            if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                continue
            rows.append((i, row))
    else:
        for i, line in enumerate(text.splitlines(), start=1):
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            try:
                obj = json.loads(s)
            except json.JSONDecodeError as exc:
                raise FDIError(
                    f"{source} line {i} is not valid JSON ({exc.msg}); write one object per "
                    'line like {"degraded": "a.png", "clean": "b.png"}'
                ) from None
            if not isinstance(obj, dict) or "degraded" not in obj or "clean" not in obj:
                raise FDIError(
                    f"{source} line {i} must be an object with the keys 'degraded' and 'clean'; fix that line"
                )
            rows.append((i, obj))
    pairs: List[Pair] = []
    seen = {}
    for lineno, row in rows:
        d = _list_path(base, row.get("degraded"), lineno, "degraded", source)
        c = _list_path(base, row.get("clean"), lineno, "clean", source)
        name = str(row.get("name") or d.stem)
        if name in seen:
            name = f"{name}#{lineno}"
        seen[name] = lineno
        pairs.append(Pair(name, d, c))
    if not pairs:
        raise FDIError(f"pairs file {source!r} lists no pairs; add at least one (degraded, clean) line")
    return pairs


def collect_pairs(
    degraded_dir: Optional[PathLike] = None,
    clean_dir: Optional[PathLike] = None,
    pairs_file: Optional[PathLike] = None,
    what: str = "training",
    dataset: Optional["DatasetSource"] = None,
) -> List[Pair]:
    """The pairs of a list file, of two folders matched by stem, or of a data set (exactly one of the three).

    Raises :class:`FDIError` for no source, two sources, or fewer than one pair.
    """
    given = [
        flag
        for flag, present in (
            ("--degraded/--clean", degraded_dir is not None or clean_dir is not None),
            ("--pairs-file", pairs_file is not None),
            ("--dataset/--data", dataset is not None),
        )
        if present
    ]
    if len(given) > 1:
        raise FDIError(f"give the {what} pairs one way, not {' and '.join(given)}")
    if dataset is not None:
        pairs = dataset.read().pairs
        if not pairs:
            raise FDIError(f"data set {dataset.name} ({dataset.split}) holds no pairs under {dataset.root}")
        return pairs
    if pairs_file is not None:
        return read_pairs_file(pairs_file)
    if degraded_dir is None or clean_dir is None:
        raise FDIError(
            f"no {what} pairs: give --degraded DIR and --clean DIR (images matched by file name), "
            "--pairs-file LIST.csv|.jsonl, or --dataset NAME --data ROOT"
        )
    pairs = [Pair(stem, d, c) for stem, d, c in pair_folders(degraded_dir, clean_dir)]
    if not pairs:  # pair_folders already refuses empty folders; kept as a guard for the contract
        raise FDIError(f"no {what} pairs found; put matching images in the degraded and clean folders")
    return pairs


# ---------------------------------------------------------------------------------------------- transforms
def _resize(image: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """``[3, H, W]`` → ``[3, size[0], size[1]]`` (bicubic, antialiased, clamped to 0..1)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    out = F.interpolate(image.unsqueeze(0), size=size, mode="bicubic", align_corners=False, antialias=True)
    return out.squeeze(0).clamp_(0, 1)


def resized_shape(height: int, width: int, resolution: int) -> Tuple[int, int]:
    """Shape with the shorter side equal to ``resolution`` and the aspect ratio kept (rounded)."""
    if height <= width:
        return resolution, max(resolution, int(round(width * resolution / height)))
    return max(resolution, int(round(height * resolution / width))), resolution


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A CPU generator that depends on ``(seed, epoch, index)`` only (see the module doc)."""
    return seeded_generator("crop", seed, epoch, index)


def transform_pair(
    degraded: torch.Tensor, clean: torch.Tensor, resolution: int, generator: Optional[torch.Generator] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Resize both images together, crop the same window, flip both or neither.

    Args:
        degraded, clean: ``[3, H, W]`` and ``[3, H2, W2]`` float in 0..1 (sizes may differ).
        resolution: side of the square output, in pixels.
        generator: random crop + flip when given; centre crop and no flip when ``None``.

    Returns:
        ``(degraded, clean)``, each ``[3, resolution, resolution]`` float32 in 0..1.
    """
    d, c, _ = crop_pair(degraded, clean, resolution, generator)
    return d, c


def crop_pair(
    degraded: torch.Tensor, clean: torch.Tensor, resolution: int, generator: Optional[torch.Generator] = None
) -> Tuple[torch.Tensor, torch.Tensor, Optional[bool]]:
    """:func:`transform_pair` and its flip when the crop is the whole resized image, else ``None``.

    A pair whose degraded image is square is resized to exactly ``resolution × resolution``, so its crop is
    always the whole image: its only variation is the flip, and its crop (and clean latent) recurs exactly."""
    h, w = resized_shape(degraded.shape[-2], degraded.shape[-1], resolution)
    d = _resize(degraded, (h, w))
    c = _resize(clean, (h, w))
    if generator is None:
        top, left, flip = (h - resolution) // 2, (w - resolution) // 2, False
    else:
        top = int(torch.randint(0, h - resolution + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - resolution + 1, (1,), generator=generator))
        flip = bool(torch.rand((), generator=generator) < 0.5)
    d = d[:, top : top + resolution, left : left + resolution]
    c = c[:, top : top + resolution, left : left + resolution]
    if flip:
        d, c = d.flip(-1), c.flip(-1)
    whole = (h, w) == (resolution, resolution)
    return d.contiguous(), c.contiguous(), (flip if whole else None)


def crop_key(index: int, whole_flip: Optional[bool]) -> int:
    """The key of a training crop for :class:`fdi.training.latents.LatentCache`: ``2·index + flip`` when the crop is
    the whole resized image of pair ``index`` (``whole_flip`` from :func:`crop_pair`), ``-1`` (never cached) else."""
    return -1 if whole_flip is None else 2 * int(index) + int(whole_flip)


class PairedImageDataset(Dataset):
    """Map-style dataset of pairs → ``{"degraded": [3, R, R], "clean": [3, R, R], "index": int, "crop_key": int}``
    (``crop_key``: :func:`crop_key`).

    ``R`` = ``resolution``; values in 0..1, float32. With ``train=True`` the crop is random and the
    flip random; both depend only on ``(seed, epoch, index)``. The epoch is part of the index a
    :class:`PairStream` yields (``epoch * len(dataset) + i``) so that workers need no shared state.
    """

    def __init__(self, pairs: Sequence[Pair], resolution: int = 512, train: bool = True, seed: int = 0):
        if len(pairs) < 1:
            raise FDIError("no image pairs; training needs at least one (degraded, clean) pair")
        if resolution < 8 or resolution % 8:
            raise FDIError(f"resolution {resolution} must be a positive multiple of 8 (the VAE's factor), e.g. 512")
        self.pairs = list(pairs)
        self.resolution = int(resolution)
        self.train = bool(train)
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: int) -> dict:
        epoch, index = divmod(int(key), len(self.pairs))
        pair = self.pairs[index]
        gen = sample_generator(self.seed, epoch, index) if self.train else None
        d, c, whole_flip = crop_pair(load_image(pair.degraded), load_image(pair.clean), self.resolution, gen)
        return {"degraded": d, "clean": c, "index": index, "crop_key": crop_key(index, whole_flip)}


# ---------------------------------------------------------------------------------------------- order
class PairStream(Sampler):
    """The endless, seeded stream of sample keys, cut into this process's micro-batches.

    The global stream visits the ``N`` pairs in a fresh permutation per epoch (permutation ``e`` is
    ``randperm(N)`` seeded with ``(seed, e)``), epochs back to back, so batches are always full even
    when ``N`` is smaller than the batch. Key ``k`` of the stream is ``e * N + perm_e[i]`` with
    ``e, i = divmod(k, N)`` (the dataset decodes the epoch from it).

    Micro-batch ``g`` (0, 1, …) of the whole job spans stream positions
    ``[g * P * b, (g + 1) * P * b)`` for ``P`` processes of micro-batch size ``b``; process ``p`` takes
    ``[(g * P + p) * b, (g * P + p + 1) * b)``. This sampler yields the keys of micro-batches
    ``start .. stop - 1`` for one process, so the data position of a resumed run is simply the index
    of its next micro-batch: no batches need to be read and skipped.
    """

    def __init__(
        self,
        n: int,
        micro_batch: int,
        seed: int = 0,
        num_processes: int = 1,
        process_index: int = 0,
        start: int = 0,
        stop: int = 0,
    ):
        if n < 1:
            raise FDIError("no image pairs; training needs at least one (degraded, clean) pair")
        self.n, self.b, self.seed = int(n), int(micro_batch), int(seed)
        self.P, self.p = int(num_processes), int(process_index)
        self.start, self.stop = int(start), int(stop)
        self._perm_cache: dict = {}

    def permutation(self, epoch: int) -> torch.Tensor:
        """The visiting order of epoch ``epoch``: a permutation of ``0..N-1``."""
        perm = self._perm_cache.get(epoch)
        if perm is None:
            perm = torch.randperm(self.n, generator=seeded_generator("order", self.seed, epoch))
            self._perm_cache = {epoch: perm}
        return perm

    def key(self, position: int) -> int:
        """The sample key at stream position ``position``."""
        epoch, i = divmod(position, self.n)
        return epoch * self.n + int(self.permutation(epoch)[i])

    def __len__(self) -> int:
        return max(0, self.stop - self.start) * self.b

    def __iter__(self) -> Iterator[int]:
        for g in range(self.start, self.stop):
            first = (g * self.P + self.p) * self.b
            for pos in range(first, first + self.b):
                yield self.key(pos)
