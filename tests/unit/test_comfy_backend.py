"""The ComfyUI guidance patches and the DDIM-inversion step, tested without ComfyUI (plain torch).

``fdi.comfy_backend`` implements ComfyUI's patch protocol (``transformer_options`` with ``block``,
``sigmas``, ``cond_or_uncond``); these tests drive it the way ComfyUI's ``openaimodel`` UNet does
and check numbers: no-op for a fresh adapter, exact equality with :mod:`fdi.guidance`, window
gating, batch handling, resizing, chaining, deep copies, and the inversion arithmetic.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from fdi.adapter import FDIAdapter, FDIAdapterConfig, FDIGuidance, Modulation
from fdi.comfy_backend import (
    FDIInputPatch,
    FDIOutputPatch,
    GuidanceEntry,
    add_guidance,
    block_indices,
    check_unet_for_adapter,
    comfy_family,
    ddim_inversion_sampler,
    fdi_patches,
    sigma_window,
)
from fdi.errors import FDIError
from fdi.guidance import apply_modulation, apply_residual
from fdi.sampling import ddim_timesteps, guided_step_count, inversion_sigmas, inversion_timesteps, sampling_sigmas

CH = (8, 16, 16, 16)
IN_BLOCKS, OUT_BLOCKS = (2, 5, 8, 11), (3, 6, 9)
WINDOW = dict(sigma_start=10.0, sigma_end=2.0)

#: ComfyUI's SD 2.x / SDXL / SD 1.5 unet_config values (comfy/supported_models.py + model_detection)
SD2_CONFIG = {
    "model_channels": 320,
    "channel_mult": [1, 2, 4, 4],
    "num_res_blocks": [2, 2, 2, 2],
    "context_dim": 1024,
    "in_channels": 4,
    "use_linear_in_transformer": True,
}
SDXL_CONFIG = {
    "model_channels": 320,
    "channel_mult": [1, 2, 4],
    "num_res_blocks": [2, 2, 2],
    "context_dim": 2048,
    "in_channels": 4,
    "transformer_depth": [0, 0, 2, 2, 10, 10],
    "adm_in_channels": 2816,
}
SD15_CONFIG = {
    "model_channels": 320,
    "channel_mult": [1, 2, 4, 4],
    "num_res_blocks": [2, 2, 2, 2],
    "context_dim": 768,
    "in_channels": 4,
}


def random_guidance(batch: int = 1, size: int = 8, seed: int = 0, channels=CH) -> FDIGuidance:
    """A non-trivial guidance: random residuals at /1,/2,/4,/8 of ``size`` and random AdaIN targets and gates."""
    g = torch.Generator().manual_seed(seed)
    residuals = []
    s = size
    for c in channels:
        residuals.append(torch.randn(batch, c, s, s, generator=g))
        s = (s + 1) // 2
    mods = []
    for c in (channels[3], channels[2], channels[1]):
        mods.append(
            Modulation(
                torch.randn(batch, c, generator=g), torch.rand(batch, c, generator=g) + 0.5, torch.rand(c, generator=g)
            )
        )
    return FDIGuidance(residuals=residuals, modulations=mods)


def opts(block, sigma=5.0, chunks=1):
    return {
        "block": block,
        "sigmas": torch.tensor([sigma]),
        "cond_or_uncond": list(range(chunks)),
        "original_shape": [1, 4, 8, 8],
    }


def features(batch, c, s, seed=1):
    return torch.randn(batch, c, s, s, generator=torch.Generator().manual_seed(seed)) * 3 + 1


def patches_for(entries):
    return FDIInputPatch(entries, IN_BLOCKS, OUT_BLOCKS), FDIOutputPatch(entries, IN_BLOCKS, OUT_BLOCKS)


# ------------------------------------------------------------------------------------------------ no-op


def test_fresh_adapter_is_an_exact_no_op():
    torch.manual_seed(0)
    adapter = FDIAdapter(FDIAdapterConfig(channels=CH, token_width=12, num_tokens=4, heads=4, se_reduction=4)).eval()
    with torch.no_grad():
        g = adapter(torch.rand(1, 3, 64, 64), torch.randn(4, 12))
    inp, out = patches_for([GuidanceEntry(g, 1.0, **WINDOW)])
    for level, block in enumerate(IN_BLOCKS):
        h = features(2, CH[level], 8 >> level)
        assert torch.equal(inp(h, opts(("input", block))), h)
    for point, block in enumerate(OUT_BLOCKS):
        c = (CH[3], CH[2], CH[1])[point]
        h, hsp = features(2, c, 2 << point), features(2, c, 2 << point, seed=2)
        h2, hsp2 = out(h, hsp, opts(("output", block)))
        assert torch.equal(h2, h) and hsp2 is hsp


def test_strength_zero_is_an_exact_no_op():
    g = random_guidance()
    inp, out = patches_for([GuidanceEntry(g, 0.0, **WINDOW)])
    h = features(1, CH[0], 8)
    assert torch.equal(inp(h, opts(("input", 2))), h)
    d = features(1, CH[3], 2)
    assert torch.equal(out(d, d, opts(("output", 3)))[0], d)


# ------------------------------------------------------------------------------------------------ the numbers


@pytest.mark.parametrize("strength", [1.0, 0.37, -2.0])
def test_patches_equal_fdi_guidance_math_exactly(strength):
    g = random_guidance(seed=3)
    inp, out = patches_for([GuidanceEntry(g, strength, **WINDOW)])
    for level, block in enumerate(IN_BLOCKS):
        h = features(1, CH[level], 8 >> level, seed=level)
        got = inp(h, opts(("input", block)))
        assert torch.equal(got, apply_residual(h, level, [(g, 1.0)], strength))  # what the diffusers backend calls
        assert torch.allclose(got, h + strength * g.residuals[level], atol=1e-6)  # the formula, independently
        assert not torch.equal(got, h)
    for point, block in enumerate(OUT_BLOCKS):
        c = (CH[3], CH[2], CH[1])[point]
        d = features(1, c, 1 << point, seed=10 + point) if point else features(1, c, 2, seed=10)
        got, _ = out(d, d, opts(("output", block)))
        assert torch.equal(got, apply_modulation(d, point, [(g, 1.0)], strength))
        m = g.modulations[point]
        var, mu = torch.var_mean(d, dim=(2, 3), keepdim=True, unbiased=False)
        adain = (d - mu) / torch.sqrt(var + 1e-5) * m.std[:, :, None, None] + m.mean[:, :, None, None]
        assert torch.allclose(got, d + strength * m.gate[None, :, None, None] * (adain - d), atol=1e-5)


def test_other_blocks_are_untouched():
    inp, out = patches_for([GuidanceEntry(random_guidance(), 1.0, **WINDOW)])
    for block in (0, 1, 3, 4, 6, 7, 9, 10):
        h = features(1, 4, 4)
        assert inp(h, opts(("input", block))) is h
    for block in (0, 1, 2, 4, 5, 7, 8, 10, 11):
        h = features(1, 4, 4)
        assert out(h, h, opts(("output", block)))[0] is h
    h = features(1, CH[0], 8)
    assert inp(h, opts(("middle", 0))) is h


# ------------------------------------------------------------------------------------------------ window


def test_window_gating_uses_sigma_bounds_inclusively():
    g = random_guidance()
    inp, out = patches_for([GuidanceEntry(g, 1.0, sigma_start=10.0, sigma_end=2.0)])
    h = features(1, CH[0], 8)
    for sigma, active in ((14.6, False), (10.0, True), (5.0, True), (2.0, True), (1.99, False), (0.03, False)):
        got = inp(h, opts(("input", 2), sigma=sigma))
        assert (not torch.equal(got, h)) == active, sigma
        d = features(1, CH[3], 2)
        assert (not torch.equal(out(d, d, opts(("output", 3), sigma=sigma))[0], d)) == active, sigma


def test_sigma_window_from_percent_and_refusal():
    p2s = lambda p: 999999999.9 if p <= 0 else (0.0 if p >= 1 else 14.6 * (1 - p))  # noqa: E731 - ComfyUI-like
    assert sigma_window(p2s, 0.0, 0.333) == (999999999.9, pytest.approx(14.6 * 0.667))
    with pytest.raises(FDIError, match="end_percent .* smaller than start_percent"):
        sigma_window(p2s, 0.5, 0.2)
    with pytest.raises(FDIError, match="between 0 and 1"):
        sigma_window(p2s, -0.1, 0.2)


# ------------------------------------------------------------------------------------------------ batches and sizes


def test_cfg_halves_are_both_guided():
    """ComfyUI batches [cond | uncond] as whole latent batches; each half gets the same guidance."""
    g = random_guidance(batch=2, seed=4)
    inp, out = patches_for([GuidanceEntry(g, 1.0, **WINDOW)])
    h_half = features(2, CH[1], 4)
    h = torch.cat([h_half, h_half * 0.5])
    got = inp(h, opts(("input", 5), chunks=2))
    assert torch.equal(got[:2], apply_residual(h_half, 1, [(g, 1.0)]))
    assert torch.equal(got[2:], apply_residual(h_half * 0.5, 1, [(g, 1.0)]))
    d_half = features(2, CH[2], 2)
    d = torch.cat([d_half, d_half])
    got_d, _ = out(d, d, opts(("output", 6), chunks=2))
    assert torch.equal(got_d[:2], got_d[2:])
    assert torch.equal(got_d[:2], apply_modulation(d_half, 1, [(g, 1.0)]))


def test_guidance_of_batch_one_broadcasts():
    g = random_guidance(batch=1, seed=5)
    inp, out = patches_for([GuidanceEntry(g, 1.0, **WINDOW)])
    h = features(3, CH[0], 8)
    got = inp(h, opts(("input", 2)))
    for i in range(3):
        assert torch.allclose(got[i] - h[i], g.residuals[0][0], atol=1e-6)
    with pytest.raises(FDIError, match="guidance was computed for 2"):
        patches_for([GuidanceEntry(random_guidance(batch=2), 1.0, **WINDOW)])[0](h, opts(("input", 2)))


def test_residuals_are_cropped_to_the_feature_and_never_stretched():
    g = random_guidance(size=9)  # adapter rounds up (9, 5, 3, 2), the UNet's latent is 8
    inp, _ = patches_for([GuidanceEntry(g, 1.0, **WINDOW)])
    h = features(1, CH[0], 8)
    assert torch.allclose(inp(h, opts(("input", 2))), h + g.residuals[0][..., :8, :8], atol=1e-6)
    # guidance of a 2x larger image, or the UNet handed a crop (area conditioning, a third-party tiled sampler):
    # was stretched bilinearly onto the feature; now an error naming FDI Restore's tile inputs
    g2 = random_guidance(size=16)
    inp2, _ = patches_for([GuidanceEntry(g2, 1.0, **WINDOW)])
    with pytest.raises(FDIError, match="never stretched.*tile_size/tile_overlap"):
        inp2(h, opts(("input", 2)))
    # a crop with its offset (FDIRestore's tiles) gets exactly its part of every residual
    for level, block in enumerate(IN_BLOCKS):
        s = 2**level
        hf = features(1, CH[level], 8 // s)
        o = opts(("input", block))
        o["fdi_tile"] = (8, 0)
        want = hf + g2.residuals[level][..., 8 // s : 16 // s, : 8 // s]
        assert torch.allclose(inp2(hf, o), want, atol=1e-6)


def test_feature_dtype_is_kept():
    g = random_guidance()
    inp, out = patches_for([GuidanceEntry(g, 1.0, **WINDOW)])
    h = features(1, CH[0], 8).to(torch.bfloat16)
    assert inp(h, opts(("input", 2))).dtype == torch.bfloat16
    d = features(1, CH[3], 2).to(torch.bfloat16)
    assert out(d, d, opts(("output", 3)))[0].dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------------ ModelPatcher protocol


def test_deepcopy_of_model_options_shares_the_tensors():
    g = random_guidance()
    model_options = {"transformer_options": {}}
    add_guidance(model_options, GuidanceEntry(g, 1.0, **WINDOW), IN_BLOCKS, OUT_BLOCKS)
    clone = copy.deepcopy(model_options)  # what ModelPatcher.clone() does
    a, b = fdi_patches(model_options), fdi_patches(clone)
    for key in a:
        assert b[key] is a[key]
        assert b[key].entries[0].guidance.residuals[0].data_ptr() == g.residuals[0].data_ptr()
    assert (
        clone["transformer_options"]["patches"]["input_block_patch"]
        is not model_options["transformer_options"]["patches"]["input_block_patch"]
    )


def test_chained_apply_adds_entries_equal_to_the_composite_formula():
    g1, g2 = random_guidance(seed=6), random_guidance(seed=7)
    base = {"transformer_options": {"patches": {"input_block_patch": ["other"]}}}
    first = copy.deepcopy(base)
    add_guidance(first, GuidanceEntry(g1, 0.8, **WINDOW), IN_BLOCKS, OUT_BLOCKS)
    second = copy.deepcopy(first)  # the next Apply node works on a clone
    add_guidance(second, GuidanceEntry(g2, 0.5, **WINDOW), IN_BLOCKS, OUT_BLOCKS)
    assert len(fdi_patches(first)["input_block_patch"].entries) == 1  # the earlier MODEL is unchanged
    inp = fdi_patches(second)["input_block_patch"]
    assert second["transformer_options"]["patches"]["input_block_patch"][0] == "other"
    assert len(second["transformer_options"]["patches"]["input_block_patch"]) == 2
    h = features(1, CH[2], 2)
    assert torch.equal(inp(h, opts(("input", 8))), apply_residual(h, 2, [(g1, 0.8), (g2, 0.5)]))
    out = fdi_patches(second)["output_block_patch"]
    d = features(1, CH[3], 2)
    torch.testing.assert_close(
        out(d, d, opts(("output", 3)))[0], apply_modulation(d, 0, [(g1, 0.8), (g2, 0.5)]), rtol=1e-6, atol=1e-6
    )


def _tensors(patches) -> list:
    """Every guidance tensor the patches' entries hold."""
    out = []
    for p in patches:
        for e in p.entries:
            out += list(e.guidance.residuals) + [t for m in e.guidance.modulations for t in m]
    return out


def test_guidance_stays_home_and_moves_per_use():
    """ComfyUI's ``model_patches_to(device)`` on load (``"meta"`` stands in for the GPU) moves nothing and the patches
    hand ComfyUI no model to load: the guidance stays where it was made and each call copies what it reads to the
    feature's device, as ComfyUI's weight patches are moved per use under dynamic VRAM. Unloading (``to`` the
    offload device) drops the coefficients cached on the device."""
    g = random_guidance(size=16)
    model_options = {"transformer_options": {}}
    entry = GuidanceEntry(g, 1.0, **WINDOW)
    add_guidance(model_options, entry, IN_BLOCKS, OUT_BLOCKS)
    add_guidance(model_options, replace(entry, strength=0.5), IN_BLOCKS, OUT_BLOCKS)  # a second Apply, same guidance
    inp, out = fdi_patches(model_options).values()
    home = [(t.device.type, t.data_ptr()) for t in _tensors([inp, out])]
    assert not hasattr(inp, "models") and not hasattr(out, "models")  # nothing joins the UNet's load
    meta = torch.device("meta")
    assert inp.to(meta) is inp and out.to(meta) is out and inp.to(torch.float16) is inp
    h, d = features(1, CH[0], 16), features(1, CH[3], 2)
    with torch.no_grad():
        assert inp(h.to(meta), opts(("input", 2))).device == meta  # read at home, used on the feature's device
        assert out(d.to(meta), d.to(meta), opts(("output", 3)))[0].device == meta
    assert [(t.device.type, t.data_ptr()) for t in _tensors([inp, out])] == home == [("cpu", p) for _, p in home]
    assert {k[-1] for k in out._cache._values} == {meta}  # the [B, C] coefficients, on the feature's device
    assert out.to(torch.device("cpu")) is out and not out._cache._values  # unloaded: nothing kept for the device
    torch.testing.assert_close(out(d, d, opts(("output", 3)))[0], apply_modulation(d, 0, [(g, 1.5)]))
    assert torch.equal(inp(h, opts(("input", 2))), apply_residual(h, 0, [(g, 1.0), (g, 0.5)]))


# ------------------------------------------------------------------------------------------------ UNet checks


def test_block_indices_of_sd_layout():
    assert block_indices(2) == (IN_BLOCKS, OUT_BLOCKS)
    assert block_indices(1) == ((1, 3, 5, 7), (2, 4, 6))
    assert block_indices(2, levels=3) == ((2, 5, 8), (3, 6))  # SDXL: input blocks 0-8, output blocks 0-8


SD4 = (320, 640, 1280, 1280)
XL = (320, 640, 1280)


def test_unet_check_takes_each_family_on_its_own_unet_and_refuses_the_others():
    assert check_unet_for_adapter(SD2_CONFIG, SD4, "sd2.1-base") == (IN_BLOCKS, OUT_BLOCKS)
    assert check_unet_for_adapter(SD15_CONFIG, SD4, "sd1.5") == (IN_BLOCKS, OUT_BLOCKS)
    assert check_unet_for_adapter(SDXL_CONFIG, XL, "sdxl") == ((2, 5, 8), (3, 6))
    assert comfy_family(SD15_CONFIG, "epsilon") == "sd1.5" and comfy_family(SDXL_CONFIG, "epsilon") == "sdxl"
    assert (
        comfy_family(SD2_CONFIG, "v_prediction") == "sd2.1-v" and comfy_family(SDXL_CONFIG, "v_prediction") == "sdxl-v"
    )
    with pytest.raises(FDIError, match=r"the MODEL \(SDXL\) has UNet level widths \(320, 640, 1280\).*SD 2.1 base"):
        check_unet_for_adapter(SDXL_CONFIG, SD4, "sd2.1-base")
    with pytest.raises(FDIError, match="the MODEL is SD 1.x .*trained for SD 2.1 base"):
        check_unet_for_adapter(SD15_CONFIG, SD4, "sd2.1-base")
    with pytest.raises(FDIError, match="the MODEL is SD 2.x .*trained for SD 1.5 .*load an SD 1.5 checkpoint"):
        check_unet_for_adapter(SD2_CONFIG, SD4, "sd1.5")
    with pytest.raises(FDIError, match=r"the MODEL \(SD 1.x\) has UNet level widths .*trained for SDXL"):
        check_unet_for_adapter(SD15_CONFIG, XL, "sdxl")
    with pytest.raises(FDIError, match="not a Stable Diffusion UNet"):
        check_unet_for_adapter({"depth": 19}, SD4, "sd2.1-base")
    with pytest.raises(FDIError, match="not a Stable Diffusion UNet"):
        comfy_family({"depth": 19}, "epsilon")
    with pytest.raises(FDIError, match="not SD 1.5, SD 2.x or SDXL"):
        comfy_family({**SD2_CONFIG, "model_channels": 384}, "epsilon")
    with pytest.raises(FDIError, match="level widths"):
        check_unet_for_adapter(SD2_CONFIG, (32, 32, 64, 64), "custom-base")
    with pytest.raises(FDIError, match="latent channels"):
        check_unet_for_adapter({**SD2_CONFIG, "in_channels": 9}, SD4, "sd2.1-base")


def test_unet_check_refuses_another_prediction_type():
    """An sd2.1-base (epsilon) adapter on an SD 2.1-v MODEL, and the reverse, are refused as the pipeline refuses
    them."""
    ch = SD4
    assert check_unet_for_adapter(SD2_CONFIG, ch, "sd2.1-base", "epsilon") == (IN_BLOCKS, OUT_BLOCKS)
    assert check_unet_for_adapter(SD2_CONFIG, ch, "sd2.1-v", "v_prediction") == (IN_BLOCKS, OUT_BLOCKS)
    with pytest.raises(FDIError, match=r"trained for SD 2.1 base \(an epsilon model\) but the MODEL is a v-prediction"):
        check_unet_for_adapter(SD2_CONFIG, ch, "sd2.1-base", "v_prediction")
    with pytest.raises(FDIError, match=r"trained for SD 2.1 \(768-v\) .* the MODEL is an epsilon"):
        check_unet_for_adapter(SD2_CONFIG, ch, "sd2.1-v", "epsilon")
    with pytest.raises(FDIError, match="the MODEL is flow model"):
        check_unet_for_adapter(SD2_CONFIG, ch, "sd2.1-base", "flow")
    with pytest.raises(FDIError, match=r"trained for SDXL \(an epsilon model\)"):
        check_unet_for_adapter(SDXL_CONFIG, XL, "sdxl", "v_prediction")
    # type unknown: shapes only
    assert check_unet_for_adapter(SD2_CONFIG, ch, "sd2.1-base", None) == (IN_BLOCKS, OUT_BLOCKS)


# ------------------------------------------------------------------------------------------------ inversion


class ConstantEps:
    """A k-diffusion 'model' whose noise prediction is a constant: the probability-flow ODE is a line."""

    def __init__(self, eps):
        self.eps = eps
        self.sigmas_seen = []

    def __call__(self, x, sigma, **kwargs):
        self.sigmas_seen.append(float(sigma[0]))
        return x - self.eps * sigma.view(-1, 1, 1, 1)


def euler(model, x, sigmas):
    """ComfyUI's 'ddim' sampler (Euler in sigma space), for checking that inversion reverses it."""
    for i in range(len(sigmas) - 1):
        d = (x - model(x, sigmas[i] * x.new_ones(x.shape[0]))) / sigmas[i]
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


def test_ddim_inversion_is_exact_for_a_linear_ode_and_reversed_by_ddim_sampling():
    torch.manual_seed(0)
    x0, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    sampling = torch.tensor([14.6, 7.0, 3.1, 1.2, 0.4, 0.0])
    inv = torch.flip(sampling, [0])
    model = ConstantEps(eps)
    xt = ddim_inversion_sampler(model, x0.clone(), inv)
    assert torch.allclose(xt, x0 + 14.6 * eps, atol=1e-5)
    assert 0.0 not in model.sigmas_seen and model.sigmas_seen == pytest.approx([0.4, 1.2, 3.1, 7.0, 14.6])
    assert torch.allclose(euler(ConstantEps(eps), xt, sampling), x0, atol=1e-5)


def test_inversion_feeds_the_model_the_current_latent_rescaled_to_the_next_level():
    """The UNet must see the *current* VP latent: ComfyUI divides by sqrt(1+σ²) of the level it is called
    at, so the sampler multiplies by sqrt((1+σ_n²)/(1+σ_c²)) first."""
    seen = []

    def model(x, sigma, **kw):
        seen.append((x.clone(), float(sigma[0])))
        return x * 0  # any prediction; only the inputs are checked here

    x = torch.randn(1, 4, 2, 2)
    sigmas = torch.tensor([0.0, 0.5, 2.0])
    ddim_inversion_sampler(model, x.clone(), sigmas)
    (x1, s1), (x2, s2) = seen
    assert torch.allclose(x1 / (1 + s1**2) ** 0.5, x, atol=1e-6)  # the UNet input at step 1 is x_VP = x (σ_c = 0)
    x_cur = x + (x1 - 0) / 0.5 * 0.5  # after step 1 (ε = x1/σ_n, moved by σ_n − σ_c)
    assert torch.allclose(x2 / (1 + s2**2) ** 0.5, x_cur / (1 + 0.5**2) ** 0.5, atol=1e-6)


def test_inversion_interrupt_stops():
    calls = []

    def interrupt():
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ddim_inversion_sampler(
            ConstantEps(torch.zeros(1, 4, 2, 2)),
            torch.zeros(1, 4, 2, 2),
            torch.tensor([0.0, 1.0, 2.0, 3.0]),
            interrupt=interrupt,
        )
    assert len(calls) == 2


class Schedule:
    """A ComfyUI-like discrete schedule: ``sigma(t)`` interpolates a 1000-entry table."""

    def __init__(self):
        self.table = torch.linspace(0.03, 14.6, 1000)

    def sigma(self, t):
        t = torch.as_tensor(t).float().flatten().clamp(0, 999)
        lo, hi = t.floor().long(), t.ceil().long()
        w = t - lo
        return self.table[lo] * (1 - w) + self.table[hi] * w


def test_restore_sigmas_visit_the_pipeline_timesteps():
    sch = Schedule()
    ts = ddim_timesteps(10)  # 901, 801, …, 1
    sampling = sampling_sigmas(ts, sch.sigma)
    assert torch.equal(sampling[:-1], sch.table[ts]) and float(sampling[-1]) == 0.0
    same = inversion_sigmas(sampling, inversion_timesteps(ts, 10), sch.sigma)
    assert torch.equal(same, torch.flip(sampling, [0]))
    # round(linspace(1, 901, 19)) = 1, 51, …, 901
    more = inversion_sigmas(sampling, inversion_timesteps(ts, 19), sch.sigma)
    assert more.shape == (20,) and float(more[0]) == 0.0 and float(more[-1]) == float(sampling[0])
    assert torch.allclose(more[1:], sch.table[torch.arange(1, 902, 50)], atol=1e-6)
    one = inversion_sigmas(sampling, inversion_timesteps(ts, 1), sch.sigma)
    assert one.tolist() == [0.0, float(sampling[0])]


def step_opts(block, schedule, k, chunks=1):
    o = opts(block, float(schedule[k]), chunks)
    o["sample_sigmas"] = schedule
    return o


@pytest.mark.parametrize("steps", [4, 6, 7, 50])
def test_sampler_steps_are_guided_by_the_step_rule_whatever_the_window_in_sigmas(steps):
    """With the sampler's schedule known (``sample_sigmas``), steps k with start·N ≤ k < end·N are guided —
    the rule of ``python -m fdi restore`` — for any step count and any spacing of the sigmas."""
    sch = Schedule()
    schedule = sampling_sigmas(ddim_timesteps(steps), sch.sigma)
    g = random_guidance()
    h = features(1, CH[0], 8)
    for start, end in ((0.0, 0.333), (0.0, 0.5), (0.0, 0.0), (0.0, 1.0), (0.25, 0.75)):
        inp, out = patches_for([GuidanceEntry(g, 1.0, start, end, sigma_start=1e9, sigma_end=0.0)])
        got = [k for k in range(steps) if not torch.equal(inp(h, step_opts(("input", 2), schedule, k)), h)]
        assert got == [k for k in range(steps) if start * steps <= k < end * steps], (start, end, got)
        if start == 0.0:
            assert len(got) == guided_step_count(steps, end)
        for k in range(steps):  # a guided step gets exactly the ungated guidance
            if k in got:
                assert torch.equal(inp(h, step_opts(("input", 2), schedule, k)), apply_residual(h, 0, [(g, 1.0)]))
    # an ascending schedule (an inversion run) falls back to the sigma window
    inp, _ = patches_for([GuidanceEntry(g, 1.0, 0.0, 0.0, sigma_start=10.0, sigma_end=2.0)])
    asc = torch.flip(schedule, [0])
    o = opts(("input", 2), 5.0)
    o["sample_sigmas"] = asc
    assert not torch.equal(inp(h, o), h)


def test_patched_forward_traces_without_graph_breaks():
    """The window is decided with tensor arithmetic: dynamo traces a patched block with no graph break
    (the old ``float(sigma)`` check broke the graph at every patched block)."""
    import torch._dynamo as dynamo

    sch = Schedule()
    schedule = sampling_sigmas(ddim_timesteps(6), sch.sigma)
    g1, g2 = random_guidance(seed=1), random_guidance(seed=2)
    inp, out = patches_for([GuidanceEntry(g1, 0.8, 0.0, 0.5, 1e9, 0.0), GuidanceEntry(g2, 0.4, 0.25, 1.0, 1e9, 0.0)])

    def block_pass(h, d, sigma, schedule):
        to = {"block": ("input", 2), "sigmas": sigma, "sample_sigmas": schedule}
        h = inp(h, to)
        to = {"block": ("output", 3), "sigmas": sigma, "sample_sigmas": schedule}
        return h, out(d, d, to)[0]

    h, d = features(1, CH[0], 8), features(1, CH[3], 2)
    dynamo.reset()
    with torch.no_grad():
        explanation = dynamo.explain(block_pass)(h, d, schedule[1:2], schedule)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(block_pass, backend="eager", fullgraph=True)
    with torch.no_grad():
        for k in range(6):
            got = compiled(h, d, schedule[k : k + 1], schedule)
            want = block_pass(h, d, schedule[k : k + 1], schedule)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), k
    dynamo.reset()


def test_step_invariant_parts_are_computed_once_and_stay_exact_across_steps_and_windows():
    """Later steps reuse each entry's modulation coefficients (no recomputation on the hot path), with the same
    numbers as the first step, whether the entry is inside its window or not. Residuals are used as they are
    (a view, cast per call): the patch caches no copy of them."""
    g1, g2 = random_guidance(seed=4), random_guidance(seed=5)
    early = GuidanceEntry(g1, 0.7, sigma_start=10.0, sigma_end=2.0)
    late = GuidanceEntry(g2, 1.3, sigma_start=10.0, sigma_end=6.0)
    inp, out = patches_for([early, late])
    h = features(1, CH[0], 8, seed=7)
    d = features(1, CH[3], 2, seed=8)
    import fdi.comfy_backend as backend

    calls = {"m": 0}
    real_m = backend.targets_coefficients

    def count_m(*a, **k):
        calls["m"] += 1
        return real_m(*a, **k)

    steps = (
        (8.0, [(g1, 0.7), (g2, 1.3)]),
        (8.0, [(g1, 0.7), (g2, 1.3)]),
        (4.0, [(g1, 0.7)]),
        (3.0, [(g1, 0.7)]),
        (1.0, []),
    )
    reference = [(apply_residual(h, 0, exp), apply_modulation(d, 0, exp)) for _, exp in steps]
    got = []
    backend.targets_coefficients = count_m
    try:
        with torch.no_grad():
            for sigma, _ in steps:
                got.append((inp(h, opts(("input", 2), sigma=sigma)), out(d, d, opts(("output", 3), sigma=sigma))[0]))
    finally:
        backend.targets_coefficients = real_m
    for (r_got, m_got), (r_ref, m_ref) in zip(got, reference):
        assert torch.equal(r_got, r_ref)
        torch.testing.assert_close(m_got, m_ref, rtol=1e-6, atol=1e-6)
    assert torch.equal(got[-1][0], h) and torch.equal(got[-1][1], d)  # outside every window: exactly the feature
    assert calls == {"m": 2}  # one per entry, not one per step
    assert len(inp._cache._values) == 0  # no residual copies held between calls
