"""Draw ``docs/tile_seams.jpg``: what the tile blending of :mod:`fdi.tiles` does with a tile-dependent computation.

No diffusion model runs here: the function applied per tile is a stand-in that shifts each tile by its
own mean colour (as GroupNorm or AdaIN statistics of a tile shift a real model's output). Panels: the
input; the tiles abutting (no overlap, every border a seam); the same tiles with 64 px overlap blended
by the raised-cosine weights; the weight map of one tile. 384×256 px, 128 px tiles.

    python bench/tile_seams_figure.py            # writes docs/tile_seams.jpg
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fdi.tiles import LATENT_SCALE, Tiling  # noqa: E402


def scene(h: int = 256, w: int = 384) -> torch.Tensor:
    """A photo-like test card: sky gradient, a sun, hills ``[1, 3, h, w]``."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = torch.stack([0.45 + 0.3 * yy, 0.6 + 0.2 * yy, 0.95 - 0.3 * yy])
    sun = ((xx - 0.72) ** 2 + (yy - 0.3) ** 2 * (h / w) ** -2 * (h / w) ** 2) < 0.006
    img[:, sun] = torch.tensor([1.0, 0.85, 0.4])[:, None]
    hill = yy > 0.62 + 0.12 * torch.sin(xx * 7.0)
    img[:, hill] = torch.stack([0.2 + 0.15 * xx, 0.45 + 0.2 * yy, 0.2 + 0.0 * xx])[:, hill]
    return img[None]


def per_tile(_: int, tile: torch.Tensor) -> torch.Tensor:
    """The stand-in: each tile shifted by 0.8 × its mean colour's distance from grey."""
    return (tile - 0.8 * (tile.mean(dim=(-2, -1), keepdim=True) - 0.5)).clamp(0, 1)


def main() -> int:
    img = scene()
    h, w = img.shape[-2] // LATENT_SCALE, img.shape[-1] // LATENT_SCALE
    abutting = Tiling(h, w, 16, 0).blend(img, per_tile, in_scale=LATENT_SCALE, out_scale=LATENT_SCALE)
    blended_tiling = Tiling(h, w, 16, 8)
    blended = blended_tiling.blend(img, per_tile, in_scale=LATENT_SCALE, out_scale=LATENT_SCALE)
    weights = torch.zeros(1, 3, *img.shape[-2:])
    k = 7  # an inner tile (row 1, column 2 of 3 x 5)
    t = blended_tiling.tiles[k]
    weights[t.slices(LATENT_SCALE)] = blended_tiling.weights(k, LATENT_SCALE)
    gap = torch.ones(1, 3, img.shape[-2], 8)
    panel = torch.cat([img, gap, abutting, gap, blended, gap, weights], dim=-1)[0]
    arr = (panel.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    from PIL import Image

    out = ROOT / "docs" / "tile_seams.jpg"
    Image.fromarray(arr).save(out, "JPEG", quality=88, optimize=True)
    print(f"wrote {out} ({out.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
