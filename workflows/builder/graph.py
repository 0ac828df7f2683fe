"""The description language (:class:`Workflow`) and :func:`build`, which turns a description into the UI-format
(schema 0.4) JSON the ComfyUI frontend saves for the same nodes."""

from __future__ import annotations

import uuid

from .names import DOWNLOADS
from .schema import default_value, input_specs, is_widget, saved_outputs, widget_layout


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


def _note_json(node_id: int, d: dict) -> dict:
    return {
        "id": node_id,
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


def _slot_inputs(info: dict) -> tuple:
    """The linkable (non-widget) inputs of a schema as saved, and ``{input name: slot index}``."""
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
    return inputs, in_index


def _widget_values(wf: Workflow, d: dict, info: dict, inputs: list) -> list:
    """The node's ``widgets_values`` (given values, else the schema's defaults); appends the widget inputs."""
    layout = widget_layout(info)
    unknown = set(d["widgets"]) - {w[0] for w in layout if w[3] == "value"}
    if unknown:
        raise KeyError(f"{wf.name}: {d['type']} has no widget(s) {sorted(unknown)}")
    values = []
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
    return values


def _node_json(wf: Workflow, key: str, node_id: int, object_info: dict) -> tuple:
    """The saved node ``key`` of ``wf`` and its slot index ``({input: index}, {output: (index, type)})``."""
    d = wf.nodes[key]
    if d["type"] in ("Note", "MarkdownNote"):
        return _note_json(node_id, d), ({}, {})
    info = object_info.get(d["type"])
    if info is None:
        raise KeyError(f"{wf.name}: node type {d['type']!r} is not in /object_info (is the FDI pack loaded?)")
    inputs, in_index = _slot_inputs(info)
    n_slot_inputs = len(inputs)
    values = _widget_values(wf, d, info, inputs)
    outputs, out_index = [], {}
    linked = {oname for src, oname, _, _ in wf.links if src == key}
    for i, (typ, oname) in enumerate(saved_outputs(info, linked)):
        outputs.append({"localized_name": oname, "name": oname, "type": typ, "links": None})
        out_index[oname] = (i, typ)
    size = d["size"] or _node_size(max(n_slot_inputs, len(outputs)), len(widget_layout(info)))
    node = {
        "id": node_id,
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
    return node, (in_index, out_index)


def _links_json(wf: Workflow, nodes_json: dict, slot_index: dict, ids: dict) -> list:
    """The saved links; each connects its output and input slots in ``nodes_json``."""
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
    return links_json


def _set_order(wf: Workflow, nodes_json: dict) -> None:
    """Execution order: a topological order of the graph (notes first), as the frontend computes it."""
    keys = list(wf.nodes)
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


def _groups_json(wf: Workflow, nodes_json: dict) -> list:
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
    return groups_json


def _view(nodes_json: dict, groups_json: list) -> dict:
    """A view (``extra.ds``) that shows the whole graph on a 1600 x 1000 canvas."""
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
    return {"scale": scale, "offset": offset}


def build(wf: Workflow, object_info: dict) -> dict:
    """The UI-format (0.4) JSON of ``wf`` for the node schemas in ``object_info``."""
    keys = list(wf.nodes)
    ids = {k: i + 1 for i, k in enumerate(keys)}
    nodes_json, slot_index = {}, {}
    for key in keys:
        nodes_json[key], slot_index[key] = _node_json(wf, key, ids[key], object_info)
    links_json = _links_json(wf, nodes_json, slot_index, ids)
    _set_order(wf, nodes_json)
    groups_json = _groups_json(wf, nodes_json)
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
        "extra": {"ds": _view(nodes_json, groups_json), "frontendVersion": "1.35.9"},
        **({"models": models} if models else {}),
        "version": 0.4,
    }
