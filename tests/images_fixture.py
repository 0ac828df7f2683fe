"""Small test images written as files: smooth random RGB pictures, and reading them back as integers."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_image(path: Path, w: int, h: int, seed: int) -> None:
    """A smooth random RGB image (a few sinusoids) as PNG."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.zeros((h, w, 3))
    for c in range(3):
        fx, fy, ph = rng.uniform(1, 6, 3)
        img[..., c] = 0.5 + 0.4 * np.sin(2 * np.pi * (fx * xx + fy * yy) + ph)
    Image.fromarray((img * 255).round().astype(np.uint8)).save(path)


def load_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(np.int16)
