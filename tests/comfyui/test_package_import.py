"""The node pack's entry point stays lazy: importing it outside ComfyUI imports no ComfyUI.

ComfyUI imports a custom-node folder as a package (``spec_from_file_location`` on its
``__init__.py``); these tests do the same in a fresh interpreter and look at ``sys.modules``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMFY_MODULES = ("comfy", "folder_paths", "comfy_api", "nodes", "comfy_execution", "server")


def run_python(code: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120, cwd="/"
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


LOAD_PACK = f"""
    import importlib.util, inspect, json, sys
    spec = importlib.util.spec_from_file_location("comfyui_fdi_pack", {str(ROOT / "__init__.py")!r},
                                                  submodule_search_locations=[{str(ROOT)!r}])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["comfyui_fdi_pack"] = pack
    spec.loader.exec_module(pack)
"""


def test_plain_import_imports_no_comfyui_and_no_torch():
    result = run_python(
        LOAD_PACK
        + f"""
    print(json.dumps({{
        "comfy": sorted(m for m in sys.modules if m.split(".")[0] in {COMFY_MODULES!r}),
        "torch": "torch" in sys.modules,
        "entrypoint": inspect.iscoroutinefunction(getattr(pack, "comfy_entrypoint", None)),
        "node_modules": sorted(m for m in sys.modules if m.startswith("comfyui_fdi_pack.")),
    }}))
    """
    )
    assert result["comfy"] == []
    assert result["torch"] is False
    assert result["entrypoint"] is True
    assert result["node_modules"] == []  # nodes/ is imported by comfy_entrypoint only


def test_library_comfy_backend_imports_no_comfyui():
    result = run_python(f"""
    import json, sys
    sys.path.insert(0, {str(ROOT)!r})
    import fdi.comfy_backend, fdi.guidance, fdi.adapter
    loaded = [m for m in sys.modules if m.split(".")[0] in {COMFY_MODULES!r} or m.startswith("diffusers")]
    print(json.dumps(sorted(loaded)))
    """)
    assert result == []


def test_model_folders_registered_when_loaded_by_comfyui(tmp_path):
    """Inside ComfyUI (``folder_paths`` already imported) the import registers blip2/fdi_adapters/fdi,
    keeping paths from extra_model_paths.yaml and putting models/<name> first."""
    models = tmp_path / "models"
    extra = tmp_path / "elsewhere" / "fdi"
    result = run_python(
        f"""
    import json, sys, types
    fp = types.ModuleType("folder_paths")
    fp.models_dir = {str(models)!r}
    fp.folder_names_and_paths = {{"fdi": ([{str(extra)!r}], set()), "checkpoints": (["x"], {{".ckpt"}})}}
    sys.modules["folder_paths"] = fp
    """
        + LOAD_PACK
        + """
    pack.register_model_folders(fp)  # idempotent
    print(json.dumps({k: [v[0], sorted(v[1])] for k, v in fp.folder_names_and_paths.items()}))
    """
    )
    assert result["fdi"] == [[str(models / "fdi"), str(extra)], [".safetensors"]]
    assert result["fdi_adapters"] == [[str(models / "fdi_adapters")], [".safetensors"]]
    assert result["blip2"][0] == [str(models / "blip2")]
    assert result["checkpoints"] == [["x"], [".ckpt"]]
    assert (models / "fdi").is_dir() and (models / "fdi_adapters").is_dir() and (models / "blip2").is_dir()
