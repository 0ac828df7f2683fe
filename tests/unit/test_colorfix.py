"""Colour correction (:mod:`fdi.colorfix`); its node ``FDIColorFix`` in ``tests/comfyui/test_postprocess_nodes.py``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fdi.colorfix import adain_color_fix, color_fix, wavelet_color_fix, wavelet_decomposition
from fdi.errors import FDIError


def scene(seed: int, h: int = 96, w: int = 128) -> torch.Tensor:
    """A photo-like image: smooth colour fields plus fine texture, mid-range so clamping is rare."""
    g = torch.Generator().manual_seed(seed)
    coarse = F.interpolate(torch.rand(1, 3, 4, 5, generator=g), size=(h, w), mode="bicubic", align_corners=False)
    return (0.25 + 0.5 * coarse + 0.05 * torch.randn(1, 3, h, w, generator=g)).clamp(0, 1)


def drifted(reference: torch.Tensor, seed: int = 7) -> torch.Tensor:
    """What a diffusion restorer returns: new detail, and a colour cast (+0.12 red, −0.1 blue, lower contrast)."""
    g = torch.Generator().manual_seed(seed)
    detail = 0.04 * torch.randn(reference.shape, generator=g)
    cast = torch.tensor([0.12, 0.0, -0.1]).view(1, 3, 1, 1)
    return (0.8 * (reference - 0.5) + 0.5 + cast + detail).clamp(0, 1)


def test_wavelet_decomposition_is_exact_and_low_is_smooth():
    x = scene(0)
    high, low = wavelet_decomposition(x)
    assert torch.allclose(high + low, x, atol=1e-6)
    # the low band holds (almost) no fine texture: its pixel-to-pixel differences are a small part of the image's
    assert (low.diff(dim=-1).abs().mean() / x.diff(dim=-1).abs().mean()) < 0.1


def test_wavelet_keeps_the_references_mean_colour_and_the_restored_detail():
    ref = scene(1)
    restored = drifted(ref)
    assert (restored.mean(dim=(2, 3)) - ref.mean(dim=(2, 3))).abs().max() > 20 / 255  # the drift to undo
    out = wavelet_color_fix(restored, ref)
    assert (out.mean(dim=(2, 3)) - ref.mean(dim=(2, 3))).abs().max() <= 2 / 255
    # the detail is the restoration's: the high band of the output equals the restored one's (up to clamping)
    h_out, _ = wavelet_decomposition(out)
    h_res, _ = wavelet_decomposition(restored)
    assert (h_out - h_res).abs().mean() < 0.1 * h_res.abs().mean()


def test_adain_matches_the_references_mean_and_std_per_channel():
    ref = scene(2)
    restored = drifted(ref)
    out = adain_color_fix(restored, ref)
    var_o, mu_o = torch.var_mean(out, dim=(2, 3), unbiased=False)
    var_r, mu_r = torch.var_mean(ref, dim=(2, 3), unbiased=False)
    assert (mu_o - mu_r).abs().max() < 1e-3 and (var_o.sqrt() - var_r.sqrt()).abs().max() < 1e-3
    assert (restored.mean(dim=(2, 3)) - mu_r).abs().max() > 20 / 255


def test_none_batches_sizes_and_bad_input():
    ref = scene(3)
    restored = torch.cat([drifted(ref, 1), drifted(ref, 2)])
    assert torch.equal(color_fix(restored, ref, "none"), restored)
    both = color_fix(restored, ref, "wavelet")  # one reference for the batch …
    assert torch.equal(both[1:], color_fix(restored[1:], ref, "wavelet"))  # … is each image's own
    small = F.interpolate(ref, size=(48, 64), mode="bilinear", align_corners=False, antialias=True)
    resized = color_fix(restored, small, "adain")  # a reference of another size is resized to the restored size
    assert resized.shape == restored.shape
    assert (resized.mean(dim=(2, 3)) - ref.mean(dim=(2, 3))).abs().max() < 2 / 255
    with pytest.raises(FDIError, match="unknown colour fix 'hist'"):
        color_fix(restored, ref, "hist")
    with pytest.raises(FDIError, match="3 reference images for 2 restored images"):
        color_fix(restored, ref.expand(3, -1, -1, -1), "adain")
