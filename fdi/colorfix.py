"""Colour correction of restored images towards a reference (usually the degraded input).

Diffusion restorers drift in colour; two corrections, as StableSR, CCSR and SUPIR offer them
(``docs/design.md``, "Large inputs and collections", says which is the default and why):

* ``wavelet``: keep the restored image's high frequencies and the reference's low frequencies;
  both split by a multi-level blur decomposition (3×3 binomial kernel dilated by ``2^i``,
  :data:`WAVELET_LEVELS` levels, replicate padding): ``out = high(restored) + low(reference)``;
* ``adain``: per image and channel, ``(x − μ_x) / σ_x · σ_ref + μ_ref``.

Images are ``[B, 3, H, W]`` float in 0..1; the reference is resized (bilinear) to the restored size
when they differ, and a reference batch of 1 applies to every image. Outputs are clamped to 0..1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import FDIError
from .images import check_image_batch

COLOR_FIXES = ("none", "wavelet", "adain")
WAVELET_LEVELS = 5
STAT_EPS = 1e-5

_KERNEL = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0


def wavelet_blur(images: torch.Tensor, radius: int) -> torch.Tensor:
    """The 3×3 binomial blur dilated by ``radius`` (replicate padding), per channel: ``[B, C, H, W]`` → same."""
    c = images.shape[1]
    kernel = _KERNEL.to(images.device, images.dtype).expand(c, 1, 3, 3)
    x = F.pad(images, (radius,) * 4, mode="replicate")
    return F.conv2d(x, kernel, groups=c, dilation=radius)


def wavelet_decomposition(images: torch.Tensor, levels: int = WAVELET_LEVELS):
    """``(high, low)`` with ``high + low == images``: ``low`` is the blur after ``levels`` dilated passes."""
    high = torch.zeros_like(images)
    low = images
    for i in range(levels):
        blurred = wavelet_blur(low, 2**i)
        high = high + (low - blurred)
        low = blurred
    return high, low


def _prepare(restored: torch.Tensor, reference: torch.Tensor):
    restored = check_image_batch(restored, "restored images")
    reference = check_image_batch(reference, "reference images").to(restored.device)
    if reference.shape[0] not in (1, restored.shape[0]):
        raise FDIError(
            f"{reference.shape[0]} reference images for {restored.shape[0]} restored images; "
            "give one reference for all or one per image"
        )
    if reference.shape[-2:] != restored.shape[-2:]:
        reference = F.interpolate(
            reference, size=restored.shape[-2:], mode="bilinear", align_corners=False, antialias=True
        )
    return restored, reference.expand(restored.shape[0], -1, -1, -1)


def wavelet_color_fix(restored: torch.Tensor, reference: torch.Tensor, levels: int = WAVELET_LEVELS) -> torch.Tensor:
    """``high(restored) + low(reference)`` clamped to 0..1, ``[B, 3, H, W]`` float32."""
    restored, reference = _prepare(restored, reference)
    high, _ = wavelet_decomposition(restored, levels)
    _, low = wavelet_decomposition(reference, levels)
    return (high + low).clamp(0, 1)


def adain_color_fix(restored: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per image and channel, the restored image with the reference's mean and std (clamped to 0..1)."""
    restored, reference = _prepare(restored, reference)
    var_x, mu_x = torch.var_mean(restored, dim=(2, 3), keepdim=True, unbiased=False)
    var_r, mu_r = torch.var_mean(reference, dim=(2, 3), keepdim=True, unbiased=False)
    return ((restored - mu_x) / (var_x + STAT_EPS).sqrt() * (var_r + STAT_EPS).sqrt() + mu_r).clamp(0, 1)


def color_fix(restored: torch.Tensor, reference: torch.Tensor, method: str) -> torch.Tensor:
    """Apply ``method`` (``none``, ``wavelet`` or ``adain``) to ``[B, 3, H, W]`` images in 0..1."""
    if method == "none":
        return check_image_batch(restored, "restored images")
    if method == "wavelet":
        return wavelet_color_fix(restored, reference)
    if method == "adain":
        return adain_color_fix(restored, reference)
    raise FDIError(f"unknown colour fix {method!r}; use one of {', '.join(COLOR_FIXES)}")
