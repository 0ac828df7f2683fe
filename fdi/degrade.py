"""Synthetic degradations: (degraded, clean) pairs made from clean photos.

Every function takes a batch ``[B, 3, H, W]`` float in 0..1 (any size, any device) and returns a
batch of the same shape, dtype and device, clamped to 0..1. Randomness is drawn per image from a
CPU generator seeded with :func:`image_seed` of ``(seed, the image's 8-bit pixels, copy)`` and then
moved to the image's device, so the same seed gives the same pixels for a photo whatever its place in
a batch, its file name and the device (up to float rounding between devices).

Effects (parameters in the units written; a spec fixes a value or narrows a range, see
:func:`parse_spec`):

``haze``        atmospheric scattering ``I = J·t + A·(1 − t)``, ``t = exp(−β·d)`` with a depth proxy
                ``d`` in 0..1 (far at the top, plus a smooth random field), airlight ``A`` 0.7..1.0 and
                ``beta`` 0.6..1.8 (RESIDE's ranges).
``rain``        streaks: sparse random drops blurred along one angle (kornia's motion blur), screen-blended
                ``I = 1 − (1 − J)(1 − S)``; ``density`` (drops per pixel), ``length`` (px), ``angle`` (deg).
``noise``       additive Gaussian, ``sigma`` in 8-bit levels (0..255 scale), 5..50.
``poisson``     shot noise ``I = Poisson(J·peak)/peak``, ``peak`` 10..100 photons at white.
``jpeg``        a real JPEG round trip (Pillow, 4:2:0) at ``quality`` 10..50.
``lowlight``    ``I = gain·J^gamma`` then sensor noise: ``gamma`` 1.5..2.5, ``gain`` 0.2..0.5, ``sigma`` 2..10.
``motion_blur`` a line kernel (kornia), ``length`` 5..15 px (odd), ``angle`` 0..180 deg.
``defocus``     a disk kernel of ``radius`` 1.5..4 px.

Several effects apply in the order light meets them, whatever the order asked for: the scene
(haze, rain), the optics (defocus, motion blur), the sensor (low light, noise, Poisson), the codec (JPEG).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from .errors import FDIError
from .progress import ProgressCallback, report
from .seeds import derive_seed

PathLike = Union[str, os.PathLike]

Range = Tuple[float, float]


@dataclass(frozen=True)
class Effect:
    """One degradation: its parameter ranges (defaults) and the function applying it to one image."""

    name: str
    ranges: Mapping[str, Range]
    apply: Callable[[torch.Tensor, Dict[str, float], torch.Generator], torch.Tensor]
    doc: str = ""


@dataclass(frozen=True)
class Degradation:
    """A parsed spec: effects in physical order, each with its parameter ranges (lo == hi: fixed)."""

    effects: Tuple[Tuple[str, Tuple[Tuple[str, Range], ...]], ...] = field(default_factory=tuple)

    @property
    def names(self) -> List[str]:
        return [n for n, _ in self.effects]

    def describe(self) -> str:
        parts = []
        for name, params in self.effects:
            ps = ":".join(f"{k}={_fmt_range(r)}" for k, r in params)
            parts.append(f"{name}:{ps}" if ps else name)
        return ",".join(parts)


def _fmt_range(r: Range) -> str:
    return f"{r[0]:g}" if r[0] == r[1] else f"{r[0]:g}..{r[1]:g}"


# ------------------------------------------------------------------------------------------- helpers
def _uniform(g: torch.Generator, r: Range) -> float:
    lo, hi = r
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _randn(shape, g: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(shape, generator=g, dtype=torch.float32).to(device=like.device, dtype=like.dtype)


def _smooth_field(h: int, w: int, g: torch.Generator, cells: int = 4) -> torch.Tensor:
    """A smooth random field ``[1, 1, h, w]`` in 0..1: a ``cells × cells`` grid upsampled bicubically."""
    grid = torch.rand((1, 1, cells, cells), generator=g)
    f = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=True)
    f = f - f.amin()
    return f / f.amax().clamp_min(1e-6)


def _haze(img: torch.Tensor, p: Dict[str, float], g: torch.Generator) -> torch.Tensor:
    _, h, w = img.shape
    ramp = torch.linspace(1.0, 0.0, h).view(1, 1, h, 1).expand(1, 1, h, w)  # far at the top
    depth = 0.6 * ramp + 0.4 * _smooth_field(h, w, g)
    t = torch.exp(-p["beta"] * depth)[0].to(device=img.device, dtype=img.dtype)
    return img * t + p["airlight"] * (1.0 - t)


def _rain(img: torch.Tensor, p: Dict[str, float], g: torch.Generator) -> torch.Tensor:
    import kornia.filters

    _, h, w = img.shape
    drops = (torch.rand((1, 1, h, w), generator=g) < p["density"]).float()
    drops = drops * (0.5 + 0.5 * torch.rand((1, 1, h, w), generator=g))
    k = int(p["length"]) | 1
    streaks = kornia.filters.motion_blur(drops, k, float(p["angle"]), 0.0, border_type="constant")
    streaks = (streaks * k * p["intensity"]).clamp(0, 1)[0].to(device=img.device, dtype=img.dtype)
    return 1.0 - (1.0 - img) * (1.0 - streaks)


def _noise(img: torch.Tensor, p: Dict[str, float], g: torch.Generator) -> torch.Tensor:
    return img + _randn(img.shape, g, img) * (p["sigma"] / 255.0)


def _poisson(img: torch.Tensor, p: Dict[str, float], g: torch.Generator) -> torch.Tensor:
    peak = p["peak"]
    rates = (img.detach().float().cpu().clamp(0, 1) * peak).contiguous()
    return (torch.poisson(rates, generator=g) / peak).to(device=img.device, dtype=img.dtype)


def _jpeg(img: torch.Tensor, p: Dict[str, float], g: torch.Generator) -> torch.Tensor:
    return jpeg_round_trip(img, int(round(p["quality"])))


def jpeg_round_trip(img: torch.Tensor, quality: int) -> torch.Tensor:
    """``[3, H, W]`` in 0..1 → the same image quantised to 8 bits, JPEG-encoded at ``quality`` and decoded."""
    from PIL import Image

    arr = (img.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    out = np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(out).permute(2, 0, 1).to(device=img.device, dtype=img.dtype)


def _lowlight(img: torch.Tensor, p: Dict[str, float], g: torch.Generator) -> torch.Tensor:
    dark = p["gain"] * img.clamp(0, 1) ** p["gamma"]
    return dark + _randn(img.shape, g, img) * (p["sigma"] / 255.0)


def _filter(img: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    import kornia.filters

    k = kernel.to(device=img.device, dtype=img.dtype)[None]
    return kornia.filters.filter2d(img[None], k, border_type="replicate")[0]  # replicate: any size, even 1 px


def _motion_blur(img: torch.Tensor, p: Dict[str, float], g: torch.Generator) -> torch.Tensor:
    import kornia.filters

    k = int(round(p["length"])) | 1
    kernel = kornia.filters.get_motion_kernel2d(k, float(p["angle"]), 0.0)[0]
    return _filter(img, kernel)


def _defocus(img: torch.Tensor, p: Dict[str, float], g: torch.Generator) -> torch.Tensor:
    r = p["radius"]
    n = 2 * int(math.ceil(r)) + 1
    ax = torch.arange(n, dtype=torch.float32) - n // 2
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    # anti-aliased disk: coverage falls linearly over one pixel at the rim
    disk = (r + 0.5 - torch.sqrt(xx**2 + yy**2)).clamp(0, 1)
    return _filter(img, disk / disk.sum())


#: every effect, in physical order (scene → optics → sensor → codec)
EFFECTS: Dict[str, Effect] = {
    e.name: e
    for e in (
        Effect("haze", {"beta": (0.6, 1.8), "airlight": (0.7, 1.0)}, _haze, "atmospheric scattering"),
        Effect(
            "rain",
            {"density": (0.002, 0.01), "length": (9, 25), "angle": (60, 120), "intensity": (0.6, 1.0)},
            _rain,
            "rain streaks",
        ),
        Effect("defocus", {"radius": (1.5, 4.0)}, _defocus, "disk blur"),
        Effect("motion_blur", {"length": (5, 15), "angle": (0, 180)}, _motion_blur, "linear motion blur"),
        Effect("lowlight", {"gamma": (1.5, 2.5), "gain": (0.2, 0.5), "sigma": (2, 10)}, _lowlight, "dark + noisy"),
        Effect("noise", {"sigma": (5, 50)}, _noise, "Gaussian noise, 8-bit levels"),
        Effect("poisson", {"peak": (10, 100)}, _poisson, "shot noise"),
        Effect("jpeg", {"quality": (10, 50)}, _jpeg, "JPEG round trip"),
    )
}

_LIMITS: Dict[Tuple[str, str], Range] = {
    ("haze", "beta"): (0.0, 10.0),
    ("haze", "airlight"): (0.0, 1.0),
    ("rain", "density"): (0.0, 0.2),
    ("rain", "length"): (1, 101),
    ("rain", "angle"): (-360, 360),
    ("rain", "intensity"): (0.0, 1.0),
    ("defocus", "radius"): (0.5, 32.0),
    ("motion_blur", "length"): (1, 101),
    ("motion_blur", "angle"): (-360, 360),
    ("lowlight", "gamma"): (1.0, 5.0),
    ("lowlight", "gain"): (0.01, 1.0),
    ("lowlight", "sigma"): (0.0, 255.0),
    ("noise", "sigma"): (0.0, 255.0),
    ("poisson", "peak"): (1.0, 1e5),
    ("jpeg", "quality"): (1, 95),
}

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def parse_spec(spec: str) -> Degradation:
    """Parse ``"haze,noise:sigma=25,jpeg:quality=20..40"`` into a :class:`Degradation`.

    Effects are separated by commas (or ``+``); each may fix a parameter (``name=value``) or narrow
    its range (``name=lo..hi``), parameters separated by ``:``. Unknown effects or parameters and
    values outside the allowed limits raise :class:`FDIError` naming the accepted ones.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise FDIError(f"no degradation given; name one or more of: {', '.join(EFFECTS)} (e.g. 'haze,noise')")
    chosen: Dict[str, Dict[str, Range]] = {}
    for part in re.split(r"[,+]", spec):
        part = part.strip()
        if not part:
            continue
        name, *params = [s.strip() for s in part.split(":")]
        name = name.lower().replace("-", "_")
        if name not in EFFECTS:
            raise FDIError(f"unknown degradation {name!r}; choose from: {', '.join(EFFECTS)}")
        if name in chosen:
            raise FDIError(f"degradation {name!r} is given twice in {spec!r}; give it once")
        ranges = dict(EFFECTS[name].ranges)
        for param in params:
            m = re.fullmatch(rf"(\w+)\s*=\s*({_NUM})(?:\s*\.\.\s*({_NUM}))?", param)
            if not m:
                raise FDIError(
                    f"cannot read {param!r} in {part!r}; write parameters as name=value or name=lo..hi "
                    f"(e.g. '{name}:{next(iter(ranges))}={_fmt_range(ranges[next(iter(ranges))])}')"
                )
            key, lo = m.group(1), float(m.group(2))
            hi = float(m.group(3)) if m.group(3) is not None else lo
            if key not in ranges:
                raise FDIError(f"{name} has no parameter {key!r}; its parameters are: {', '.join(ranges)}")
            lim = _LIMITS[(name, key)]
            if not (lim[0] <= lo <= hi <= lim[1]):
                raise FDIError(
                    f"{name}:{key}={_fmt_range((lo, hi))} is out of range; "
                    f"give values in {lim[0]:g}..{lim[1]:g} with lo <= hi"
                )
            ranges[key] = (lo, hi)
        chosen[name] = ranges
    if not chosen:
        raise FDIError(f"no degradation given; name one or more of: {', '.join(EFFECTS)} (e.g. 'haze,noise')")
    ordered = tuple((n, tuple(chosen[n].items())) for n in EFFECTS if n in chosen)
    return Degradation(ordered)


def image_key(image: torch.Tensor) -> str:
    """The content key of one ``[3, H, W]`` image in 0..1: the SHA-256 (hex) of ``"<H>x<W>:"`` and its pixels as
    8-bit levels ``round(255·x)`` in channel, row, column order. Any device or float dtype; the same photo
    decoded from its file (8-bit) or given as a ComfyUI ``IMAGE`` has the same key."""
    levels = (image.detach().to(device="cpu", dtype=torch.float32).clamp(0, 1) * 255).round().to(torch.uint8)
    h, w = image.shape[-2:]
    return hashlib.sha256(f"{h}x{w}:".encode() + levels.contiguous().numpy().tobytes()).hexdigest()


def image_seed(seed: int, image: torch.Tensor, copy: int = 0) -> int:
    """The seed of copy ``copy`` of one ``[3, H, W]`` image: a stable hash of ``(seed, image_key(image), copy)``.

    From the pixels, not a name or a batch index, so both doors (a folder in the CLI, an ``IMAGE`` batch in
    ComfyUI) give a photo the same pair wherever it sits; two identical photos get identical pairs."""
    return derive_seed(int(seed), image_key(image), int(copy))


def degrade_image(
    image: torch.Tensor, degradation: Degradation | str, seed: int
) -> Tuple[torch.Tensor, List[Dict[str, float]]]:
    """Degrade one ``[3, H, W]`` image in 0..1; returns the image and the drawn parameters per effect.

    ``seed`` seeds a CPU generator used for every random draw of this image (see the module doc).
    """
    deg = parse_spec(degradation) if isinstance(degradation, str) else degradation
    if image.ndim != 3 or image.shape[0] != 3 or not image.is_floating_point():
        raise FDIError(f"degrade expects a float image [3, H, W] in 0..1, got {tuple(image.shape)} {image.dtype}")
    g = torch.Generator().manual_seed(int(seed))
    out = image.float().clamp(0, 1)  # effects compute in float32; the result comes back in the input's dtype
    drawn = []
    for name, ranges in deg.effects:
        params = {k: _uniform(g, r) for k, r in ranges}
        out = EFFECTS[name].apply(out, params, g).clamp(0, 1)
        drawn.append({"effect": name, **params})
    return out.to(image.dtype), drawn


def degrade(
    images: torch.Tensor,
    degradation: Degradation | str,
    seed: int = 0,
    copies: int = 1,
    progress: Optional[ProgressCallback] = None,
) -> torch.Tensor:
    """Degrade a batch ``[B, 3, H, W]`` in 0..1; returns ``[B·copies, 3, H, W]``, same dtype and device, in 0..1.

    Output ``j = i·copies + k`` is copy ``k`` of image ``i``, drawn with ``image_seed(seed, images[i], k)``.
    """
    deg = parse_spec(degradation) if isinstance(degradation, str) else degradation
    if images.ndim != 4 or images.shape[1] != 3:
        raise FDIError(f"degrade expects a batch [B, 3, H, W], got {tuple(images.shape)}")
    if copies < 1:
        raise FDIError(f"copies must be at least 1, got {copies}")
    out = []
    total = len(images) * copies
    for i, img in enumerate(images):
        for k in range(copies):
            out.append(degrade_image(img, deg, image_seed(seed, img, k))[0])
            report(progress, len(out), total)
    return torch.stack(out)


def degrade_folder(
    clean_dir: PathLike,
    degradation: Degradation | str,
    out_dir: PathLike,
    seed: int = 0,
    copies: int = 1,
    overwrite: bool = False,
    progress: Optional[ProgressCallback] = None,
) -> List[Dict[str, object]]:
    """Write a paired folder from a folder of clean photos; returns one record per pair written.

    ``out_dir/degraded/<name>.png`` and ``out_dir/clean/<name>.png`` (the clean photo as decoded:
    EXIF orientation applied, 8-bit PNG, so the two align pixel for pixel), ``<name>`` = the photo's
    stem, or ``<stem>-<k>`` for ``copies`` > 1; and ``out_dir/degradations.jsonl`` with the drawn
    parameters of every pair. The seed of a pair is :func:`image_seed` of ``(seed, photo, k)``, as in
    :func:`degrade`, so adding or renaming photos leaves the other pairs unchanged. Every problem a user
    can fix (a folder without images, two photos with one stem, an output folder holding pairs) is raised
    before anything is written; each file is written atomically.
    """
    from .files import atomic_write
    from .images import list_images, load_image, save_image

    deg = parse_spec(degradation) if isinstance(degradation, str) else degradation
    if copies < 1:
        raise FDIError(f"copies must be at least 1, got {copies}")
    photos = list_images(clean_dir, "clean folder")
    stems: Dict[str, Path] = {}
    for p in photos:
        if p.stem in stems:
            raise FDIError(
                f"clean folder has two images with stem {p.stem!r} ({stems[p.stem].name}, {p.name}); keep one"
            )
        stems[p.stem] = p
    out = Path(out_dir)
    deg_dir, clean_out = out / "degraded", out / "clean"
    if Path(clean_dir).resolve() in (deg_dir.resolve(), clean_out.resolve()):
        raise FDIError("the output folder's clean/ or degraded/ is the input folder; write the pairs elsewhere")
    if not overwrite:
        busy = [d for d in (deg_dir, clean_out) if d.is_dir() and any(d.iterdir())]
        if busy:
            raise FDIError(f"{str(busy[0])!r} already holds files; choose an empty output folder or pass --overwrite")
    deg_dir.mkdir(parents=True, exist_ok=True)
    clean_out.mkdir(parents=True, exist_ok=True)
    records: List[Dict[str, object]] = []
    total = len(photos) * copies
    for i, path in enumerate(photos):
        clean = load_image(path)
        for k in range(copies):
            name = path.stem if copies == 1 else f"{path.stem}-{k}"
            degraded, drawn = degrade_image(clean, deg, image_seed(seed, clean, k))
            save_image(clean, clean_out / f"{name}.png")
            save_image(degraded, deg_dir / f"{name}.png")
            records.append({"name": name, "source": path.name, "seed": int(seed), "effects": drawn})
            report(progress, i * copies + k + 1, total)
    with atomic_write(out / "degradations.jsonl", "w") as fh:
        fh.write(f"# {json.dumps({'spec': deg.describe(), 'seed': int(seed), 'copies': copies})}\n")
        for r in records:
            fh.write(json.dumps(r) + "\n")
    return records


def effect_names() -> Sequence[str]:
    """The effect names, in the order they apply."""
    return tuple(EFFECTS)


def default_ranges(name: str) -> Mapping[str, Range]:
    """The default parameter ranges of one effect."""
    return EFFECTS[name].ranges


__all__ = [
    "EFFECTS",
    "Degradation",
    "degrade",
    "degrade_folder",
    "degrade_image",
    "default_ranges",
    "effect_names",
    "image_key",
    "image_seed",
    "jpeg_round_trip",
    "parse_spec",
]
