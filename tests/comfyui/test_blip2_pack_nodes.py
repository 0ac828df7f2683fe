"""``models/blip2`` holds BLIP-2 folders and files packed by ``python -m fdi pack-blip2``: ``FDIQFormerLoader``
lists both and loads either, and the two give the same encoder (fingerprint, FDI).

Executed in-process with ComfyUI's modules, as ``test_fdi_nodes.py``. Needs ``COMFYUI_DIR`` (run under ComfyUI's
Python).
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
import importlib
from pathlib import Path
from tiny_blip2 import build_tiny_blip2

fdi_nodes = sys.modules[name + ".nodes.fdi_nodes"]
common = sys.modules[name + ".nodes.common"]
pack_blip2 = importlib.import_module(name + ".fdi.blip2_pack").pack_blip2
FDIError = importlib.import_module(name + ".fdi.errors").FDIError
root = Path(folder_paths.get_folder_paths("blip2")[0])
build_tiny_blip2(root / "tiny")
build_tiny_blip2(root / "org" / "tiny2", seed=1)
pack_blip2(root / "tiny", root / "tiny-fp32.safetensors", dtype="fp32")
(root / "sub").mkdir()
pack_blip2(root / "tiny", root / "sub" / "tiny-fp16.safetensors", dtype="fp16")
(root / ".tiny-fp16.safetensors.x.tmp").write_bytes(b"a temporary file of a pack under way")
(root / "notes.txt").write_text("not a model")
result = {"choices": common.blip2_choices()}
schema = fdi_nodes.FDIQFormerLoader.define_schema()
result["options"] = list(schema.inputs[0].options)
result["tooltip"] = schema.inputs[0].tooltip

torch.manual_seed(0)
a, b = torch.rand(3, 40, 36, 3), torch.rand(3, 40, 36, 3)
fdis = {}
for choice in ("tiny", "tiny-fp32.safetensors", "sub/tiny-fp16.safetensors", "org/tiny2"):
    q = fdi_nodes.FDIQFormerLoader.execute(choice, "fp32")[0]
    f = fdi_nodes.FDIExtract.execute(q, a, b, "x", 2, False)[0]
    fdis[choice] = f
    result[choice] = {"fingerprint": q.module.fingerprint, "name": q.name}
ref = fdis["tiny"].tokens
result["rel_fp32"] = float((fdis["tiny-fp32.safetensors"].tokens - ref).norm() / ref.norm())
result["rel_fp16"] = float((fdis["sub/tiny-fp16.safetensors"].tokens - ref).norm() / ref.norm())
result["rel_other"] = float((fdis["org/tiny2"].tokens - ref).norm() / ref.norm())
try:
    fdi_nodes.FDIQFormerLoader.execute("missing.safetensors", "fp32")
except FDIError as exc:
    result["missing"] = str(exc)
print(json.dumps(result))
"""


def test_loader_lists_and_loads_folders_and_packed_files(tmp_path):
    pack_name = str(tmp_path / "custom_nodes" / "comfyui-fdi")
    code = harness.script(SCRIPT, COMFYUI_DIR, tmp_path, pack_name=pack_name, tests_path=True)
    r = harness.run_json(code, tmp_path, timeout=300)
    # folders (with config.json; their own weight files are not choices) and packed files; nothing else
    expected = ["org/tiny2", "sub/tiny-fp16.safetensors", "tiny", "tiny-fp32.safetensors"]
    assert r["choices"] == expected and r["options"] == expected
    assert "pack-blip2" in r["tooltip"]
    fp = r["tiny"]["fingerprint"]
    assert r["tiny-fp32.safetensors"]["fingerprint"] == fp and r["sub/tiny-fp16.safetensors"]["fingerprint"] == fp
    assert r["org/tiny2"]["fingerprint"].split(":")[1] != fp.split(":")[1]
    assert r["tiny-fp32.safetensors"]["name"] == "tiny-fp32.safetensors"
    assert r["rel_fp32"] <= 1e-5
    assert 0 < r["rel_fp16"] <= 4e-3 and r["rel_other"] > 0.1, r
    assert "'missing.safetensors' is not in models/blip2" in r["missing"] and "pack-blip2" in r["missing"]
