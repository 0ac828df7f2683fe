"""FDI nodes executed in-process with ComfyUI's modules: progress bar, Cancel, model management.

A fresh interpreter imports ComfyUI from ``COMFYUI_DIR`` (as ``--cpu``, with a temporary
``--base-directory``), loads the pack the way ComfyUI does and calls node ``execute`` methods
directly, with ComfyUI's global progress hook recording what the UI would show and ComfyUI's
interrupt flag set as the Cancel button sets it. Needs ``COMFYUI_DIR`` (run under ComfyUI's Python).
"""

from __future__ import annotations

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

SCRIPT = """
import comfy.model_management as mm
import comfy.utils
from tiny_blip2 import build_tiny_blip2

fdi_nodes = sys.modules[name + ".nodes.fdi_nodes"]
common = sys.modules[name + ".nodes.common"]
build_tiny_blip2(folder_paths.get_folder_paths("blip2")[0] + "/tiny")

calls = []
comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: calls.append([value, total]))
result = {}
q = fdi_nodes.FDIQFormerLoader.execute("tiny", "fp32")[0]
result["patcher"] = [c.__module__ + "." + c.__name__ for c in type(q.patcher).__mro__]
result["qformer_fp32"] = str(q.module.qformer.layernorm.weight.dtype)
torch.manual_seed(0)
a, b = torch.rand(5, 40, 36, 3), torch.rand(5, 40, 36, 3)
fdi = fdi_nodes.FDIExtract.execute(q, a, b, "x", 2, True)[0]
result["progress"] = calls[:]
result["n_pairs"] = fdi.n_pairs

mm.interrupt_current_processing(True)
try:
    fdi_nodes.FDIExtract.execute(q, a, b, "x", 2, True)
    result["interrupted"] = False
except mm.InterruptProcessingException:
    result["interrupted"] = True
finally:
    mm.interrupt_current_processing(False)

try:
    fdi_nodes.FDIExtract.execute(q, a, b[:3], "x", 2, True)
except Exception as exc:
    result["mismatch"] = type(exc).__name__ + ": " + str(exc)
print(json.dumps(result))
"""


def test_extraction_drives_comfyui_progress_and_stops_on_cancel(tmp_path):
    pack_name = str(tmp_path / "custom_nodes" / "comfyui-fdi")
    code = harness.script(SCRIPT, COMFYUI_DIR, tmp_path, pack_name=pack_name, tests_path=True)
    result = harness.run_json(code, tmp_path, timeout=300)
    assert result["patcher"][0].endswith("nodes.common.WholeModelPatcher")  # loads whole (tests/comfyui/test_memory.py)
    assert "comfy.model_patcher.ModelPatcher" in result["patcher"]
    assert result["qformer_fp32"] == "torch.float32"
    assert result["n_pairs"] == 5
    # one update per batch of 2 pairs: [0, 2, 4, 5] of 5; ComfyUI 0.28's ProgressBar drops updates < 100 ms apart
    # (never the first or the last), so the hook sees an increasing subsequence with both ends
    values = [v for v, _ in result["progress"]]
    assert all(t == 5 for _, t in result["progress"]) and values[0] == 0 and values[-1] == 5
    assert set(values) <= {0, 2, 4, 5} and values == sorted(set(values)), result["progress"]
    assert result["interrupted"] is True
    assert result["mismatch"].startswith("FDIError: 5 degraded images but 3 clean images")


CHECKS_SCRIPT = """
import types
import comfy.model_sampling

gn = sys.modules[name + ".nodes.guidance_nodes"]
fdi = sys.modules[name + ".fdi.instruction"].FDI(tokens=torch.randn(8, 32), encoder="tiny:0000", n_pairs=2)


class Reached(Exception):
    pass


class Model:
    # a MODEL as FDIRestore / FDIInvert read it before any work: SD's 1000-timestep schedule, an SD 1.x/2.x UNet
    def __init__(self):
        self.ms = comfy.model_sampling.ModelSamplingDiscrete()
        self.model = types.SimpleNamespace(model_config=types.SimpleNamespace(unet_config={}))

    def get_model_object(self, key):
        return {"model_sampling": self.ms}[key]


class Vae:
    def encode(self, pixels):
        raise Reached("vae")


def check_fdi(fdi):
    raise Reached("adapter")


adapter = types.SimpleNamespace(
    module=types.SimpleNamespace(check_fdi=check_fdi, fdi=None, guidance_window=None, display_name="stub")
)
positive = [[torch.zeros(1, 77, 1024), {}]]


def restore(h, w, steps):
    try:
        gn.FDIRestore.execute(Model(), Vae(), torch.rand(1, h, w, 3), adapter, positive, steps, 2, 1.0, 0.333, 1.0,
                              fdi=fdi, negative=positive)
    except Exception as exc:
        return type(exc).__name__ + ": " + str(exc)


def invert(steps):
    try:
        gn.FDIInvert.execute(Model(), positive, {"samples": torch.zeros(1, 4, 8, 8)}, steps)
    except Exception as exc:
        return type(exc).__name__ + ": " + str(exc)


out = {"steps_1000": restore(64, 64, 1000), "invert_1000": invert(1000), "ok": restore(8, 8, 999)}
for h, w in ((1, 1), (1, 100), (100, 1), (7, 64)):
    out[f"{h}x{w}"] = restore(h, w, 50)
print(json.dumps(out))
"""


def test_restore_and_invert_refuse_tiny_images_and_too_many_steps_before_any_work(tmp_path):
    """A 1-pixel side looped forever in the padding (Cancel could not stop it); 1000 steps repeated the first sigma
    (ComfyUI clamps t = 1000 to 999). Both are the library's FDIError now, as in ``python -m fdi restore``, raised
    before the adapter or the VAE runs; 8 pixels and 999 steps pass."""
    code = harness.script(CHECKS_SCRIPT, COMFYUI_DIR, tmp_path, pack_name="comfyui_fdi_checks", tests_path=True)
    r = harness.run_json(code, tmp_path, timeout=240)
    bound = "FDIError: 1000 steps is more than this model's schedule allows: use at most 999 "
    assert r["steps_1000"].startswith(bound) and r["invert_1000"].startswith(bound), r
    assert r["ok"] == "Reached: adapter", r
    for h, w in ((1, 1), (1, 100), (100, 1), (7, 64)):
        assert r[f"{h}x{w}"] == (
            f"FDIError: the 'image' input is {w}x{h} pixels; restoration needs at least 8 pixels a side "
            "(upscale it first)"
        ), r
