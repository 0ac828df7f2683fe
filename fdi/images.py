"""Image files in, float tensors out; paired folders matched by file stem.

Conventions (used everywhere in the library): an image is a float32 tensor ``[3, H, W]`` (a batch
``[B, 3, H, W]``) with values in ``0..1``, RGB. Files of any common mode are converted:

* ``RGB`` as is; ``L``/``LA`` (grayscale) replicated to three channels;
* ``RGBA``/``LA``/palette with transparency: the alpha channel is dropped (what ComfyUI's
  ``LoadImage`` does too); ``CMYK``/``YCbCr``/palette: converted to RGB by Pillow;
* 16-bit and 32-bit integer PNG/TIFF (``I;16``, ``I``): scaled by their full range (65535), so a
  16-bit image keeps its precision instead of being clipped to 8 bits;
* EXIF orientation is applied, as ComfyUI does.

Animated images (more than one frame) are refused: which frame is meant is ambiguous.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .errors import FDIError

PathLike = Union[str, os.PathLike]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")


def _to_rgb_array(img) -> np.ndarray:
    """Convert a PIL image of any mode to a float32 ``[H, W, 3]`` array in 0..1."""

    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(img, dtype=np.uint16).astype(np.float32) / 65535.0
        return np.repeat(arr[..., None], 3, axis=2)
    if mode == "I":
        arr = np.asarray(img, dtype=np.int64).astype(np.float32)
        scale = 65535.0 if arr.max(initial=0) > 255 else 255.0
        return np.repeat(np.clip(arr / scale, 0, 1)[..., None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise FDIError("image holds NaN or infinite pixel values; re-export it as an 8- or 16-bit image")
        return np.repeat(np.clip(arr, 0, 1)[..., None], 3, axis=2)
    if mode == "1":
        img = img.convert("L")
        mode = "L"
    if mode in ("L", "LA"):
        arr = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
        return np.repeat(arr[..., None], 3, axis=2)
    if mode == "P":
        img = img.convert("RGBA")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.float32) / 255.0


@contextmanager
def _opened(path: PathLike):
    """``PIL.Image.open`` of an image file, still image only: :class:`FDIError` for a missing, empty, unreadable
    or animated file (a read error inside the ``with`` block too)."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise FDIError(f"image {str(p)!r} does not exist or is not a file; check the path")
    if p.stat().st_size == 0:
        raise FDIError(f"image {p.name!r} is empty (0 bytes); replace it with the real image file")
    try:
        with Image.open(p) as img:
            if getattr(img, "n_frames", 1) > 1:
                raise FDIError(
                    f"image {p.name!r} is animated ({img.n_frames} frames); save the frame you want as a PNG"
                )
            yield img
    except FDIError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise FDIError(
            f"image {p.name!r} could not be read ({type(exc).__name__}: {exc}); "
            "check that it is a valid PNG/JPEG/WebP/TIFF/BMP file"
        ) from None


def load_image(path: PathLike) -> torch.Tensor:
    """Read an image file as a float32 tensor ``[3, H, W]`` in 0..1 (see the module doc for modes)."""
    from PIL import ImageOps

    with _opened(path) as img:
        img.load()
        img = ImageOps.exif_transpose(img) or img
        arr = _to_rgb_array(img)
    if arr.ndim != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise FDIError(f"image {Path(path).name!r} has no pixels ({arr.shape[1]}x{arr.shape[0]}); use a real image")
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()


def save_image(image: torch.Tensor, path: PathLike, text: Optional[Mapping[str, str]] = None) -> None:
    """Write a ``[3, H, W]`` tensor in 0..1 as an 8-bit image (format from the suffix), atomically; ``text``:
    PNG text chunks ``{keyword: value}`` (PNG only)."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from .files import atomic_write

    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"save_image expects [3, H, W], got {tuple(image.shape)}")
    arr = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}.get(
        Path(path).suffix.lower(), "PNG"
    )
    extra = {}
    if text:
        if fmt != "PNG":
            raise ValueError(f"text chunks need a .png file, got {Path(path).name!r}")
        extra["pnginfo"] = PngInfo()
        for key, value in text.items():
            extra["pnginfo"].add_text(key, value)
    with atomic_write(path) as fh:
        Image.fromarray(arr).save(fh, format=fmt, **extra)


def list_images(folder: PathLike, what: str = "folder") -> List[Path]:
    """Sorted image files of a folder (not recursive). Hidden files and sub-folders are skipped.

    Raises :class:`FDIError` when the folder is missing, holds no image, or holds a file that is
    not an image (a stray ``.txt`` would otherwise silently drop a pair).
    """
    d = Path(folder)
    if not d.is_dir():
        raise FDIError(f"{what} {str(d)!r} does not exist or is not a folder; check the path")
    files, others = [], []
    for entry in sorted(d.iterdir()):
        if entry.name.startswith(".") or entry.is_dir():
            continue
        (files if entry.suffix.lower() in IMAGE_SUFFIXES else others).append(entry)
    if others:
        names = ", ".join(o.name for o in others[:5])
        raise FDIError(
            f"{what} {str(d)!r} holds files that are not images ({names}); "
            f"move them out (accepted: {' '.join(IMAGE_SUFFIXES)})"
        )
    if not files:
        raise FDIError(
            f"{what} {str(d)!r} holds no images; put the image files there (accepted: {' '.join(IMAGE_SUFFIXES)})"
        )
    return files


def match_by_stem(
    first_dir: PathLike,
    second_dir: PathLike,
    names: Tuple[str, str] = ("degraded folder", "clean folder"),
    only: Tuple[str, str] = ("only in the degraded folder", "only in the clean folder"),
    fix: str = "Pairs are matched by file name without suffix; rename or remove them",
) -> List[Tuple[str, Path, Path]]:
    """Match the images of two folders by file stem: ``[(stem, first_path, second_path), ...]``.

    ``rain_001.png`` pairs with ``rain_001.jpg``; the suffix may differ. A stem present in one
    folder only, or twice in one folder, is an error that lists them (``names``/``only``/``fix``
    word the message for the caller's folders).
    """
    first, second = list_images(first_dir, names[0]), list_images(second_dir, names[1])

    def by_stem(paths: Sequence[Path], what: str) -> dict:
        out: dict = {}
        for p in paths:
            if p.stem in out:
                raise FDIError(f"{what} has two images with stem {p.stem!r} ({out[p.stem].name}, {p.name}); keep one")
            out[p.stem] = p
        return out

    a, b = by_stem(first, names[0]), by_stem(second, names[1])
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if only_a or only_b:
        parts = [f"{len(o)} {text} ({', '.join(o[:5])})" for o, text in ((only_a, only[0]), (only_b, only[1])) if o]
        raise FDIError("unmatched image names: " + "; ".join(parts) + f". {fix}")
    return [(stem, a[stem], b[stem]) for stem in sorted(a)]


def pair_folders(degraded_dir: PathLike, clean_dir: PathLike) -> List[Tuple[str, Path, Path]]:
    """Reference pairs of two folders matched by stem: ``[(stem, degraded_path, clean_path), ...]``."""
    return match_by_stem(degraded_dir, clean_dir)


def check_image_batch(images: torch.Tensor, what: str = "images", min_side: int = 1) -> torch.Tensor:
    """Validate a ``[B, 3, H, W]`` float batch in 0..1 (shape, emptiness, NaN) and return it as float32."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise FDIError(f"{what} must be a [B, 3, H, W] tensor, got {getattr(images, 'shape', type(images))}")
    if images.shape[0] == 0:
        raise FDIError(f"{what} is an empty batch; give at least one image")
    if images.shape[1] != 3:
        raise FDIError(f"{what} has {images.shape[1]} channels; convert to RGB (3 channels) first")
    if images.shape[2] < min_side or images.shape[3] < min_side:
        raise FDIError(f"{what} are {images.shape[3]}x{images.shape[2]} pixels; each side must be at least {min_side}")
    if not torch.isfinite(images).all():
        raise FDIError(f"{what} hold NaN or infinite values; check the node or file that produced them")
    return images.float()


#: EXIF orientations that swap width and height (transposed and rotated by 90°/270°)
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)


def collect_images(inputs: Sequence[PathLike]) -> List[Path]:
    """The image files named by ``inputs``: files as given, folders expanded to their images.

    A folder contributes its image files (suffix in :data:`IMAGE_SUFFIXES`, sorted, not recursive,
    hidden files skipped); other files in it (sidecars, notes) are ignored. A missing path or a
    folder without images raises :class:`FDIError`. The same file named twice is kept once.
    """
    out: List[Path] = []
    seen = set()
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(
                e
                for e in p.iterdir()
                if not e.name.startswith(".") and e.is_file() and e.suffix.lower() in IMAGE_SUFFIXES
            )
            if not found:
                raise FDIError(
                    f"folder {str(p)!r} holds no images; put image files there (accepted: "
                    f"{' '.join(IMAGE_SUFFIXES)}) or give the files themselves"
                )
        elif p.is_file():
            found = [p]
        else:
            raise FDIError(f"image {str(p)!r} does not exist; check the path (files and folders are accepted)")
        for f in found:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                out.append(f)
    return out


def probe_image(path: PathLike) -> Tuple[int, int]:
    """``(H, W)`` of an image file after EXIF orientation, from its header (the pixels are not decoded).

    Raises :class:`FDIError` for a missing, empty, unreadable or animated file, as :func:`load_image` does.
    """
    with _opened(path) as img:
        w, h = img.size
        orientation = img.getexif().get(0x0112, 1)
    return (w, h) if orientation in _SWAPPING_ORIENTATIONS else (h, w)
