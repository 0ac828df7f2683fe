"""The pack's models under ComfyUI's memory manager: VRAM budgets, ``--novram``, fp16/fp8 UNets (issue 22).

Each test runs a fresh interpreter that imports ComfyUI from ``COMFYUI_DIR`` (``--cpu``) and the pack as ComfyUI
does. A CPU box has one device, so two ways stand in for a GPU:

* **placement**: ComfyUI's own ``ModelPatcher.partially_load`` / ``LoadedModel.model_load`` move the pack's
  modules (Q-Former, adapter) to the ``meta`` device under budgets far below their size
  (``0.1`` bytes is what ``load_models_gpu`` passes under ``--novram``); every parameter and buffer must end up
  on the load device, where a plain ``ModelPatcher`` leaves some behind (the control, checked too);
* **restore/extract**: every model load of a real ``FDIRestore`` and ``FDIExtract`` is forced through ComfyUI's
  partial-load path with the ``--novram`` budget (the UNet then runs ComfyUI's low-VRAM cast path), and the
  UNet is loaded with ``--fp16-unet`` and ``--fp8_e4m3fn-unet`` (manual cast); the guidance's effect on the
  image must match the fp32 model's. The guidance tensors are no model: they stay where the adapter's output was put
  and the patches copy what each call reads (ComfyUI's dynamic-VRAM path: ``test_dynamic_vram.py``).

Needs ``COMFYUI_DIR`` (run under ComfyUI's Python); the restore test also the SD 2.1 fixture.
"""

from __future__ import annotations

import json
from pathlib import Path

import comfyui_harness as harness
import pytest

COMFYUI_DIR = harness.comfyui_dir()

pytestmark = [
    pytest.mark.comfyui,
    pytest.mark.skipif(
        not COMFYUI_DIR,
        reason="COMFYUI_DIR is not set: these tests import a ComfyUI checkout "
        "(run with COMFYUI_DIR=/path/to/ComfyUI under ComfyUI's Python)",
    ),
]

PRELUDE = """
import comfy.model_management as mm
import comfy.model_patcher
common = sys.modules[name + ".nodes.common"]
backend = sys.modules[name + ".fdi.comfy_backend"]
"""

PLACEMENT = """
from tiny_blip2 import build_tiny_blip2
from tiny_sd import randomise_adapter, tiny_adapter_config
from fdi.adapter import FDIAdapter
from fdi.encoder import QFormerEncoder

build_tiny_blip2({base!r} + "/tiny")
meta, cpu = torch.device("meta"), torch.device("cpu")


def modules():
    torch.manual_seed(0)
    adapter = randomise_adapter(FDIAdapter(tiny_adapter_config()))
    return {{
        "qformer": common.ModuleHolder(QFormerEncoder.from_pretrained({base!r} + "/tiny")),
        "adapter": common.ModuleHolder(adapter),
    }}


def devices(module):
    return sorted({{t.device.type for t in list(module.parameters()) + list(module.buffers())}})


out = {{}}
for label, cls in (("plain", comfy.model_patcher.ModelPatcher), ("whole", common.WholeModelPatcher)):
    for key, module in modules().items():
        size = mm.module_size(module)
        for budget in (0.1, 1024, size // 2):  # --novram's 0.1 bytes, 1 KB, half the module
            module_ = modules()[key]
            p = cls(module_, load_device=meta, offload_device=cpu)
            p.partially_load(meta, budget)
            out[f"{{label}}/{{key}}/{{budget}}"] = devices(module_)
        m2 = modules()[key]
        p = cls(m2, load_device=meta, offload_device=cpu)
        loaded = mm.LoadedModel(p)
        loaded.model_load(0.1)  # what load_models_gpu does for every model under --novram
        out[f"{{label}}/{{key}}/novram"] = devices(m2)
        out[f"{{label}}/{{key}}/loaded_is_size"] = p.loaded_size() == p.model_size()
        if label == "whole":
            freed = p.partially_unload(cpu, 1)  # ComfyUI freeing a little: nothing in part
            out[f"whole/{{key}}/unload"] = [freed, devices(m2)]
            if key == "adapter":  # a forward on the load device: no parameter or buffer left behind
                p.partially_load(meta, 0.1)
                g = m2.inner(torch.rand(1, 3, 64, 64, device=meta), torch.randn(8, 32, device=meta))
                out["whole/adapter/forward"] = g.residuals[0].device.type
print(json.dumps(out))
"""


def run_script(tmp_path: Path, body: str, timeout: int, **extra) -> dict:
    boot = dict(pack_name="comfyui_fdi_memory", tests_path=True, library_path=True, threads=2)
    code = harness.script(PRELUDE + body.format(base=str(tmp_path), **extra), COMFYUI_DIR, tmp_path, **boot)
    return harness.run_json(code, tmp_path, timeout, stderr_chars=4000)


def test_pack_modules_load_whole_under_any_vram_budget_and_novram(tmp_path):
    out = run_script(tmp_path, PLACEMENT, 300)
    keys = ("qformer", "adapter")
    # the control: under a budget ComfyUI's plain ModelPatcher splits plain modules (half the size: query_tokens,
    # embeddings, mean/std and the leaves that did not fit stay behind) or moves nothing (--novram), while the
    # caller's inputs go to the load device: device-mismatch errors
    half = {
        key: next(
            v
            for k, v in out.items()
            if k.startswith(f"plain/{key}/") and k[-1].isdigit() and "." not in k and k.split("/")[-1] != "1024"
        )
        for key in keys
    }
    assert half["qformer"] == ["cpu", "meta"] and half["adapter"] == ["cpu", "meta"]
    for key in keys:
        assert out[f"plain/{key}/novram"] == ["cpu"] and out[f"plain/{key}/loaded_is_size"] is False
    for key in keys:
        for budget in [k for k in out if k.startswith(f"whole/{key}/") and k.split("/")[-1][0].isdigit()]:
            assert out[budget] == ["meta"], (budget, out[budget])
        assert out[f"whole/{key}/novram"] == ["meta"]
        assert out[f"whole/{key}/loaded_is_size"] is True  # ComfyUI counts all of it
        assert out[f"whole/{key}/unload"] == [0, ["meta"]]  # nothing freed in part, nothing split
    assert out["whole/adapter/forward"] == "meta"


RESTORE = """
import gc
import numpy as np
import comfy.sd, comfy.utils
from sd21_fixture import random_adapter
from tiny_blip2 import build_tiny_blip2
from fdi.instruction import FDI

gn = sys.modules[name + ".nodes.guidance_nodes"]
fn = sys.modules[name + ".nodes.fdi_nodes"]
args = comfy.cli_args.args
adapter = random_adapter(768, 32, seed=1)
adapter.encoder = "blip2-test:0123456789abcdef"
fdi = FDI(torch.randn(32, 768, generator=torch.Generator().manual_seed(0)), encoder=adapter.encoder, n_pairs=1)
adapter.save(folder_paths.get_folder_paths("fdi_adapters")[0] + "/mem.safetensors", fdi=fdi)
handle = gn.FDIAdapterLoader.execute("mem.safetensors")[0]
yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
image = torch.stack([0.3 + 0.4 * xx, 0.5 + 0.2 * yy, 0.6 - 0.3 * xx * yy], -1)[None]

real_model_load = mm.LoadedModel.model_load
loads = []


def novram_model_load(self, lowvram_model_memory=0, force_patch_weights=False):
    return real_model_load(self, 0.1, force_patch_weights)  # load_models_gpu's budget under --novram


real_whole_load = common.WholeModelPatcher.load


def recording_load(self, *a, **k):
    out = real_whole_load(self, *a, **k)
    inner = getattr(self.model, "inner", self.model)
    loads.append([type(inner).__name__, getattr(inner, "part", ""), self.loaded_size() == self.model_size()])
    return out


common.WholeModelPatcher.load = recording_load
out = {{}}
positive = None


def load(flag):
    global positive
    for f in ("fp16_unet", "fp8_e4m3fn_unet"):
        setattr(args, f, f == flag)
    loaded = comfy.sd.load_checkpoint_guess_config({ckpt!r}, output_vae=True, output_clip=positive is None)
    model, clip, vae = loaded[:3]
    if positive is None:
        positive = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    del clip
    return model, vae


def restore(model, vae, strength):
    with torch.inference_mode():  # as ComfyUI's executor runs a node
        return gn.FDIRestore.execute(model, vae, image, handle, positive, 2, 2, strength, 1.0, 1.0)[0].numpy()


def free():
    mm.unload_all_models()
    gc.collect()


model, vae = load(None)
np.save({base!r} + "/fp32_s1.npy", restore(model, vae, 1.0))
np.save({base!r} + "/fp32_s0.npy", restore(model, vae, 0.0))
guided = gn.apply_guidance(model, gn.run_adapter(handle, handle.module.fdi, image.permute(0, 3, 1, 2)), 1, 0, 1)
out["patch_models"] = len(guided.model_patches_models())
del guided
free()
loads.clear()
mm.LoadedModel.model_load = novram_model_load
np.save({base!r} + "/novram_s1.npy", restore(model, vae, 1.0))
out["novram_unet_lowvram"] = bool(model.model.model_lowvram)  # ComfyUI's low-VRAM path really ran
out["novram_loads"] = loads[:]
build_tiny_blip2(folder_paths.get_folder_paths("blip2")[0] + "/tiny")
q = fn.FDIQFormerLoader.execute("tiny", "fp32")[0]
torch.manual_seed(0)
a, b = torch.rand(3, 40, 36, 3), torch.rand(3, 40, 36, 3)
with torch.inference_mode():
    novram_fdi = fn.FDIExtract.execute(q, a, b, "x", 2, False)[0].tokens.clone()
out["novram_qformer_whole"] = q.patcher.loaded_size() == q.patcher.model_size() and not q.patcher.model.model_lowvram
mm.LoadedModel.model_load = real_model_load
free()
with torch.inference_mode():
    plain_fdi = fn.FDIExtract.execute(q, a, b, "x", 2, False)[0].tokens.clone()
out["extract_diff"] = float((novram_fdi - plain_fdi).abs().max())
out["extract_scale"] = float(plain_fdi.abs().mean())
del model, vae
free()
seen = []
for cls in (backend.FDIInputPatch, backend.FDIOutputPatch):
    real_call = cls.__call__

    def recording_call(self, h, *a, _real=real_call, **k):
        seen.append(str(h.dtype))
        return _real(self, h, *a, **k)

    cls.__call__ = recording_call
# --fp16-unet computed in fp16 as on a GPU (a CPU ComfyUI computes manual-cast models in fp32), through
# ModelPatcher.set_model_compute_dtype; --fp8_e4m3fn-unet with ComfyUI's CPU manual cast (fp8 storage, fp32 compute)
for flag, key in (("fp16_unet", "fp16"), ("fp8_e4m3fn_unet", "fp8")):
    model, vae = load(flag)
    out[key + "_dtypes"] = [str(model.model.get_dtype()), str(model.model.manual_cast_dtype)]
    run = model
    if key == "fp16":
        run = model.clone()
        run.set_model_compute_dtype(torch.float16)
    seen.clear()
    np.save({base!r} + f"/{{key}}_s1.npy", restore(run, vae, 1.0))
    out[key + "_feature_dtypes"] = sorted(set(seen))
    np.save({base!r} + f"/{{key}}_s0.npy", restore(run, vae, 0.0))
    del model, vae, run
    free()
print(json.dumps(out))
"""


def test_restore_and_extraction_under_novram_and_fp16_fp8_unets(tmp_path):
    """A restore and an extraction with every model load forced through ComfyUI's ``--novram`` partial-load path
    give the fully loaded results; ``--fp16-unet`` (fp16 features) and ``--fp8_e4m3fn-unet`` (manual cast) restores
    succeed with the guidance acting as on the fp32 model."""
    import numpy as np
    import sd21_fixture

    ckpt = sd21_fixture.checkpoint_path()
    if not ckpt.is_file():
        pytest.skip("the SD 2.1 fixture is not built yet (tests/comfyui/test_e2e.py builds it)")
    out = run_script(tmp_path, RESTORE, 1500, ckpt=str(ckpt))
    names = ("fp32_s1", "fp32_s0", "novram_s1", "fp16_s1", "fp16_s0", "fp8_s1", "fp8_s0")
    a = {k: np.load(tmp_path / f"{k}.npy").astype(np.float64) for k in names}
    effect = a["fp32_s1"] - a["fp32_s0"]
    size = float(np.abs(effect).mean())
    print(json.dumps(out))
    assert size > 0.01  # the guidance changes the image: the comparisons below mean something
    # --novram semantics: the UNet ran ComfyUI's low-VRAM cast path, the pack's modules were loaded whole
    assert out["novram_unet_lowvram"] is True
    assert {kind for kind, _, _ in out["novram_loads"]} == {"FDIAdapter"}  # the guidance is no model to load
    assert all(whole for _, _, whole in out["novram_loads"])
    assert np.abs(a["novram_s1"] - a["fp32_s1"]).max() <= 1 / 255
    assert out["novram_qformer_whole"] is True and out["extract_diff"] <= 1e-5 * max(out["extract_scale"], 1.0)
    assert out["patch_models"] == 0  # a guided MODEL's load set is the UNet alone
    # --fp16-unet with fp16 features: the fixture's weights are fp16 values, so the fp32 model has the same weights;
    # the guidance's effect and the image agree with it to a small part of the effect
    assert out["fp16_dtypes"][0] == "torch.float16" and out["fp16_feature_dtypes"] == ["torch.float16"]
    effect16 = a["fp16_s1"] - a["fp16_s0"]
    assert np.abs(effect16 - effect).mean() <= 0.05 * size  # measured 0.013
    assert np.abs(a["fp16_s1"] - a["fp32_s1"]).mean() <= 0.05 * size  # measured 0.016
    # --fp8_e4m3fn-unet (manual cast): fp8 rounding changes a random-weight UNet about as much as the guidance does,
    # so only the size of the effect is compared
    assert out["fp8_dtypes"] == ["torch.float8_e4m3fn", "torch.float32"]
    assert out["fp8_feature_dtypes"] == ["torch.float32"]
    assert 0.5 * size <= float(np.abs(a["fp8_s1"] - a["fp8_s0"]).mean()) <= 2 * size  # measured 0.82x
