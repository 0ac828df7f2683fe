"""The pack's models under ComfyUI's memory manager: VRAM budgets, ``--novram``, fp16/fp8 UNets (issue 22).

Each test runs a fresh interpreter that imports ComfyUI from ``COMFYUI_DIR`` (``--cpu``) and the pack as ComfyUI
does. A CPU box has one device, so two ways stand in for a GPU:

* **placement**: ComfyUI's own ``ModelPatcher.partially_load`` / ``LoadedModel.model_load`` move the pack's
  modules (Q-Former, adapter, guidance tensors) to the ``meta`` device under budgets far below their size
  (``0.1`` bytes is what ``load_models_gpu`` passes under ``--novram``); every parameter and buffer must end up
  on the load device, where a plain ``ModelPatcher`` leaves some behind (the control, checked too);
* **restore/extract**: every model load of a real ``FDIRestore`` and ``FDIExtract`` is forced through ComfyUI's
  partial-load path with the ``--novram`` budget (the UNet then runs ComfyUI's low-VRAM cast path), and the
  UNet is loaded with ``--fp16-unet`` and ``--fp8_e4m3fn-unet`` (manual cast); the guidance's effect on the
  image must match the fp32 model's.

Needs ``COMFYUI_DIR`` (run under ComfyUI's Python); the restore test also the SD 2.1 fixture.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

COMFYUI_DIR = os.environ.get("COMFYUI_DIR", "")
ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.comfyui,
    pytest.mark.skipif(
        not COMFYUI_DIR,
        reason="COMFYUI_DIR is not set: these tests import a ComfyUI checkout "
        "(run with COMFYUI_DIR=/path/to/ComfyUI under ComfyUI's Python)",
    ),
]

PRELUDE = """
import asyncio, importlib.util, json, sys
sys.path.insert(0, {comfy!r})
sys.path.insert(1, {tests!r})
sys.path.append({root!r})
import comfy.cli_args
comfy.cli_args.args.cpu = True
comfy.cli_args.args.base_directory = {base!r}
import folder_paths, torch
import comfy.model_management as mm
import comfy.model_patcher
torch.set_num_threads(2)
name = "comfyui_fdi_memory"
spec = importlib.util.spec_from_file_location(name, {init!r}, submodule_search_locations=[{root!r}])
pack = importlib.util.module_from_spec(spec)
sys.modules[name] = pack
spec.loader.exec_module(pack)
asyncio.run(pack.comfy_entrypoint())
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
    g = adapter(torch.rand(1, 3, 64, 64), torch.randn(8, 32))
    return {{
        "qformer": common.ModuleHolder(QFormerEncoder.from_pretrained({base!r} + "/tiny")),
        "adapter": common.ModuleHolder(adapter),
        "residuals": backend.GuidanceTensors(g, "residuals"),
        "modulations": backend.GuidanceTensors(g, "modulations"),
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
            freed = p.partially_unload(cpu, 1)  # ComfyUI freeing a little: nothing in part...
            out[f"whole/{{key}}/unload"] = [freed, devices(m2)]
            if key in ("residuals", "modulations"):  # ...so model_unload moves all of it (meta holds no values:
                unloaded = loaded.model_unload(1)  # only the guidance tensors can come back, to their own copies)
                out[f"whole/{{key}}/unload"] += [unloaded, devices(m2), p.loaded_size()]
            if key == "adapter":  # a forward on the load device: no parameter or buffer left behind
                p.partially_load(meta, 0.1)
                g = m2.inner(torch.rand(1, 3, 64, 64, device=meta), torch.randn(8, 32, device=meta))
                out["whole/adapter/forward"] = g.residuals[0].device.type
print(json.dumps(out))
"""


def run_script(tmp_path: Path, body: str, timeout: int, **extra) -> dict:
    fmt = dict(
        comfy=COMFYUI_DIR, tests=str(ROOT / "tests"), base=str(tmp_path), root=str(ROOT), init=str(ROOT / "__init__.py")
    )
    fmt.update(extra)
    code = textwrap.dedent(PRELUDE.format(**fmt)) + textwrap.dedent(body.format(**fmt))
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=str(tmp_path)
    )
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_pack_modules_load_whole_under_any_vram_budget_and_novram(tmp_path):
    out = run_script(tmp_path, PLACEMENT, 300)
    keys = ("qformer", "adapter", "residuals", "modulations")
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
        assert out[f"whole/{key}/unload"][:2] == [0, ["meta"]]  # nothing freed in part, nothing split
    for key in ("residuals", "modulations"):
        assert out[f"whole/{key}/unload"][2:] == [True, ["cpu"], 0]  # then all of it, back home
    assert out["whole/adapter/forward"] == "meta"
