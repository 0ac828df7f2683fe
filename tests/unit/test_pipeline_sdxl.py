"""The diffusers door on an SDXL-shaped model (tiny, random: tests/tiny_bases.py): restoration conditions the UNet as
diffusers' own SDXL pipeline does, a fresh three-level adapter is an exact no-op, and training runs and moves it."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_bases import XL_CHANNELS, build_tiny_sdxl
from tiny_sd import make_adapter, tiny_fdi

from fdi.adapter import FDIAdapter
from fdi.conditioning import TextConditioning
from fdi.images import save_image
from fdi.instruction import FDI
from fdi.pipeline import AdapterUse, FDIRestorationPipeline
from fdi.training.config import TrainConfig
from fdi.training.run import train

FAST = dict(steps=2, inversion_steps=2)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def xl_folder(tmp_path_factory):
    return build_tiny_sdxl(tmp_path_factory.mktemp("tiny-xl") / "sdxl")


@pytest.fixture(scope="module")
def xl(xl_folder):
    return FDIRestorationPipeline.from_pretrained(xl_folder)


def xl_adapter(seed: int = 0, trained: bool = True):
    return make_adapter(seed, trained=trained, channels=XL_CHANNELS)


def test_unet_call_matches_diffusers_sdxl_pipeline_conditioning(xl, xl_folder):
    """The pipeline's UNet call on an SDXL model equals the UNet called with diffusers' own
    ``StableDiffusionXLPipeline.encode_prompt`` and ``_get_add_time_ids`` (original = target = the image size, crop 0)
    and responds to the size conditioning."""
    from diffusers import StableDiffusionXLPipeline

    ref = StableDiffusionXLPipeline.from_pretrained(xl_folder)
    cond = xl.encode_prompt("")
    assert isinstance(cond, TextConditioning) and cond.pooled is not None
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        embeds, _, pooled, _ = ref.encode_prompt("", do_classifier_free_guidance=False)
        proj = ref.text_encoder_2.config.projection_dim
        ids = ref._get_add_time_ids((64, 64), (0, 0), (64, 64), dtype=embeds.dtype, text_encoder_projection_dim=proj)
        added = {"text_embeds": pooled.expand(2, -1), "time_ids": ids.expand(2, -1)}
        want = ref.unet(x, 500, encoder_hidden_states=embeds.expand(2, -1, -1), added_cond_kwargs=added).sample
        got = xl._unet(x, 500, cond)
        other_size = xl._unet(x, 500, cond, (128, 64))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert (other_size - got).abs().max() > 1e-4  # the size conditioning reaches the UNet


def test_fresh_three_level_adapter_is_an_exact_noop_and_a_trained_one_changes_the_result(xl):
    assert xl.base_family == "custom-base"
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    base = xl.restore(x, [AdapterUse(xl_adapter(trained=True), tiny_fdi(), 1.0)], strength=0.0, **FAST)
    fresh = xl.restore(x, [AdapterUse(xl_adapter(trained=False), tiny_fdi(), 1.0)], **FAST)
    guided = xl.restore(x, [AdapterUse(xl_adapter(trained=True), tiny_fdi(), 1.0)], guidance_end=1.0, **FAST)
    cfg = xl.restore(x, [AdapterUse(xl_adapter(), tiny_fdi(), 1.0)], cfg=3.0, negative_prompt="rain", **FAST)
    assert torch.equal(fresh, base)
    assert (guided - base).abs().max() > 1e-3
    assert torch.isfinite(cfg).all() and (cfg - guided).abs().max() > 1e-4
    with pytest.raises(Exception, match="channels"):
        xl.restore(x, [AdapterUse(make_adapter(0), tiny_fdi(), 1.0)], **FAST)  # a four-level adapter


def test_training_on_sdxl_moves_the_three_level_adapter(xl_folder, tmp_path):
    """``fdi.training.run.train`` (the CLI's door) on the SDXL-shaped folder: a three-level adapter sized from the
    UNet, its guidance path moved by a few steps with the pooled and size conditioning."""
    g = torch.Generator().manual_seed(0)
    for d in ("deg", "clean"):
        (tmp_path / d).mkdir()
    for i in range(4):
        clean = torch.rand(3, 64, 64, generator=g)
        save_image(clean, tmp_path / "clean" / f"{i}.png")
        save_image((0.6 * clean + 0.3).clamp(0, 1), tmp_path / "deg" / f"{i}.png")
    FDI(tokens=tiny_fdi().tokens, encoder="blip2-tiny:abcd", n_pairs=4, label="xl").save(tmp_path / "t.fdi.safetensors")
    config = {k: v for k, v in json.loads(xl_adapter().config.to_json()).items() if k != "channels"}
    cfg = TrainConfig(
        sd=str(xl_folder),
        output=str(tmp_path / "xl.safetensors"),
        degraded=str(tmp_path / "deg"),
        clean=str(tmp_path / "clean"),
        fdi=str(tmp_path / "t.fdi.safetensors"),
        resolution=64,
        batch_size=2,
        max_steps=3,
        lr=1e-2,
        num_workers=0,
        checkpoint_every=0,
        adapter_config=config,
        quiet=True,
    )
    result = train(cfg)
    a = FDIAdapter.from_file(result.output)
    assert a.config.channels == XL_CHANNELS and len(a.gates) == 2 and result.steps == 3
    assert all(torch.isfinite(torch.tensor(result.losses)))
    moved = max(float(h.out.weight.detach().abs().max()) for h in a.guidance_heads)
    assert moved > 0  # zero-initialised at the start: the gradient reached the guidance path


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sdxl_guidance_in_half_precision_follows_fp32(dtype):
    """What GPUs compute in: the SDXL-shaped UNet's guided prediction in bf16/fp16 stays within rounding of fp32's,
    bounded relative to the guidance's own effect (the first level's residual comes from the resnet hook)."""
    from tiny_bases import tiny_xl_unet

    from fdi.conditioning import unet_kwargs
    from fdi.diffusers_backend import DiffusersGuidance

    unet = tiny_xl_unet(0)
    with torch.no_grad():
        g = xl_adapter()(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2)), tiny_fdi().tokens)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    cond = TextConditioning(torch.randn(1, 77, unet.config.cross_attention_dim), torch.randn(1, 32))

    def run(u, dt, guided):
        kwargs = unet_kwargs(cond, 1, (64, 64), dt)
        with torch.no_grad():
            if not guided:
                return u(x.to(dt), 500, **kwargs).sample.float()
            with DiffusersGuidance(u, [(g, 1.0)], strength=1.0):
                return u(x.to(dt), 500, **kwargs).sample.float()

    plain32, guided32 = run(unet, torch.float32, False), run(unet, torch.float32, True)
    half = unet.to(dtype)
    guided_half = run(half, dtype, True)
    effect = float((guided32 - plain32).norm())
    assert effect > 1e-2 * float(plain32.norm())
    assert torch.isfinite(guided_half).all()
    print(f"{dtype}: error {float((guided_half - guided32).norm()) / effect:.3f} of the effect")
    assert float((guided_half - guided32).norm()) < 0.1 * effect
