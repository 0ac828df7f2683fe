"""'Load Data Set Pairs (FDI)' and 'Extract FDI (pairs)' executed in-process with ComfyUI's modules: the FDI of a
data set's pairs equals the command line's ``extract --dataset`` on the same tree; the folder must be inside the
input folder; clean-only sets synthesize into it; Cancel stops extraction. Needs ``COMFYUI_DIR``."""

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
import os
import comfy.model_management as mm
import comfy.utils
from tiny_blip2 import build_tiny_blip2
from dataset_trees import make_tree, numbered

ds = sys.modules[name + ".nodes.dataset_nodes"]
fdi_nodes = sys.modules[name + ".nodes.fdi_nodes"]
import importlib
cli = importlib.import_module(name + ".fdi.cli")
FDI = importlib.import_module(name + ".fdi.instruction").FDI
blip = folder_paths.get_folder_paths("blip2")[0] + "/tiny"
build_tiny_blip2(blip)
inp = folder_paths.get_input_directory()
files = [f"rain_data_train_Heavy/{s}-{n}.png" for s in ("rain", "norain", "rainstreak") for n in (1, 2, 3, 4, 5)]
make_tree(inp + "/datasets/rain100h", files, size=(72, 64))
make_tree(inp + "/datasets/bsd", numbered("CBSD68/original_png/{:04d}.png", (0, 1)), size=(64, 64))
result = {}
calls = []
comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: calls.append([value, total]))
pairs, summary = ds.FDIDatasetPairs.execute("rain100h", "datasets", "train", "", 0, 0)
result["names"] = pairs.names
result["summary"] = summary
q = fdi_nodes.FDIQFormerLoader.execute("tiny", "fp32")[0]
node_fdi = ds.FDIExtractPairs.execute(q, pairs, "x", 2, True)[0]
result["progress"] = calls[:]
out = os.path.join(str(tmp), "cli.fdi.safetensors")
result["cli_rc"] = cli.main(["extract", "--blip2", blip, "--dataset", "rain100h", "--data", inp + "/datasets",
                             "-o", out, "--batch-size", "2", "--quiet"])
cli_fdi = FDI.load(out)
result["max_abs_diff"] = float((node_fdi.tokens - cli_fdi.tokens).abs().max())
result["fdi_scale"] = float(cli_fdi.tokens.abs().mean())
result["n_pairs"] = [node_fdi.n_pairs, cli_fdi.n_pairs]
some, _ = ds.FDIDatasetPairs.execute("rain100h", "datasets", "train", "", 2, 0)
result["some"] = some.names
noisy, s2 = ds.FDIDatasetPairs.execute("cbsd68", "datasets/bsd", "test", "", 0, 0)
result["noisy"] = sorted(os.listdir(inp + "/fdi-datasets"))
result["noisy_diff"] = float((noisy.degraded[0] - noisy.clean[0]).abs().mean())
for args in (("rain100h", "/etc", "train", "", 0, 0), ("rain100h", "datasets", "test", "", 0, 0),
             ("cbsd68", "datasets", "train", "", 0, 0)):
    try:
        ds.FDIDatasetPairs.execute(*args)
        result.setdefault("errors", []).append(None)
    except Exception as exc:
        result.setdefault("errors", []).append(type(exc).__name__ + ": " + str(exc))
mm.interrupt_current_processing(True)
try:
    ds.FDIExtractPairs.execute(q, pairs, "x", 2, True)
    result["interrupted"] = False
except mm.InterruptProcessingException:
    result["interrupted"] = True
finally:
    mm.interrupt_current_processing(False)
print(json.dumps(result))
"""


def test_dataset_pairs_node_gives_the_command_lines_fdi(tmp_path):
    pack_name = str(tmp_path / "custom_nodes" / "comfyui-fdi")
    code = harness.script(SCRIPT, COMFYUI_DIR, tmp_path, pack_name=pack_name, tests_path=True)
    code = code.replace("str(tmp)", repr(str(tmp_path)))
    result = harness.run_json(code, tmp_path, timeout=300)
    assert result["names"] == ["rain-1", "rain-2", "rain-3", "rain-4", "rain-5"]
    assert "rain100h train (2017 release" in result["summary"] and "reports 1800" in result["summary"]
    assert result["cli_rc"] == 0 and result["n_pairs"] == [5, 5]
    assert result["fdi_scale"] > 1e-3  # the pairs differ: a real FDI, so the equality below means something
    assert result["max_abs_diff"] <= 1e-6 * max(1.0, result["fdi_scale"])
    values = [v for v, _ in result["progress"]]
    assert values[-1] == 5 and all(t == 5 for _, t in result["progress"] if t == 5)
    assert result["some"] == ["rain-1", "rain-3"]  # two pairs spread over five
    assert result["noisy"] == ["cbsd68-test-noise50-seed0"] and result["noisy_diff"] > 0.05
    errors = result["errors"]
    assert "absolute path" in errors[0]
    assert "does not hold Rain100H" in errors[1]
    assert "no 'train' split" in errors[2]
    assert result["interrupted"] is True
