"""Tiled restoration (:mod:`fdi.tiles`, the pipeline's tiled path): grid, weights, guidance crops, exactness, seams."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_sd import make_adapter, tiny_fdi

from fdi.adapter import FDIGuidance, Modulation
from fdi.errors import FDIError
from fdi.pipeline import AdapterUse
from fdi.sampling import pad_to_multiple
from fdi.tiles import OFFSET_MULTIPLE, Tiling, check_tiling, tile_starts

FAST = dict(steps=3, inversion_steps=3, guidance_end=1.0)


@settings(max_examples=200, deadline=None)
@given(
    length=st.integers(1, 64).map(lambda k: 8 * k),
    tile=st.integers(2, 16).map(lambda k: 8 * k),
    overlap=st.integers(0, 120),
)
def test_grid_covers_with_the_overlap_on_whole_pixels_of_every_level(length, tile, overlap):
    overlap = min(overlap, tile - 8)
    starts = tile_starts(length, tile, overlap)
    size = min(tile, length)
    assert starts[0] == 0 and starts[-1] + size == length
    assert all(s % OFFSET_MULTIPLE == 0 for s in starts)  # level 3 (latent / 8) crops on whole pixels
    assert all(b - a <= size - overlap and b > a for a, b in zip(starts, starts[1:]))  # at least the overlap in common


def test_weights_blend_to_the_identity_and_rise_smoothly():
    tiling = Tiling(48, 40, 16, 6)
    assert len(tiling.tiles) > 4
    x = torch.randn(2, 4, 48, 40)
    assert torch.allclose(tiling.blend(x, lambda i, xt: xt), x, atol=1e-6)
    up = tiling.blend(F.interpolate(x, scale_factor=8), lambda i, xt: xt, in_scale=8, out_scale=8)
    assert torch.allclose(up, F.interpolate(x, scale_factor=8), atol=1e-6)
    w = tiling.weights(4)
    assert w.min() > 0 and w.max() == 1
    assert (w[:, 1:] - w[:, :-1]).abs().max() < 0.3  # no jump: a 6-pixel raised cosine


def test_each_tile_crops_every_residual_level_at_its_offset():
    h, w = 48, 64
    residuals = []
    for level in range(4):  # r[level][a, b] = the latent position it stands for: row·1000 + column
        s = 2**level
        rows = torch.arange(h // s).float()[:, None] * s * 1000
        cols = torch.arange(w // s).float()[None, :] * s
        residuals.append((rows + cols).expand(1, 2, -1, -1))
    mods = [Modulation(torch.rand(1, 2), torch.rand(1, 2), torch.rand(2)) for _ in range(3)]
    g = FDIGuidance(residuals, mods)
    tiling = Tiling(h, w, 24, 8)
    assert len(tiling.tiles) == 12  # rows at 0, 16, 24; columns at 0, 16, 24, 40
    for i, t in enumerate(tiling.tiles):
        crop = tiling.crop_guidance(g, i)
        for level, r in enumerate(crop.residuals):
            assert r.shape[-2:] == (t.h // 2**level, t.w // 2**level)
            assert r[0, 0, 0, 0] == t.y * 1000 + t.x  # the tile's corner, at every level
        assert all(a is b for a, b in zip(crop.modulations, mods))  # AdaIN targets are per image: kept as they are
    with pytest.raises(FDIError, match="run the adapter on the padded image"):
        Tiling(56, 64, 24, 8).crop_guidance(g, 1)


def test_one_default_overlap_and_window_for_every_door():
    """The library, the CLI and the nodes (their generated help pages, kept in step with the schemas by
    test_help_and_locales) default to the same tile overlap and guided fraction."""
    import inspect
    import re

    from fdi.cli import build_parser
    from fdi.pipeline import FDIRestorationPipeline
    from fdi.sampling import DEFAULT_GUIDANCE_WINDOW, GUIDANCE_END
    from fdi.tiles import DEFAULT_TILE_OVERLAP

    params = inspect.signature(FDIRestorationPipeline.restore).parameters
    args = build_parser().parse_args(["restore", "--sd", "m", "--adapter", "a.safetensors", "--image", "i", "-o", "o"])
    docs = Path(__file__).resolve().parents[2] / "web" / "docs"

    def node_default(node: str, name: str) -> str:
        return re.search(rf"`{name}` = `([^`]+)`", (docs / f"{node}.md").read_text(encoding="utf-8")).group(1)

    assert params["tile_overlap"].default == args.tile_overlap == DEFAULT_TILE_OVERLAP == 128
    assert int(node_default("FDIRestore", "tile_overlap")) == DEFAULT_TILE_OVERLAP
    # the window: each adapter's own by default; files that record none, and the nodes' start/end widgets (which
    # such files use), the paper's first third
    assert params["guidance_start"].default is args.guidance_start is None
    assert params["guidance_end"].default is args.guidance_end is None
    assert DEFAULT_GUIDANCE_WINDOW == (0.0, GUIDANCE_END)
    assert node_default("FDIRestore", "guidance_window") == node_default("FDIApplyGuidance", "guidance_window")
    assert node_default("FDIRestore", "guidance_window") == "from adapter"
    assert float(node_default("FDIRestore", "guidance_start")) == DEFAULT_GUIDANCE_WINDOW[0]
    assert float(node_default("FDIRestore", "guidance_end")) == GUIDANCE_END
    assert float(node_default("FDIApplyGuidance", "start_percent")) == DEFAULT_GUIDANCE_WINDOW[0]
    assert float(node_default("FDIApplyGuidance", "end_percent")) == GUIDANCE_END


@pytest.mark.parametrize(
    "tile, overlap, message",
    [
        (96, 32, "multiple of 64 of at least 128"),
        (64, 0, "multiple of 64 of at least 128"),
        (200, 0, "multiple of 64 of at least 128"),
        (256, 256, "must be smaller than the tile"),
        (256, -8, "must be smaller than the tile"),
        (256, 224, "at most 192 px"),
    ],
)
def test_bad_tile_settings(tile, overlap, message):
    with pytest.raises(FDIError, match=message):
        check_tiling(tile, overlap)


def test_a_tile_covering_the_image_is_exactly_the_untiled_restore(tiny_pipeline):
    x = torch.rand(2, 3, 90, 120, generator=torch.Generator().manual_seed(0))
    uses = [AdapterUse(make_adapter(), tiny_fdi(), 1.0)]
    plain = tiny_pipeline.restore(x, uses, cfg=2.0, **FAST)
    whole = tiny_pipeline.restore(x, uses, cfg=2.0, tile_size=128, tile_overlap=32, **FAST)  # padded: 128 x 128
    assert torch.equal(plain, whole)


def test_every_tile_is_guided_by_its_crop_of_the_residuals(tiny_pipeline, monkeypatch):
    x = torch.rand(1, 3, 256, 192, generator=torch.Generator().manual_seed(1))
    use = AdapterUse(make_adapter(), tiny_fdi(), 0.7)
    unet = tiny_pipeline.unet
    seen = []
    original = unet.forward

    def spy(sample, *a, **k):
        r = k.get("down_intrablock_additional_residuals")
        seen.append((tuple(sample.shape[-2:]), None if r is None else [t.clone() for t in r]))
        return original(sample, *a, **k)

    monkeypatch.setattr(unet, "forward", spy)
    tiny_pipeline.restore(
        x, [use], strength=1.5, tile_size=128, tile_overlap=64, steps=2, inversion_steps=1, guidance_end=0.5
    )
    monkeypatch.undo()
    tiling = Tiling(32, 24, 16, 8)
    n = len(tiling.tiles)
    assert n == 6 and len(seen) == 3 * n  # 1 inversion + 2 sampling steps, each over every tile
    assert all(r is None for _, r in seen[:n]) and all(r is None for _, r in seen[2 * n :])  # guided: step 0 only
    whole = tiny_pipeline.compute_guidance(use, pad_to_multiple(x))
    for i, (shape, residuals) in enumerate(seen[n : 2 * n]):
        t = tiling.tiles[i]
        assert shape == (t.h, t.w)
        crop = tiling.crop_guidance(whole, i)
        for level in range(4):
            assert torch.allclose(residuals[level], 1.5 * 0.7 * crop.residuals[level], atol=1e-6)
        assert whole.residuals[3].abs().max() > 0.01  # the residuals are not zero: the comparison means something


def column_steps(image: torch.Tensor) -> torch.Tensor:
    """``[W − 1]``: the largest |step| from pixel column ``c`` to ``c + 1``, over rows and channels."""
    return (image[..., :, 1:] - image[..., :, :-1]).abs().amax(dim=(0, 1, 2))


@pytest.mark.parametrize("scale", [1, 8])  # the UNet's blend (latent pixels) and the VAE decoder's (image pixels)
def test_tile_borders_are_not_visible_while_abutting_tiles_show_them(scale):
    """A tile-dependent computation (a per-tile offset, as GroupNorm or AdaIN statistics of a tile give) on a smooth
    field: abutting tiles jump at their borders; blended tiles spread the disagreement over the overlap."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 32 * scale), torch.linspace(0, 1, 48 * scale), indexing="ij")
    field = (0.3 + 0.4 * xx + 0.2 * yy * xx)[None, None]

    def per_tile(i, xt):  # each tile shifted by its own statistics
        return xt - 0.5 * xt.mean()

    latent = field[..., ::scale, ::scale]
    abutting = Tiling(32, 48, 16, 0).blend(latent if scale == 1 else field, per_tile, in_scale=scale, out_scale=scale)
    blended_tiling = Tiling(32, 48, 16, 8)
    blended = blended_tiling.blend(field, per_tile, in_scale=scale, out_scale=scale)
    borders = [16 * scale, 32 * scale]  # abutting tiles at 0, 16, 32 latent pixels
    smooth_step = (field[..., 1:] - field[..., :-1]).abs().max()
    jump = column_steps(abutting)[[c - 1 for c in borders]]
    assert (jump > 5 * smooth_step).all()  # the measure sees a seam when there is one
    # blended: the disagreement is spread over the 8-latent-pixel overlap
    assert column_steps(blended).max() < 1.5 * smooth_step  # no step larger than the field's own
    assert (blended - field).abs().max() < 0.5  # the tiles did disagree: 0.5 x their means


def test_comfy_input_patch_adds_the_tiles_crop_of_each_residual():
    from fdi.comfy_backend import TILE_KEY, FDIInputPatch, GuidanceEntry

    g = torch.Generator().manual_seed(0)
    residuals = [torch.randn(1, 4, 32 // 2**i, 48 // 2**i, generator=g) for i in range(4)]
    guidance = FDIGuidance(residuals, [Modulation(torch.rand(1, 4), torch.rand(1, 4), torch.rand(4)) for _ in range(3)])
    patch = FDIInputPatch([GuidanceEntry(guidance, 0.5)])
    for level, block in enumerate((2, 5, 8, 11)):
        s = 2**level
        h = torch.randn(2, 4, 16 // s, 24 // s, generator=g)  # a tile of 16 x 24 latent pixels at (8, 16)
        out = patch(h, {"block": ("input", block), TILE_KEY: (8, 16)})
        want = h + 0.5 * residuals[level][..., 8 // s : 8 // s + 16 // s, 16 // s : 16 // s + 24 // s]
        assert torch.allclose(out, want, atol=1e-6)
        whole = torch.randn(2, 4, 32 // s, 48 // s, generator=g)  # no tile: the whole residual, as before
        assert torch.allclose(patch(whole, {"block": ("input", block)}), whole + 0.5 * residuals[level], atol=1e-6)
