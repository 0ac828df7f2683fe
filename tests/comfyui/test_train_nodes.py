"""FDITrainAdapter / FDISaveAdapter in-process with ComfyUI and the full-size SD 2.1 fixture, and the
training step on ComfyUI's UNet against diffusers' UNet from the same weights.

A fresh interpreter imports ComfyUI from ``COMFYUI_DIR`` (``--cpu``, temporary base directory),
loads the cached single-file fixture with ``CheckpointLoaderSimple`` and calls the nodes' ``execute``.
Needs ``COMFYUI_DIR`` and the cached fixture (``tests/comfyui/test_e2e.py`` builds it).
"""

from __future__ import annotations

import comfyui_harness as harness
import pytest
from sd21_fixture import cache_dir

COMFYUI_DIR = harness.comfyui_dir()
CKPT = cache_dir() / "checkpoints" / "sd21_random_v1.safetensors"

pytestmark = [
    pytest.mark.comfyui,
    pytest.mark.skipif(
        not COMFYUI_DIR, reason="COMFYUI_DIR is not set (run with COMFYUI_DIR=/path/to/ComfyUI under ComfyUI's Python)"
    ),
    pytest.mark.skipif(
        not CKPT.is_file(),
        reason="the cached SD 2.1 single-file fixture is missing (run tests/comfyui/test_e2e.py once)",
    ),
]

SCRIPT = r"""
import comfy.model_management as mm
import comfy.utils
from tiny_blip2 import build_tiny_blip2

import nodes
fdi_nodes = sys.modules[name + ".nodes.fdi_nodes"]
guidance_nodes = sys.modules[name + ".nodes.guidance_nodes"]
train_nodes = sys.modules[name + ".nodes.train_nodes"]
common = sys.modules[name + ".nodes.common"]
lib = sys.modules[name + ".fdi"]
from importlib import import_module
step_mod = import_module(name + ".fdi.training.step")
adapter_mod = import_module(name + ".fdi.adapter")
models_mod = import_module(name + ".fdi.models")
conditioning_mod = import_module(name + ".fdi.conditioning")
sampling = import_module(name + ".fdi.sampling")
build_tiny_blip2(folder_paths.get_folder_paths("blip2")[0] + "/tiny")
os.makedirs(folder_paths.get_folder_paths("checkpoints")[0], exist_ok=True)
os.symlink({ckpt!r}, os.path.join(folder_paths.get_folder_paths("checkpoints")[0], "sd21.safetensors"))
out = {{}}

def err(fn):
    try:
        fn()
    except Exception as exc:
        return type(exc).__name__ + ": " + str(exc)
    return None

# every node runs under inference mode, as in ComfyUI's executor (the loaded weights are inference tensors)
torch.inference_mode().__enter__()
model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint("sd21.safetensors")[:3]
q = fdi_nodes.FDIQFormerLoader.execute("tiny", "fp32")[0]
g = torch.Generator().manual_seed(0)
clean = torch.rand(2, 64, 80, 3, generator=g)
deg = (0.5 * clean + 0.3).clamp(0, 1)
fdi = fdi_nodes.FDIExtract.execute(q, deg, clean, "style", 2, True)[0]
T = train_nodes.FDITrainAdapter
kw = dict(steps=2, learning_rate=1e-3, batch_size=1, resolution=64, seed=0, gradient_checkpointing=True,
          training_dtype="fp32", recon_weight=0.1)

# ---- bad input: a clear error before any work
out["bad_len"] = err(lambda: T.execute(model, clip, vae, fdi, degraded=deg, clean=clean[:1], **kw))
out["bad_small"] = err(lambda: T.execute(model, clip, vae, fdi, degraded=deg[:, :40], clean=clean[:, :40], **kw))
out["bad_steps"] = err(lambda: T.execute(model, clip, vae, fdi, degraded=deg, clean=clean, **dict(kw, steps=0)))
out["bad_none"] = err(lambda: T.execute(model, clip, vae, fdi, **kw))
import types
def fake_model(**changes):
    cfg = dict(model.model.model_config.unet_config, **changes)
    return types.SimpleNamespace(model=types.SimpleNamespace(model_config=types.SimpleNamespace(unet_config=cfg),
                                                             model_type=model.model.model_type))
out["bad_inpaint"] = err(lambda: T.execute(fake_model(in_channels=9), clip, vae, fdi, degraded=deg, clean=clean, **kw))
out["bad_widths"] = err(lambda: T.execute(fake_model(model_channels=256), clip, vae, fdi, degraded=deg, clean=clean,
                                          **kw))
out["bad_sdxl"] = err(lambda: T.execute(fake_model(context_dim=2048, channel_mult=[1, 2, 4]), clip, vae, fdi,
                                        degraded=deg, clean=clean, **kw))

# ---- train 2 steps, save, list, load, restore
calls = []
comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: calls.append([value, total,
preview is not None]))
res = T.execute(model, clip, vae, fdi, degraded=deg, clean=clean, **kw)
handle, curve, steps_done = res[0], res[1], res[2]
out["steps_done"] = steps_done
out["curve"] = list(curve.shape)
out["progress"] = calls[:]
fresh = adapter_mod.FDIAdapter(handle.module.config, base_family="sd2.1-base")
with torch.random.fork_rng(devices=[]):
    torch.manual_seed(0)
    fresh = adapter_mod.FDIAdapter(handle.module.config, base_family="sd2.1-base")
out["changed"] = max(float((a - b).abs().max()) for a, b in zip(handle.module.state_dict().values(),
fresh.state_dict().values()))
out["save"] = train_nodes.FDISaveAdapter.execute(handle, "my_style", False)[0]
out["save_again"] = err(lambda: train_nodes.FDISaveAdapter.execute(handle, "my_style", False))
out["bad_name"] = err(lambda: train_nodes.FDISaveAdapter.execute(handle, "../evil", False))
out["listed"] = "my_style.safetensors" in common.adapter_files()
loaded, embedded = guidance_nodes.FDIAdapterLoader.execute("my_style.safetensors")[:2]
out["embedded_equal"] = bool(torch.equal(embedded.tokens, fdi.tokens))
out["weights_equal"] = all(torch.equal(a, b) for a, b in zip(loaded.module.state_dict().values(),
handle.module.state_dict().values()))
positive = nodes.CLIPTextEncode().encode(clip, "")[0]
restored = guidance_nodes.FDIRestore.execute(model, vae, deg[:1, :, :64], loaded, positive, 2, 2, 1.0, 0.333, 1.0)[0]
out["restored"] = [list(restored.shape), bool(torch.isfinite(restored).all())]

# ---- continue training; an FDI of another Q-Former is refused
res2 = T.execute(model, clip, vae, fdi, degraded=deg, clean=clean, adapter=loaded, **dict(kw, steps=1))
out["continued_steps"] = res2[2]
other = lib.FDI(tokens=fdi.tokens.clone(), encoder="other:0000000000000000", n_pairs=2)
out["bad_encoder"] = err(lambda: T.execute(model, clip, vae, other, degraded=deg, clean=clean, adapter=loaded, **kw))

# ---- preview strips: every step, above the loss curve, no progress of the restore's own; Cancel inside a strip
preview_mod = import_module(name + ".fdi.training.preview")
sampling_nodes = sys.modules[name + ".nodes.sampling"]
preview_mod.PREVIEW_STEPS = 3  # a short restoration (its own progress would show as totals of 3)
shots = []
comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: shots.append(
    [value, total, None if preview is None else [*preview[1].size, preview[2]]]))
res4 = T.execute(model, clip, vae, fdi, degraded=deg, clean=clean, preview_every=1, **kw)
out["preview_shots"] = shots[:]
out["preview_steps_done"] = res4[2]
out["strip_size"] = list(preview_mod.strip_layout(2, 64)[:2])
real_restore = sampling_nodes.restore
def cancelled_restore(*a, **k):  # the user presses Cancel while a strip is restored
    mm.interrupt_current_processing(True)
    mm.throw_exception_if_processing_interrupted()
sampling_nodes.restore = cancelled_restore
res5 = T.execute(model, clip, vae, fdi, degraded=deg, clean=clean, preview_every=1, **dict(kw, steps=3))
sampling_nodes.restore = real_restore
out["cancel_in_preview"] = [res5[2], not mm.processing_interrupted()]
comfy.utils.set_progress_bar_global_hook(None)

# ---- Cancel after the first step keeps the adapter of that step, the graph goes on
def cancel_hook(value, total, preview, node_id=None):
    if value == 1:
        mm.interrupt_current_processing(True)
comfy.utils.set_progress_bar_global_hook(cancel_hook)
res3 = T.execute(model, clip, vae, fdi, degraded=deg, clean=clean, **dict(kw, steps=3))
out["cancel_steps"] = res3[2]
out["flag_cleared"] = not mm.processing_interrupted()
comfy.utils.set_progress_bar_global_hook(None)

# ---- one step on ComfyUI's UNet and on diffusers' UNet, same weights and batch: same loss and gradients
mm.load_models_gpu([model], force_full_load=True)
base = model.model
tokens, width = fdi.shape
with torch.inference_mode(False):
    parts = models_mod.load_sd({ckpt!r})
    unet_d = models_mod.place(parts.unet, "cpu", torch.float32)
    ctx = conditioning_mod.encode_prompt(parts.text_encoder, parts.tokenizer, "", "cpu", torch.float32)
    torch.manual_seed(3)
    adapter = adapter_mod.FDIAdapter(adapter_mod.FDIAdapterConfig(token_width=width, num_tokens=tokens))
    for p in adapter.parameters():  # the fresh adapter's zero-initialised outputs: give the gradient a path
        p.data.add_(torch.randn_like(p) * 1e-2)
    gz = torch.Generator().manual_seed(5)
    z0 = torch.randn(1, 4, 8, 8, generator=gz)
    img = torch.rand(1, 3, 64, 64, generator=gz)
    alphas = sampling.sigma_to_alpha(base.model_sampling.sigmas.float().cpu())
    ib, ob = (2, 5, 8, 11), (3, 6, 9)
    preds = {{"comfy": step_mod.comfy_predictor(base.diffusion_model, ctx.clone(), ib, ob, torch.float32),
              "diffusers": step_mod.diffusers_predictor(unet_d, ctx.clone(), torch.float32)}}
    params = list(adapter.parameters())
    res = {{}}
    for k, pr in preds.items():
        s = step_mod.training_step(adapter, pr, img, z0, fdi.tokens.clone(), alphas, "epsilon", 0.1,
                                   step_mod.step_generator(0, 0))
        grads = torch.autograd.grad(s.loss, params, allow_unused=True)
        res[k] = (float(s.loss), torch.cat([(gr if gr is not None else torch.zeros_like(p)).flatten() for gr, p in
        zip(grads, params)]))
    gc_, gd = res["comfy"][1], res["diffusers"][1]
    out["parity"] = [res["comfy"][0], res["diffusers"][0], float((gc_ - gd).norm() / gd.norm()), float(gd.norm())]
    # the step responds to the guidance: without the adapter's effect (zero FDI) the loss moves
    s0 = step_mod.training_step(adapter, preds["diffusers"], img, z0, torch.zeros_like(fdi.tokens), alphas,
    "epsilon", 0.1,
                                step_mod.step_generator(0, 0))
    out["responds"] = abs(float(s0.loss) - res["diffusers"][0])
print(json.dumps(out))
"""


def test_train_save_load_restore_cancel_and_backend_parity(tmp_path):
    boot = dict(pack_name=str(tmp_path / "custom_nodes" / "comfyui-fdi"), tests_path=True, threads=2)
    code = harness.script(SCRIPT.format(ckpt=str(CKPT)), COMFYUI_DIR, tmp_path, **boot)
    r = harness.run_json(code, tmp_path, timeout=1500, stderr_chars=4000)
    assert r["bad_len"].startswith("FDIError: 2 degraded images but 1 clean")
    assert "at least 64 px" in r["bad_small"]
    assert "steps must be at least 1" in r["bad_steps"]
    assert "no training pairs" in r["bad_none"]
    # UNets of no family FDI knows (SD 1.5 and SDXL MODELs train: tests/comfyui/test_bases_nodes.py)
    assert "inpainting" in r["bad_inpaint"] and "SDXL" in r["bad_sdxl"], (r["bad_inpaint"], r["bad_sdxl"])
    assert r["bad_widths"].startswith("FDIError") and "(256, 512, 1024, 1024)" in r["bad_widths"], r["bad_widths"]
    assert r["steps_done"] == 2 and r["curve"][0] == 1 and r["curve"][3] == 3
    mine = [c for c in r["progress"] if c[1] == 2]
    assert mine == [[0, 2, False], [1, 2, True], [2, 2, True]], r["progress"]  # the loss curve as the preview
    assert r["changed"] > 1e-5  # the trained adapter differs from a fresh one of the same seed
    assert (
        r["save"] == "my_style.safetensors"
        and "already exists" in r["save_again"]
        and "not a plain name" in r["bad_name"]
    )
    assert r["listed"] and r["embedded_equal"] and r["weights_equal"]
    assert r["restored"][0][1:] == [64, 64, 3] and r["restored"][1]
    assert r["continued_steps"] == 1 and "another Q-Former" in r["bad_encoder"]
    assert r["cancel_steps"] == 1 and r["flag_cleared"]
    # preview_every 1: a strip at each step (2 pairs of 64 px) above the 600 × 360 loss curve, shown at up to 1024 px;
    # the strips' restorations report no progress of their own (no total of 3)
    width, height = r["strip_size"]
    assert r["preview_steps_done"] == 2
    shown = [max(width, 600), height + 360, 1024]
    assert r["preview_shots"] == [[0, 2, None], [1, 2, shown], [2, 2, shown]], r["preview_shots"]
    assert r["cancel_in_preview"] == [1, True]  # Cancel during step 1's strip: training ends after that step
    print("backend parity (loss ComfyUI, loss diffusers, relative gradient difference, gradient norm):", r["parity"])
    loss_c, loss_d, grad_rel, grad_norm = r["parity"]
    assert grad_norm > 0 and r["responds"] > 1e-6
    assert abs(loss_c - loss_d) <= 1e-3 * abs(loss_d), r["parity"]
    assert grad_rel <= 1e-3, r["parity"]
