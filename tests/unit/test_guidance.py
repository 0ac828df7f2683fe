"""Guidance math (fdi.guidance) and its diffusers backend on a tiny SD 2.1-shaped UNet."""

from __future__ import annotations

import pytest
import torch
from tiny_sd import TINY_CHANNELS, TINY_TEXT_WIDTH, randomise_adapter, tiny_adapter_config, tiny_unet

from fdi.adapter import FDIAdapter, FDIGuidance, Modulation
from fdi.diffusers_backend import DiffusersGuidance, check_unet, guide_unet
from fdi.errors import FDIError
from fdi.guidance import apply_modulation, apply_residual, fit_batch, fit_spatial, modulate, residual_delta
from fdi.guidance_slot import GuidanceSlot

# ---- pure math ------------------------------------------------------------------------------------


def _guidance(seed: int, b: int = 1, size=(8, 8), gate_scale: float = 0.5) -> FDIGuidance:
    g = torch.Generator().manual_seed(seed)
    h, w = size
    res, mods = [], []
    for i, c in enumerate(TINY_CHANNELS):
        res.append(torch.randn(b, c, h, w, generator=g))
        h, w = (h + 1) // 2, (w + 1) // 2
    for c in (TINY_CHANNELS[3], TINY_CHANNELS[2], TINY_CHANNELS[1]):
        mods.append(
            Modulation(
                torch.randn(b, c, generator=g),
                torch.rand(b, c, generator=g) + 0.5,
                torch.rand(c, generator=g) * gate_scale,
            )
        )
    return FDIGuidance(res, mods, [])


def test_fit_spatial_crops_small_excess_and_refuses_any_other_size():
    r = torch.arange(2 * 3 * 10 * 12, dtype=torch.float32).reshape(2, 3, 10, 12)
    assert fit_spatial(r, (10, 12)) is r
    assert torch.equal(fit_spatial(r, (9, 11)), r[..., :9, :11])  # MAX_CROP: odd-size rounding
    assert torch.equal(fit_spatial(r, (8, 10)), r[..., :8, :10])
    # a crop of the latent (area conditioning, tiled samplers) or another size: refused, never stretched
    for size in ((5, 6), (7, 12), (10, 6), (12, 12), (20, 24)):
        with pytest.raises(FDIError, match="never stretched.*FDI Restore's tile_size/tile_overlap"):
            fit_spatial(r, size, level=1)
    h = torch.randn(2, 3, 5, 6)
    g = FDIGuidance([r[:1]] * 4, [], [])
    with pytest.raises(FDIError, match=r"r_2 is 10x12 but the UNet feature is 5x6"):
        apply_residual(h, 1, [(g, 1.0)])


def test_modulation_runs_in_fp32_and_rounds_once_in_fp16():
    """A channel mean large against its std: α·D and β nearly cancel; fp16 must lose no more than its rounding."""
    torch.manual_seed(0)
    c = 16
    d = (torch.randn(2, c, 32, 32) * 0.5 + 20).half()  # mean 20, std 0.5
    coeffs = (torch.rand(2, c) + 0.5, torch.randn(2, c), torch.ones(c))  # full gate: AdaIN towards (B, A)
    ref = modulate(d.float(), coeffs)  # fp32 on the same fp16 input values
    std = ref.std(dim=(2, 3), keepdim=True)
    assert float(((ref - d.float()).abs() / std).mean()) > 1.0  # the modulation changes the feature a lot
    got = modulate(d, coeffs)
    assert got.dtype == torch.float16
    assert torch.equal(got, ref.half())  # exactly fp32 rounded once
    rounding = float(((ref.half().float() - ref).abs() / std).max())
    err = float(((got.float() - ref).abs() / std).max())
    assert err <= rounding + 1e-7 and err < 3e-3  # was 0.019 of the output std (10x the rounding) in fp16 math
    zero = (torch.zeros(2, c), torch.zeros(2, c), torch.zeros(c))
    assert torch.equal(modulate(d, zero), d) and torch.equal(modulate(d.bfloat16(), zero), d.bfloat16())


def test_fit_batch_tiles_for_cfg_and_refuses_mismatch():
    t = torch.randn(2, 3)
    assert torch.equal(fit_batch(t, 4), torch.cat([t, t]))  # [cond batch; uncond batch] layout
    assert torch.equal(fit_batch(t[:1], 3), t[:1].expand(3, 3))
    with pytest.raises(FDIError, match="computed for 2 image"):
        fit_batch(t, 3)


def test_residual_formula_composite_and_linearity():
    g1, g2 = _guidance(1), _guidance(2)
    h = torch.randn(2, TINY_CHANNELS[1], 4, 4)
    out = apply_residual(h, 1, [(g1, 0.7), (g2, -0.2)], strength=1.5)
    want = h + 1.5 * (0.7 * g1.residuals[1] + -0.2 * g2.residuals[1]).expand(2, -1, -1, -1)
    torch.testing.assert_close(out, want)
    # (w, 0) == w alone, bit for bit
    assert torch.equal(apply_residual(h, 1, [(g1, 0.7), (g2, 0.0)], 1.3), apply_residual(h, 1, [(g1, 0.7)], 1.3))
    # linear in strength
    d1 = residual_delta(h, 1, [(g1, 0.7)], 1.0)
    torch.testing.assert_close(residual_delta(h, 1, [(g1, 0.7)], 2.5), 2.5 * d1)
    assert torch.equal(apply_residual(h, 1, [(g1, 0.7)], 0.0), h)


def test_modulation_formula_composite_and_linearity():
    g1, g2 = _guidance(1), _guidance(2)
    d = torch.randn(2, TINY_CHANNELS[3], 6, 5) * 3 + 1
    # gate 1, weight 1, strength 1: D becomes AdaIN(D), whose per-channel stats are the targets
    full = FDIGuidance(g1.residuals, [Modulation(m.mean, m.std, torch.ones_like(m.gate)) for m in g1.modulations])
    out = apply_modulation(d, 0, [(full, 1.0)], 1.0)
    var, mean = torch.var_mean(out, dim=(2, 3), unbiased=False)
    m = g1.modulations[0]
    torch.testing.assert_close(mean, m.mean.expand(2, -1), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(var.sqrt(), m.std.expand(2, -1), rtol=1e-3, atol=1e-3)
    # explicit formula with gates
    mu = d.mean((2, 3), keepdim=True)
    sd = torch.sqrt(d.var((2, 3), keepdim=True, unbiased=False) + 1e-5)
    ada = (d - mu) / sd * m.std[:, :, None, None] + m.mean[:, :, None, None]
    want = d + 0.8 * 0.5 * m.gate[None, :, None, None] * (ada - d)
    torch.testing.assert_close(apply_modulation(d, 0, [(g1, 0.5)], 0.8), want, rtol=1e-5, atol=1e-5)
    # composite (w, 0) == w, zero strength == identity, linear in strength
    assert torch.equal(apply_modulation(d, 0, [(g1, 0.5), (g2, 0.0)], 0.8), apply_modulation(d, 0, [(g1, 0.5)], 0.8))
    assert torch.equal(apply_modulation(d, 0, [(g1, 0.5)], 0.0), d)
    d1 = apply_modulation(d, 0, [(g1, 0.5)], 1.0) - d
    torch.testing.assert_close(apply_modulation(d, 0, [(g1, 0.5)], 3.0) - d, 3.0 * d1, rtol=1e-4, atol=1e-5)
    # zero gates: exact identity whatever the targets
    zero = FDIGuidance(g1.residuals, [Modulation(m.mean, m.std, torch.zeros_like(m.gate)) for m in g1.modulations])
    assert torch.equal(apply_modulation(d, 0, [(zero, 1.0)], 1.0), d)
    assert torch.equal(apply_modulation(d.half(), 0, [(zero, 1.0)], 1.0), d.half())


def test_channel_mismatch_is_a_clear_error():
    g = _guidance(1)
    with pytest.raises(FDIError, match="another UNet channel layout"):
        apply_residual(torch.randn(1, 320, 8, 8), 0, [(g, 1.0)])


# ---- diffusers backend ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unet():
    return tiny_unet(0)


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(3)
    return torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 5, TINY_TEXT_WIDTH, generator=g)


def _adapter(seed: int, trained: bool) -> FDIAdapter:
    torch.manual_seed(seed)
    a = FDIAdapter(tiny_adapter_config(), base_family="custom-base").eval()
    return randomise_adapter(a, seed=seed) if trained else a


def _guidance_from(adapter: FDIAdapter, seed: int = 0) -> FDIGuidance:
    g = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():
        return adapter(torch.rand(2, 3, 64, 64, generator=g), torch.randn(8, 32, generator=g))


def _run(unet, inputs, t: int = 500):
    x, ctx = inputs
    with torch.no_grad():
        return unet(x, torch.tensor([t, t]), encoder_hidden_states=ctx).sample


def test_fresh_adapter_is_an_exact_noop_and_trained_one_changes_outputs(unet, inputs):
    plain = _run(unet, inputs)
    with guide_unet(unet, [(_guidance_from(_adapter(0, trained=False)), 1.0)]):
        assert torch.equal(_run(unet, inputs), plain)
    with guide_unet(unet, [(_guidance_from(_adapter(0, trained=True)), 1.0)]) as hooks:
        guided = _run(unet, inputs)
        assert (guided - plain).abs().max() > 1e-3
        hooks.active = False  # outside the step window: exactly absent
        assert torch.equal(_run(unet, inputs), plain)
        hooks.active = True
        assert torch.equal(_run(unet, inputs), guided)  # deterministic, reusable every step
        hooks.strength = 0.0  # changing the strength drops the cached residuals/coefficients
        assert torch.equal(_run(unet, inputs), plain)
        hooks.strength = 1.0
        with torch.enable_grad():  # uncached path (autograd): the same numbers
            assert torch.equal(_run_grad(unet, inputs), guided)
    assert not hooks.attached
    assert torch.equal(_run(unet, inputs), plain)  # removal restores the exact original outputs
    assert not unet._forward_pre_hooks and not any(b._forward_hooks for b in unet.up_blocks)


def test_composite_weights_and_strength(unet, inputs):
    g1 = _guidance_from(_adapter(0, True), 0)
    g2 = _guidance_from(_adapter(1, True), 1)
    with guide_unet(unet, [(g1, 0.6), (g2, 0.0)], strength=0.9):
        both = _run(unet, inputs)
    with guide_unet(unet, [(g1, 0.6)], strength=0.9):
        one = _run(unet, inputs)
    assert torch.equal(both, one)
    with guide_unet(unet, [(g1, 0.6), (g2, 0.4)]):
        mixed = _run(unet, inputs)
    assert (mixed - one).abs().max() > 1e-4
    with guide_unet(unet, [(g1, 1.0)], strength=0.0):
        assert torch.equal(_run(unet, inputs), _run_plain(unet, inputs))
    with guide_unet(unet, [(g1.weighted(0.6), 1.0)], strength=0.9):
        torch.testing.assert_close(_run(unet, inputs), one, rtol=1e-5, atol=1e-6)


def _run_grad(unet, inputs, t: int = 500):
    x, ctx = inputs
    return unet(x, torch.tensor([t, t]), encoder_hidden_states=ctx).sample.detach()


def _run_plain(unet, inputs):
    return _run(unet, inputs)


def test_residuals_enter_where_design_section3_says(unet, inputs):
    """Reference: add r_i to the output of the last attention (levels 1–3) / last resnet (level 4) of each
    down block — before the skip is stored and before downsampling (ComfyUI: after input blocks 2, 5, 8, 11).
    Modulation: on the outputs of up_blocks[0..2]. The backend (down_intrablock residuals, with diffusers'
    in-place add after DownBlock2D) must give the same numbers."""
    g = _guidance_from(_adapter(0, True))
    handles = []
    for level, block in enumerate(unet.down_blocks):
        target = block.attentions[-1] if getattr(block, "has_cross_attention", False) else block.resnets[-1]

        def add(mod, args, out, level=level):
            if isinstance(out, tuple):
                return (apply_residual(out[0], level, [(g, 1.0)], 1.0),) + tuple(out[1:])
            return apply_residual(out, level, [(g, 1.0)], 1.0)

        handles.append(target.register_forward_hook(add))
    for point in range(3):
        handles.append(
            unet.up_blocks[point].register_forward_hook(
                lambda m, a, o, p=point: apply_modulation(o, p, [(g, 1.0)], 1.0)
            )
        )
    try:
        ref = _run(unet, inputs)
    finally:
        for h in handles:
            h.remove()
    with guide_unet(unet, g):
        got = _run(unet, inputs)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    # and the level-4 residual alone does change the skip path: without the in-place aliasing the
    # result would differ from the reference above
    only4 = FDIGuidance(
        [torch.zeros_like(r) if i < 3 else r for i, r in enumerate(g.residuals)],
        [Modulation(m.mean, m.std, torch.zeros_like(m.gate)) for m in g.modulations],
    )
    with guide_unet(unet, only4):
        a = _run(unet, inputs)
    assert (a - _run(unet, inputs)).abs().max() > 0


def test_cfg_batch_tiles_the_guidance(unet, inputs):
    x, ctx = inputs
    g = _guidance_from(_adapter(0, True))
    with guide_unet(unet, g), torch.no_grad():
        two = unet(x, torch.tensor([300, 300]), encoder_hidden_states=ctx).sample
        four = unet(torch.cat([x, x]), torch.tensor([300] * 4), encoder_hidden_states=torch.cat([ctx, ctx])).sample
        with pytest.raises(FDIError, match="batch of 3"):
            unet(x[:1].expand(3, -1, -1, -1), torch.tensor([300] * 3), encoder_hidden_states=ctx[:1].expand(3, -1, -1))
    torch.testing.assert_close(four[:2], two, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(four[2:], two, rtol=1e-5, atol=1e-5)


def test_caller_intrablock_residuals_are_added_not_replaced(unet, inputs):
    x, ctx = inputs
    g = _guidance_from(_adapter(0, True))
    extra = [torch.randn(2, c, s, s) for c, s in zip(TINY_CHANNELS, (8, 4, 2, 1))]
    summed = FDIGuidance([r + e for r, e in zip(g.residuals, extra)], g.modulations)
    with torch.no_grad():
        with guide_unet(unet, summed):
            want = unet(x, torch.tensor([200, 200]), encoder_hidden_states=ctx).sample
        with guide_unet(unet, g):
            got = unet(
                x,
                torch.tensor([200, 200]),
                encoder_hidden_states=ctx,
                down_intrablock_additional_residuals=[e.clone() for e in extra],
            ).sample
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_residual_of_a_downsampling_block_without_attention_goes_before_its_downsampler():
    """SDXL's first down block has no attention and downsamples: diffusers would add an intrablock residual after the
    downsampler. The backend adds r_1 to its last resnet's output instead (ComfyUI: after input block 2, before the
    skip is stored): the stored skip moves by exactly r_1, and the downsampled sample by something else."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 32, 64),
        layers_per_block=2,
        norm_num_groups=8,
        cross_attention_dim=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=8,
    ).eval()
    check_unet(unet)
    g = FDIGuidance(
        residuals=[torch.randn(1, c, 8 // 2**i, 8 // 2**i) for i, c in enumerate((32, 32, 64))],
        modulations=[Modulation(torch.zeros(1, c), torch.ones(1, c), torch.zeros(c)) for c in (64, 32)],
    )
    seen = []
    unet.down_blocks[0].register_forward_hook(lambda m, a, out: seen.append(out))
    x, ctx = torch.randn(1, 4, 8, 8), torch.randn(1, 5, 32)
    with torch.no_grad():
        plain = unet(x, 10, encoder_hidden_states=ctx).sample
        with DiffusersGuidance(unet, [(g, 1.0)]):
            guided = unet(x, 10, encoder_hidden_states=ctx).sample
        after = unet(x, 10, encoder_hidden_states=ctx).sample
    (s0, skips0), (s1, skips1) = seen[0], seen[1]
    torch.testing.assert_close(skips1[-2] - skips0[-2], g.residuals[0], rtol=0, atol=1e-5)
    assert (s1 - s0).abs().max() > 1e-3  # the downsampler saw h + r_1
    assert (guided - plain).abs().max() > 1e-3 and torch.equal(after, plain)
    slot = GuidanceSlot(unet)  # the compile-friendly hooks (fdi.compile) add it at the same place
    with torch.no_grad():
        with DiffusersGuidance(unet, [(g, 1.0)]):
            slotted = unet(x, 10, encoder_hidden_states=ctx).sample
        off = unet(x, 10, encoder_hidden_states=ctx).sample
    slot.remove()
    torch.testing.assert_close(slotted, guided, rtol=0, atol=1e-6)
    assert torch.equal(off, plain)
    with pytest.raises(FDIError, match="SD 1.5/2.1"):
        DiffusersGuidance(torch.nn.Linear(2, 2), [])
