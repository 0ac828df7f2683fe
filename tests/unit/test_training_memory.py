"""The in-memory training loop (the node's door), the shared step, the pair-stability curve and
`inspect --stability` — on the tiny SD fixture, without ComfyUI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tiny_sd import randomise_adapter, tiny_adapter_config

from fdi.adapter import FDIAdapter
from fdi.cli import main
from fdi.conditioning import encode_prompt
from fdi.errors import FDIError
from fdi.extract import pair_stability
from fdi.instruction import FDI
from fdi.models import load_sd, place, vae_encode
from fdi.training.memory import TrainSettings, batch_for_step, check_pairs, train_on_pairs
from fdi.training.step import checkpointed, diffusers_predictor


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny(tiny_sd_folder):
    parts = load_sd(tiny_sd_folder)
    unet, vae = place(parts.unet, "cpu", torch.float32), place(parts.vae, "cpu", torch.float32)
    ctx = encode_prompt(parts.text_encoder, parts.tokenizer, "", "cpu", torch.float32)
    return unet, vae, ctx, parts.scheduler.alphas_cumprod.float()


def _pairs(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    clean = [torch.rand(3, 64 + 8 * i, 72, generator=g) for i in range(n)]
    return [(0.5 * c + 0.3).clamp(0, 1) for c in clean], clean


def _run(tiny, settings, adapter=None, predict=None, **kw):
    unet, vae, ctx, alphas = tiny
    adapter = adapter or FDIAdapter(tiny_adapter_config(), base_family="custom-base")
    tokens = torch.randn(8, 32, generator=torch.Generator().manual_seed(1))
    deg, clean = _pairs()
    res = train_on_pairs(
        adapter,
        predict or diffusers_predictor(unet, ctx, torch.float32),
        lambda x: vae_encode(vae, x, torch.float32),
        deg,
        clean,
        tokens,
        alphas,
        "epsilon",
        settings,
        torch.device("cpu"),
        **kw,
    )
    return adapter, res


def test_bad_pairs_and_settings_are_refused_before_work():
    deg, clean = _pairs()
    with pytest.raises(FDIError, match="3 degraded images but 2 clean"):
        check_pairs(deg, clean[:2])
    with pytest.raises(FDIError, match="at least 64 px"):
        check_pairs([torch.rand(3, 63, 80)], [torch.rand(3, 63, 80)])
    with pytest.raises(FDIError, match="no training pairs"):
        check_pairs([], [])
    with pytest.raises(FDIError, match="steps must be at least 1"):
        TrainSettings(steps=0).check()
    with pytest.raises(FDIError, match="multiple of 64"):
        TrainSettings(resolution=100).check()


def test_batches_are_a_function_of_seed_and_step():
    deg, clean = _pairs()
    s = TrainSettings(batch_size=2, resolution=64, seed=3)
    a, b = batch_for_step(deg, clean, 4, s), batch_for_step(deg, clean, 4, s)
    assert torch.equal(a[0], b[0]) and a[0].shape == (2, 3, 64, 64)
    assert not torch.equal(batch_for_step(deg, clean, 5, s)[1], a[1])


def test_training_moves_the_adapter_and_stops_cleanly(tiny):
    settings = TrainSettings(steps=3, lr=1e-3, resolution=64, seed=0)
    torch.manual_seed(0)
    start = FDIAdapter(tiny_adapter_config(), base_family="custom-base")
    randomise_adapter(start, seed=1, scale=0.1)
    before = {k: v.clone() for k, v in start.state_dict().items()}
    seen = []
    adapter, res = _run(tiny, settings, adapter=start, progress=lambda d, t: seen.append((d, t)))
    assert res.steps == 3 and res.stopped is None and all(math.isfinite(x) for x in res.losses)
    assert seen == [(0, 3), (1, 3), (2, 3), (3, 3)]
    moved = max(float((adapter.state_dict()[k] - v).abs().max()) for k, v in before.items())
    assert moved > 1e-5
    # a stop request after the first step keeps that step's adapter
    calls = iter([False, True])
    _, stopped = _run(tiny, settings, should_stop=lambda: next(calls))
    assert stopped.steps == 1 and stopped.cancelled and "stopped by the user after 1 of 3" in stopped.stopped
    # a non-finite loss stops before the update: the weights stay those of the last good step
    fresh = FDIAdapter(tiny_adapter_config(), base_family="custom-base")
    w0 = {k: v.clone() for k, v in fresh.state_dict().items()}
    nan_predict = lambda z, t, g: z * float("nan")  # noqa: E731
    _, bad = _run(tiny, settings, adapter=fresh, predict=nan_predict)
    assert bad.steps == 0 and not bad.cancelled and "the loss became nan at step 1" in bad.stopped
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in w0.items())


def test_gradient_checkpointing_gives_the_same_gradients(tiny):
    unet, vae, ctx, alphas = tiny
    torch.manual_seed(0)
    adapter = FDIAdapter(tiny_adapter_config(), base_family="custom-base")
    randomise_adapter(adapter, seed=2, scale=0.1)
    from fdi.training.step import step_generator, training_step

    z0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    img = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    tokens = torch.randn(8, 32, generator=torch.Generator().manual_seed(2))
    grads = []
    for on in (False, True):
        with checkpointed(list(unet.down_blocks) + list(unet.up_blocks), on):
            s = training_step(
                adapter,
                diffusers_predictor(unet, ctx, torch.float32),
                img,
                z0,
                tokens,
                alphas,
                "epsilon",
                0.1,
                step_generator(0, 0),
            )
            g = torch.autograd.grad(s.loss, list(adapter.parameters()), allow_unused=True)
        grads.append(torch.cat([x.flatten() for x in g if x is not None]))
    assert "forward" not in unet.down_blocks[0].__dict__  # restored
    assert grads[0].norm() > 0
    assert float((grads[0] - grads[1]).norm() / grads[0].norm()) < 1e-5


def test_pair_stability_curve_and_cli(tmp_path, capsys):
    same = torch.ones(5, 2, 3).repeat(1, 1, 1)
    c = pair_stability(same, resamples=4)
    assert c["k"] == [1, 2, 3, 4, 5] and all(abs(m - 1) < 1e-12 for m in c["mean"])
    g = torch.Generator().manual_seed(0)
    noisy = torch.randn(12, 4, 8, generator=g) + 0.5  # a shared direction plus per-pair noise
    c = pair_stability(noisy, resamples=30, seed=1)
    assert c["mean"][-1] == pytest.approx(1.0) and c["mean"][0] < 0.9 < c["mean"][-2]
    assert all(lo <= m + 1e-12 and m <= hi + 1e-12 for lo, m, hi in zip(c["low"], c["mean"], c["high"]))
    assert np.all(np.diff(c["mean"]) > -0.02)  # more pairs, closer to the FDI of all (up to resampling noise)
    with pytest.raises(FDIError, match="keep_pairs"):
        pair_stability(None)
    enc = "tiny:0123456789abcdef"
    FDI(noisy.mean(0), enc, n_pairs=12, label="noisy", pairs=noisy).save(tmp_path / "n.fdi.safetensors")
    FDI(noisy.mean(0), enc, n_pairs=12).save(tmp_path / "bare.fdi.safetensors")
    out = tmp_path / "stab.png"
    assert main(["inspect", str(tmp_path / "n.fdi.safetensors"), "--stability", str(out), "--resamples", "5"]) == 0
    assert out.is_file() and out.read_bytes()[:4] == b"\x89PNG" and "k= 12" in capsys.readouterr().out
    assert main(["inspect", str(tmp_path / "bare.fdi.safetensors"), "--stability", str(tmp_path / "x.png")]) == 2
    assert "--keep-pairs" in capsys.readouterr().err and not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    "family, channels",
    [("sd1.5", (320, 640, 1280, 1280)), ("sd2.1-v", (320, 640, 1280, 1280)), ("sdxl", (320, 640, 1280))],
)
def test_a_new_adapter_has_its_family_s_levels_and_a_continued_one_its_family(family, channels):
    from fdi.training.memory import adapter_for_training

    fdi = FDI(tokens=torch.randn(4, 16, generator=torch.Generator().manual_seed(0)), encoder="tiny:0", n_pairs=1)
    new = adapter_for_training(fdi, family, seed=0)
    assert new.config.channels == channels and new.base_family == family
    assert (new.config.num_tokens, new.config.token_width) == (4, 16)
    assert len(new.config.channels) == (3 if family == "sdxl" else 4)
    again = adapter_for_training(fdi, family, seed=1, previous=new)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), new.state_dict().values()))
    other = "sd2.1-base" if family == "sdxl" else "sdxl"
    with pytest.raises(
        FDIError, match=r"trained for (SD 1\.5|SD 2\.1 \(768-v\)|SDXL), the MODEL is (SDXL|SD 2\.1 base)"
    ):
        adapter_for_training(fdi, other, seed=0, previous=new)


def test_comfy_predictor_passes_the_adm_vector_over_the_batch_in_the_compute_dtype():
    """SDXL's ComfyUI UNet needs ``y``: the predictor repeats it over the batch and casts it like the context."""
    from fdi.adapter import FDIGuidance
    from fdi.training.step import comfy_predictor

    seen = {}

    def unet(x, t, context=None, transformer_options=None, **kw):
        seen.update(kw, context=context, x=x)
        return x * 2

    ctx, y = torch.randn(1, 77, 8), torch.randn(1, 2816)
    pred = comfy_predictor(unet, ctx, (2, 5, 8), (3, 6), torch.float64, y=y)
    z = torch.randn(3, 4, 8, 8)
    guidance = FDIGuidance([], [], torch.zeros(1))
    out = pred(z, torch.tensor([1, 2, 3]), guidance)
    assert torch.equal(out, z.double() * 2)
    assert (
        seen["y"].shape == (3, 2816) and seen["y"].dtype == torch.float64 and torch.equal(seen["y"][2], y[0].double())
    )
    assert seen["context"].shape == (3, 77, 8) and seen["context"].dtype == torch.float64
    seen.clear()
    comfy_predictor(unet, ctx, (2, 5, 8, 11), (3, 6, 9), torch.float32)(z, torch.tensor([1, 2, 3]), guidance)
    assert "y" not in seen  # SD 1.x/2.x UNets take no y


def test_the_node_door_draws_t_in_its_window_and_records_it(tiny):
    """The in-memory loop (FDITrainAdapter's) draws every t from its settings' window and the adapter records
    the window and the sampling; bad window settings are refused before any step."""
    seen = []
    unet, _, ctx, _ = tiny
    inner = diffusers_predictor(unet, ctx, torch.float32)

    def predict(z, t, g):
        seen.append(t.clone())
        return inner(z, t, g)

    settings = TrainSettings(steps=3, resolution=64, batch_size=2, guidance_start=0.5, guidance_end=0.75)
    adapter, res = _run(tiny, settings, predict=predict)
    t = torch.cat(seen)
    assert res.steps == 3 and t.numel() == 6 and int(t.min()) >= 250 and int(t.max()) < 500
    assert adapter.guidance_window == (0.5, 0.75) and adapter.timestep_sampling == "window"
    assert TrainSettings().timesteps().window == (0.0, 0.333)
    with pytest.raises(FDIError, match="cubic weights the first"):
        TrainSettings(timestep_sampling="cubic", guidance_start=0.2).check()
