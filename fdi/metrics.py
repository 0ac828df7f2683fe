"""Restoration metrics: PSNR and SSIM on RGB and on Y, optional LPIPS, per image and mean.

Conventions (decisions, chosen to match what restoration papers report — BasicSR's
``calculate_psnr``/``calculate_ssim``, which most deraining/dehazing tables come from):

* Images are float ``[3, H, W]`` in 0..1 (8-bit files read as value/255), so PSNR uses a peak of
  1.0: ``PSNR = 10·log10(1 / MSE)`` in dB, identical to ``10·log10(255² / MSE₂₅₅)`` on 0..255 values.
* **Y channel**: ITU-R BT.601 luma as MATLAB's ``rgb2ycbcr`` computes it,
  ``Y = 16 + 65.481·R + 128.553·G + 24.966·B`` for R, G, B in 0..1 (so Y is in 16..235), divided
  by 255 before the metrics (peak 1.0 again). Like BasicSR (and unlike MATLAB on uint8 input), Y is
  not rounded to integers.
* **SSIM**: scikit-image's ``structural_similarity`` with the settings of Wang et al. 2004 that
  restoration papers use: Gaussian window σ = 1.5 (11×11), ``use_sample_covariance=False``,
  ``K1 = 0.01``, ``K2 = 0.03``, ``data_range = 1``. For RGB it is the mean of the three per-channel
  SSIMs (``channel_axis``), as BasicSR computes it. Both need images of at least 11×11 pixels.
* ``crop_border = N`` removes ``N`` pixels from each edge of both images before any metric (papers on
  super-resolution crop the scale factor; restoration papers usually crop 0).
* **Identical images** have MSE 0 and PSNR ``+inf``. The mean over images is the plain mean, so one
  infinite PSNR makes the mean infinite; the printed table says ``inf``. JSON has no infinity, so
  the report writes infinite values as ``null`` and says so in its ``notes`` field (decision: no
  arbitrary cap such as 100 dB, which would change means silently).
* **LPIPS** (AlexNet, the usual variant) is computed only when the ``lpips`` package is installed
  and the torchvision AlexNet weights are already in the torch hub cache — nothing is downloaded;
  otherwise :func:`load_lpips` raises :class:`FDIError` saying how to get them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from . import images
from .errors import FDIError
from .images import load_image

PathLike = Union[str, os.PathLike]

#: BT.601 luma weights on 0..1 RGB and offset, in 0..255 units (MATLAB rgb2ycbcr)
Y_WEIGHTS = (65.481, 128.553, 24.966)
Y_OFFSET = 16.0

SSIM_SIGMA = 1.5
SSIM_MIN_SIDE = 11  # 2 * int(3.5 * sigma + 0.5) + 1: scikit-image's Gaussian window side

METRIC_KEYS = ("psnr", "ssim", "psnr_y", "ssim_y")


def _as_hwc(image: Union[torch.Tensor, np.ndarray]) -> np.ndarray:
    """``[3, H, W]`` tensor/array in 0..1 → float64 ``[H, W, 3]`` numpy array."""
    if isinstance(image, torch.Tensor):
        image = image.detach().to(torch.float64).cpu().numpy()
    arr = np.asarray(image, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[0] != 3:
        raise FDIError(f"metrics expect [3, H, W] RGB images, got shape {arr.shape}; convert the image to RGB")
    return np.ascontiguousarray(arr.transpose(1, 2, 0))


def rgb_to_y(rgb_hwc: np.ndarray) -> np.ndarray:
    """BT.601 luma of ``[H, W, 3]`` RGB in 0..1, scaled to 0..1 (i.e. ``Y₂₅₅ / 255``, in 16/255..235/255)."""
    r, g, b = rgb_hwc[..., 0], rgb_hwc[..., 1], rgb_hwc[..., 2]
    return (Y_OFFSET + Y_WEIGHTS[0] * r + Y_WEIGHTS[1] * g + Y_WEIGHTS[2] * b) / 255.0


def psnr(pred: np.ndarray, gt: np.ndarray, data_range: float = 1.0) -> float:
    """PSNR in dB of two equally shaped float arrays (scikit-image); ``inf`` when they are identical."""
    from skimage.metrics import peak_signal_noise_ratio

    if np.array_equal(pred, gt):
        return math.inf
    return float(peak_signal_noise_ratio(gt, pred, data_range=data_range))


def ssim(pred: np.ndarray, gt: np.ndarray, data_range: float = 1.0) -> float:
    """SSIM of ``[H, W]`` or ``[H, W, C]`` float arrays with the papers' settings (module doc)."""
    from skimage.metrics import structural_similarity

    if min(pred.shape[0], pred.shape[1]) < SSIM_MIN_SIDE:
        raise FDIError(
            f"images of {pred.shape[1]}x{pred.shape[0]} pixels "
            "(after --crop-border) are too small for SSIM's 11x11 window; "
            "use larger images or a smaller --crop-border"
        )
    return float(
        structural_similarity(
            gt,
            pred,
            data_range=data_range,
            gaussian_weights=True,
            sigma=SSIM_SIGMA,
            use_sample_covariance=False,
            K1=0.01,
            K2=0.03,
            channel_axis=2 if pred.ndim == 3 else None,
        )
    )


def image_metrics(
    pred: Union[torch.Tensor, np.ndarray],
    gt: Union[torch.Tensor, np.ndarray],
    crop_border: int = 0,
    name: str = "image",
) -> Dict[str, float]:
    """PSNR/SSIM on RGB and on Y of one image pair (``[3, H, W]`` in 0..1, same size).

    Returns ``{"psnr", "ssim", "psnr_y", "ssim_y"}`` (dB for PSNR, unitless SSIM).
    """
    p, g = _as_hwc(pred), _as_hwc(gt)
    if p.shape != g.shape:
        raise FDIError(
            f"{name}: prediction is {p.shape[1]}x{p.shape[0]} but ground truth is {g.shape[1]}x{g.shape[0]}; "
            "metrics need the same size (restore at the original size or resize the prediction)"
        )
    if crop_border < 0:
        raise FDIError(f"crop border must be 0 or more pixels, got {crop_border}")
    if crop_border:
        if 2 * crop_border >= min(p.shape[0], p.shape[1]):
            raise FDIError(
                f"{name}: --crop-border {crop_border} removes the whole {p.shape[1]}x{p.shape[0]} "
                "image; use a smaller border"
            )
        p = p[crop_border:-crop_border, crop_border:-crop_border]
        g = g[crop_border:-crop_border, crop_border:-crop_border]
    py, gy = rgb_to_y(p), rgb_to_y(g)
    return {"psnr": psnr(p, g), "ssim": ssim(p, g), "psnr_y": psnr(py, gy), "ssim_y": ssim(py, gy)}


# ---------------------------------------------------------------------------------------------- LPIPS
def load_lpips(device: Union[str, torch.device] = "cpu") -> Callable[[torch.Tensor, torch.Tensor], float]:
    """An LPIPS(AlexNet) function ``(pred, gt) → float`` on ``[3, H, W]`` images in 0..1.

    Raises :class:`FDIError` when the ``lpips`` package is missing or the AlexNet weights are not in
    the torch hub cache (nothing is downloaded here).
    """
    try:
        import lpips  # noqa: F401
    except ImportError:
        raise FDIError(
            "LPIPS needs the 'lpips' package, which is not installed; pip install lpips (or leave out --lpips)"
        ) from None
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    if not any(p.name.startswith("alexnet-owt") for p in hub.glob("*.pth")):
        raise FDIError(
            f"LPIPS needs the torchvision AlexNet weights (alexnet-owt-*.pth) in {hub}, and they are not there; "
            'download them once with: python -c "import torchvision; '
            "torchvision.models.alexnet(weights='IMAGENET1K_V1')\" (or leave out --lpips)"
        )
    import lpips

    model = lpips.LPIPS(net="alex", verbose=False).to(device).eval()

    @torch.no_grad()
    def fn(pred: torch.Tensor, gt: torch.Tensor) -> float:
        a = pred.to(device, torch.float32).unsqueeze(0)
        b = gt.to(device, torch.float32).unsqueeze(0)
        return float(model(a, b, normalize=True).mean())

    return fn


# ---------------------------------------------------------------------------------------------- folders
def match_by_stem(pred_dir: PathLike, gt_dir: PathLike) -> List[Tuple[str, Path, Path]]:
    """``[(stem, pred_path, gt_path)]`` for two folders; every image needs its counterpart."""
    return images.match_by_stem(
        pred_dir,
        gt_dir,
        names=("prediction folder", "ground-truth folder"),
        only=("predictions without ground truth", "ground-truth images without prediction"),
        fix="Images are matched by file name without suffix; restore the missing ones or remove the extra files",
    )


@dataclass
class EvalResult:
    """Per-image metrics and their means (``nan``-free; PSNR may be ``inf``)."""

    images: List[Dict[str, Union[str, float]]] = field(default_factory=list)
    mean: Dict[str, float] = field(default_factory=dict)
    crop_border: int = 0

    def to_json(self) -> dict:
        """JSON-safe report: infinite values are written as ``null`` (see the module doc)."""
        has_inf = False

        def safe(v):
            nonlocal has_inf
            if isinstance(v, float) and not math.isfinite(v):
                has_inf = True
                return None
            return v

        out = {
            "mean": {k: safe(v) for k, v in self.mean.items()},
            "images": [{k: safe(v) for k, v in row.items()} for row in self.images],
            "n_images": len(self.images),
            "crop_border": self.crop_border,
            "y_channel": "BT.601 Y = 16 + 65.481 R + 128.553 G + 24.966 B (R, G, B in 0..1), divided by 255",
            "ssim": "gaussian window sigma 1.5, use_sample_covariance=False, data_range 1 (scikit-image)",
        }
        if has_inf:
            out["notes"] = "PSNR of identical images is infinite; infinite values are written as null"
        return out

    def table(self, y_first: bool = False) -> str:
        """A fixed-width text table of every image and the mean."""
        keys = [k for k in (("psnr_y", "ssim_y", "psnr", "ssim") if y_first else METRIC_KEYS)]
        if any("lpips" in r for r in self.images):
            keys.append("lpips")
        width = max([4] + [len(str(r["name"])) for r in self.images])

        def fmt(k, v):
            if isinstance(v, float) and math.isinf(v):
                return f"{'inf':>9}"
            return f"{v:9.4f}" if k.startswith(("ssim", "lpips")) else f"{v:9.3f}"

        lines = [f"{'name':<{width}}  " + "  ".join(f"{k:>9}" for k in keys)]
        for r in self.images:
            lines.append(f"{str(r['name']):<{width}}  " + "  ".join(fmt(k, r[k]) for k in keys))
        lines.append(f"{'mean':<{width}}  " + "  ".join(fmt(k, self.mean[k]) for k in keys))
        return "\n".join(lines)


def mean_metrics(rows: Sequence[Dict[str, Union[str, float]]]) -> Dict[str, float]:
    """Plain mean of every numeric metric over the rows (``inf`` stays ``inf``)."""
    keys = [k for k in rows[0] if k != "name"]
    return {k: float(np.mean([float(r[k]) for r in rows])) for k in keys}


def evaluate_files(
    items: Sequence[Tuple[str, Path, Path]],
    crop_border: int = 0,
    use_lpips: bool = False,
    device: Union[str, torch.device] = "cpu",
    progress=None,
) -> EvalResult:
    """Metrics of ``[(name, prediction file, ground-truth file)]``, one image pair in memory at a time, and means."""
    from .progress import report

    lp = load_lpips(device) if use_lpips else None
    rows = []
    report(progress, 0, len(items))
    for i, (name, p, g) in enumerate(items):
        pred, gt = load_image(p), load_image(g)
        row: Dict[str, Union[str, float]] = {"name": name}
        row.update(image_metrics(pred, gt, crop_border, name=name))
        if lp is not None:
            c = crop_border
            row["lpips"] = lp(
                pred[:, c : pred.shape[1] - c, c : pred.shape[2] - c], gt[:, c : gt.shape[1] - c, c : gt.shape[2] - c]
            )
        rows.append(row)
        report(progress, i + 1, len(items))
    return EvalResult(images=rows, mean=mean_metrics(rows), crop_border=crop_border)


def evaluate_folders(
    pred_dir: PathLike,
    gt_dir: PathLike,
    crop_border: int = 0,
    use_lpips: bool = False,
    device: Union[str, torch.device] = "cpu",
    progress=None,
) -> EvalResult:
    """Metrics of every prediction against its ground truth (matched by stem), and their means."""
    return evaluate_files(match_by_stem(pred_dir, gt_dir), crop_border, use_lpips, device, progress)


def match_predictions(pred_dir: PathLike, pairs: Sequence) -> List[Tuple[str, Path, Path]]:
    """``[(name, prediction, ground truth)]``: the image of ``pred_dir`` named ``<pair name>.<any suffix>`` for each
    :class:`fdi.data.Pair` (its ``clean`` is the ground truth). A missing or doubled prediction is an error."""
    d = Path(pred_dir)
    if not d.is_dir():
        raise FDIError(f"prediction folder {str(d)!r} does not exist or is not a folder; check the path")
    found: Dict[str, List[Path]] = {}
    for f in d.iterdir():
        if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in images.IMAGE_SUFFIXES:
            found.setdefault(f.stem, []).append(f)
    missing = [p.name for p in pairs if p.name not in found]
    if missing:
        raise FDIError(
            f"{len(missing)} of {len(pairs)} pairs have no prediction in {str(d)!r} "
            f"({', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}); restore them first (predictions are "
            "named after the pair, NAME.png)"
        )
    doubled = [n for n in (p.name for p in pairs) if len(found[n]) > 1]
    if doubled:
        raise FDIError(f"two predictions answer to {doubled[0]!r} in {str(d)!r}; keep one")
    return [(p.name, found[p.name][0], Path(p.clean)) for p in pairs]


def evaluate_tensors(
    preds: Sequence[torch.Tensor],
    gts: Sequence[torch.Tensor],
    names: Optional[Sequence[str]] = None,
    crop_border: int = 0,
) -> EvalResult:
    """Metrics of in-memory images ``[3, H, W]`` in 0..1 (used by training's validation)."""
    if len(preds) != len(gts) or not preds:
        raise FDIError(
            f"{len(preds)} predictions for {len(gts)} ground-truth images; give one prediction per image (at least one)"
        )
    names = list(names) if names is not None else [str(i) for i in range(len(preds))]
    rows = []
    for n, p, g in zip(names, preds, gts):
        row: Dict[str, Union[str, float]] = {"name": n}
        row.update(image_metrics(p, g, crop_border, name=n))
        rows.append(row)
    return EvalResult(images=rows, mean=mean_metrics(rows), crop_border=crop_border)
