"""Restoration pipeline and the restore / adapter-info commands, on tiny random SD 2.1-shaped models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_sd import make_adapter, tiny_fdi

from fdi.adapter import FDIAdapter, FDIAdapterConfig
from fdi.cli import main
from fdi.errors import FDIError
from fdi.pipeline import AdapterUse, FDIRestorationPipeline
from fdi.sampling import pad_to_multiple

FAST = dict(steps=2, inversion_steps=2)


def image(h: int = 64, w: int = 64, b: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_loads_through_the_real_loader_and_knows_its_family(tiny_pipeline, tiny_sd_v_folder):
    assert tiny_pipeline.base_family == "custom-base" and tiny_pipeline.prediction_type == "epsilon"
    v = FDIRestorationPipeline.from_pretrained(tiny_sd_v_folder)
    assert v.base_family == "custom-v" and v.prediction_type == "v_prediction"


def test_prompt_length_comes_from_the_text_encoder_when_the_tokenizer_has_none(tiny_pipeline, monkeypatch):
    """A tokenizer saved without model_max_length reports a huge sentinel; the encoder's context length is used."""
    expected = tiny_pipeline.encode_prompt("")
    monkeypatch.setattr(tiny_pipeline.tokenizer, "model_max_length", int(1e30))
    got = tiny_pipeline.encode_prompt("")
    assert got.shape == expected.shape and torch.equal(got, expected)


def test_reflect_pad_reaches_multiples_of_64_even_for_tiny_images():
    x = torch.rand(1, 3, 8, 9)
    y = pad_to_multiple(x)
    assert y.shape == (1, 3, 64, 64) and torch.equal(y[..., :8, :9], x)
    assert torch.equal(y[..., 8, :9], x[..., 6, :])  # mirrored, not repeated


def test_ddim_inversion_and_sampling_are_exact_inverses_for_a_constant_noise_model(tiny_pipeline, monkeypatch):
    """The loops' arithmetic: if the model predicted the same ε everywhere, DDIM inversion followed by DDIM
    sampling on the same schedule returns the start latent (up to float32 rounding), and the start latent is
    the forward-noised one: sqrt(ᾱ_t0)·x̂0 + sqrt(1−ᾱ_t0)·ε."""
    p = tiny_pipeline
    g = torch.Generator().manual_seed(0)
    z, eps = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    monkeypatch.setattr(p, "_unet", lambda x, t, cond: eps.expand_as(x))
    cond = p.encode_prompt("")
    zT = p.invert(z, cond, steps=10, inversion_steps=10)
    a_final, a0 = p._alpha(None), p._alpha(int(p.sampling_timesteps(10)[0]))
    x0 = (z - (1 - a_final).sqrt() * eps) / a_final.sqrt()
    torch.testing.assert_close(zT, a0.sqrt() * x0 + (1 - a0).sqrt() * eps, rtol=1e-5, atol=1e-5)
    back = p.sample(zT, cond, steps=10)
    torch.testing.assert_close(back, z, rtol=1e-4, atol=1e-4)
    assert torch.equal(p.inversion_timesteps(10, 10).flip(0), p.sampling_timesteps(10))
    inv = p.inversion_timesteps(10, 4)
    assert inv[-1] == p.sampling_timesteps(10)[0] and inv[0] == p.sampling_timesteps(10)[-1] and len(inv) == 4


def test_fresh_adapter_restore_equals_zero_strength_and_trained_adapter_changes_it(tiny_pipeline):
    x = image()
    base = tiny_pipeline.restore(x, [AdapterUse(make_adapter(trained=True), tiny_fdi(), 1.0)], strength=0.0, **FAST)
    fresh = tiny_pipeline.restore(x, [AdapterUse(make_adapter(trained=False), tiny_fdi(), 1.0)], **FAST)
    guided = tiny_pipeline.restore(
        x, [AdapterUse(make_adapter(trained=True), tiny_fdi(), 1.0)], guidance_end=1.0, **FAST
    )
    assert torch.equal(fresh, base)
    assert (guided - base).abs().max() > 1e-3
    assert guided.min() >= 0 and guided.max() <= 1


def test_guidance_is_active_only_inside_the_window(tiny_pipeline):
    seen = []

    def spy(module, args, kwargs):
        seen.append("additional_residuals" in kwargs)

    h = tiny_pipeline.unet.down_blocks[0].register_forward_pre_hook(spy, with_kwargs=True)
    try:
        tiny_pipeline.restore(
            image(), [AdapterUse(make_adapter(), tiny_fdi(), 1.0)], steps=6, inversion_steps=4, guidance_end=0.333
        )
    finally:
        h.remove()
    # 4 inversion steps unguided; sampling step k guided iff k < 0.333·6 = 1.998
    assert seen == [False] * 4 + [True, True, False, False, False, False]
    seen.clear()
    h = tiny_pipeline.unet.down_blocks[0].register_forward_pre_hook(spy, with_kwargs=True)
    try:
        tiny_pipeline.unet(torch.randn(1, 4, 8, 8), torch.tensor([10]), encoder_hidden_states=torch.randn(1, 16, 32))
    finally:
        h.remove()
    assert seen == [False]  # and nothing is left on the UNet afterwards


def test_window_matches_running_the_guided_steps_by_hand(tiny_pipeline):
    """guidance_end = 0 is exactly unguided; the first step guided changes the result."""
    x = image()
    a = make_adapter()
    none = tiny_pipeline.restore(x, [AdapterUse(a, tiny_fdi(), 1.0)], guidance_end=0.0, **FAST)
    zero = tiny_pipeline.restore(x, [AdapterUse(a, tiny_fdi(), 1.0)], strength=0.0, guidance_end=1.0, **FAST)
    first = tiny_pipeline.restore(x, [AdapterUse(a, tiny_fdi(), 1.0)], guidance_end=0.2, **FAST)
    assert torch.equal(none, zero)
    assert not torch.equal(first, none)


def test_composite_with_zero_weight_equals_single_adapter_and_progressive_single_equals_composite(tiny_pipeline):
    x = image()
    a, b = make_adapter(0), make_adapter(5)
    one = tiny_pipeline.restore(x, [AdapterUse(a, tiny_fdi(0), 0.7)], guidance_end=1.0, **FAST)
    two = tiny_pipeline.restore(
        x, [AdapterUse(a, tiny_fdi(0), 0.7), AdapterUse(b, tiny_fdi(1), 0.0)], guidance_end=1.0, **FAST
    )
    assert torch.equal(one, two)
    prog = tiny_pipeline.restore(x, [AdapterUse(a, tiny_fdi(0), 0.7)], guidance_end=1.0, mode="progressive", **FAST)
    assert torch.equal(prog, one)
    chained = tiny_pipeline.restore(
        x,
        [AdapterUse(a, tiny_fdi(0), 0.7), AdapterUse(b, tiny_fdi(1), 1.0)],
        guidance_end=1.0,
        mode="progressive",
        **FAST,
    )
    by_hand = tiny_pipeline.restore(one, [AdapterUse(b, tiny_fdi(1), 1.0)], guidance_end=1.0, **FAST)
    assert torch.equal(chained, by_hand)


def test_deterministic_odd_sizes_batches_progress(tiny_pipeline):
    x = image(36, 50, b=2)
    calls = []
    uses = [AdapterUse(make_adapter(), tiny_fdi(), 1.0)]
    r1 = tiny_pipeline.restore(x, uses, progress=lambda d, t: calls.append((d, t)), **FAST)
    r2 = tiny_pipeline.restore(x, uses, **FAST)
    r3 = tiny_pipeline.restore(x, uses, strength=0.5, **FAST)
    assert r1.shape == (2, 3, 36, 50)
    assert torch.equal(r1, r2) and not torch.equal(r1, r3)
    assert calls == [(i, 4) for i in range(1, 5)]
    # each image of a batch is restored as if alone
    alone = tiny_pipeline.restore(x[1:], uses, **FAST)
    torch.testing.assert_close(alone[0], r1[1], rtol=0, atol=1e-4)


def test_v_prediction_and_cfg_run(tiny_sd_v_folder, tiny_pipeline):
    v = FDIRestorationPipeline.from_pretrained(tiny_sd_v_folder)
    a = make_adapter(family="custom-v")
    out = v.restore(image(40, 48), [AdapterUse(a, tiny_fdi(), 1.0)], **FAST)
    assert out.shape == (1, 3, 40, 48) and torch.isfinite(out).all()
    cfg = tiny_pipeline.restore(
        image(), [AdapterUse(make_adapter(), tiny_fdi(), 1.0)], cfg=3.0, prompt="rain", negative_prompt="snow", **FAST
    )
    plain = tiny_pipeline.restore(image(), [AdapterUse(make_adapter(), tiny_fdi(), 1.0)], **FAST)
    assert torch.isfinite(cfg).all() and not torch.equal(cfg, plain)


def test_bad_inputs_raise_clear_errors(tiny_pipeline):
    x = image()
    ok = AdapterUse(make_adapter(), tiny_fdi(), 1.0)
    with pytest.raises(FDIError, match="trained for SD 2.1 base but the model is custom-base"):
        tiny_pipeline.restore(x, [AdapterUse(make_adapter(family="sd2.1-base"), tiny_fdi())], **FAST)
    with pytest.raises(
        FDIError, match=r"channels \(320, 640, 1280, 1280\) but the UNet's encoder widths are \(32, " r"32, 64, 64\)"
    ):
        tiny_pipeline.check_adapter(FDIAdapter(FDIAdapterConfig(), base_family="custom-base"))
    with pytest.raises(FDIError, match="token width 16 does not match"):
        tiny_pipeline.restore(x, [AdapterUse(make_adapter(), tiny_fdi(width=16))], **FAST)
    with pytest.raises(FDIError, match="no embedded FDI"):
        tiny_pipeline.restore(x, [AdapterUse(make_adapter())], **FAST)
    with pytest.raises(FDIError, match="outside 0..1"):
        tiny_pipeline.restore(x, [ok], guidance_end=1.5, **FAST)
    with pytest.raises(FDIError, match="at least 8"):
        tiny_pipeline.restore(torch.rand(1, 3, 7, 64), [ok], **FAST)
    with pytest.raises(FDIError, match="at least 8"):
        tiny_pipeline.restore(torch.rand(1, 3, 0, 64), [ok], **FAST)
    with pytest.raises(FDIError, match="unknown mode"):
        tiny_pipeline.restore(x, [ok], mode="serial", **FAST)


def test_the_schedules_step_bound_is_refused_before_any_work_and_the_bound_itself_runs(tiny_pipeline, monkeypatch):
    """leading spacing, offset 1 (SD's layout, the tiny model's): 1000 steps would reach t = 1000, one past the
    ᾱ table (an IndexError after the encode and the whole inversion before); 999 is the bound."""
    p, calls = tiny_pipeline, []
    c = p.scheduler.config
    assert (c.num_train_timesteps, c.timestep_spacing, c.steps_offset) == (1000, "leading", 1)
    eps = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(p, "_unet", lambda x, t, cond, size_px=None: calls.append(int(t)) or eps.expand_as(x))
    encode = p.encode_images
    monkeypatch.setattr(p, "encode_images", lambda *a, **k: calls.append("encode") or encode(*a, **k))
    use = AdapterUse(make_adapter(), tiny_fdi(), 1.0)
    for steps in (1000, 5000):
        with pytest.raises(FDIError, match=r"^\d+ steps is more than this model's schedule allows: use at most 999 "):
            p.restore(image(), [use], steps=steps, inversion_steps=2)
    assert calls == []
    out = p.restore(image(), [use], steps=999, inversion_steps=2)
    assert calls[0] == "encode" and calls[1:3] == [1, 999] and calls[3:] == list(range(999, 0, -1))
    assert out.shape == (1, 3, 64, 64) and bool(torch.isfinite(out).all())


def test_loader_errors(tmp_path, tiny_sd_folder):
    with pytest.raises(FDIError, match="does not exist"):
        FDIRestorationPipeline.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FDIError, match="not a diffusers Stable Diffusion folder"):
        FDIRestorationPipeline.from_pretrained(tmp_path / "empty")
    ckpt = tmp_path / "sd21.ckpt"
    ckpt.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(FDIError, match="pickle"):
        FDIRestorationPipeline.from_pretrained(ckpt)
    # a single-file checkpoint that is no SD 2.x UNet: a clear error before loading, no download attempt
    from safetensors.torch import save_file

    single = tmp_path / "model.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)}, str(single))
    with pytest.raises(FDIError, match="'model.safetensors' is not a Stable Diffusion UNet checkpoint"):
        FDIRestorationPipeline.from_pretrained(single)


# ---- CLI -------------------------------------------------------------------------------------------


@pytest.fixture()
def cli_files(tmp_path):
    a = make_adapter()
    adapter_path = a.save(tmp_path / "derain.safetensors", fdi=tiny_fdi())
    a2 = make_adapter(3)
    bare_path = a2.save(tmp_path / "bare.safetensors")
    fdi_path = tiny_fdi(2).save(tmp_path / "task.fdi.safetensors")
    arr = (np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "rainy.png")
    Image.fromarray(arr[:5, :5]).save(tmp_path / "tiny.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not an image")
    return tmp_path, adapter_path, bare_path, fdi_path


def test_cli_restore_writes_outputs_at_input_size(cli_files, tiny_sd_folder, capsys):
    d, adapter, bare, fdi = cli_files
    out = d / "out"
    rc = main(
        [
            "restore",
            "--sd",
            str(tiny_sd_folder),
            "--adapter",
            str(adapter),
            "--adapter",
            str(bare),
            "--weight",
            "1",
            "--weight",
            "0.5",
            "--fdi",
            str(fdi),
            "--fdi",
            str(fdi),
            "--image",
            str(d / "rainy.png"),
            "-o",
            str(out),
            "--steps",
            "2",
            "--inversion-steps",
            "2",
            "--quiet",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    with Image.open(out / "rainy.png") as im:
        assert im.size == (70, 50)
    # the embedded FDI is enough
    assert (
        main(
            [
                "restore",
                "--sd",
                str(tiny_sd_folder),
                "--adapter",
                str(adapter),
                "--image",
                str(d / "rainy.png"),
                "-o",
                str(d / "out2"),
                "--steps",
                "1",
                "--inversion-steps",
                "1",
                "--quiet",
                "--mode",
                "progressive",
            ]
        )
        == 0
    )
    assert (d / "out2" / "rainy.png").is_file()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--weight", "1", "--weight", "2"], "2 --weight values for 1 --adapter"),
        (["--guidance-end", "1.5"], "--guidance-end 1.5 is outside 0..1"),
        (["--image", "{d}/tiny.png"], "needs at least 8 pixels a side"),
        (["--image", "{d}/broken.png"], "could not be read"),
        (["--sd", "{d}/missing_model"], "does not exist"),
        (["--adapter", "{d}/bare.safetensors"], "no embedded FDI"),
    ],
)
def test_cli_restore_bad_inputs_write_nothing(cli_files, tiny_sd_folder, capsys, extra, message):
    d, adapter, bare, fdi = cli_files
    base = {"--sd": str(tiny_sd_folder), "--adapter": str(adapter), "--image": str(d / "rainy.png")}
    args = ["restore", "-o", str(d / "never"), "--steps", "1", "--inversion-steps", "1", "--quiet"]
    overridden = {extra[i] for i in range(0, len(extra), 2)}
    for k, v in base.items():
        if k not in overridden:
            args += [k, v]
    args += [e.format(d=d) for e in extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (d / "never").exists()


def test_cli_refuses_more_steps_than_the_schedule_allows_before_restoring(cli_files, tiny_sd_folder, capsys):
    """Was a bare IndexError after the encode and the whole inversion; now the loaded schedule's bound (the same
    FDIError FDIRestore gives), before anything is written."""
    d, adapter, _, _ = cli_files
    args = ["restore", "--sd", str(tiny_sd_folder), "--adapter", str(adapter), "--image", str(d / "rainy.png")]
    assert main(args + ["-o", str(d / "never"), "--steps", "1000", "--inversion-steps", "1", "--quiet"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and err[0].startswith(
        "error: 1000 steps is more than this model's schedule allows: use at most 999 "
        "(1000 training timesteps, leading spacing, steps offset 1)"
    ), err
    assert not (d / "never").exists()


def test_cli_refuses_an_adapter_for_another_family(tmp_path, tiny_sd_folder, capsys):
    path = make_adapter(family="sd2.1-v").save(tmp_path / "v.safetensors", fdi=tiny_fdi())
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "x.png")
    assert (
        main(
            [
                "restore",
                "--sd",
                str(tiny_sd_folder),
                "--adapter",
                str(path),
                "--image",
                str(tmp_path / "x.png"),
                "-o",
                str(tmp_path / "o"),
                "--quiet",
            ]
        )
        == 2
    )
    assert "trained for SD 2.1 (768-v) but the model is custom-base" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_adapter_info(cli_files, capsys):
    d, adapter, bare, fdi = cli_files
    assert main(["adapter-info", str(adapter)]) == 0
    out = capsys.readouterr().out
    assert "custom-base" in out and "8 x 32" in out and "f0" in out and f"{make_adapter().num_parameters():,}" in out
    assert main(["adapter-info", str(bare), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (
        info["fdi"] is None and info["config"]["channels"] == [32, 32, 64, 64] and info["encoder"] == "blip2-tiny:abcd"
    )
    assert main(["adapter-info", str(fdi)]) == 2
    assert "not an FDI adapter file" in capsys.readouterr().err


def test_single_file_loading_is_offline_and_uses_the_given_configs(
    tmp_path, tiny_sd_folder, tiny_pipeline, monkeypatch
):
    """The single-file path hands diffusers the local config folder with local_files_only and the hub
    switched off (a real SD 2.1 checkpoint cannot be built here; diffusers' converter is stubbed)."""
    import os
    import types

    import diffusers
    from safetensors.torch import save_file

    seen = {}

    def fake_from_single_file(path, **kwargs):
        seen.update(kwargs, path=path, offline=os.environ.get("HF_HUB_OFFLINE"))
        p = tiny_pipeline
        return types.SimpleNamespace(
            vae=p.vae, text_encoder=p.text_encoder, tokenizer=p.tokenizer, unet=p.unet, scheduler=p.scheduler
        )

    monkeypatch.setattr(diffusers.StableDiffusionPipeline, "from_single_file", staticmethod(fake_from_single_file))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    single = tmp_path / "sd21.safetensors"
    save_file({"x": torch.zeros(1)}, str(single))
    pipe = FDIRestorationPipeline.from_pretrained(single, config=tiny_sd_folder)
    assert seen["path"] == str(single) and seen["config"] == str(tiny_sd_folder) and seen["local_files_only"] is True
    assert seen["offline"] == "1" and "HF_HUB_OFFLINE" not in os.environ  # set during the call only
    assert pipe.base_family == "custom-base" and pipe.source == "sd21.safetensors"
    with pytest.raises(FDIError, match="model config folder .* does not exist"):
        FDIRestorationPipeline.from_pretrained(single, config=tmp_path / "nope")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (runs on the device machine, not in CI)")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_precision_restore_is_finite_deterministic_and_close_to_fp32(tiny_sd_folder, dtype):
    pipe = FDIRestorationPipeline.from_pretrained(tiny_sd_folder, device="cuda", dtype=dtype)
    ref_pipe = FDIRestorationPipeline.from_pretrained(tiny_sd_folder, device="cuda", dtype=torch.float32)
    use = [AdapterUse(make_adapter(0), tiny_fdi(0), 1.0)]
    x = image(72, 100)
    a = pipe.restore(x, use, **FAST)
    b = pipe.restore(x, use, **FAST)
    ref = ref_pipe.restore(x, use, **FAST)
    assert a.shape == (1, 3, 72, 100) and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert (a - ref).abs().mean() < 0.02
