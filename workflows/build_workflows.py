"""Write the example workflows of this folder (ComfyUI UI format, schema 0.4) from Python descriptions.

Usage (with a ComfyUI that has this pack loaded; no model files are needed)::

    python workflows/build_workflows.py --object-info http://127.0.0.1:8188/object_info
    python workflows/build_workflows.py --object-info object_info.json      # a saved copy
    python workflows/build_workflows.py --check --object-info URL           # exit 1 if a file would change

Each workflow below is a list of nodes (type, position, title, widget values *by name*), links (by
output and input *name*), notes and groups. The node schemas from ``/object_info`` decide the slot
lists, slot types, widget order and every widget value left out (the node's default), so a
workflow is what the ComfyUI frontend itself would save for those nodes (frontend 1.35: linked
inputs first, then one input entry per widget; an ``INT`` with ``control_after_generate`` is
followed by its control value, an ``image_upload`` combo by the upload widget). The output is
deterministic: the workflow id is a UUID derived from its name, nodes are numbered in description
order, links in link order, and every dict is built in a fixed order.

Only the standard library is used. Thumbnails (``<name>.jpg``, what ComfyUI's template browser
shows) are screenshots made by the browser test (``tests/comfyui/test_workflows.py``, with
``FDI_UPDATE_THUMBNAILS=1``), not by this script.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent

# ------------------------------------------------------------------------------------------------
# model and input file names the workflows refer to (the notes tell users where they go)

CHECKPOINT = "v2-1_512-ema-pruned.safetensors"
#: the model files a user downloads, as the ComfyUI frontend's model entries (``{name, url, directory}``, the
#: ``ModelFile`` of its workflow schema): a loader node whose widget names one of them carries it in
#: ``properties.models`` and the workflow lists it in its top-level ``models``, so a frontend that finds the
#: file missing offers the download into that folder. BLIP-2 is a folder, not one file: its note says where it
#: comes from.
DOWNLOADS = {
    CHECKPOINT: {
        "name": CHECKPOINT,
        "url": f"https://huggingface.co/stabilityai/stable-diffusion-2-1-base/resolve/main/{CHECKPOINT}",
        "directory": "checkpoints",
    },
}
SDXL_CHECKPOINT = "sd_xl_base_1.0.safetensors"
DOWNLOADS[SDXL_CHECKPOINT] = {
    "name": SDXL_CHECKPOINT,
    "url": f"https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/{SDXL_CHECKPOINT}",
    "directory": "checkpoints",
}
#: the checkpoint each workflow loads (the others: :data:`CHECKPOINT`)
WORKFLOW_CHECKPOINTS = {"restore_sdxl": SDXL_CHECKPOINT, "style_transfer_sdxl": SDXL_CHECKPOINT}
BLIP2_FOLDER = "blip2-opt-2.7b"
ADAPTERS = {
    "derain": "fdi_derain.safetensors",
    "dehaze": "fdi_dehaze.safetensors",
    "desnow": "fdi_desnow.safetensors",
    "painting": "fdi_style_painting.safetensors",
    "vangogh": "fdi_style_vangogh.safetensors",
    "ukiyoe": "fdi_style_ukiyoe.safetensors",
    "sdxl_derain": "fdi_sdxl_derain.safetensors",
    "sdxl_painting": "fdi_sdxl_style_painting.safetensors",
}
#: the base family each adapter file is trained for (the others: SD 2.1 base)
ADAPTER_FAMILIES = {"sdxl_derain": "sdxl", "sdxl_painting": "sdxl"}
FDI_FILES = {"denoise": "denoise.fdi.safetensors", "desnow": "desnow.fdi.safetensors"}
#: images the workflows load from ComfyUI's input folder (the tests put small images there)
INPUT_IMAGES = {
    "restore_single": "degraded.png",
    "restore_one_node": "degraded.png",
    "restore_large_photo": "large_photo.png",
    "cross_task_fdi": "snowy.png",
    "mixed_composite": "rain_haze.png",
    "mixed_progressive": "rain_haze.png",
    "style_transfer": "photo.png",
    "style_fusion": "photo.png",
    "train_style_adapter": "photo.png",
    "train_from_clean_photos": "clean_photo.png",
    "restore_sdxl": "degraded_1024.png",
    "style_transfer_sdxl": "photo_1024.png",
}
#: one reference pair loaded as images (build_fdi_from_pairs shows FDIExtract with them)
ONE_PAIR_IMAGES = ("pair_rainy.png", "pair_clean.png")
#: folders of reference pairs inside ComfyUI's input folder (degraded / style A, clean / style B)
PAIR_FOLDERS = {
    "build_fdi_from_pairs": ("fdi/rainy", "fdi/clean"),
    "style_transfer": ("style/photo", "style/painting"),
    "train_style_adapter": ("style/photo", "style/painting"),
    "style_transfer_sdxl": ("style/photo", "style/painting"),
}

MODEL_NOTE = (
    "Model files (ComfyUI/models/…):\n"
    f"• checkpoints/{CHECKPOINT}: Stable Diffusion 2.1 base, the file as published in "
    "stabilityai/stable-diffusion-2-1-base on Hugging Face (any SD 2.x 512 checkpoint works); a frontend that "
    "finds it missing offers the download.\n"
)
ADAPTER_NOTE = (
    "• fdi_adapters/<name>.safetensors: FDI adapters made by 'python -m fdi train' (one per task or style). "
    "An adapter file may embed the FDI it was trained with: 'Load FDI Adapter' then gives it as its second output.\n"
)
BLIP2_NOTE = (
    f"• blip2/{BLIP2_FOLDER}/: a BLIP-2 checkpoint folder in Hugging Face layout (config.json, "
    "preprocessor_config.json, model*.safetensors), e.g. the files of https://huggingface.co/Salesforce/blip2-opt-2.7b "
    "(a folder: the frontend does not download it). Only its vision model and Q-Former are read; the language "
    "model is never loaded.\n"
)
SDXL_MODEL_NOTE = (
    "Model files (ComfyUI/models/…):\n"
    f"• checkpoints/{SDXL_CHECKPOINT}: Stable Diffusion XL base 1.0, the file as published in "
    "stabilityai/stable-diffusion-xl-base-1.0 on Hugging Face (any SDXL checkpoint or fine-tune works; SD 1.5 and "
    "SD 2.x adapters do not: an adapter works on the base family it was trained for); a frontend that finds it "
    "missing offers the download.\n"
)
SDXL_ADAPTER_NOTE = (
    "• fdi_adapters/<name>.safetensors: an FDI adapter trained for SDXL (by 'Train FDI Adapter' on this "
    "checkpoint's MODEL, or 'python -m fdi train' with an SDXL base); it has three levels and embeds its FDI.\n"
)
SDXL_SIZE_NOTE = (
    "SDXL works at about 1024 px a side: 'FDI Restore' runs images up to 1024 px whole and larger ones in 1024 px "
    "tiles (tile_size 1024, 128 px overlap; 0 turns tiles off). The size conditioning is the image's own size.\n"
)
FDI_NOTE = "• fdi/<name>.fdi.safetensors: FDI files from 'Save FDI' or 'python -m fdi extract'.\n"
SAMPLING_NOTE = (
    "Sampling as in the paper: DDIM inversion of the image, then DDIM back (KSamplerAdvanced: sampler ddim, "
    "scheduler ddim_uniform, add_noise disable, the same steps as the inversion, cfg 1, empty prompt) with the "
    "FDI guidance on steps k < 0.333 x steps (end_percent 0.333: steps 0..16 of 50, the paper's first third). "
    "With a step count that divides 1000 (50 here) this graph gives the same pixels as 'FDI Restore' and "
    "'python -m fdi restore' on images whose sides are multiples of 64."
)

COLORS = {"model": "#3f789e", "input": "#8A8", "fdi": "#a1309b", "guide": "#b58b2a", "sample": "#88A", "output": "#444"}


# ------------------------------------------------------------------------------------------------
# object_info helpers


def load_object_info(source: str) -> dict:
    """``/object_info`` from a URL or a saved JSON file."""
    if source.startswith(("http://", "https://")):
        with urllib.request.urlopen(source, timeout=60) as r:  # noqa: S310 - the user's own ComfyUI
            return json.loads(r.read().decode("utf-8"))
    return json.loads(Path(source).read_text(encoding="utf-8"))


WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def input_specs(info: dict) -> list:
    """``[(name, type, options, optional)]`` of a node schema, in the frontend's order (required, optional)."""
    order = info.get("input_order") or {k: list(v) for k, v in info["input"].items()}
    specs = []
    for section in ("required", "optional"):
        for name in order.get(section, []):
            spec = info["input"][section][name]
            typ = spec[0]
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            specs.append((name, typ, opts, section == "optional"))
    return specs


def is_widget(typ, opts: dict) -> bool:
    if isinstance(typ, list):
        return True
    return typ in WIDGET_TYPES and not opts.get("forceInput")


def combo_options(typ, opts: dict) -> list:
    if isinstance(typ, list):
        return list(typ)
    return list(opts.get("options", []))


def widget_type(typ) -> str:
    return "COMBO" if isinstance(typ, list) else typ


def widget_layout(info: dict) -> list:
    """The node's widgets in frontend order: ``[(name, type, options, kind)]``.

    ``kind`` is ``"value"`` for an input widget, ``"control"`` for the control_after_generate value
    that follows a seed, ``"upload"`` for LoadImage's upload button (its serialized value is ``"image"``).
    """
    out = []
    for name, typ, opts, _ in input_specs(info):
        if not is_widget(typ, opts):
            continue
        out.append((name, widget_type(typ), opts, "value"))
        if opts.get("control_after_generate"):
            out.append(("control_after_generate", "COMBO", {}, "control"))
        if opts.get("image_upload"):
            out.append(("upload", "IMAGEUPLOAD", {}, "upload"))
    return out


def default_value(name: str, typ, opts: dict):
    if isinstance(typ, list) or typ == "COMBO":
        if "default" in opts:
            return opts["default"]
        choices = combo_options(typ, opts)
        if not choices:
            raise ValueError(f"combo {name!r} has no choices here; give its value in the description")
        return choices[0]
    if "default" in opts:
        return opts["default"]
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}[typ]


# ------------------------------------------------------------------------------------------------
# the description language


class Workflow:
    """A workflow described by nodes (keyed by a short name), links, notes and groups."""

    def __init__(self, name: str):
        self.name = name
        self.nodes = {}  # key -> dict(type, pos, title, widgets, size, color)
        self.links = []  # (src key, output name, dst key, input name)
        self.groups = []  # (title, [keys], color)

    def node(self, key, type_, pos, title=None, size=None, **widgets):
        assert key not in self.nodes, key
        self.nodes[key] = dict(type=type_, pos=list(pos), title=title, widgets=widgets, size=size)
        return key

    def note(self, key, pos, size, text, title="Note"):
        self.nodes[key] = dict(type="Note", pos=list(pos), title=title, widgets={"text": text}, size=list(size))
        return key

    def link(self, src, output, dst, input_):
        self.links.append((src, output, dst, input_))

    def group(self, title, keys, color):
        self.groups.append((title, list(keys), color))


def _node_size(n_slots: int, n_widgets: int, width: int = 300, extra: int = 0) -> list:
    # the frontend's own layout: 20 px a slot row, 24 px a widget, 14 px margin
    return [width, 20 * n_slots + 24 * n_widgets + 14 + extra]


def saved_outputs(info: dict, linked: set) -> list:
    """The ``(type, name)`` output slots a workflow file holds for a node of schema ``info`` whose outputs named
    ``linked`` are connected: the schema's, less the trailing unlinked ones of a stock ComfyUI output node.

    ComfyUI 0.28 gave the stock SaveImage/PreviewImage an ``images`` output that 0.8 lacks; the frontend adds a
    missing trailing slot when it loads a file, so one file serves every supported version."""
    outs = list(zip(info["output"], info["output_name"]))
    if info.get("output_node") and not str(info.get("python_module", "")).startswith("custom_nodes"):
        while outs and outs[-1][1] not in linked:
            outs.pop()
    return outs


def build(wf: Workflow, object_info: dict) -> dict:
    """The UI-format (0.4) JSON of ``wf`` for the node schemas in ``object_info``."""
    keys = list(wf.nodes)
    ids = {k: i + 1 for i, k in enumerate(keys)}
    nodes_json = {}
    slot_index = {}  # key -> ({input name: index}, {output name: (index, type)})
    for key in keys:
        d = wf.nodes[key]
        if d["type"] in ("Note", "MarkdownNote"):
            node = {
                "id": ids[key],
                "type": d["type"],
                "pos": d["pos"],
                "size": d["size"],
                "flags": {},
                "order": 0,
                "mode": 0,
                "inputs": [],
                "outputs": [],
                "title": d["title"],
                "properties": {},
                "widgets_values": [d["widgets"]["text"]],
                "color": "#432",
                "bgcolor": "#653",
            }
            nodes_json[key] = node
            slot_index[key] = ({}, {})
            continue
        info = object_info.get(d["type"])
        if info is None:
            raise KeyError(f"{wf.name}: node type {d['type']!r} is not in /object_info (is the FDI pack loaded?)")
        inputs, in_index = [], {}
        for name, typ, opts, optional in input_specs(info):
            if is_widget(typ, opts):
                continue
            entry = {"localized_name": name, "name": name}
            if optional:
                entry["shape"] = 7
            entry.update({"type": typ, "link": None})
            in_index[name] = len(inputs)
            inputs.append(entry)
        n_slot_inputs = len(inputs)
        layout = widget_layout(info)
        values = []
        unknown = set(d["widgets"]) - {w[0] for w in layout if w[3] == "value"}
        if unknown:
            raise KeyError(f"{wf.name}: {d['type']} has no widget(s) {sorted(unknown)}")
        for name, wtype, opts, kind in layout:
            if kind == "control":
                values.append("fixed")
                continue
            if kind == "upload":
                inputs.append(
                    {
                        "localized_name": "choose file to upload",
                        "name": "upload",
                        "type": "IMAGEUPLOAD",
                        "widget": {"name": "upload"},
                        "link": None,
                    }
                )
                values.append("image")
                continue
            inputs.append({"localized_name": name, "name": name, "type": wtype, "widget": {"name": name}, "link": None})
            raw_typ = info["input"].get("required", {}).get(name, info["input"].get("optional", {}).get(name))[0]
            values.append(d["widgets"][name] if name in d["widgets"] else default_value(name, raw_typ, opts))
        outputs, out_index = [], {}
        linked = {oname for src, oname, _, _ in wf.links if src == key}
        for i, (typ, oname) in enumerate(saved_outputs(info, linked)):
            outputs.append({"localized_name": oname, "name": oname, "type": typ, "links": None})
            out_index[oname] = (i, typ)
        size = d["size"] or _node_size(max(n_slot_inputs, len(outputs)), len(layout))
        node = {
            "id": ids[key],
            "type": d["type"],
            "pos": d["pos"],
            "size": size,
            "flags": {},
            "order": 0,
            "mode": 0,
            "inputs": inputs,
            "outputs": outputs,
        }
        if d["title"]:
            node["title"] = d["title"]
        node["properties"] = {"Node name for S&R": d["type"]}
        models = [dict(DOWNLOADS[v]) for v in values if isinstance(v, str) and v in DOWNLOADS]
        if models:
            node["properties"]["models"] = models
        node["widgets_values"] = values
        nodes_json[key] = node
        slot_index[key] = (in_index, out_index)

    links_json = []
    for link_id, (src, oname, dst, iname) in enumerate(wf.links, start=1):
        o_slot, typ = slot_index[src][1][oname]
        i_slot = slot_index[dst][0][iname]
        target = nodes_json[dst]["inputs"][i_slot]
        if target["link"] is not None:
            raise ValueError(f"{wf.name}: input {dst}.{iname} linked twice")
        if target["type"] != typ and "*" not in (typ, target["type"]):
            raise TypeError(f"{wf.name}: {src}.{oname} ({typ}) -> {dst}.{iname} ({target['type']})")
        target["link"] = link_id
        out = nodes_json[src]["outputs"][o_slot]
        out["links"] = (out["links"] or []) + [link_id]
        links_json.append([link_id, ids[src], o_slot, ids[dst], i_slot, typ])

    # execution order: a topological order of the graph (notes first), as the frontend computes it
    deps = {k: set() for k in keys}
    for src, _, dst, _ in wf.links:
        deps[dst].add(src)
    order, done = [], set()
    while len(order) < len(keys):
        ready = [k for k in keys if k not in done and deps[k] <= done]
        if not ready:
            raise ValueError(f"{wf.name}: the graph has a cycle")
        for k in ready:
            order.append(k)
            done.add(k)
    for i, k in enumerate(order):
        nodes_json[k]["order"] = i

    groups_json = []
    for gid, (title, members, color) in enumerate(wf.groups, start=1):
        xs0 = [nodes_json[m]["pos"][0] for m in members]
        ys0 = [nodes_json[m]["pos"][1] for m in members]
        xs1 = [nodes_json[m]["pos"][0] + nodes_json[m]["size"][0] for m in members]
        ys1 = [nodes_json[m]["pos"][1] + nodes_json[m]["size"][1] for m in members]
        x, y = min(xs0) - 20, min(ys0) - 70  # room for the group title and the node title bars
        groups_json.append(
            {
                "id": gid,
                "title": title,
                "bounding": [x, y, max(xs1) + 20 - x, max(ys1) + 20 - y],
                "color": color,
                "font_size": 24,
                "flags": {},
            }
        )

    # a view that shows the whole graph on a 1600 x 1000 canvas
    boxes = [
        (n["pos"][0], n["pos"][1] - 30, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
        for n in nodes_json.values()
    ]
    boxes += [
        (g["bounding"][0], g["bounding"][1], g["bounding"][0] + g["bounding"][2], g["bounding"][1] + g["bounding"][3])
        for g in groups_json
    ]
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
    scale = round(min(1.0, 1560 / (x1 - x0), 960 / (y1 - y0)), 3)
    offset = [round(20 / scale - x0, 1), round(20 / scale - y0, 1)]

    models = []
    for node in nodes_json.values():
        models += [m for m in node["properties"].get("models", []) if m not in models]
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"comfyui-fdi/workflows/{wf.name}")),
        "revision": 0,
        "last_node_id": len(keys),
        "last_link_id": len(links_json),
        "nodes": [nodes_json[k] for k in keys],
        "links": links_json,
        "groups": groups_json,
        "config": {},
        "extra": {"ds": {"scale": scale, "offset": offset}, "frontendVersion": "1.35.9"},
        **({"models": models} if models else {}),
        "version": 0.4,
    }


# ------------------------------------------------------------------------------------------------
# building blocks shared by several workflows


def sd_base(
    wf: Workflow,
    x: int,
    y: int,
    prompt_title="Prompt (empty, as in the paper)",
    checkpoint: str = CHECKPOINT,
    base_title: str = "SD 2.1 base",
):
    """Checkpoint loader, empty prompt and zeroed negative; returns (ckpt, positive, negative) keys."""
    wf.node("ckpt", "CheckpointLoaderSimple", (x, y), f"Load {base_title}", ckpt_name=checkpoint)
    wf.node("positive", "CLIPTextEncode", (x, y + 160), prompt_title, size=[300, 130], text="")
    wf.node("negative", "ConditioningZeroOut", (x, y + 350), "Negative (unused at cfg 1)")
    wf.link("ckpt", "CLIP", "positive", "clip")
    wf.link("positive", "CONDITIONING", "negative", "conditioning")
    wf.group(f"{base_title} model", ["ckpt", "positive", "negative"], COLORS["model"])
    return "ckpt", "positive", "negative"


def sdxl_base(wf: Workflow, x: int, y: int):
    """:func:`sd_base` with the SDXL base 1.0 checkpoint (its CLIP Text Encode carries the pooled output SDXL
    needs)."""
    return sd_base(wf, x, y, checkpoint=SDXL_CHECKPOINT, base_title="SDXL base 1.0")


def image_in(wf: Workflow, key: str, x: int, y: int, name: str, title: str):
    wf.node(key, "LoadImage", (x, y), title, size=[300, 340], image=name)
    return key


def modular_sampling(wf: Workflow, x: int, y: int, guided_model: tuple, image: str, prefix: str, steps: int = 50):
    """VAE encode → FDI DDIM inversion (plain model) → KSamplerAdvanced (guided model) → decode → save."""
    wf.node("encode", "VAEEncode", (x, y), "VAE Encode (degraded image)")
    wf.node("invert", "FDIInvert", (x, y + 110), "FDI DDIM Inversion", steps=steps)
    wf.node(
        "sampler",
        "KSamplerAdvanced",
        (x + 340, y),
        "DDIM sampling (guided)",
        size=[320, 334],
        add_noise="disable",
        noise_seed=0,
        steps=steps,
        cfg=1.0,
        sampler_name="ddim",
        scheduler="ddim_uniform",
        start_at_step=0,
        end_at_step=10000,
        return_with_leftover_noise="disable",
    )
    wf.node("decode", "VAEDecode", (x + 340, y + 380), "VAE Decode")
    wf.node("save", "SaveImage", (x + 700, y), "Restored image", size=[340, 380], filename_prefix=prefix)
    wf.link(image[0], image[1], "encode", "pixels")
    wf.link("ckpt", "VAE", "encode", "vae")
    wf.link("ckpt", "MODEL", "invert", "model")
    wf.link("positive", "CONDITIONING", "invert", "positive")
    wf.link("encode", "LATENT", "invert", "latent")
    wf.link(guided_model[0], guided_model[1], "sampler", "model")
    wf.link("positive", "CONDITIONING", "sampler", "positive")
    wf.link("negative", "CONDITIONING", "sampler", "negative")
    wf.link("invert", "latent", "sampler", "latent_image")
    wf.link("sampler", "LATENT", "decode", "samples")
    wf.link("ckpt", "VAE", "decode", "vae")
    wf.link("decode", "IMAGE", "save", "images")
    wf.group("Inversion and guided DDIM sampling", ["encode", "invert", "sampler", "decode"], COLORS["sample"])
    wf.group("Output", ["save"], COLORS["output"])


# ------------------------------------------------------------------------------------------------
# the workflows


def restore_single() -> Workflow:
    wf = Workflow("restore_single")
    wf.note(
        "note",
        (0, 0),
        (700, 300),
        "Restore one image with an FDI adapter, step by step (the same as the one-node 'FDI Restore').\n\n"
        + MODEL_NOTE
        + ADAPTER_NOTE.replace("<name>", "fdi_derain")
        + f"Input: put the image in ComfyUI/input ('{INPUT_IMAGES['restore_single']}' "
        "here) or use Load Image's upload button.\n\n" + SAMPLING_NOTE,
        title="Read me: model files",
    )
    sd_base(wf, 0, 400)
    image_in(wf, "image", 400, 400, INPUT_IMAGES["restore_single"], "Degraded image")
    wf.group("Degraded image", ["image"], COLORS["input"])
    wf.node(
        "adapter",
        "FDIAdapterLoader",
        (760, 400),
        "Load FDI Adapter (derain, FDI embedded)",
        size=[330, 102],
        adapter_name=ADAPTERS["derain"],
    )
    wf.node("decouple", "FDINoiseDecoupling", (760, 560), "FDI Noise Decoupling", size=[330, 86])
    wf.node(
        "apply",
        "FDIApplyGuidance",
        (760, 700),
        "Apply FDI Guidance (first third)",
        size=[330, 146],
        strength=1.0,
        start_percent=0.0,
        end_percent=0.333,
    )
    wf.link("adapter", "adapter", "decouple", "adapter")
    wf.link("adapter", "fdi", "decouple", "fdi")
    wf.link("image", "IMAGE", "decouple", "image")
    wf.link("ckpt", "MODEL", "apply", "model")
    wf.link("decouple", "guidance", "apply", "guidance")
    wf.group("FDI guidance", ["adapter", "decouple", "apply"], COLORS["guide"])
    modular_sampling(wf, 1150, 400, ("apply", "model"), ("image", "IMAGE"), "fdi/restore_single")
    return wf


def _one_node_restore(wf: Workflow, y: int, image: tuple, adapter: tuple, restore: tuple, group: str, **tiles):
    """Load Image + adapter → 'FDI Restore' → save, below the note and the base at row ``y``.

    ``image``/``adapter``: (input image name or adapter file, node title); ``restore``: (title, node size)."""
    image_in(wf, "image", 400, y, image[0], image[1])
    wf.node("adapter", "FDIAdapterLoader", (400, y + 420), adapter[1], adapter_name=adapter[0])
    wf.group(group, ["image", "adapter"], COLORS["input"])
    wf.node(
        "restore",
        "FDIRestore",
        (760, y),
        restore[0],
        size=restore[1],
        steps=50,
        inversion_steps=50,
        strength=1.0,
        guidance_end=0.333,
        cfg=1.0,
        **tiles,
    )
    for src, output, input_ in (
        ("ckpt", "MODEL", "model"),
        ("ckpt", "VAE", "vae"),
        ("image", "IMAGE", "image"),
        ("adapter", "adapter", "adapter"),
        ("positive", "CONDITIONING", "positive"),
        ("adapter", "fdi", "fdi"),
        ("negative", "CONDITIONING", "negative"),
    ):
        wf.link(src, output, "restore", input_)


def _save(wf: Workflow, x: int, y: int, title: str, prefix: str) -> None:
    wf.node("save", "SaveImage", (x, y), title, size=[340, 380], filename_prefix=prefix)
    wf.link("restore", "image", "save", "images")
    wf.group("Output", ["save"], COLORS["output"])


def restore_one_node() -> Workflow:
    wf = Workflow("restore_one_node")
    wf.note(
        "note",
        (0, 0),
        (700, 300),
        "Restore one image with an FDI adapter in one node: 'FDI Restore' runs the adapter, VAE-encodes the image, "
        "DDIM-inverts it, samples it back with guidance in the first third of the steps, and decodes — the same "
        "recipe, and the same pixels, as 'python -m fdi restore' on the same files.\n\n"
        + MODEL_NOTE
        + ADAPTER_NOTE.replace("<name>", "fdi_derain")
        + f"Input: put the image in ComfyUI/input ('{INPUT_IMAGES['restore_one_node']}' "
        "here) or use Load Image's upload button.\n"
        "The FDI input is optional: left empty, the FDI embedded in the adapter file is used.",
        title="Read me: model files",
    )
    sd_base(wf, 0, 400)
    _one_node_restore(
        wf,
        400,
        (INPUT_IMAGES["restore_one_node"], "Degraded image"),
        (ADAPTERS["derain"], "Load FDI Adapter (derain, FDI embedded)"),
        ("FDI Restore", [320, 330]),
        "Degraded image and adapter",
    )
    wf.group("Restore (the paper's pipeline in one node)", ["restore"], COLORS["sample"])
    _save(wf, 1120, 400, "Restored image", "fdi/restore_one_node")
    return wf


def restore_large_photo() -> Workflow:
    wf = Workflow("restore_large_photo")
    wf.note(
        "note",
        (0, 0),
        (700, 300),
        "Restore a large photo with bounded memory: 'FDI Restore' with tile_size "
        "512 runs the VAE and every UNet step "
        "on overlapping 512 px tiles (128 px overlap, blended smoothly), each guided by its crop of the adapter's "
        "residuals; tile_size 0 turns tiles off, a tile at least as large as the image gives the untiled result. "
        "'FDI Color Fix' (wavelet) then pulls the colours back to the input's while keeping the restored detail "
        "(leave it out for dehazing and low-light adapters, whose colour change is the restoration).\n\n"
        + MODEL_NOTE
        + ADAPTER_NOTE.replace("<name>", "fdi_derain")
        + f"Input: put the photo in ComfyUI/input ('{INPUT_IMAGES['restore_large_photo']}' "
        "here) or use Load Image's "
        "upload button.",
        title="Read me: model files",
    )
    sd_base(wf, 0, 400)
    image_in(wf, "image", 400, 400, INPUT_IMAGES["restore_large_photo"], "Large degraded photo")
    wf.node(
        "adapter",
        "FDIAdapterLoader",
        (400, 820),
        "Load FDI Adapter (derain, FDI embedded)",
        adapter_name=ADAPTERS["derain"],
    )
    wf.group("Degraded photo and adapter", ["image", "adapter"], COLORS["input"])
    wf.node(
        "restore",
        "FDIRestore",
        (760, 400),
        "FDI Restore (512 px tiles)",
        size=[320, 380],
        steps=50,
        inversion_steps=50,
        strength=1.0,
        guidance_end=0.333,
        cfg=1.0,
        tile_size=512,
        tile_overlap=128,
    )
    wf.link("ckpt", "MODEL", "restore", "model")
    wf.link("ckpt", "VAE", "restore", "vae")
    wf.link("image", "IMAGE", "restore", "image")
    wf.link("adapter", "adapter", "restore", "adapter")
    wf.link("positive", "CONDITIONING", "restore", "positive")
    wf.link("adapter", "fdi", "restore", "fdi")
    wf.link("negative", "CONDITIONING", "restore", "negative")
    wf.node("colorfix", "FDIColorFix", (760, 820), "FDI Color Fix (wavelet, towards the input)", method="wavelet")
    wf.link("restore", "image", "colorfix", "image")
    wf.link("image", "IMAGE", "colorfix", "reference")
    wf.group("Tiled restore and colour fix", ["restore", "colorfix"], COLORS["sample"])
    wf.node(
        "save", "SaveImage", (1120, 400), "Restored photo", size=[340, 380], filename_prefix="fdi/restore_large_photo"
    )
    wf.link("colorfix", "image", "save", "images")
    wf.group("Output", ["save"], COLORS["output"])
    return wf


def build_fdi_from_pairs() -> Workflow:
    wf = Workflow("build_fdi_from_pairs")
    deg, clean = PAIR_FOLDERS["build_fdi_from_pairs"]
    wf.note(
        "note",
        (0, 0),
        (700, 300),
        "Make an FDI (Feature Difference Instruction) from your own reference pairs, save it, and look at it.\n\n"
        "Model files (ComfyUI/models/…):\n"
        + BLIP2_NOTE
        + f"Pairs: put degraded images in ComfyUI/input/{deg}/ and the matching clean "
        f"images in ComfyUI/input/{clean}/; "
        "pairs are matched by file name without suffix (rain_001.png ↔ rain_001.jpg).\n"
        "The FDI is written to ComfyUI/models/fdi/derain.fdi.safetensors (switch "
        "'overwrite' on to replace it) and then "
        "appears in 'Load FDI'. 'Inspect FDIs' plots the cosine similarities and a 2-D map of the per-pair FDIs.\n"
        f"Below: 'Extract FDI (images)' makes an FDI from loaded image batches instead ('{ONE_PAIR_IMAGES[0]}' / "
        f"'{ONE_PAIR_IMAGES[1]}' in ComfyUI/input here), compared with the folder FDI in the plot.",
        title="Read me: model files",
    )
    wf.node("qformer", "FDIQFormerLoader", (0, 400), "Load BLIP-2 Q-Former", folder=BLIP2_FOLDER, dtype="auto")
    wf.group("BLIP-2 Q-Former", ["qformer"], COLORS["model"])
    wf.node(
        "extract",
        "FDIExtractFromFolders",
        (380, 400),
        "Extract FDI (rainy → clean pairs)",
        size=[340, 206],
        degraded_folder=deg,
        clean_folder=clean,
        label="derain",
        batch_size=8,
        keep_pairs=True,
    )
    wf.group("FDI from reference pairs", ["extract"], COLORS["fdi"])
    wf.node("save", "FDISave", (780, 400), "Save FDI (models/fdi)", name="derain", keep_pairs=True, overwrite=False)
    wf.node("inspect", "FDIInspect", (780, 620), "Inspect FDIs")
    wf.node("preview", "PreviewImage", (1140, 400), "Similarity matrix and 2-D map", size=[420, 420])
    wf.link("qformer", "qformer", "extract", "qformer")
    wf.link("extract", "fdi", "save", "fdi")
    wf.link("extract", "fdi", "inspect", "fdi")
    wf.link("inspect", "image", "preview", "images")
    wf.group("Save and inspect", ["save", "inspect", "preview"], COLORS["output"])
    image_in(wf, "pair_degraded", 0, 720, ONE_PAIR_IMAGES[0], "Reference pair: rainy image")
    image_in(wf, "pair_clean", 0, 1130, ONE_PAIR_IMAGES[1], "Reference pair: clean image")
    wf.node(
        "extract_one",
        "FDIExtract",
        (380, 720),
        "Extract FDI (one loaded pair)",
        size=[340, 206],
        label="one pair",
        batch_size=8,
        keep_pairs=True,
    )
    wf.link("qformer", "qformer", "extract_one", "qformer")
    wf.link("pair_degraded", "IMAGE", "extract_one", "degraded")
    wf.link("pair_clean", "IMAGE", "extract_one", "clean")
    wf.link("extract_one", "fdi", "inspect", "fdi_2")
    wf.group(
        "Or: an FDI from loaded images (batches of equal length)",
        ["pair_degraded", "pair_clean", "extract_one"],
        COLORS["fdi"],
    )
    return wf


def cross_task_fdi() -> Workflow:
    wf = Workflow("cross_task_fdi")
    wf.note(
        "note",
        (0, 0),
        (700, 300),
        "Cross-task reuse: combine FDIs (here denoise + desnow, weighted sum) and "
        "restore with the desnowing adapter "
        "guided by the combined FDI.\n\n"
        + MODEL_NOTE
        + ADAPTER_NOTE.replace("<name>", "fdi_desnow")
        + FDI_NOTE.replace("<name>.fdi.safetensors", "denoise.fdi.safetensors and desnow.fdi.safetensors")
        + f"Input: put the image in ComfyUI/input ('{INPUT_IMAGES['cross_task_fdi']}' here).\n\n"
        + SAMPLING_NOTE,
        title="Read me: model files",
    )
    sd_base(wf, 0, 400)
    image_in(wf, "image", 0, 900, INPUT_IMAGES["cross_task_fdi"], "Snowy image")
    wf.group("Degraded image", ["image"], COLORS["input"])
    wf.node("fdi_a", "FDILoad", (400, 400), "Load FDI (denoise)", fdi_name=FDI_FILES["denoise"])
    wf.node("fdi_b", "FDILoad", (400, 530), "Load FDI (desnow)", fdi_name=FDI_FILES["desnow"])
    wf.node("combine", "FDICombine", (400, 660), "Combine FDIs (weighted sum)", weight_a=0.5, weight_b=0.5, mode="sum")
    wf.node("inspect", "FDIInspect", (400, 860), "Inspect FDIs (denoise, desnow, combined)", size=[300, 300])
    wf.link("fdi_a", "fdi", "combine", "fdi_a")
    wf.link("fdi_b", "fdi", "combine", "fdi_b")
    wf.link("fdi_a", "fdi", "inspect", "fdi")
    wf.link("fdi_b", "fdi", "inspect", "fdi_2")
    wf.link("combine", "fdi", "inspect", "fdi_3")
    wf.group("Combine FDIs", ["fdi_a", "fdi_b", "combine", "inspect"], COLORS["fdi"])
    wf.node(
        "adapter",
        "FDIAdapterLoader",
        (760, 400),
        "Load FDI Adapter (desnow)",
        size=[330, 102],
        adapter_name=ADAPTERS["desnow"],
    )
    wf.node("decouple", "FDINoiseDecoupling", (760, 560), "FDI Noise Decoupling (combined FDI)", size=[330, 86])
    wf.node(
        "apply",
        "FDIApplyGuidance",
        (760, 700),
        "Apply FDI Guidance",
        size=[330, 146],
        strength=1.0,
        start_percent=0.0,
        end_percent=0.333,
    )
    wf.link("adapter", "adapter", "decouple", "adapter")
    wf.link("combine", "fdi", "decouple", "fdi")
    wf.link("image", "IMAGE", "decouple", "image")
    wf.link("ckpt", "MODEL", "apply", "model")
    wf.link("decouple", "guidance", "apply", "guidance")
    wf.group("FDI guidance", ["adapter", "decouple", "apply"], COLORS["guide"])
    modular_sampling(wf, 1150, 400, ("apply", "model"), ("image", "IMAGE"), "fdi/cross_task_fdi")
    return wf


def _two_adapter_guidance(wf: Workflow, names: tuple, titles: tuple, strengths: tuple, group_title: str):
    """Two adapters (embedded FDIs) → two decouplings → two chained Apply nodes on the checkpoint's MODEL."""
    for i, (name, title, strength) in enumerate(zip(names, titles, strengths), start=1):
        y = 400 + (i - 1) * 430
        wf.node(
            f"adapter{i}",
            "FDIAdapterLoader",
            (760, y),
            f"Load FDI Adapter {i} ({title})",
            size=[330, 102],
            adapter_name=ADAPTERS[name],
        )
        wf.node(f"decouple{i}", "FDINoiseDecoupling", (760, y + 160), f"FDI Noise Decoupling {i}", size=[330, 86])
        wf.node(
            f"apply{i}",
            "FDIApplyGuidance",
            (760, y + 300),
            f"Apply FDI Guidance {i} (weight {strength})",
            size=[330, 146],
            strength=strength,
            start_percent=0.0,
            end_percent=0.333,
        )
        wf.link(f"adapter{i}", "adapter", f"decouple{i}", "adapter")
        wf.link(f"adapter{i}", "fdi", f"decouple{i}", "fdi")
        wf.link("image", "IMAGE", f"decouple{i}", "image")
        wf.link(f"decouple{i}", "guidance", f"apply{i}", "guidance")
    wf.link("ckpt", "MODEL", "apply1", "model")
    wf.link("apply1", "model", "apply2", "model")
    wf.group(group_title, ["adapter1", "decouple1", "apply1", "adapter2", "decouple2", "apply2"], COLORS["guide"])


def mixed_composite() -> Workflow:
    wf = Workflow("mixed_composite")
    wf.note(
        "note",
        (0, 0),
        (700, 300),
        "Mixed degradations, composite: two adapters guide ONE sampling. Their Apply nodes are chained on the same "
        "MODEL, so their residuals and modulations add up, each scaled by its strength (the weights).\n\n"
        + MODEL_NOTE
        + ADAPTER_NOTE.replace("<name>", "fdi_derain and fdi_dehaze")
        + f"Input: put the image in ComfyUI/input ('{INPUT_IMAGES['mixed_composite']}' here).\n\n"
        + SAMPLING_NOTE,
        title="Read me: model files",
    )
    sd_base(wf, 0, 400)
    image_in(wf, "image", 400, 400, INPUT_IMAGES["mixed_composite"], "Rainy and hazy image")
    wf.group("Degraded image", ["image"], COLORS["input"])
    _two_adapter_guidance(
        wf, ("derain", "dehaze"), ("derain", "dehaze"), (0.6, 0.4), "Two adapters, weighted, on one MODEL"
    )
    modular_sampling(wf, 1150, 400, ("apply2", "model"), ("image", "IMAGE"), "fdi/mixed_composite")
    return wf


def mixed_progressive() -> Workflow:
    wf = Workflow("mixed_progressive")
    wf.note(
        "note",
        (0, 0),
        (700, 300),
        "Mixed degradations, progressive: restore with adapter 1 (derain), then "
        "feed the result to adapter 2 (dehaze).\n\n"
        + MODEL_NOTE
        + ADAPTER_NOTE.replace("<name>", "fdi_derain and fdi_dehaze")
        + f"Input: put the image in ComfyUI/input ('{INPUT_IMAGES['mixed_progressive']}' here).\n"
        "Each 'FDI Restore' uses the FDI embedded in its adapter file (connect "
        "'Load FDI' to its fdi input to use another).",
        title="Read me: model files",
    )
    sd_base(wf, 0, 400)
    image_in(wf, "image", 400, 400, INPUT_IMAGES["mixed_progressive"], "Rainy and hazy image")
    wf.node("adapter1", "FDIAdapterLoader", (400, 820), "Load FDI Adapter 1 (derain)", adapter_name=ADAPTERS["derain"])
    wf.node("adapter2", "FDIAdapterLoader", (400, 980), "Load FDI Adapter 2 (dehaze)", adapter_name=ADAPTERS["dehaze"])
    wf.group("Degraded image and adapters", ["image", "adapter1", "adapter2"], COLORS["input"])
    for i, x in ((1, 760), (2, 1500)):
        wf.node(
            f"restore{i}",
            "FDIRestore",
            (x, 400),
            f"FDI Restore, stage {i} ({'derain' if i == 1 else 'dehaze'})",
            size=[320, 330],
            steps=50,
            inversion_steps=50,
            strength=1.0,
            guidance_end=0.333,
            cfg=1.0,
        )
        wf.link("ckpt", "MODEL", f"restore{i}", "model")
        wf.link("ckpt", "VAE", f"restore{i}", "vae")
        wf.link(f"adapter{i}", "adapter", f"restore{i}", "adapter")
        wf.link("positive", "CONDITIONING", f"restore{i}", "positive")
        wf.link(f"adapter{i}", "fdi", f"restore{i}", "fdi")
    wf.link("image", "IMAGE", "restore1", "image")
    wf.node("preview1", "PreviewImage", (1110, 400), "After stage 1 (derained)", size=[320, 380])
    wf.link("restore1", "image", "preview1", "images")
    wf.link("restore1", "image", "restore2", "image")
    wf.group("Stage 1: derain", ["restore1", "preview1"], COLORS["sample"])
    wf.group("Stage 2: dehaze", ["restore2"], COLORS["sample"])
    wf.node(
        "save",
        "SaveImage",
        (1900, 400),
        "Restored image (both stages)",
        size=[340, 380],
        filename_prefix="fdi/mixed_progressive",
    )
    wf.link("restore2", "image", "save", "images")
    wf.group("Output", ["save"], COLORS["output"])
    return wf


def _style_transfer_graph(wf: Workflow, y: int, pairs: tuple, image: tuple, adapter: tuple, restore: tuple, **tiles):
    """Q-Former + 'Extract FDI' on style pairs, the content image and a style adapter → 'FDI Restore' → save, below
    the note and the base at row ``y``. ``pairs``: (style A folder, style B folder); ``image``/``adapter``: (name,
    title); ``restore``: (node title, node size, sampling group title, save prefix)."""
    wf.node("qformer", "FDIQFormerLoader", (0, y + 500), "Load BLIP-2 Q-Former", folder=BLIP2_FOLDER, dtype="auto")
    wf.group("BLIP-2 Q-Former", ["qformer"], COLORS["model"])
    wf.node(
        "extract",
        "FDIExtractFromFolders",
        (400, y),
        "Extract FDI (photo → painting pairs)",
        size=[340, 206],
        degraded_folder=pairs[0],
        clean_folder=pairs[1],
        label="photo2painting",
        batch_size=8,
        keep_pairs=True,
    )
    wf.group("Style FDI from reference pairs", ["extract"], COLORS["fdi"])
    image_in(wf, "image", 400, y + 320, image[0], image[1])
    wf.node("adapter", "FDIAdapterLoader", (400, y + 730), adapter[1], size=[300, 102], adapter_name=adapter[0])
    wf.group(adapter[2], ["image", "adapter"], COLORS["input"])
    wf.node(
        "restore",
        "FDIRestore",
        (800, y),
        restore[0],
        size=restore[1],
        steps=50,
        inversion_steps=50,
        strength=1.0,
        guidance_end=0.333,
        cfg=1.0,
        **tiles,
    )
    wf.link("qformer", "qformer", "extract", "qformer")
    for src, output, input_ in (
        ("ckpt", "MODEL", "model"),
        ("ckpt", "VAE", "vae"),
        ("image", "IMAGE", "image"),
        ("adapter", "adapter", "adapter"),
        ("positive", "CONDITIONING", "positive"),
        ("extract", "fdi", "fdi"),
    ):
        wf.link(src, output, "restore", input_)
    wf.group(restore[2], ["restore"], COLORS["sample"])
    _save(wf, 1160, y, "Stylised image", restore[3])


def style_transfer() -> Workflow:
    wf = Workflow("style_transfer")
    a, b = PAIR_FOLDERS["style_transfer"]
    wf.note(
        "note",
        (0, 0),
        (700, 300),
        "Style transfer: the same machinery as restoration, with (style A, style B) reference pairs instead of "
        "(degraded, clean). The FDI of the pairs drives a style adapter that turns style A into style B.\n\n"
        + MODEL_NOTE
        + BLIP2_NOTE
        + ADAPTER_NOTE.replace("<name>", "fdi_style_painting")
        + f"Pairs: photos in ComfyUI/input/{a}/, the same scenes as paintings in ComfyUI/input/{b}/ "
        "(matched by file name). "
        f"Input: the photo to stylise in ComfyUI/input ('{INPUT_IMAGES['style_transfer']}' here).",
        title="Read me: model files",
    )
    sd_base(wf, 0, 400)
    _style_transfer_graph(
        wf,
        400,
        (a, b),
        (INPUT_IMAGES["style_transfer"], "Photo to stylise"),
        (ADAPTERS["painting"], "Load FDI Adapter (style: painting)", "Content image and style adapter"),
        ("FDI Restore (style)", [320, 330], "Restore-style sampling", "fdi/style_transfer"),
    )
    return wf


def style_fusion() -> Workflow:
    wf = Workflow("style_fusion")
    wf.note(
        "note",
        (0, 0),
        (700, 300),
        "Style fusion: two style adapters, each with its embedded style FDI, guide one sampling with weights "
        "(the strengths of the chained Apply nodes).\n\n"
        + MODEL_NOTE
        + ADAPTER_NOTE.replace("<name>", "fdi_style_vangogh and fdi_style_ukiyoe")
        + f"Input: the photo to stylise in ComfyUI/input ('{INPUT_IMAGES['style_fusion']}' "
        "here).\n\n" + SAMPLING_NOTE,
        title="Read me: model files",
    )
    sd_base(wf, 0, 400)
    image_in(wf, "image", 400, 400, INPUT_IMAGES["style_fusion"], "Photo to stylise")
    wf.group("Content image", ["image"], COLORS["input"])
    _two_adapter_guidance(
        wf,
        ("vangogh", "ukiyoe"),
        ("style: Van Gogh", "style: ukiyo-e"),
        (0.5, 0.5),
        "Two style adapters, weighted, on one MODEL",
    )
    modular_sampling(wf, 1150, 400, ("apply2", "model"), ("image", "IMAGE"), "fdi/style_fusion")
    return wf


def train_style_adapter() -> Workflow:
    wf = Workflow("train_style_adapter")
    a, b = PAIR_FOLDERS["train_style_adapter"]
    wf.note(
        "note",
        (0, 0),
        (700, 300),
        "Train a style adapter in the graph, save it, and use it at once. 'Train FDI Adapter' trains on the loaded "
        "checkpoint's MODEL and VAE (frozen) with the style FDI of the same pairs; "
        "the loss curve shows how it went. "
        "Cancel during training keeps the adapter of the last finished step. Then 'Save FDI Adapter' writes "
        "models/fdi_adapters/my_style.safetensors (FDI embedded; 'Load FDI Adapter' lists it) and 'FDI Restore' "
        "stylises the photo with the new adapter.\n\n"
        + MODEL_NOTE
        + BLIP2_NOTE
        + "Pairs (10–50 are enough for a style; 'FDI Pair Stability' shows whether "
        f"yours are): photos in ComfyUI/input/{a}/, "
        f"the same scenes in the target style in ComfyUI/input/{b}/ (matched by file name; sizes may differ). "
        f"Input: the photo to stylise in ComfyUI/input ('{INPUT_IMAGES['train_style_adapter']}' here).",
        title="Read me: model files",
    )
    sd_base(wf, 0, 400)
    wf.node("qformer", "FDIQFormerLoader", (0, 900), "Load BLIP-2 Q-Former", folder=BLIP2_FOLDER, dtype="auto")
    wf.group("BLIP-2 Q-Former", ["qformer"], COLORS["model"])
    wf.node(
        "extract",
        "FDIExtractFromFolders",
        (400, 400),
        "Extract FDI (style A → style B)",
        size=[340, 206],
        degraded_folder=a,
        clean_folder=b,
        label="my_style",
        batch_size=8,
        keep_pairs=True,
    )
    wf.node(
        "pairs", "FDILoadPairs", (400, 650), "Load training pairs", size=[340, 82], degraded_folder=a, clean_folder=b
    )
    wf.node("stability", "FDIPairStability", (400, 780), "FDI Pair Stability", resamples=50, seed=0)
    wf.group("Style pairs and their FDI", ["extract", "pairs", "stability"], COLORS["fdi"])
    wf.node(
        "train",
        "FDITrainAdapter",
        (800, 400),
        "Train FDI Adapter",
        size=[340, 420],
        steps=200,
        learning_rate=1e-4,
        batch_size=1,
        resolution=512,
        seed=0,
        gradient_checkpointing=True,
        training_dtype="bf16",
        recon_weight=0.1,
    )
    wf.node(
        "save_adapter",
        "FDISaveAdapter",
        (800, 860),
        "Save FDI Adapter (models/fdi_adapters)",
        name="my_style",
        overwrite=False,
    )
    wf.group("Training", ["train", "save_adapter"], COLORS["guide"])
    image_in(wf, "image", 1200, 900, INPUT_IMAGES["train_style_adapter"], "Photo to stylise")
    wf.node(
        "restore",
        "FDIRestore",
        (1560, 900),
        "FDI Restore (new style adapter)",
        size=[320, 330],
        steps=50,
        inversion_steps=50,
        strength=1.0,
        guidance_end=0.333,
        cfg=1.0,
    )
    wf.node(
        "save", "SaveImage", (1960, 900), "Stylised image", size=[340, 380], filename_prefix="fdi/train_style_adapter"
    )
    wf.node("curve", "PreviewImage", (1200, 400), "Loss curve", size=[420, 380])
    wf.node("stab_view", "PreviewImage", (1640, 400), "Pair stability", size=[420, 380])
    wf.link("qformer", "qformer", "extract", "qformer")
    wf.link("ckpt", "MODEL", "train", "model")
    wf.link("ckpt", "CLIP", "train", "clip")
    wf.link("ckpt", "VAE", "train", "vae")
    wf.link("extract", "fdi", "train", "fdi")
    wf.link("pairs", "pairs", "train", "pairs")
    wf.link("extract", "fdi", "stability", "fdi")
    wf.link("train", "adapter", "save_adapter", "adapter")
    wf.link("train", "loss_curve", "curve", "images")
    wf.link("stability", "plot", "stab_view", "images")
    wf.link("ckpt", "MODEL", "restore", "model")
    wf.link("ckpt", "VAE", "restore", "vae")
    wf.link("image", "IMAGE", "restore", "image")
    wf.link("train", "adapter", "restore", "adapter")
    wf.link("positive", "CONDITIONING", "restore", "positive")
    wf.link("extract", "fdi", "restore", "fdi")
    wf.link("restore", "image", "save", "images")
    wf.group("Restore-style sampling with the new adapter", ["image", "restore"], COLORS["sample"])
    wf.group("Loss curve and pair stability", ["curve", "stab_view"], COLORS["output"])
    wf.group("Output", ["save"], COLORS["output"])
    return wf


def train_from_clean_photos() -> Workflow:
    wf = Workflow("train_from_clean_photos")
    wf.note(
        "note",
        (0, 0),
        (700, 300),
        "Train a dehazing adapter from clean photos alone: 'FDI Degrade Pairs' makes (hazy, clean) pairs with "
        "synthetic haze (atmospheric scattering; other effects: rain, noise, poisson, jpeg, lowlight, "
        "motion_blur, defocus, or sums such as 'haze,noise'), 'Extract FDI' makes the task FDI from them, "
        "'Train FDI Adapter' trains on them, 'Save FDI Adapter' writes models/fdi_adapters/my_dehaze.safetensors "
        "and 'FDI Restore' tries the new adapter on the hazy images.\n\n"
        + MODEL_NOTE
        + BLIP2_NOTE
        + f"Input: a clean photo in ComfyUI/input ('{INPUT_IMAGES['train_from_clean_photos']}' here); 'copies' "
        "makes several degraded versions of it. For a folder of photos use 'python -m fdi degrade --clean DIR "
        "--kind haze -o PAIRS' and 'Load FDI Training Pairs'.",
        title="Read me: model files",
    )
    sd_base(wf, 0, 400)
    wf.node("qformer", "FDIQFormerLoader", (0, 900), "Load BLIP-2 Q-Former", folder=BLIP2_FOLDER, dtype="auto")
    wf.group("BLIP-2 Q-Former", ["qformer"], COLORS["model"])
    image_in(wf, "photo", 400, 400, INPUT_IMAGES["train_from_clean_photos"], "Clean photo")
    wf.node(
        "degrade",
        "FDIDegradePairs",
        (400, 800),
        "FDI Degrade Pairs (synthetic haze)",
        size=[340, 160],
        degradation="haze",
        seed=0,
        copies=4,
    )
    wf.link("photo", "IMAGE", "degrade", "images")
    wf.group("Pairs from a clean photo", ["photo", "degrade"], COLORS["input"])
    wf.node(
        "extract",
        "FDIExtract",
        (800, 400),
        "Extract FDI (hazy → clean)",
        size=[340, 206],
        label="my_dehaze",
        batch_size=8,
        keep_pairs=True,
    )
    wf.link("qformer", "qformer", "extract", "qformer")
    wf.link("degrade", "degraded", "extract", "degraded")
    wf.link("degrade", "clean", "extract", "clean")
    wf.group("Task FDI", ["extract"], COLORS["fdi"])
    wf.node(
        "train",
        "FDITrainAdapter",
        (1200, 400),
        "Train FDI Adapter",
        size=[340, 420],
        steps=200,
        learning_rate=1e-4,
        batch_size=1,
        resolution=512,
        seed=0,
        gradient_checkpointing=True,
        training_dtype="bf16",
        recon_weight=0.1,
    )
    wf.node(
        "save_adapter",
        "FDISaveAdapter",
        (1200, 860),
        "Save FDI Adapter (models/fdi_adapters)",
        name="my_dehaze",
        overwrite=False,
    )
    wf.link("ckpt", "MODEL", "train", "model")
    wf.link("ckpt", "CLIP", "train", "clip")
    wf.link("ckpt", "VAE", "train", "vae")
    wf.link("extract", "fdi", "train", "fdi")
    wf.link("degrade", "degraded", "train", "degraded")
    wf.link("degrade", "clean", "train", "clean")
    wf.link("train", "adapter", "save_adapter", "adapter")
    wf.group("Training", ["train", "save_adapter"], COLORS["guide"])
    wf.node("pairs_view", "PreviewImage", (1600, 400), "Hazy pairs", size=[420, 380])
    wf.node("curve", "PreviewImage", (2060, 400), "Loss curve", size=[420, 380])
    wf.link("degrade", "degraded", "pairs_view", "images")
    wf.link("train", "loss_curve", "curve", "images")
    wf.group("Pairs and loss curve", ["pairs_view", "curve"], COLORS["output"])
    wf.node(
        "restore",
        "FDIRestore",
        (1600, 900),
        "FDI Restore (new dehazing adapter)",
        size=[320, 330],
        steps=50,
        inversion_steps=50,
        strength=1.0,
        guidance_end=0.333,
        cfg=1.0,
    )
    wf.link("ckpt", "MODEL", "restore", "model")
    wf.link("ckpt", "VAE", "restore", "vae")
    wf.link("degrade", "degraded", "restore", "image")
    wf.link("train", "adapter", "restore", "adapter")
    wf.link("positive", "CONDITIONING", "restore", "positive")
    wf.link("extract", "fdi", "restore", "fdi")
    wf.group("Try the new adapter on the hazy images", ["restore"], COLORS["sample"])
    wf.node(
        "save",
        "SaveImage",
        (2000, 900),
        "Dehazed images",
        size=[340, 380],
        filename_prefix="fdi/train_from_clean_photos",
    )
    wf.link("restore", "image", "save", "images")
    wf.group("Output", ["save"], COLORS["output"])
    return wf


def restore_sdxl() -> Workflow:
    wf = Workflow("restore_sdxl")
    wf.note(
        "note",
        (0, 0),
        (700, 320),
        "Restore an image on SDXL with an FDI adapter trained for SDXL, in one node: 'FDI Restore' runs the "
        "adapter, VAE-encodes the image, DDIM-inverts it with SDXL's own schedule, samples it back with guidance "
        "in the first third of the steps and decodes (the same recipe as on SD 2.1).\n\n"
        + SDXL_MODEL_NOTE
        + SDXL_ADAPTER_NOTE.replace("<name>", "fdi_sdxl_derain")
        + SDXL_SIZE_NOTE
        + f"Input: put the image in ComfyUI/input ('{INPUT_IMAGES['restore_sdxl']}' "
        "here) or use Load Image's upload button.",
        title="Read me: model files",
    )
    sdxl_base(wf, 0, 420)
    _one_node_restore(
        wf,
        420,
        (INPUT_IMAGES["restore_sdxl"], "Degraded image (about 1024 px)"),
        (ADAPTERS["sdxl_derain"], "Load FDI Adapter (SDXL derain, FDI embedded)"),
        ("FDI Restore (SDXL, 1024 px tiles)", [320, 380]),
        "Degraded image and SDXL adapter",
        tile_size=1024,
        tile_overlap=128,
    )
    wf.group("Restore on SDXL", ["restore"], COLORS["sample"])
    _save(wf, 1120, 420, "Restored image", "fdi/restore_sdxl")
    return wf


def style_transfer_sdxl() -> Workflow:
    wf = Workflow("style_transfer_sdxl")
    a, b = PAIR_FOLDERS["style_transfer_sdxl"]
    wf.note(
        "note",
        (0, 0),
        (700, 340),
        "Style transfer on SDXL: (style A, style B) reference pairs give the FDI that drives a style adapter "
        "trained for SDXL, which turns style A into style B.\n\n"
        + SDXL_MODEL_NOTE
        + BLIP2_NOTE
        + SDXL_ADAPTER_NOTE.replace("<name>", "fdi_sdxl_style_painting")
        + SDXL_SIZE_NOTE
        + f"Pairs: photos in ComfyUI/input/{a}/, the same scenes as paintings in ComfyUI/input/{b}/ "
        "(matched by file name). "
        f"Input: the photo to stylise in ComfyUI/input ('{INPUT_IMAGES['style_transfer_sdxl']}' here).",
        title="Read me: model files",
    )
    sdxl_base(wf, 0, 440)
    _style_transfer_graph(
        wf,
        440,
        (a, b),
        (INPUT_IMAGES["style_transfer_sdxl"], "Photo to stylise (about 1024 px)"),
        (ADAPTERS["sdxl_painting"], "Load FDI Adapter (SDXL style: painting)", "Content image and SDXL style adapter"),
        (
            "FDI Restore (SDXL style, 1024 px tiles)",
            [320, 380],
            "Restore-style sampling on SDXL",
            "fdi/style_transfer_sdxl",
        ),
        tile_size=1024,
        tile_overlap=128,
    )
    return wf


#: name -> (builder, one-line description); the order is the one the tests run them in
WORKFLOWS = {
    "build_fdi_from_pairs": (build_fdi_from_pairs, "reference pairs in two folders → FDI → save → inspect plot"),
    "restore_single": (
        restore_single,
        "one image, one adapter, modular: decoupling → apply → DDIM inversion → KSamplerAdvanced → decode",
    ),
    "restore_one_node": (restore_one_node, "the same restoration with the one-node 'FDI Restore'"),
    "restore_large_photo": (restore_large_photo, "a large photo in tiles with 'FDI Restore', then 'FDI Color Fix'"),
    "cross_task_fdi": (cross_task_fdi, "two saved FDIs (denoise + desnow) combined, driving the desnowing adapter"),
    "mixed_composite": (mixed_composite, "two adapters chained with weights on one MODEL, one sampling"),
    "mixed_progressive": (mixed_progressive, "adapter 1's restoration fed into adapter 2"),
    "style_transfer": (style_transfer, "style pairs → FDI → style adapter → restore-style sampling"),
    "style_fusion": (style_fusion, "two style adapters combined with weights"),
    "train_style_adapter": (
        train_style_adapter,
        "style pairs → FDI → train an adapter → save → restore-style sampling",
    ),
    "train_from_clean_photos": (
        train_from_clean_photos,
        "a clean photo → synthetic haze pairs → FDI → train an adapter → save → restore the hazy images",
    ),
    "restore_sdxl": (restore_sdxl, "one image restored on SDXL base 1.0 with an SDXL adapter, 1024 px tiles"),
    "style_transfer_sdxl": (style_transfer_sdxl, "style pairs → FDI → SDXL style adapter → restore-style sampling"),
}


def dump(workflow: dict) -> str:
    return json.dumps(workflow, indent=2, ensure_ascii=False) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--object-info",
        default="http://127.0.0.1:8188/object_info",
        help="URL of a running ComfyUI's /object_info (with this pack loaded) or a saved JSON copy",
    )
    ap.add_argument("--out", default=str(HERE), help="folder to write to (default: this folder)")
    ap.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a file differs from what would be written"
    )
    args = ap.parse_args(argv)
    info = load_object_info(args.object_info)
    out = Path(args.out)
    stale = []
    for name, (builder, _) in WORKFLOWS.items():
        text = dump(build(builder(), info))
        path = out / f"{name}.json"
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(path.name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        print("out of date: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
