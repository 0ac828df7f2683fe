"""Reading ``/object_info``: a node schema's slots and widgets in the frontend's order, and its defaults."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path


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
