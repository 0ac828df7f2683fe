"""Write the pack's help pages, ``web/docs/<NodeId>.md`` (and ``<NodeId>/zh.md``), from the live node schemas.

ComfyUI serves ``web/`` (the pack's ``WEB_DIRECTORY``) at ``/extensions/<pack folder>/``; the
frontend's node-help panel fetches ``docs/<NodeId>.md`` from there. Every fact on a page (what the
node does, each input with its type, default, range and tooltip, each output) comes from the node's
V3 schema as ComfyUI reports it (``/object_info`` format); the examples come from ``workflows/``.
The same run writes ``NODES.md`` (every node on one page, by category, and the list of example
workflows from ``workflows/build_workflows.py``). So a page cannot drift from its node:
``tests/comfyui/test_help_and_locales.py`` regenerates the pages and ``NODES.md`` and compares.

    COMFYUI_DIR=/path/to/ComfyUI /path/to/comfy/python tools/build_help.py          # write
    COMFYUI_DIR=/path/to/ComfyUI /path/to/comfy/python tools/build_help.py --check  # compare only
    python tools/build_help.py --object-info object_info.json   # from a saved /object_info of a pack-only ComfyUI
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/ is not a package: the ComfyUI harness beside
import comfyui_harness  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "web" / "docs"
WORKFLOWS = ROOT / "workflows"
LOCALES = ROOT / "locales"
NODES_MD = ROOT / "NODES.md"

#: run after the harness's boot (ComfyUI as --cpu in a throw-away base directory, the pack loaded as ComfyUI loads
#: it): prints ``{node id: GET_NODE_INFO_V1()}`` for every node of ``nodes.NODE_CLASSES``
_COLLECT = """
infos = {}
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
        code = comfyui_harness.script(_COLLECT, comfyui_dir, base)
        proc = comfyui_harness.run_python(code, base, timeout=600, python=python)
    marker = [line for line in proc.stdout.splitlines() if line.startswith("@@INFOS@@")]
    if proc.returncode or not marker:
        raise RuntimeError(f"could not read the node schemas from ComfyUI at {comfyui_dir}:\n{proc.stderr[-3000:]}")
    return json.loads(marker[0][len("@@INFOS@@") :])


# ------------------------------------------------------------------------------------------------
# rendering

#: what the paper (and the design card) fixes for a node, where it fixes something
PAPER = {
    "en": {
        "FDIQFormerLoader": "The paper's encoder is BLIP-2 `Salesforce/blip2-opt-2.7b` (32 tokens of width 768).",
        "FDIExtract": "The paper averages the FDIs of all reference pairs of a task.",
        "FDIExtractFromFolders": "The paper averages the FDIs of all reference pairs of a task.",
        "FDIApplyGuidance": "The paper guides the first of three stages of 50 DDIM steps (steps 0..16) at the "
        "trained strength 1.",
        "FDIInvert": "The paper inverts with 50 DDIM steps, the same conditioning, no CFG.",
        "FDIRestore": "The paper: 50 DDIM inversion steps, 50 DDIM sampling steps, guidance in the first third, "
        "empty prompt, CFG 1.",
    },
    "zh": {
        "FDIQFormerLoader": "论文使用的编码器是 BLIP-2 `Salesforce/blip2-opt-2.7b`（32 个宽度为 768 的 token）。",
        "FDIExtract": "论文对一个任务的所有参考图像对的 FDI 取平均。",
        "FDIExtractFromFolders": "论文对一个任务的所有参考图像对的 FDI 取平均。",
        "FDIApplyGuidance": "论文在 50 个 DDIM 步的三个阶段中的第一个阶段（第 0..16 步）以训练时的强度 1 进行引导。",
        "FDIInvert": "论文用 50 个 DDIM 步反演，使用相同的条件，不使用 CFG。",
        "FDIRestore": "论文：50 个 DDIM 反演步，50 个 DDIM 采样步，前三分之一的步被引导，空提示词，CFG 1。",
    },
}

#: the fixed words of a page, per language (``zh`` pages are written where the node is translated)
TEXT = {
    "en": {
        "category": "category",
        "inputs": "Inputs",
        "outputs": "Outputs",
        "example": "Example",
        "defaults": "Defaults",
        "input_head": "| input | type | default, range | what it is |",
        "output_head": "| output | type | what it is |",
        "none": "None.",
        "no_outputs": "None (an output node).",
        "optional": " (optional)",
        "one_of": "one of ",
        "listed": "a name listed from ComfyUI's model folders",
        "default": "default",
        "multiline": "multi-line text",
        "examples": "Example workflows in the pack's `workflows/` folder (drag a file onto the canvas):",
        "no_example": "No example workflow uses this node yet.",
        "defaults_line": "Defaults: ",
        "of_them": "{n} of them",
        "sep": ", ",
        "end": ".",
    },
    "zh": {
        "category": "分类",
        "inputs": "输入",
        "outputs": "输出",
        "example": "示例",
        "defaults": "默认值",
        "input_head": "| 输入 | 类型 | 默认值、范围 | 说明 |",
        "output_head": "| 输出 | 类型 | 说明 |",
        "none": "无。",
        "no_outputs": "无（输出节点）。",
        "optional": "（可选）",
        "one_of": "可选值 ",
        "listed": "从 ComfyUI 模型文件夹中列出的名称",
        "default": "默认",
        "multiline": "多行文本",
        "examples": "本节点包 `workflows/` 文件夹中的示例工作流（把文件拖到画布上）：",
        "no_example": "还没有示例工作流使用此节点。",
        "defaults_line": "默认值：",
        "of_them": "共 {n} 个",
        "sep": "，",
        "end": "。",
    },
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


def _type_text(typ, opts: dict, t: dict) -> str:
    choices = typ if isinstance(typ, list) else opts.get("options") if typ == "COMBO" else None
    if choices is None:
        return f"`{typ}`"
    if not choices:  # filled at run time from ComfyUI's folders (empty in the generator's bare install)
        return t["listed"]
    return t["one_of"] + ", ".join(f"`{c}`" for c in choices)


def _range_text(opts: dict, t: dict) -> str:
    parts = []
    if "default" in opts and opts["default"] not in (None, ""):
        parts.append(f"{t['default']} `{opts['default']}`")
    if "min" in opts or "max" in opts:
        parts.append(f"{opts.get('min', '…')} … {opts.get('max', '…')}")
    if opts.get("multiline"):
        parts.append(t["multiline"])
    return ", ".join(parts)


def workflow_examples(node_id: str, workflows_dir: Path = WORKFLOWS, lang: str = "en") -> list[str]:
    """Lines describing how each example workflow wires ``node_id`` (from the workflow files)."""
    t = TEXT[lang]
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
        count = f" ({t['of_them'].format(n=len(mine))})" if len(mine) > 1 else ""
        lines.append(f"- `workflows/{path.name}`{count}" + (f": {wiring}{t['end']}" if wiring else t["end"]))
    return lines


def _title(node: dict) -> str:
    return f"*{node.get('title') or node.get('type')}*"


def render(info: dict, workflows_dir: Path = WORKFLOWS, lang: str = "en", translation: dict | None = None) -> str:
    """The help page (Markdown) of one node from its ``/object_info`` entry.

    ``lang="zh"`` with ``translation`` (the node's entry of ``locales/zh/nodeDefs.json``) writes the
    Chinese page: translated names, description and tooltips, the same facts.
    """
    t, tr = TEXT[lang], translation or {}
    node_id = info["name"]
    tr_inputs, tr_outputs = tr.get("inputs") or {}, tr.get("outputs") or {}
    title = tr.get("display_name") or info.get("display_name") or node_id
    out = [
        f"# {title}",
        "",
        f"`{node_id}` · {t['category']} *{info.get('category', '')}*",
        "",
        tr.get("description") or info.get("description") or "",
        "",
        f"## {t['inputs']}",
        "",
    ]
    rows = list(_inputs(info))
    if rows:
        out += [t["input_head"], "|---|---|---|---|"]
        for name, typ, opts, optional in rows:
            item = tr_inputs.get(name) or {}
            shown = f"`{name}`" + (f" {item['name']}" if item.get("name") and item["name"] != name else "")
            tip = (item.get("tooltip") or opts.get("tooltip", "")) + (t["optional"] if optional else "")
            cells = (shown, _cell(_type_text(typ, opts, t)), _cell(_range_text(opts, t)), _cell(tip))
            out.append("| " + " | ".join(cells) + " |")
    else:
        out.append(t["none"])
    out += ["", f"## {t['outputs']}", ""]
    names = info.get("output_name") or []
    if names:
        tips = info.get("output_tooltips") or [""] * len(names)
        out += [t["output_head"], "|---|---|---|"]
        for i, (name, typ, tip) in enumerate(zip(names, info.get("output", []), tips)):
            item = tr_outputs.get(str(i)) or {}
            shown = f"`{name}`" + (f" {item['name']}" if item.get("name") and item["name"] != name else "")
            out.append(f"| {shown} | `{_cell(typ)}` | {_cell(item.get('tooltip') or tip or '')} |")
    else:
        out.append(t["no_outputs"])
    examples = workflow_examples(node_id, workflows_dir, lang)
    out += ["", f"## {t['example']}", ""]
    out += [t["examples"], "", *examples] if examples else [t["no_example"]]
    defaults = [f"`{name}` = `{opts['default']}`" for name, _, opts, _ in rows if opts.get("default") not in (None, "")]
    paper = PAPER[lang].get(node_id)
    if defaults or paper:
        out += ["", f"## {t['defaults']}", ""]
        if defaults:
            out.append(t["defaults_line"] + t["sep"].join(defaults) + t["end"])
        if paper:
            out += ["", paper] if defaults else [paper]
    return "\n".join(out).rstrip() + "\n"


# ------------------------------------------------------------------------------------------------
# NODES.md: every node on one page

#: the hand-written head of NODES.md (types, model folders); what follows it is generated
NODES_INTRO = ROOT / "tools" / "nodes_intro.md"

#: the order of the categories in NODES.md (others follow, sorted)
CATEGORY_ORDER = ("FDI/loaders", "FDI/instruction", "FDI/guidance", "FDI/sampling", "FDI/postprocess")


def _workflow_list(workflows_dir: Path) -> list[tuple[str, str]]:
    """``[(name, one-line description)]`` of the example workflows, from ``build_workflows.WORKFLOWS``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fdi_build_workflows_list", workflows_dir / "build_workflows.py")
    if spec is None or not (workflows_dir / "build_workflows.py").is_file():
        return [(p.stem, "") for p in sorted(workflows_dir.glob("*.json"))]
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [(name, text) for name, (_, text) in module.WORKFLOWS.items()]


def _shown_in(node_id: str, workflows_dir: Path) -> str:
    found = []
    for path in sorted(workflows_dir.glob("*.json")):
        n = sum(node.get("type") == node_id for node in json.loads(path.read_text(encoding="utf-8")).get("nodes", []))
        if n:
            found.append(f"`{path.stem}`" + (f" ({n} of them)" if n > 1 else ""))
    return "Shown in: " + (", ".join(found) + "." if found else "no example workflow yet.")


def render_nodes_md(infos: dict, workflows_dir: Path = WORKFLOWS) -> str:
    """``NODES.md``: every node of ``infos`` (``/object_info`` entries), by category, then the example workflows."""
    t = TEXT["en"]
    by_category: dict[str, list[dict]] = {}
    for info in infos.values():
        by_category.setdefault(info.get("category", ""), []).append(info)
    order = [c for c in CATEGORY_ORDER if c in by_category] + sorted(set(by_category) - set(CATEGORY_ORDER))
    out = [NODES_INTRO.read_text(encoding="utf-8").rstrip()]
    for category in order:
        out += ["", f"## {category}"]
        for info in sorted(by_category[category], key=lambda i: i["name"]):
            node_id = info["name"]
            out += ["", f"### `{node_id}` — {info.get('display_name') or node_id}", ""]
            out += [info.get("description") or "", ""]
            rows = list(_inputs(info))
            if rows:
                out += [t["input_head"], "|---|---|---|---|"]
                for name, typ, opts, optional in rows:
                    tip = opts.get("tooltip", "") + (t["optional"] if optional else "")
                    cells = (f"`{name}`", _cell(_type_text(typ, opts, t)), _cell(_range_text(opts, t)), _cell(tip))
                    out.append("| " + " | ".join(cells) + " |")
                out.append("")
            names = info.get("output_name") or []
            if names:
                tips = info.get("output_tooltips") or [""] * len(names)
                out += [t["output_head"], "|---|---|---|"]
                for name, typ, tip in zip(names, info.get("output", []), tips):
                    out.append(f"| `{name}` | `{_cell(typ)}` | {_cell(tip or '')} |")
                out.append("")
            out.append(_shown_in(node_id, workflows_dir))
    out += ["", "## The example workflows", "", "| workflow | what it shows |", "|---|---|"]
    out += [f"| `{name}` | {_cell(text)} |" for name, text in _workflow_list(workflows_dir)]
    out += [
        "",
        "They show in ComfyUI's template browser under this pack's name; `python workflows/build_workflows.py`",
        "regenerates them (see DEVELOPERS.md).",
    ]
    return "\n".join(out) + "\n"


def stale_nodes_md(infos: dict, path: Path = NODES_MD, workflows_dir: Path = WORKFLOWS) -> list[str]:
    """``["NODES.md: …"]`` when ``path`` is missing or differs from what the schemas give (empty: up to date)."""
    if not path.is_file():
        return [f"{path.name}: missing"]
    return (
        []
        if path.read_text(encoding="utf-8") == render_nodes_md(infos, workflows_dir)
        else [f"{path.name}: out of date"]
    )


def page_slots(text: str) -> tuple[list[str], list[str]]:
    """The input and output names a help page (of any language) lists in its two tables, in order."""
    heads = {f"## {t[k]}": k for t in TEXT.values() for k in ("inputs", "outputs")}
    found = {"inputs": [], "outputs": []}
    section = None
    for line in text.splitlines():
        if line.startswith("## "):
            section = heads.get(line.strip())
        elif section and line.startswith("| `"):
            found[section].append(line.split("`")[1])
    return found["inputs"], found["outputs"]


def translations(locales: Path = LOCALES) -> dict:
    """``{language: nodeDefs}`` of every language in ``locales/`` that has a help-page vocabulary."""
    out = {}
    for lang in TEXT:
        path = locales / lang / "nodeDefs.json"
        if lang != "en" and path.is_file():
            out[lang] = json.loads(path.read_text(encoding="utf-8"))
    return out


def pages(infos: dict, workflows_dir: Path = WORKFLOWS, locales: Path = LOCALES) -> dict:
    """``{path relative to web/docs: text}`` of every help page.

    ``<NodeId>.md`` in English for every node; ``<NodeId>/<lang>.md`` for each language the node is
    translated to (the frontend asks for ``<NodeId>/<locale>.md`` first and falls back to the English page).
    """
    out = {f"{node_id}.md": render(info, workflows_dir) for node_id, info in sorted(infos.items())}
    for lang, node_defs in translations(locales).items():
        for node_id, info in sorted(infos.items()):
            if node_id in node_defs:
                out[f"{node_id}/{lang}.md"] = render(info, workflows_dir, lang, node_defs[node_id])
    return out


def stale_pages(infos: dict, docs: Path = DOCS, workflows_dir: Path = WORKFLOWS, locales: Path = LOCALES) -> list[str]:
    """What differs between the pages the schemas give and those in ``docs`` (empty: up to date)."""
    want = pages(infos, workflows_dir, locales)
    have = {}
    if docs.is_dir():
        have = {p.relative_to(docs).as_posix(): p.read_text(encoding="utf-8") for p in docs.rglob("*.md")}
    problems = [
        f"{name}: missing (node {name.split('/')[0].removesuffix('.md')} has no such help page)"
        for name in sorted(set(want) - set(have))
    ]
    problems += [f"{name}: no such node or translation (remove the page)" for name in sorted(set(have) - set(want))]
    problems += [f"{name}: out of date" for name in sorted(set(want) & set(have)) if want[name] != have[name]]
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--comfyui",
        default=os.environ.get("COMFYUI_DIR", ""),
        help="ComfyUI checkout to read the schemas with (default: $COMFYUI_DIR)",
    )
    parser.add_argument(
        "--object-info",
        metavar="FILE",
        help="read the schemas from a saved /object_info (JSON) instead; the pack's nodes are taken",
    )
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a page is missing or stale")
    args = parser.parse_args(argv)
    if args.object_info:
        infos = {
            k: v
            for k, v in json.loads(Path(args.object_info).read_text(encoding="utf-8")).items()
            if str(v.get("python_module", "")).startswith("custom_nodes.")
        }
    elif args.comfyui:
        infos = collect_node_infos(args.comfyui)
    else:
        parser.error("give --comfyui /path/to/ComfyUI (or set COMFYUI_DIR; under ComfyUI's Python) or --object-info")
    problems = stale_pages(infos) + stale_nodes_md(infos)
    if args.check:
        print("\n".join(problems) or f"the help pages and NODES.md of {len(infos)} nodes are up to date")
        return 1 if problems else 0
    want = pages(infos)
    for name, text in want.items():
        (DOCS / name).parent.mkdir(parents=True, exist_ok=True)
        (DOCS / name).write_text(text, encoding="utf-8")
    for path in DOCS.rglob("*.md"):
        if path.relative_to(DOCS).as_posix() not in want:
            path.unlink()
    for folder in sorted((p for p in DOCS.iterdir() if p.is_dir()), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
    NODES_MD.write_text(render_nodes_md(infos), encoding="utf-8")
    print(f"wrote {len(want)} help pages for {len(infos)} nodes to {DOCS.relative_to(ROOT)}, and {NODES_MD.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
