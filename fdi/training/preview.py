"""Watching a training run learn: a strip of a few images restored with the current adapter, every N steps.

Both doors build the same picture here and restore with their own restoration (the CLI: the validation's
:class:`fdi.pipeline.FDIRestorationPipeline`, :mod:`.validation`; the node: ``FDIRestore``'s recipe in ComfyUI).
The strip has one column per image and three rows, ``input`` (the degraded centre crop at the training
resolution), ``restored`` and ``clean``, a label column on the left and a title row with each image's name on top.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..files import PathLike, atomic_write

#: images a strip shows by default (the first of the validation pairs, else of the training pairs)
PREVIEW_IMAGES = 4
#: DDIM inversion and sampling steps of the node's preview restoration (the restoration's default, ``--val-steps``')
PREVIEW_STEPS = 50
#: the strip's rows, top to bottom
ROWS = ("input", "restored", "clean")
#: pixels between tiles
GAP = 4
#: the run folder's sub-folder of strips (``step-000500.jpg``)
PREVIEW_FOLDER = "previews"


def preview_due(step: int, every: int, last_step: int) -> bool:
    """Whether optimizer step ``step`` (1-based) gets a strip: every ``every`` steps (0 = never) and the last."""
    return bool(every) and (step % every == 0 or step == last_step)


def strip_path(run_dir: PathLike, step: int) -> Path:
    """The strip of step ``step`` in a run folder: ``previews/step-000500.jpg``."""
    return Path(run_dir) / PREVIEW_FOLDER / f"step-{step:06d}.jpg"


def centre_crops(
    degraded: Sequence[torch.Tensor], clean: Sequence[torch.Tensor], resolution: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The validation's crops of pairs of ``[3, H, W]`` images: both resized together, centre ``resolution`` squares,
    ``([k, 3, R, R], [k, 3, R, R])`` float32 (:func:`fdi.data.transform_pair` without a generator)."""
    from ..data import transform_pair

    crops = [transform_pair(d.float(), c.float(), resolution, None) for d, c in zip(degraded, clean)]
    return torch.stack([d for d, _ in crops]), torch.stack([c for _, c in crops])


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def font_size(side: int) -> int:
    """The labels' font size in pixels for ``side``-px tiles."""
    return max(12, side // 16)


def strip_layout(count: int, side: int) -> Tuple[int, int, int, int]:
    """``(width, height, left, top)`` in pixels of a strip of ``count`` columns of ``side``-px tiles: ``left`` is
    the label column's width, ``top`` the title row's height; tile ``(row, col)`` starts at
    ``(left + col·(side + GAP), top + row·(side + GAP))``."""
    size = font_size(side)
    left, top = 6 * size, 3 * size
    return left + count * (side + GAP), top + len(ROWS) * (side + GAP), left, top


def render_strip(
    degraded: torch.Tensor, restored: torch.Tensor, clean: torch.Tensor, names: Sequence[str], title: str
) -> np.ndarray:
    """The strip of ``k`` images (``[k, 3, S, S]`` each, 0..1) as an RGB ``uint8`` array ``[H, W, 3]``
    (:func:`strip_layout`); ``names``: a label per column, ``title``: the top-left text (e.g. the step)."""
    from PIL import Image, ImageDraw

    k, side = degraded.shape[0], degraded.shape[-1]
    if not (restored.shape == clean.shape == degraded.shape and len(names) == k):
        raise ValueError(
            f"a strip needs k images in each row and k names, got {tuple(degraded.shape)}, {tuple(restored.shape)}, "
            f"{tuple(clean.shape)} and {len(names)} names"
        )
    width, height, left, top = strip_layout(k, side)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    size = font_size(side)
    font = _font(size)
    draw.text((GAP, GAP), title, fill=(0, 0, 0), font=font)
    for row, images in enumerate((degraded, restored, clean)):
        y = top + row * (side + GAP)
        draw.text((GAP, y + side // 2), ROWS[row], fill=(0, 0, 0), font=font)
        for col in range(k):
            x = left + col * (side + GAP)
            canvas.paste(Image.fromarray(to_uint8(images[col])), (x, y))
    for col, name in enumerate(names):
        fits = max(4, (side * 5) // (3 * size))  # characters of about 0.6 em in a tile's width
        draw.text((left + col * (side + GAP), top - size - GAP), fit_label(name, fits), fill=(0, 0, 0), font=font)
    return np.asarray(canvas).copy()


def fit_label(name: str, chars: int) -> str:
    """A column's label in at most ``chars`` characters: the name without its extension, its end kept (names of
    one folder differ at the end: ``camera_002``, ``camera_007``), ``..`` in front when cut."""
    stem = str(name).rsplit(".", 1)[0] if "." in str(name)[1:] else str(name)
    return stem if len(stem) <= chars else ".." + stem[-max(1, chars - 2) :]


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """A ``[3, H, W]`` image in 0..1 as ``[H, W, 3]`` ``uint8`` (rounded, as :func:`fdi.images.save_image` writes)."""
    return (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


def stack_pictures(pictures: Sequence[np.ndarray]) -> np.ndarray:
    """RGB ``uint8`` pictures one above the other, left-aligned on white (e.g. a strip above the loss curve)."""
    width = max(p.shape[1] for p in pictures)
    rows: List[np.ndarray] = []
    for p in pictures:
        pad = np.full((p.shape[0], width - p.shape[1], 3), 255, np.uint8)
        rows.append(np.concatenate([p, pad], 1))
    return np.concatenate(rows, 0)


def write_picture(picture: np.ndarray, path: PathLike) -> None:
    """Write an RGB ``uint8`` picture as a JPEG (quality 92), atomically, making its folder."""
    from PIL import Image

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as fh:
        Image.fromarray(picture).save(fh, format="JPEG", quality=92)


def strip_maker(
    restore: Callable[[torch.Tensor], torch.Tensor],
    degraded: Sequence[torch.Tensor],
    clean: Sequence[torch.Tensor],
    names: Sequence[str],
    resolution: int,
    steps: int,
    count: int = PREVIEW_IMAGES,
) -> Callable[[int], np.ndarray]:
    """``make(step)`` → the strip of the first ``count`` pairs (``[3, H, W]`` images, centre crops at ``resolution``)
    restored by ``restore(crops [k, 3, R, R]) → [k, 3, R, R]`` (a door's restoration with the current adapter)."""
    d, c = centre_crops(degraded[:count], clean[:count], resolution)
    shown = [str(n) for n in names[:count]]

    def make(step: int) -> np.ndarray:
        restored = restore(d).detach().float().cpu()
        return render_strip(d, restored, c, shown, f"step {step} of {steps}")

    return make


class LivePreview:
    """What an in-memory run shows after each finished step (the node's progress preview): ``show(done, loss)`` →
    an RGB ``uint8`` picture or ``None`` (nothing new).

    The loss curve about 20 times a run; with ``every`` > 0 and ``strip(step)`` (:func:`strip_maker`) also a new
    strip every ``every`` steps and at the last, shown above the curve until the next. A strip that fails (or
    returns ``None``) is logged and skipped: training goes on."""

    def __init__(self, steps: int, every: int = 0, strip: Optional[Callable[[int], Optional[np.ndarray]]] = None):
        self.steps = int(steps)
        self.every = int(every) if strip is not None else 0
        self.strip = strip
        self.curve_every = max(1, self.steps // 20)
        self.losses: List[float] = []
        self.latest: Optional[np.ndarray] = None
        self.strips = 0

    def show(self, done: int, loss: float) -> Optional[np.ndarray]:
        from ..plots import render_loss_curve

        self.losses.append(loss)
        fresh = preview_due(done, self.every, self.steps) and self._new_strip(done)
        if not (fresh or done % self.curve_every == 0 or done == self.steps):
            return None
        curve = render_loss_curve(self.losses, title=f"step {done} of {self.steps}: loss {loss:.4f}")
        return curve if self.latest is None else stack_pictures([self.latest, curve])

    def _new_strip(self, done: int) -> bool:
        try:
            picture = self.strip(done)
        except Exception as exc:  # a preview never stops training
            logging.warning(
                "FDI training preview at step %d failed (%s: %s); training goes on", done, type(exc).__name__, exc
            )
            return False
        if picture is None:
            return False
        self.latest, self.strips = picture, self.strips + 1
        return True
