"""Degraded images for clean-only sets (CBSD68 with σ = 50 noise, LIVE1 with JPEG quality 10, DIV2K/Flickr2K):
synthesized once, seeded by the image's name, into a cache folder; later reads reuse the files.

Levels and the reasons for them: docs/datasets.md, "Clean-only sets".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence

import torch

from ..data import Pair
from ..degrade import jpeg_round_trip
from ..errors import FDIError
from ..images import load_image, save_image
from ..progress import report
from ..seeds import seeded_generator
from .core import Context


@dataclass(frozen=True)
class Synthesis:
    """A protocol degradation: ``effect`` ``"noise"`` (``level`` = σ in 8-bit levels) or ``"jpeg"`` (quality)."""

    effect: str
    level: int

    @property
    def tag(self) -> str:
        """Folder tag, e.g. ``noise50``, ``jpeg10``."""
        return f"{self.effect}{self.level}"

    def apply(self, clean: torch.Tensor, name: str, seed: int) -> torch.Tensor:
        """``[3, H, W]`` in 0..1 → the degraded image in 0..1 (8-bit levels once saved)."""
        if self.effect == "noise":
            g = seeded_generator("dataset-noise", seed, name)
            noise = torch.randn(clean.shape, generator=g, dtype=torch.float32)
            return (clean.float() + noise * (self.level / 255.0)).clamp(0, 1)
        if self.effect == "jpeg":
            return jpeg_round_trip(clean, self.level)
        raise ValueError(f"unknown synthesis {self.effect!r}")


#: the protocol's degradation per task of the clean-only sets
SYNTHESES = {"noise": Synthesis("noise", 50), "jpeg": Synthesis("jpeg", 10)}


def synthesize(dataset: str, split: str, names: Sequence[str], clean: Sequence[Path], ctx: Context) -> List[Pair]:
    """Pairs ``(name, cache/<dataset>-<split>-<tag>-seed<seed>/<name>.png, clean)``, writing the missing files.

    Each file is written atomically, so an interrupted run leaves complete files only and the next run goes on.
    """
    if ctx.cache is None:
        raise FDIError(
            f"{dataset} holds clean images only; its degraded images are synthesized ({ctx.task}) into a cache "
            "folder, and none was given (give an output file or folder: the cache is written beside it)"
        )
    synthesis = SYNTHESES[ctx.task]
    folder = ctx.cache / f"{dataset}-{split}-{synthesis.tag}-seed{ctx.seed}"
    folder.mkdir(parents=True, exist_ok=True)
    pairs = []
    for i, (name, c) in enumerate(zip(names, clean)):
        out = folder / f"{name}.png"
        if not out.is_file():
            save_image(synthesis.apply(load_image(c), name, ctx.seed), out)
        pairs.append(Pair(name, out, c))
        report(ctx.progress, i + 1, len(clean))
    return pairs
