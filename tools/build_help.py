"""Write the pack's help pages, ``web/docs/<NodeId>.md``, from the live node schemas.

ComfyUI serves ``web/`` (the pack's ``WEB_DIRECTORY``) at ``/extensions/<pack folder>/``; the
frontend's node-help panel fetches ``docs/<NodeId>.md`` from there. Every fact on a page (what the
node does, each input with its type, default, range and tooltip, each output) comes from the node's
V3 schema as ComfyUI reports it (``/object_info`` format); the examples come from ``workflows/``.
So a page cannot drift from its node: ``tests/test_help_and_locales.py`` regenerates the pages and
compares.

    COMFYUI_DIR=/path/to/ComfyUI /path/to/comfy/python tools/build_help.py          # write
    COMFYUI_DIR=/path/to/ComfyUI /path/to/comfy/python tools/build_help.py --check  # compare only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "web" / "docs"
WORKFLOWS = ROOT / "workflows"

#: imports ComfyUI (as --cpu, in a throw-away base directory), loads the pack as ComfyUI does and
#: prints ``{node id: GET_NODE_INFO_V1()}`` for every node of ``nodes.NODE_CLASSES``
_COLLECT = """
import asyncio, importlib.util, json, sys
sys.path.insert(0, {comfy!r})
import comfy.cli_args
comfy.cli_args.args.cpu = True
comfy.cli_args.args.base_directory = {base!r}
import folder_paths
name = "custom_nodes.comfyui-fdi"
spec = importlib.util.spec_from_file_location(name, {init!r}, submodule_search_locations=[{root!r}])
pack = importlib.util.module_from_spec(spec)
sys.modules[name] = pack
spec.loader.exec_module(pack)
extension = asyncio.run(pack.comfy_entrypoint())
infos = {{}}
for cls in asyncio.run(extension.get_node_list()):
    cls.RELATIVE_PYTHON_MODULE = name
    info = cls.GET_NODE_INFO_V1()
    infos[info["name"]] = info
print("@@INFOS@@" + json.dumps(infos))
"""


def collect_node_infos(comfyui_dir: str, python: str = sys.executable) -> dict:
    """``{node id: node info}`` (the ``/object_info`` entries) of every node the pack registers.

    Runs a fresh ``python`` that imports ComfyUI from ``comfyui_dir``; nothing is written there.
    """
    with tempfile.TemporaryDirectory() as base:
        code = _COLLECT.format(comfy=str(comfyui_dir), base=base, init=str(ROOT / "__init__.py"), root=str(ROOT))
        proc = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=base, timeout=600, check=False)
    marker = [line for line in proc.stdout.splitlines() if line.startswith("@@INFOS@@")]
    if proc.returncode or not marker:
        raise RuntimeError(f"could not read the node schemas from ComfyUI at {comfyui_dir}:\n{proc.stderr[-3000:]}")
    return json.loads(marker[0][len("@@INFOS@@"):])


# ------------------------------------------------------------------------------------------------
# rendering

#: what the paper (and the design card) fixes for a node, where it fixes something
PAPER = {
    "FDIQFormerLoader": "The paper's encoder is BLIP-2 `Salesforce/blip2-opt-2.7b` (32 tokens of width 768).",
    "FDIExtract": "The paper averages the FDIs of all reference pairs of a task.",
    "FDIExtractFromFolders": "The paper averages the FDIs of all reference pairs of a task.",
    "FDIApplyGuidance": "The paper guides the first of three stages of 50 DDIM steps (steps 0..16) at the "
                        "trained strength 1.",
    "FDIInvert": "The paper inverts with 50 DDIM steps, the same conditioning, no CFG.",
    "FDIRestore": "The paper: 50 DDIM inversion steps, 50 DDIM sampling steps, guidance in the first third, "
                  "empty prompt, CFG 1.",
}

#: ComfyUI input options shown in the inputs table
_OPTION_KEYS = ("default", "min", "max", "step")


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


def _inputs(info: dict):
    """``(name, type, options, optional)`` for each visible input, in the node's order."""
    order = info.get("input_order") or {k: list(v) for k, v in info["input"].items()}
    for section in ("required", "optional"):
        for name in order.get(section, []):
            spec = info["input"][section][name]
            typ, opts = spec[0], (spec[1] if len(spec) > 1 else {})
            yield name, typ, opts, section == "optional"


def _type_text(typ, opts: dict) -> str:
    choices = typ if isinstance(typ, list) else opts.get("options") if typ == "COMBO" else None
    if choices is None:
        return f"`{typ}`"
    if not choices:  # filled at run time from ComfyUI's folders (empty in the generator's bare install)
        return "a name listed from ComfyUI's model folders"
    return "one of " + ", ".join(f"`{c}`" for c in choices)


def _range_text(opts: dict) -> str:
    parts = []
    if "default" in opts and opts["default"] not in (None, ""):
        parts.append(f"default `{opts['default']}`")
    if "min" in opts or "max" in opts:
        parts.append(f"{opts.get('min', '…')} … {opts.get('max', '…')}")
    if opts.get("multiline"):
        parts.append("multi-line text")
    return ", ".join(parts)


def workflow_examples(node_id: str, workflows_dir: Path = WORKFLOWS) -> list[str]:
    """Lines describing how each example workflow wires ``node_id`` (from the workflow files)."""
    lines = []
    for path in sorted(workflows_dir.glob("*.json")):
        wf = json.loads(path.read_text(encoding="utf-8"))
        nodes = {n["id"]: n for n in wf.get("nodes", [])}
        mine = [n for n in nodes.values() if n.get("type") == node_id]
        if not mine:
            continue
        node = mine[0]
        links = {lk[0]: lk for lk in wf.get("links", [])}
        ins, outs = [], []
        for slot in node.get("inputs") or []:
            lk = links.get(slot.get("link"))
            if lk:
                ins.append(f"`{slot['name']}` ← {_title(nodes[lk[1]])}")
        for slot in node.get("outputs") or []:
            targets = sorted({_title(nodes[links[i][3]]) for i in slot.get("links") or [] if i in links})
            if targets:
                outs.append(f"`{slot['name']}` → {', '.join(targets)}")
        wiring = "; ".join(ins + outs)
        lines.append(f"- `workflows/{path.name}`" + (f" ({len(mine)} of them)" if len(mine) > 1 else "")
                     + (f": {wiring}." if wiring else "."))
    return lines


def _title(node: dict) -> str:
    return f"*{node.get('title') or node.get('type')}*"


def render(info: dict, workflows_dir: Path = WORKFLOWS) -> str:
    """The help page (Markdown) of one node from its ``/object_info`` entry."""
    node_id = info["name"]
    out = [f"# {info.get('display_name') or node_id}", "",
           f"`{node_id}` · category *{info.get('category', '')}*", "",
           info.get("description") or "", "", "## Inputs", ""]
    rows = list(_inputs(info))
    if rows:
        out += ["| input | type | default, range | what it is |", "|---|---|---|---|"]
        for name, typ, opts, optional in rows:
            tip = opts.get("tooltip", "") + (" (optional)" if optional else "")
            out.append(f"| `{name}` | {_cell(_type_text(typ, opts))} | {_cell(_range_text(opts))} | {_cell(tip)} |")
    else:
        out.append("None.")
    out += ["", "## Outputs", ""]
    names = info.get("output_name") or []
    if names:
        tips = info.get("output_tooltips") or [""] * len(names)
        out += ["| output | type | what it is |", "|---|---|---|"]
        for name, typ, tip in zip(names, info.get("output", []), tips):
            out.append(f"| `{name}` | `{_cell(typ)}` | {_cell(tip or '')} |")
    else:
        out.append("None (an output node).")
    examples = workflow_examples(node_id, workflows_dir)
    out += ["", "## Example", ""]
    if examples:
        out += ["Example workflows in the pack's `workflows/` folder (drag a file onto the canvas):", "", *examples]
    else:
        out.append("No example workflow uses this node yet.")
    defaults = [f"`{name}` = `{opts['default']}`" for name, _, opts, _ in rows if opts.get("default") not in (None, "")]
    if defaults or node_id in PAPER:
        out += ["", "## Defaults", ""]
        if defaults:
            out.append("Defaults: " + ", ".join(defaults) + ".")
        if node_id in PAPER:
            out += ["", PAPER[node_id]] if defaults else [PAPER[node_id]]
    return "\n".join(out).rstrip() + "\n"


def page_slots(text: str) -> tuple[list[str], list[str]]:
    """The input and output names a help page lists (its two tables), in order."""
    found = {"Inputs": [], "Outputs": []}
    section = None
    for line in text.splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        elif section in found and line.startswith("| `"):
            found[section].append(line.split("`")[1])
    return found["Inputs"], found["Outputs"]


def pages(infos: dict, workflows_dir: Path = WORKFLOWS) -> dict:
    """``{file name: text}`` of every help page."""
    return {f"{node_id}.md": render(info, workflows_dir) for node_id, info in sorted(infos.items())}


def stale_pages(infos: dict, docs: Path = DOCS, workflows_dir: Path = WORKFLOWS) -> list[str]:
    """What differs between the pages the schemas give and those in ``docs`` (empty: up to date)."""
    want = pages(infos, workflows_dir)
    have = {p.name: p.read_text(encoding="utf-8") for p in docs.glob("*.md")} if docs.is_dir() else {}
    problems = [f"{name}: missing (node {name[:-3]} has no help page)" for name in sorted(set(want) - set(have))]
    problems += [f"{name}: no node {name[:-3]} (remove the page)" for name in sorted(set(have) - set(want))]
    problems += [f"{name}: out of date" for name in sorted(set(want) & set(have)) if want[name] != have[name]]
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--comfyui", default=os.environ.get("COMFYUI_DIR", ""),
                        help="ComfyUI checkout to read the schemas with (default: $COMFYUI_DIR)")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a page is missing or stale")
    args = parser.parse_args(argv)
    if not args.comfyui:
        parser.error("give --comfyui /path/to/ComfyUI (or set COMFYUI_DIR); run under ComfyUI's Python")
    infos = collect_node_infos(args.comfyui)
    problems = stale_pages(infos)
    if args.check:
        print("\n".join(problems) or f"{len(infos)} help pages up to date")
        return 1 if problems else 0
    DOCS.mkdir(parents=True, exist_ok=True)
    for name, text in pages(infos).items():
        (DOCS / name).write_text(text, encoding="utf-8")
    for path in DOCS.glob("*.md"):
        if path.name not in pages(infos):
            path.unlink()
    print(f"wrote {len(infos)} help pages to {DOCS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
