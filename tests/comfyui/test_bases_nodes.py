"""The nodes on SD 1.5 and SDXL MODELs (issue 25), in-process with ComfyUI's own model classes (needs ``COMFYUI_DIR``).

A fresh interpreter imports ComfyUI (``--cpu``) and the pack, and builds ComfyUI's own ``model_base.SDXL`` and
``model_base.BaseModel`` from ``supported_models.SDXL`` / ``SD15`` configs with the real level widths (320/640/1280,
and 1280 again for SD 1.5), context widths (2048, 768) and SDXL's 2816-wide ``y`` input, so the pack sees each
family as on a published checkpoint; only the attention depth is cut (one transformer at one level) to keep the
UNets at 0.4 B / 0.7 B random parameters. CLIP and VAE are stand-ins with ComfyUI's interfaces (``tokenize`` /
``encode_from_tokens(return_pooled=True)``, ``encode`` / ``decode``); tests/comfyui/test_bases_e2e.py runs the
published layouts whole. Per family:

* ``FDITrainAdapter`` sizes a new adapter for the family (three levels on SDXL) and trains 2 steps; the SDXL UNet
  gets ``y`` = ComfyUI's ``encode_adm`` of the pooled empty prompt at the crop size, and ``y`` changes its output;
* a fresh adapter is an exact no-op through ``FDIApplyGuidance`` and ComfyUI's sampler, a trained-like one is not;
* an adapter of another family is refused naming both families;
* ``FDIRestore`` and ``FDIInvert`` run, and the SDXL UNet gets ``y`` from the conditioning's pooled output at the
  latent's size; conditioning without a pooled output is refused on SDXL.
"""

from __future__ import annotations

import json

import comfyui_harness as harness
import pytest

COMFYUI_DIR = harness.comfyui_dir()

pytestmark = [
    pytest.mark.comfyui,
    pytest.mark.slow,
    pytest.mark.skipif(
        not COMFYUI_DIR,
        reason="COMFYUI_DIR is not set: these tests import a ComfyUI checkout "
        "(run with COMFYUI_DIR=/path/to/ComfyUI under ComfyUI's Python)",
    ),
]

SCRIPT = r"""
import gc
import comfy.model_base, comfy.model_management as mm, comfy.model_patcher, comfy.samplers, comfy.supported_models
import torch.nn.functional as F
from tiny_sd import randomise_adapter

gn = importlib.import_module(name + ".nodes.guidance_nodes")
tn = importlib.import_module(name + ".nodes.train_nodes")
smp = importlib.import_module(name + ".nodes.sampling")
common = importlib.import_module(name + ".nodes.common")
adapter_mod = importlib.import_module(name + ".fdi.adapter")
inst = importlib.import_module(name + ".fdi.instruction")
cpu = torch.device("cpu")
KIND = sys.argv[1]
SIZE = 128  # px: 16 x 16 latents

BASE = dict(use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
            dtype=torch.float32, in_channels=4, model_channels=320, use_temporal_attention=False,
            use_temporal_resblock=False)
CONFIGS = {
    "sdxl": (comfy.supported_models.SDXL, dict(BASE, num_classes="sequential", adm_in_channels=2816,
             num_res_blocks=[2, 2, 2], channel_mult=[1, 2, 4], transformer_depth=[0, 0, 1, 1, 0, 0],
             transformer_depth_middle=0, transformer_depth_output=[0, 0, 0, 1, 1, 1, 0, 0, 0],
             use_linear_in_transformer=True, context_dim=2048, num_head_channels=64), 2048, 1280),
    "sd1.5": (comfy.supported_models.SD15, dict(BASE, adm_in_channels=None, num_res_blocks=[2, 2, 2, 2],
              channel_mult=[1, 2, 4, 4], transformer_depth=[1, 1, 0, 0, 0, 0, 0, 0], transformer_depth_middle=0,
              transformer_depth_output=[0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1], use_linear_in_transformer=False,
              context_dim=768), 768, 768),
}


def build(kind):
    cls, cfg, _, _ = CONFIGS[kind]
    base = cls(dict(cfg)).get_model({}, device=cpu)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # ComfyUI's layers skip weight init: random weights, unit norms
        for n, p in base.diffusion_model.named_parameters():
            norm = n.endswith(".weight") and ".norm" in n or n.endswith(("in_layers.0.weight", "out_layers.0.weight"))
            p.copy_(torch.randn(p.shape, generator=g) * 0.02 + (1.0 if norm and p.ndim == 1 else 0.0))
    return comfy.model_patcher.ModelPatcher(base.eval(), load_device=cpu, offload_device=cpu)


class Clip:
    # ComfyUI's CLIP interface: random embeddings per prompt (a stand-in for CLIP-L / CLIP-L+G)
    def __init__(self, width, pooled):
        self.width, self.pooled = width, pooled

    def tokenize(self, text):
        return {"text": text}

    def encode_from_tokens(self, tokens, return_pooled=False):
        g = torch.Generator().manual_seed(len(tokens["text"]) + 7)
        cond, pooled = torch.randn(1, 77, self.width, generator=g), torch.randn(1, self.pooled, generator=g)
        return (cond, pooled) if return_pooled else cond


class Vae:
    # ComfyUI's VAE interface: IMAGE [B, H, W, 3] <-> latent [B, 4, H/8, W/8]
    def encode(self, pixels):
        x = F.avg_pool2d(pixels.movedim(-1, 1).float(), 8)
        return torch.cat([x, x.mean(1, keepdim=True)], 1) * 2 - 1

    def decode(self, z):
        return F.interpolate(z[:, :3] * 0.5 + 0.5, scale_factor=8, mode="nearest").movedim(1, -1)


def err(fn):
    try:
        fn()
    except Exception as exc:
        return type(exc).__name__ + ": " + str(exc)
    return None


def handle_of(adapter):
    return common.ModelHandle(adapter, common.make_patcher(adapter), "test")


seen = []


def capture(module, args, kwargs):
    seen.append(kwargs.get("y", args[3] if len(args) > 3 else None))


torch.inference_mode().__enter__()  # as ComfyUI's executor runs nodes
out = {}
model = build(KIND)
base = model.model
width, pooled_width = CONFIGS[KIND][2], CONFIGS[KIND][3]
clip, vae = Clip(width, pooled_width), Vae()
cond, pooled = clip.encode_from_tokens(clip.tokenize(""), return_pooled=True)
positive = [[cond, {"pooled_output": pooled}]]
fdi = inst.FDI(tokens=torch.randn(8, 32, generator=torch.Generator().manual_seed(1)),
               encoder="tiny:0000000000000000", n_pairs=2, label="style")
g = torch.Generator().manual_seed(2)
clean = torch.rand(2, SIZE, SIZE, 3, generator=g)
deg = (0.5 * clean + 0.3).clamp(0, 1)
family = tn._model_facts(model)[2]
out["family"] = family
hook = base.diffusion_model.register_forward_pre_hook(capture, with_kwargs=True)

# ---- training: a new adapter of the family, y = encode_adm(pooled, crop size) reaches the UNet
kw = dict(steps=2, learning_rate=1e-3, batch_size=1, resolution=SIZE, seed=0, gradient_checkpointing=True,
          training_dtype="fp32", recon_weight=0.1)
trained, _, steps_done = tn.FDITrainAdapter.execute(model, clip, vae, fdi, degraded=deg, clean=clean, **kw)[:3]
out["steps_done"] = steps_done
out["trained"] = [trained.module.base_family, list(trained.module.config.channels)]
with torch.random.fork_rng(devices=[]):
    torch.manual_seed(0)
    fresh = adapter_mod.FDIAdapter(trained.module.config, base_family=family, encoder=fdi.encoder)
out["changed"] = max(float((a - b).abs().max()) for a, b in zip(trained.module.state_dict().values(),
                                                                fresh.state_dict().values()))
adm = base.encode_adm(pooled_output=pooled, width=SIZE, height=SIZE, crop_w=0, crop_h=0, target_width=SIZE,
                      target_height=SIZE, device=cpu)
train_y = [y for y in seen if y is not None]
out["train_y"] = [len(seen), len(train_y), bool(adm is not None and train_y and all(torch.equal(y, adm.expand_as(y))
                                                                                  for y in train_y))]
if adm is not None:  # the size/pooled input matters to this UNet
    x, t = torch.randn(1, 4, 16, 16, generator=g), torch.tensor([500.0])
    with torch.no_grad():
        a = base.diffusion_model(x, t, context=cond, y=adm)
        b = base.diffusion_model(x, t, context=cond, y=base.encode_adm(pooled_output=pooled, width=2 * SIZE,
                                 height=2 * SIZE, device=cpu))
    out["y_effect"] = float((a - b).norm() / a.norm())

# ---- a fresh adapter is an exact no-op through FDIApplyGuidance and ComfyUI's sampler; a trained-like one is not
latent = vae.encode(deg[:1])
sigmas = smp.restore_schedule(model, 3, 3)[0]
ddim = comfy.samplers.sampler_object("ddim")


def sampled(m):
    return smp.sample(m, ddim, sigmas, 1.0, positive, smp.zeroed(positive), latent.clone(), preview=False)


plain = sampled(model)
guide = gn.FDINoiseDecoupling.execute(handle_of(fresh), fdi, deg[:1])[0]
guided = sampled(gn.FDIApplyGuidance.execute(model, guide, 1.0, 0.0, 1.0)[0])
out["fresh_noop"] = bool(torch.equal(plain, guided))
acting = randomise_adapter(adapter_mod.FDIAdapter(trained.module.config, base_family=family, encoder=fdi.encoder))
guide2 = gn.FDINoiseDecoupling.execute(handle_of(acting), fdi, deg[:1])[0]
effect = sampled(gn.FDIApplyGuidance.execute(model, guide2, 1.0, 0.0, 1.0)[0])
out["acting_effect"] = float((effect - plain).norm() / plain.norm())
out["finite"] = bool(torch.isfinite(plain).all() and torch.isfinite(effect).all())

# ---- adapters of other families are refused, naming both
for other in ("sd2.1-base", "sdxl" if KIND != "sdxl" else "sd1.5"):
    cfg = adapter_mod.FDIAdapterConfig.for_family(other, token_width=32, num_tokens=8, res_blocks=0)
    wrong = adapter_mod.FDIAdapter(cfg, base_family=other, encoder=fdi.encoder)
    gw = gn.FDINoiseDecoupling.execute(handle_of(wrong), fdi, deg[:1])[0]
    out["refused/" + other] = err(lambda: gn.FDIApplyGuidance.execute(model, gw, 1.0, 0.0, 1.0))
    out["refused_train/" + other] = err(lambda: tn.FDITrainAdapter.execute(
        model, clip, vae, fdi, degraded=deg, clean=clean, adapter=handle_of(wrong), **kw))

# ---- FDIRestore and FDIInvert: y from the conditioning's pooled output at the (padded) image's size
seen.clear()
restored = gn.FDIRestore.execute(model, vae, deg[:1, :120, :112], trained, positive, 2, 2, 1.0, 0.5, 1.0)[0]
out["restored"] = [list(restored.shape), bool(torch.isfinite(restored).all())]
adm_restore = base.encode_adm(pooled_output=pooled, width=SIZE, height=SIZE, device=cpu)
ys = [y for y in seen if y is not None]
out["restore_y"] = [len(seen), len(ys), bool(adm_restore is not None and ys and
                                              all(torch.equal(y[:1], adm_restore) for y in ys))]
seen.clear()
inverted = gn.FDIInvert.execute(model, positive, {"samples": latent.clone()}, 3)[0]["samples"]
ys = [y for y in seen if y is not None]
out["invert_y"] = [len(seen), len(ys), bool(adm_restore is not None and ys and
                                             all(torch.equal(y[:1], adm_restore) for y in ys))]
out["inverted"] = float((inverted - latent).norm() / latent.norm())
out["no_pooled"] = err(lambda: gn.FDIRestore.execute(model, vae, deg[:1], trained, [[cond, {}]], 2, 2, 1.0, 0.5,
                                                     1.0))
hook.remove()
print(json.dumps(out))
"""


def run(tmp_path, kind: str) -> dict:
    boot = dict(pack_name="comfyui_fdi_under_test", tests_path=True, threads=2)
    code = harness.script(SCRIPT, COMFYUI_DIR, tmp_path, **boot)
    result = harness.run_json(code, tmp_path, timeout=1500, stderr_chars=4000, args=[kind])
    print(json.dumps(result, indent=1))
    return result


def test_sdxl_model_trains_guides_restores_and_refuses_other_families(tmp_path):
    r = run(tmp_path, "sdxl")
    assert r["family"] == "sdxl"
    assert r["steps_done"] == 2 and r["trained"] == ["sdxl", [320, 640, 1280]] and r["changed"] > 1e-5
    calls, with_y, equal = r["train_y"]
    assert calls >= 2 and with_y == calls and equal, r["train_y"]  # every training forward got encode_adm's y
    assert r["y_effect"] > 1e-3  # the size/pooled input changes this UNet's output
    assert r["fresh_noop"] and r["acting_effect"] > 1e-3 and r["finite"]
    assert "SDXL" in r["refused/sd2.1-base"] and "SD 2.1 base" in r["refused/sd2.1-base"], r["refused/sd2.1-base"]
    assert "SDXL" in r["refused/sd1.5"] and "SD 1.5" in r["refused/sd1.5"], r["refused/sd1.5"]
    for other, title in (("sd2.1-base", "SD 2.1 base"), ("sd1.5", "SD 1.5")):
        msg = r["refused_train/" + other]
        assert msg and "SDXL" in msg and title in msg, msg
    assert r["restored"] == [[1, 120, 112, 3], True]
    assert r["restore_y"][0] >= 4 and r["restore_y"][1] == r["restore_y"][0] and r["restore_y"][2], r["restore_y"]
    assert r["invert_y"][0] >= 2 and r["invert_y"][1] == r["invert_y"][0] and r["invert_y"][2], r["invert_y"]
    assert r["inverted"] > 1e-3
    assert r["no_pooled"] and "pooled output" in r["no_pooled"] and "SDXL" in r["no_pooled"], r["no_pooled"]


def test_sd15_model_trains_guides_restores_and_refuses_other_families(tmp_path):
    r = run(tmp_path, "sd1.5")
    assert r["family"] == "sd1.5"
    assert r["steps_done"] == 2 and r["trained"] == ["sd1.5", [320, 640, 1280, 1280]] and r["changed"] > 1e-5
    assert r["train_y"][0] >= 2 and r["train_y"][1] == 0  # SD 1.x UNets take no y
    assert r["fresh_noop"] and r["acting_effect"] > 1e-3 and r["finite"]
    msg = r["refused/sd2.1-base"]
    assert msg and "SD 1.x" in msg and "SD 2.1 base" in msg, msg
    msg = r["refused/sdxl"]
    assert msg and "SD 1.x" in msg and "SDXL" in msg, msg
    for other, title in (("sd2.1-base", "SD 2.1 base"), ("sdxl", "SDXL")):
        msg = r["refused_train/" + other]
        assert msg and "SD 1.5" in msg and title in msg, msg
    assert r["restored"] == [[1, 120, 112, 3], True]
    assert r["restore_y"][0] >= 4 and r["restore_y"][1] == 0
    assert r["inverted"] > 1e-3
    assert r["no_pooled"] is None or "pooled" not in r["no_pooled"]  # SD 1.x needs no pooled output


# ------------------------------------------------------------------------------------------------ full-size SDXL

FULL = r"""
import comfy.samplers
import nodes
gn = importlib.import_module(name + ".nodes.guidance_nodes")
tn = importlib.import_module(name + ".nodes.train_nodes")
smp = importlib.import_module(name + ".nodes.sampling")
common = importlib.import_module(name + ".nodes.common")
adapter_mod = importlib.import_module(name + ".fdi.adapter")
inst = importlib.import_module(name + ".fdi.instruction")
folder = folder_paths.get_folder_paths("checkpoints")[0]
os.makedirs(folder, exist_ok=True)
os.symlink(sys.argv[1], os.path.join(folder, "sd_xl_base_1.0.safetensors"))
torch.inference_mode().__enter__()
model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint("sd_xl_base_1.0.safetensors")[:3]
base = model.model
out = {"unet_dtype": str(base.get_dtype()), "manual_cast": str(base.manual_cast_dtype)}
positive = nodes.CLIPTextEncode().encode(clip, "")[0]
cond, pooled = clip.encode_from_tokens(clip.tokenize(""), return_pooled=True)
out["pooled"] = list(pooled.shape)
out["positive_has_pooled"] = torch.equal(positive[0][1]["pooled_output"], pooled)
seen = []
base.diffusion_model.register_forward_pre_hook(lambda m, a, k: seen.append(k.get("y")), with_kwargs=True)
fdi = inst.FDI(tokens=torch.randn(8, 32, generator=torch.Generator().manual_seed(1)),
               encoder="tiny:0000000000000000", n_pairs=1, label="style")
g = torch.Generator().manual_seed(2)
clean = torch.rand(1, 64, 64, 3, generator=g)
deg = (0.5 * clean + 0.3).clamp(0, 1)
trained, _, done = tn.FDITrainAdapter.execute(model, clip, vae, fdi, degraded=deg, clean=clean, steps=1,
                                              learning_rate=1e-3, batch_size=1, resolution=64, seed=0,
                                              gradient_checkpointing=True, training_dtype="fp32",
                                              recon_weight=0.1)[:3]
adm = base.encode_adm(pooled_output=pooled, width=64, height=64, crop_w=0, crop_h=0, target_width=64,
                      target_height=64, device=torch.device("cpu"))
out["trained"] = [done, trained.module.base_family, list(trained.module.config.channels)]
out["train_y"] = [len(seen), all(y is not None and torch.equal(y.float(), adm.float().expand_as(y)) for y in seen)]
with torch.random.fork_rng(devices=[]):
    torch.manual_seed(0)
    fresh = adapter_mod.FDIAdapter(trained.module.config, base_family="sdxl", encoder=fdi.encoder)
handle = common.ModelHandle(fresh, common.make_patcher(fresh), "fresh")
latent = vae.encode(deg)
sigmas = smp.restore_schedule(model, 2, 2)[0]
ddim = comfy.samplers.sampler_object("ddim")
neg = smp.zeroed(positive)
plain = smp.sample(model, ddim, sigmas, 1.0, positive, neg, latent.clone(), preview=False)
guide = gn.FDINoiseDecoupling.execute(handle, fdi, deg)[0]
guided = smp.sample(gn.FDIApplyGuidance.execute(model, guide, 1.0, 0.0, 1.0)[0], ddim, sigmas, 1.0, positive, neg,
                    latent.clone(), preview=False)
out["fresh_noop"] = bool(torch.equal(plain, guided)) and bool(torch.isfinite(plain).all())
seen.clear()
restored = gn.FDIRestore.execute(model, vae, deg, trained, positive, 2, 2, 1.0, 0.5, 1.0)[0]
adm_r = base.encode_adm(pooled_output=pooled, width=64, height=64, device=torch.device("cpu"))
out["restored"] = [list(restored.shape), bool(torch.isfinite(restored).all())]
out["restore_y"] = [len(seen), all(y is not None and torch.equal(y[:1].float(), adm_r.float()) for y in seen)]
print(json.dumps(out))
"""


def _sdxl_file():
    from sd21_fixture import cache_dir

    return cache_dir() / "checkpoints" / "fdi-bases" / "sdxl_random_v1.safetensors"


def test_full_size_sdxl_single_file_trains_with_its_pooled_text_and_restores(tmp_path):
    """The random-weight SDXL base 1.0 single file (tests/comfyui/test_bases_e2e.py builds it) through
    'Load Checkpoint': its CLIP-G pooled output reaches the UNet as ``y`` in training and restoration; a fresh adapter
    is an exact no-op. The UNet and text encoders are kept in fp16 (``--fp16-unet --fp16-text-enc``: ComfyUI casts
    to fp32 on the CPU); peak resident size 14.8 GB on ComfyUI 0.28 (the 7.1 GB file's mapped pages included),
    6 minutes with the two in-process tests on 2 cores."""
    ckpt = _sdxl_file()
    if not ckpt.is_file():
        pytest.skip(f"the SDXL single-file fixture {ckpt} is missing (tests/comfyui/test_bases_e2e.py builds it)")
    flags = {"fp16_unet": True, "fp16_text_enc": True}
    boot = dict(pack_name="comfyui_fdi_under_test", tests_path=True, threads=2, flags=flags)
    code = harness.script(FULL, COMFYUI_DIR, tmp_path, **boot)
    r = harness.run_json(code, tmp_path, timeout=2400, stderr_chars=4000, args=[str(ckpt)])
    print(json.dumps(r, indent=1))
    assert r["pooled"] == [1, 1280] and r["positive_has_pooled"]
    assert r["trained"] == [1, "sdxl", [320, 640, 1280]]
    assert r["train_y"][0] >= 1 and r["train_y"][1], r["train_y"]
    assert r["fresh_noop"]
    assert r["restored"] == [[1, 64, 64, 3], True]
    assert r["restore_y"][0] >= 4 and r["restore_y"][1], r["restore_y"]
