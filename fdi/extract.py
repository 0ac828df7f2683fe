"""FDI extraction: reference pairs → per-pair ``Q(degraded) − Q(clean)`` → task FDI (their mean).

Pairs are processed in batches of ``batch_size`` pairs (``2 × batch_size`` images through the
encoder per call), so memory stays bounded whatever the number of pairs; the running sum is kept
in float64 so that the mean of 10,000 pairs is as exact as the mean of 10.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch

from .data import Pair
from .encoder import QFormerEncoder
from .errors import FDIError
from .images import check_image_batch, load_image, pair_folders
from .instruction import FDI
from .progress import ProgressCallback, report

ImageSource = Callable[[], torch.Tensor]


def extract_fdi_from_sources(
    encoder: QFormerEncoder,
    pairs: Sequence[Tuple[ImageSource, ImageSource]],
    label: str = "",
    batch_size: int = 8,
    keep_pairs: bool = False,
    progress: Optional[ProgressCallback] = None,
) -> FDI:
    """The core loop. ``pairs`` holds ``(load_degraded, load_clean)`` callables returning ``[3, H, W]``.

    Images are loaded lazily, one batch at a time. ``progress(done_pairs, total_pairs)`` is called
    after every batch and may raise to stop (nothing is returned or written then).
    """
    n = len(pairs)
    if n == 0:
        raise FDIError("no image pairs given; an FDI needs at least one (degraded, clean) pair")
    if batch_size < 1:
        raise FDIError(f"batch size must be at least 1, got {batch_size}")
    total = torch.zeros(encoder.num_tokens, encoder.width, dtype=torch.float64)
    kept: List[torch.Tensor] = []
    report(progress, 0, n)
    for start in range(0, n, batch_size):
        chunk = pairs[start : start + batch_size]
        degraded = [load() for load, _ in chunk]
        clean = [load() for _, load in chunk]
        tokens = encoder.encode(degraded + clean)
        diff = (tokens[: len(chunk)] - tokens[len(chunk) :]).cpu()
        if not torch.isfinite(diff).all():
            raise FDIError(
                f"the encoder produced NaN/Inf for pairs {start + 1}..{start + len(chunk)}; "
                "check the BLIP-2 weights (or use fp32 instead of fp16)"
            )
        total += diff.to(torch.float64).sum(0)
        if keep_pairs:
            kept.append(diff.to(torch.float32))
        report(progress, min(start + batch_size, n), n)
    tokens = (total / n).to(torch.float32)
    return FDI(
        tokens=tokens,
        encoder=encoder.fingerprint,
        n_pairs=n,
        label=label,
        pairs=torch.cat(kept) if keep_pairs else None,
    )


def check_pair_batches(degraded: torch.Tensor, clean: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Both batches checked (:func:`fdi.images.check_image_batch`) and of the same length ``N``, pair ``j`` =
    ``(degraded[j], clean[j])``; :class:`FDIError` otherwise (callers check before loading an encoder)."""
    degraded = check_image_batch(degraded, "degraded images")
    clean = check_image_batch(clean, "clean images")
    if degraded.shape[0] != clean.shape[0]:
        raise FDIError(
            f"{degraded.shape[0]} degraded images but {clean.shape[0]} clean images; "
            "give the same number, pair j = (degraded j, clean j)"
        )
    return degraded, clean


def extract_fdi(
    encoder: QFormerEncoder,
    degraded: torch.Tensor,
    clean: torch.Tensor,
    label: str = "",
    batch_size: int = 8,
    keep_pairs: bool = False,
    progress: Optional[ProgressCallback] = None,
) -> FDI:
    """FDI of two equal-length image batches ``[N, 3, H, W]`` in 0..1 (pair ``j`` = ``(degraded[j], clean[j])``).

    The two batches may differ in size (``H, W``): every image is resized to the encoder's input.
    """
    degraded, clean = check_pair_batches(degraded, clean)
    sources = [((lambda i=i: degraded[i]), (lambda i=i: clean[i])) for i in range(degraded.shape[0])]
    return extract_fdi_from_sources(encoder, sources, label, batch_size, keep_pairs, progress)


def extract_fdi_from_folders(
    encoder: QFormerEncoder,
    degraded_dir,
    clean_dir,
    label: str = "",
    batch_size: int = 8,
    keep_pairs: bool = False,
    progress: Optional[ProgressCallback] = None,
) -> FDI:
    """FDI of every pair of two folders matched by file stem (see :func:`fdi.images.pair_folders`).

    Images are read one batch at a time (any size, RGB/RGBA/L/16-bit PNG/JPEG…).
    """
    pairs = [Pair(stem, d, c) for stem, d, c in pair_folders(degraded_dir, clean_dir)]
    return extract_fdi_from_pairs(encoder, pairs, label, batch_size, keep_pairs, progress)


def pair_stability(pairs: torch.Tensor, resamples: int = 50, seed: int = 0) -> dict:
    """How stable the FDI is in the number of pairs: for ``k = 1 … N``, the cosine similarity between the
    FDI of ``k`` random pairs (mean of their differences, drawn without replacement) and the FDI of all.

    ``pairs``: per-pair FDIs ``[N, T, D]``. Returns ``{"k", "mean", "low", "high"}`` (lists; low/high the
    10th/90th percentiles over ``resamples`` draws; at ``k = N`` all are 1)."""
    if pairs is None or pairs.ndim != 3 or pairs.shape[0] < 1:
        raise FDIError("the stability curve needs the per-pair FDIs; extract the FDI with keep_pairs on (--keep-pairs)")
    x = pairs.to(torch.float64).flatten(1)
    n = x.shape[0]
    full = x.mean(0)
    g = torch.Generator().manual_seed(int(seed))
    out = {"k": [], "mean": [], "low": [], "high": []}
    for k in range(1, n + 1):
        sims = []
        for _ in range(max(1, int(resamples)) if k < n else 1):
            idx = torch.randperm(n, generator=g)[:k]
            sims.append(float(torch.nn.functional.cosine_similarity(x[idx].mean(0), full, dim=0)))
        s = torch.tensor(sims, dtype=torch.float64)
        out["k"].append(k)
        out["mean"].append(float(s.mean()))
        out["low"].append(float(torch.quantile(s, 0.1)))
        out["high"].append(float(torch.quantile(s, 0.9)))
    return out


def extract_fdi_from_pairs(
    encoder: QFormerEncoder,
    pairs: Sequence[Pair],
    label: str = "",
    batch_size: int = 8,
    keep_pairs: bool = False,
    progress: Optional[ProgressCallback] = None,
) -> FDI:
    """FDI of a list of :class:`fdi.data.Pair` (a list file's, a data set's); images read one batch at a time."""
    sources = [((lambda p=p.degraded: load_image(p)), (lambda p=p.clean: load_image(p))) for p in pairs]
    return extract_fdi_from_sources(encoder, sources, label, batch_size, keep_pairs, progress)
