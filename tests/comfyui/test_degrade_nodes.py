"""FDIDegradePairs executed in-process with ComfyUI's modules: the library's pixels, progress, Cancel, errors.

A fresh interpreter imports ComfyUI from ``COMFYUI_DIR`` (``--cpu``, a temporary base directory), loads
the pack the way ComfyUI does and calls the node's ``execute``. Needs ``COMFYUI_DIR``.
"""

from __future__ import annotations

import re

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

node = sys.modules[name + ".nodes.degrade_nodes"].FDIDegradePairs
lib = sys.modules[name + ".fdi.degrade"]
listed = sys.modules[name + ".nodes"].NODE_CLASSES

calls = []
comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: calls.append([value, total]))
result = {"listed": node in listed}
torch.manual_seed(0)
images = torch.rand(2, 40, 52, 3) * 0.8 + 0.1
degraded, clean = node.execute(images, "haze,noise:sigma=20", 7, 2).result
result["shapes"] = [list(degraded.shape), list(clean.shape)]
result["clean_repeats"] = bool(torch.equal(clean, images.repeat_interleave(2, dim=0)))
ref = lib.degrade(images.permute(0, 3, 1, 2), "haze,noise:sigma=20", seed=7, copies=2).permute(0, 2, 3, 1)
result["library_max_diff"] = float((degraded - ref).abs().max())
result["moved"] = float((degraded - clean).abs().mean())
result["progress"] = calls[:]
again = node.execute(images, "haze,noise:sigma=20", 7, 2).result[0]
result["same_seed_same_pixels"] = bool(torch.equal(again, degraded))
other = node.execute(images, "haze,noise:sigma=20", 8, 2).result[0]
result["other_seed_differs"] = bool(not torch.equal(other, degraded))
# a photo added in front of the batch leaves the pairs of the others as they were
front = torch.rand(1, 40, 52, 3)
moved = node.execute(torch.cat([front, images.flip(0)]), "haze,noise:sigma=20", 7, 2).result[0]
result["front_photo_keeps_pairs"] = torch.equal(moved[2:4], degraded[2:4]) and torch.equal(moved[4:], degraded[:2])
schema = node.define_schema()
result["category"] = schema.category
result["description"] = schema.description
result["display_names"] = [c.define_schema().display_name for c in listed]
mm.interrupt_current_processing(True)
try:
    node.execute(images, "haze", 0, 1)
    result["interrupted"] = False
except mm.InterruptProcessingException:
    result["interrupted"] = True
finally:
    mm.interrupt_current_processing(False)
try:
    node.execute(images, "fog", 0, 1)
except Exception as exc:
    result["bad_spec"] = type(exc).__name__ + ": " + str(exc)
print(json.dumps(result))
"""


def test_degrade_pairs_node_matches_the_library_and_drives_comfyui(tmp_path):
    code = harness.script(SCRIPT, COMFYUI_DIR, tmp_path, pack_name=str(tmp_path / "custom_nodes" / "comfyui-fdi"))
    r = harness.run_json(code, tmp_path, timeout=300)
    assert r["listed"] is True
    assert r["shapes"] == [[4, 40, 52, 3], [4, 40, 52, 3]]
    assert r["clean_repeats"] is True
    assert r["library_max_diff"] == 0.0
    assert r["moved"] > 0.05  # the fixture responds: haze + σ=20 noise moves pixels by far more than rounding
    assert r["same_seed_same_pixels"] is True and r["other_seed_differs"] is True
    assert r["front_photo_keeps_pairs"] is True
    # beside the other training nodes; every node it names exists under that display name
    assert r["category"] == "FDI/training"
    named = re.findall(r"'([^']+)'", r["description"])
    assert named and set(named) <= set(r["display_names"]), (named, r["display_names"])
    # one update per pair (ComfyUI 0.28 may drop intermediate updates): rising to 4 of 4
    values = [v for v, _ in r["progress"]]
    assert {t for _, t in r["progress"]} == {4} and values == sorted(values) and values[-1] == 4
    assert r["interrupted"] is True
    assert r["bad_spec"].startswith("FDIError: unknown degradation 'fog'")
