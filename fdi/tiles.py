"""Tiled restoration: the tile rule shared by the diffusers pipeline and the ComfyUI ``FDIRestore`` node.

A latent ``[B, 4, h, w]`` (``h, w`` multiples of 8: images are padded to multiples of 64) is covered
by overlapping tiles whose offsets are multiples of :data:`OFFSET_MULTIPLE` latent pixels, so that
every UNet level ``i`` (at ``latent / 2^i``, ``i = 0..3``) crops the adapter's residual ``r_{i+1}``
on whole pixels. A function of a tile (one UNet evaluation, a VAE encode or decode) is evaluated
per tile and the results blended MultiDiffusion-style, ``Σ_t w_t · f(x_t) / Σ_t w_t``, with weights
that rise as a raised cosine over the requested overlap on every side a tile shares with a
neighbour (1 elsewhere, > 0 everywhere). A tile at least as large as the latent is the untiled
computation itself: :class:`Tiling` then calls the function once on the whole input.

Units: tile size and overlap are given in image pixels (``tile_px`` a multiple of
:data:`TILE_MULTIPLE`, at least :data:`MIN_TILE`), the grid lives in latent pixels (``/ 8``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from .adapter import FDIGuidance
from .errors import FDIError

#: the VAE's downsampling: latent pixel = 8 image pixels
LATENT_SCALE = 8
#: tile sizes are multiples of this many image pixels (the padding multiple: 8 latent pixels)
TILE_MULTIPLE = 64
#: the smallest tile, in image pixels
MIN_TILE = 128
#: tile offsets are multiples of this many latent pixels (2^3: the UNet's three downsamplings)
OFFSET_MULTIPLE = 8
#: the overlap of neighbouring tiles when none is given, image pixels (library, CLI and node)
DEFAULT_TILE_OVERLAP = 128


def check_tiling(tile_px: int, overlap_px: int) -> None:
    """Raise :class:`FDIError` unless ``tile_px`` (0 = off) and ``overlap_px`` are a valid tiling, in image pixels."""
    if tile_px == 0:
        return
    if tile_px < MIN_TILE or tile_px % TILE_MULTIPLE:
        raise FDIError(
            f"tile size {tile_px} px is invalid; use a multiple of {TILE_MULTIPLE} of at least {MIN_TILE} "
            "(e.g. 512), or 0 for no tiles"
        )
    if overlap_px < 0 or overlap_px >= tile_px:
        raise FDIError(
            f"tile overlap {overlap_px} px must be smaller than the tile ({tile_px} px) and not negative; "
            f"use e.g. {tile_px // 4}"
        )
    if overlap_px > tile_px - TILE_MULTIPLE:
        raise FDIError(
            f"tile overlap {overlap_px} px leaves tiles less than {TILE_MULTIPLE} px apart; "
            f"use at most {tile_px - TILE_MULTIPLE} px for {tile_px} px tiles"
        )


def tile_starts(length: int, tile: int, overlap: float, multiple: int = OFFSET_MULTIPLE) -> List[int]:
    """Offsets of tiles of ``tile`` covering ``0..length`` with at least ``overlap`` in common, all multiples of
    ``multiple`` and spread evenly; ``[0]`` when one tile covers it. ``length``, ``tile``: multiples of ``multiple``."""
    if tile >= length:
        return [0]
    stride = int((tile - overlap) // multiple) * multiple
    if stride < multiple:
        raise FDIError(f"tiles of {tile} with overlap {overlap} cannot advance by {multiple}; lower the overlap")
    n = 1 + math.ceil((length - tile) / stride)
    span = (length - tile) / multiple
    return [int(round(k * span / (n - 1))) * multiple for k in range(n)]


@dataclass(frozen=True)
class Tile:
    """A tile of the latent: rows ``y … y+h``, columns ``x … x+w`` (latent pixels)."""

    y: int
    x: int
    h: int
    w: int

    def slices(self, scale: int = 1):
        """``(..., rows, cols)`` index of this tile at ``scale`` × the latent resolution."""
        return (..., slice(self.y * scale, (self.y + self.h) * scale), slice(self.x * scale, (self.x + self.w) * scale))


def _ramp(n: int, length: float, left: bool, right: bool) -> torch.Tensor:
    """1-D weights ``[n]``: a raised cosine over ``length`` samples on the flagged sides, else 1 (> 0 everywhere)."""
    w = torch.ones(n, dtype=torch.float64)
    if length > 0:
        i = torch.arange(n, dtype=torch.float64) + 0.5
        rise = torch.where(i < length, 0.5 - 0.5 * torch.cos(math.pi * i / length), torch.ones_like(i))
        if left:
            w = torch.minimum(w, rise)
        if right:
            w = torch.minimum(w, rise.flip(0))
    return w


class Tiling:
    """The tile grid of a latent ``height × width`` (latent pixels) for tiles of ``tile`` and an ``overlap``.

    ``Tiling.from_pixels(h, w, tile_px, overlap_px)`` takes the latent size and image-pixel settings.
    :meth:`blend` evaluates a function per tile and blends; :meth:`crop_guidance` gives a tile's guidance.
    """

    def __init__(self, height: int, width: int, tile: int, overlap: float):
        if height % OFFSET_MULTIPLE or width % OFFSET_MULTIPLE or tile % OFFSET_MULTIPLE:
            raise FDIError(
                f"a tiled latent ({height}x{width}) and its tiles ({tile}) must be multiples of {OFFSET_MULTIPLE}; "
                f"pad the image to a multiple of {TILE_MULTIPLE} px first"
            )
        self.height, self.width, self.tile, self.overlap = int(height), int(width), int(tile), float(overlap)
        ys = tile_starts(self.height, self.tile, self.overlap)
        xs = tile_starts(self.width, self.tile, self.overlap)
        self.tiles = [Tile(y, x, min(self.tile, self.height), min(self.tile, self.width)) for y in ys for x in xs]
        self._weights: dict = {}

    @classmethod
    def from_pixels(cls, latent_height: int, latent_width: int, tile_px: int, overlap_px: int) -> "Tiling":
        check_tiling(tile_px, overlap_px)
        return cls(latent_height, latent_width, tile_px // LATENT_SCALE, overlap_px / LATENT_SCALE)

    @property
    def single(self) -> bool:
        """One tile covers the whole latent: every function is evaluated once, untiled."""
        return len(self.tiles) == 1

    def weights(self, index: int, scale: int = 1) -> torch.Tensor:
        """Blending weights ``[h·scale, w·scale]`` (float32, CPU) of tile ``index`` at ``scale`` × the latent size."""
        key = (index, scale)
        if key not in self._weights:
            t = self.tiles[index]
            wy = _ramp(t.h * scale, self.overlap * scale, t.y > 0, t.y + t.h < self.height)
            wx = _ramp(t.w * scale, self.overlap * scale, t.x > 0, t.x + t.w < self.width)
            self._weights[key] = (wy[:, None] * wx[None, :]).float()
        return self._weights[key]

    def blend(
        self, x: torch.Tensor, fn: Callable[[int, torch.Tensor], torch.Tensor], in_scale: int = 1, out_scale: int = 1
    ) -> torch.Tensor:
        """``Σ_t w_t · fn(t, x[tile_t]) / Σ_t w_t`` over the tiles: ``x`` is at ``in_scale`` × the latent resolution,
        ``fn``'s output at ``out_scale`` ×; one tile: ``fn(0, x)`` itself. Accumulates in float32 on ``x``'s device."""
        if self.single:
            return fn(0, x)
        out = total = None
        for i, t in enumerate(self.tiles):
            y = fn(i, x[t.slices(in_scale)]).float()
            w = self.weights(i, out_scale).to(y.device)
            if out is None:
                shape = (*y.shape[:-2], self.height * out_scale, self.width * out_scale)
                out = y.new_zeros(shape)
                total = y.new_zeros(shape[-2:])
            out[t.slices(out_scale)] += y * w
            total[t.slices(out_scale)[1:]] += w
        return out / total

    def crop_guidance(self, guidance: FDIGuidance, index: int) -> FDIGuidance:
        """Tile ``index``'s guidance: each residual ``r_{i+1}`` (at latent / 2^i) cropped to the tile; the
        modulation targets are per image (not spatial) and kept as they are."""
        if self.single:
            return guidance
        t = self.tiles[index]
        residuals = []
        for level, r in enumerate(guidance.residuals):
            s = 2**level
            if r.shape[-2] * s != self.height or r.shape[-1] * s != self.width:
                raise FDIError(
                    f"residual r_{level + 1} is {tuple(r.shape[-2:])} but a {self.height}x{self.width} latent needs "
                    f"{self.height // s}x{self.width // s} at level {level + 1}; run the adapter on the padded image"
                )
            residuals.append(crop_residual(r, level, (t.y, t.x), (t.h // s, t.w // s)))
        return FDIGuidance(residuals, list(guidance.modulations), list(guidance.refined))


class TileCrops:
    """Each tile's crop of a list of weighted guidances ``[(guidance, weight), …]``, cut once and reused.

    The crops do not change from step to step; the memo holds the tiling and the guidances themselves,
    compared by identity, so it never serves crops of another guidance."""

    def __init__(self) -> None:
        self._key: Optional[tuple] = None
        self._crops: List[list] = []

    def of(self, tiling: "Tiling", guidances: Sequence[Tuple[FDIGuidance, float]]) -> List[list]:
        """``crops[i]``: tile ``i``'s ``[(cropped guidance, weight), …]`` (:meth:`Tiling.crop_guidance`)."""
        key = self._key
        if key is None or key[0] is not tiling or len(key[1]) != len(guidances):
            key = None
        elif any(a is not b for a, (b, _) in zip(key[1], guidances)):
            key = None
        if key is None:
            self._crops = [[(tiling.crop_guidance(g, i), w) for g, w in guidances] for i in range(len(tiling.tiles))]
            self._key = (tiling, [g for g, _ in guidances])
        return self._crops

    def clear(self) -> None:
        """Drop the crops (and the references to the guidance they came from)."""
        self._key, self._crops = None, []


def crop_residual(residual: torch.Tensor, level: int, offset, size) -> torch.Tensor:
    """The part of a residual ``[B, C, h_i, w_i]`` at UNet level ``level`` (latent / 2^level) that a tile at latent
    ``offset = (y, x)`` (multiples of :data:`OFFSET_MULTIPLE`) sees, ``size = (rows, cols)`` at that level."""
    s = 2 ** int(level)
    y, x = int(offset[0]), int(offset[1])
    if y % OFFSET_MULTIPLE or x % OFFSET_MULTIPLE:
        raise FDIError(f"tile offset ({y}, {x}) is not a multiple of {OFFSET_MULTIPLE} latent pixels")
    return residual[..., y // s : y // s + int(size[0]), x // s : x // s + int(size[1])]


def optional_tiling(latent_height: int, latent_width: int, tile_px: int, overlap_px: int) -> Optional[Tiling]:
    """``None`` when ``tile_px`` is 0 (tiling off), else :meth:`Tiling.from_pixels`."""
    if not tile_px:
        check_tiling(0, overlap_px)
        return None
    return Tiling.from_pixels(latent_height, latent_width, tile_px, overlap_px)
