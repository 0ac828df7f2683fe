"""Help pages, the Chinese translation and the registry metadata, checked against the node schemas.

The chain: node schemas → ``web/docs/<NodeId>.md`` (``tools/build_help.py``; compared with the
schemas of a real ComfyUI when ``COMFYUI_DIR`` is set) → ``locales/zh/nodeDefs.json`` (every node,
input and output a page lists must be translated; checked in the default run). A running ComfyUI
must serve both where its frontend looks for them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import build_cli_doc  # noqa: E402  (tools/ is not a package)
import build_help  # noqa: E402

COMFYUI_DIR = os.environ.get("COMFYUI_DIR", "")
needs_comfyui = pytest.mark.skipif(
    not COMFYUI_DIR,
    reason="COMFYUI_DIR is not set: this test reads the node schemas "
    "from a ComfyUI checkout (run under ComfyUI's Python)",
)
DOCS = ROOT / "web" / "docs"
ZH = ROOT / "locales" / "zh" / "nodeDefs.json"


def help_pages() -> dict:
    return {p.stem: p.read_text(encoding="utf-8") for p in sorted(DOCS.glob("*.md"))}


def translation_problems(slots: dict, node_defs: dict) -> list[str]:
    """What ``node_defs`` (the nodeDefs.json format) lacks for ``{node id: (inputs, outputs)}``, or has in excess."""
    problems = []
    for node_id, (inputs, outputs) in sorted(slots.items()):
        entry = node_defs.get(node_id)
        if entry is None:
            problems.append(f"{node_id}: untranslated node (add it to locales/zh/nodeDefs.json)")
            continue
        for key in ("display_name", "description"):
            if not str(entry.get(key, "")).strip():
                problems.append(f"{node_id}: no {key}")
        for kind, names in (("inputs", inputs), ("outputs", [str(i) for i in range(len(outputs))])):
            given = entry.get(kind) or {}
            for name in names:
                item = given.get(name) or {}
                if not str(item.get("name", "")).strip() or not str(item.get("tooltip", "")).strip():
                    problems.append(f"{node_id}: {kind[:-1]} {name} untranslated (needs a name and a tooltip)")
            problems += [
                f"{node_id}: translated {kind[:-1]} {name} does not exist" for name in sorted(set(given) - set(names))
            ]
    problems += [f"{node_id}: translated node does not exist" for node_id in sorted(set(node_defs) - set(slots))]
    return problems


def schemas_in_source() -> dict:
    """``{node id: (inputs, outputs)}`` read from the ``io.Schema(...)`` calls in ``nodes/*.py`` without ComfyUI.

    Input names are the literal first arguments of ``*.Input(...)``; an inputs or outputs list that is
    not written out literally gives ``None`` (checked against ComfyUI's own schemas instead, below).
    """
    import ast

    found = {}
    for path in sorted((ROOT / "nodes").glob("*.py")):
        for call in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "Schema"):
                continue
            kw = {k.arg: k.value for k in call.keywords}
            if not isinstance(kw.get("node_id"), ast.Constant):
                continue

            def names(node, method):
                if node is None:
                    return []
                if not isinstance(node, ast.List):
                    return None
                out = []
                for elt in node.elts:
                    is_call = isinstance(elt, ast.Call) and isinstance(elt.func, ast.Attribute)
                    if not (is_call and elt.func.attr == method):
                        return None
                    args = {k.arg: k.value for k in elt.keywords}
                    first = elt.args[0] if elt.args else args.get("id") or args.get("display_name")
                    out.append(first.value if isinstance(first, ast.Constant) else None)
                return out

            found[kw["node_id"].value] = (names(kw.get("inputs"), "Input"), names(kw.get("outputs"), "Output"))
    return found


# ------------------------------------------------------------------------------------------------ default run


def test_every_node_in_the_source_has_a_page_and_a_translation():
    """Without ComfyUI: the nodes and inputs written in ``nodes/*.py`` against the pages and the translation."""
    source = schemas_in_source()
    assert {"FDIRestore", "FDIApplyGuidance", "FDIQFormerLoader"} <= set(source)
    pages = help_pages()
    problems = [f"{node_id}: no help page (run tools/build_help.py)" for node_id in sorted(set(source) - set(pages))]
    problems += [
        f"{node_id}: help page of a node that no longer exists" for node_id in sorted(set(pages) - set(source))
    ]
    slots = {}
    for node_id, (inputs, outputs) in source.items():
        page_inputs, page_outputs = build_help.page_slots(pages.get(node_id, ""))
        if inputs is not None and None not in inputs:
            if node_id in pages and sorted(inputs) != sorted(page_inputs):  # pages list required ones first
                problems.append(f"{node_id}: inputs {inputs} but its help page lists {page_inputs}")
        else:
            inputs = page_inputs
        slots[node_id] = (inputs, outputs if outputs is not None else page_outputs)
    problems += translation_problems(slots, json.loads(ZH.read_text(encoding="utf-8")))
    assert problems == []


def test_every_help_page_is_translated_to_chinese():
    pages = help_pages()
    assert len(pages) >= 12, "web/docs has lost pages; run tools/build_help.py"
    slots = {node_id: build_help.page_slots(text) for node_id, text in pages.items()}
    assert all(inputs or outputs for inputs, outputs in slots.values())
    node_defs = json.loads(ZH.read_text(encoding="utf-8"))
    assert translation_problems(slots, node_defs) == []
    # the names are Chinese, not copies of the English
    assert node_defs["FDIRestore"]["display_name"] == "FDI 修复"
    for node_id, entry in node_defs.items():
        assert re.search(r"[\u4e00-\u9fff]", entry["display_name"] + entry["description"]), node_id


def test_translation_check_names_what_is_missing():
    """The check above can fail: a new node, a new input, a dropped output and a stale entry are named."""
    node_defs = json.loads(ZH.read_text(encoding="utf-8"))
    slots = {node_id: build_help.page_slots(text) for node_id, text in help_pages().items()}
    inputs, outputs = slots["FDIRestore"]
    slots["FDIRestore"] = (inputs + ["seed"], outputs)
    slots["FDIUpcomingNode"] = (["pairs"], ["adapter"])  # a node not translated yet
    del slots["FDILoad"]
    problems = translation_problems(slots, node_defs)
    assert problems == [
        "FDIRestore: input seed untranslated (needs a name and a tooltip)",
        "FDIUpcomingNode: untranslated node (add it to locales/zh/nodeDefs.json)",
        "FDILoad: translated node does not exist",
    ]


SAMPLE = {
    "name": "FDIDemo",
    "display_name": "Demo",
    "category": "FDI/demo",
    "description": "Does a | thing.",
    "input": {
        "required": {
            "x": ["FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "tooltip": "The x."}],
            "mode": [["a", "b"], {"default": "b", "tooltip": "How."}],
            "file": [[], {"tooltip": "A file."}],
        },
        "optional": {"image": ["IMAGE", {"tooltip": "An image."}]},
    },
    "input_order": {"required": ["x", "mode", "file"], "optional": ["image"]},
    "output": ["FDI"],
    "output_name": ["fdi"],
    "output_tooltips": ["The FDI."],
}


def test_a_help_page_lists_every_input_output_and_default(tmp_path):
    text = build_help.render(SAMPLE, tmp_path)
    assert text.startswith("# Demo\n")
    assert "Does a \\| thing." not in text and "Does a | thing." in text  # prose stays prose
    assert "| `x` | `FLOAT` | default `0.5`, 0.0 … 1.0 | The x. |" in text
    assert "| `mode` | one of `a`, `b` | default `b` | How. |" in text
    assert "| `file` | a name listed from ComfyUI's model folders |  | A file. |" in text
    assert "| `image` | `IMAGE` |  | An image. (optional) |" in text
    assert "| `fdi` | `FDI` | The FDI. |" in text
    assert "Defaults: `x` = `0.5`, `mode` = `b`." in text
    assert "No example workflow uses this node yet." in text
    assert build_help.page_slots(text) == (["x", "mode", "file", "image"], ["fdi"])
    # an example workflow that uses the node is found and its wiring described
    wf = {
        "nodes": [
            {"id": 1, "type": "LoadImage", "title": "Rainy image", "outputs": [{"name": "IMAGE", "links": [7]}]},
            {"id": 2, "type": "FDIDemo", "inputs": [{"name": "image", "link": 7}], "outputs": []},
        ],
        "links": [[7, 1, 0, 2, 0, "IMAGE"]],
    }
    (tmp_path / "demo.json").write_text(json.dumps(wf))
    assert "- `workflows/demo.json`: `image` ← *Rainy image*." in build_help.render(SAMPLE, tmp_path)


def test_a_chinese_page_says_the_same_in_chinese(tmp_path):
    zh = {
        "display_name": "演示",
        "description": "做一件事。",
        "inputs": {"x": {"name": "数值", "tooltip": "x 值。"}},
        "outputs": {"0": {"name": "fdi", "tooltip": "那个 FDI。"}},
    }
    text = build_help.render(SAMPLE, tmp_path, "zh", zh)
    assert text.startswith("# 演示\n") and "做一件事。" in text and "## 输入" in text
    assert "| `x` 数值 | `FLOAT` | 默认 `0.5`, 0.0 … 1.0 | x 值。 |" in text
    assert "| `mode` | 可选值 `a`, `b` | 默认 `b` | How. |" in text  # untranslated input: the English tooltip
    assert "| `image` | `IMAGE` |  | An image.（可选） |" in text
    assert "| `fdi` | `FDI` | 那个 FDI。 |" in text
    assert build_help.page_slots(text) == (["x", "mode", "file", "image"], ["fdi"])


def test_stale_pages_are_named(tmp_path):
    docs, locales = tmp_path / "docs", tmp_path / "locales"
    (docs / "FDIDemo").mkdir(parents=True)
    (locales / "zh").mkdir(parents=True)
    (locales / "zh" / "nodeDefs.json").write_text(json.dumps({"FDIDemo": {"display_name": "演示"}}))
    (docs / "FDIGone.md").write_text("old")
    (docs / "FDIDemo.md").write_text("old")
    infos = {"FDIDemo": SAMPLE, "FDINew": dict(SAMPLE, name="FDINew")}
    assert build_help.stale_pages(infos, docs, tmp_path, locales) == [
        "FDIDemo/zh.md: missing (node FDIDemo has no such help page)",
        "FDINew.md: missing (node FDINew has no such help page)",
        "FDIGone.md: no such node or translation (remove the page)",
        "FDIDemo.md: out of date",
    ]
    for name, text in build_help.pages(infos, tmp_path, locales).items():
        (docs / name).write_text(text, encoding="utf-8")
    assert build_help.stale_pages(infos, docs, tmp_path, locales) == [
        "FDIGone.md: no such node or translation (remove the page)"
    ]
    assert "FDINew/zh.md" not in build_help.pages(infos, tmp_path, locales)  # untranslated: English only


def test_nodes_md_is_written_from_the_schemas_and_its_staleness_named(tmp_path):
    (tmp_path / "demo.json").write_text(
        json.dumps({"nodes": [{"id": 1, "type": "FDIDemo"}, {"id": 2, "type": "FDIDemo"}]})
    )
    other = dict(SAMPLE, name="FDIOther", category="FDI/loaders", display_name="Other")
    text = build_help.render_nodes_md({"FDIDemo": SAMPLE, "FDIOther": other}, tmp_path)
    assert text.startswith(build_help.NODES_INTRO.read_text(encoding="utf-8").rstrip() + "\n\n## FDI/loaders\n")
    assert text.index("### `FDIOther` — Other") < text.index("## FDI/demo") < text.index("### `FDIDemo` — Demo")
    assert "| `x` | `FLOAT` | default `0.5`, 0.0 … 1.0 | The x. |" in text
    assert "| `fdi` | `FDI` | The FDI. |" in text
    assert "Shown in: `demo` (2 of them)." in text and "Shown in: no example workflow yet." in text
    path = tmp_path / "NODES.md"
    assert build_help.stale_nodes_md({"FDIDemo": SAMPLE}, path, tmp_path) == ["NODES.md: missing"]
    path.write_text(build_help.render_nodes_md({"FDIDemo": SAMPLE}, tmp_path), encoding="utf-8")
    assert build_help.stale_nodes_md({"FDIDemo": SAMPLE}, path, tmp_path) == []
    assert build_help.stale_nodes_md({"FDIDemo": dict(SAMPLE, description="New.")}, path, tmp_path) == [
        "NODES.md: out of date"
    ]


def test_cli_reference_is_written_from_the_parser():
    from fdi.cli import COMMANDS, build_parser

    text = build_cli_doc.render(build_parser())
    assert (ROOT / "docs" / "cli.md").read_text(encoding="utf-8") == text, "run python tools/build_cli_doc.py"
    assert [line[4:] for line in text.splitlines() if line.startswith("### ")] == list(COMMANDS)
    assert (
        "| `--tile-size` | `PX` | `0` |" in text and "| `--adapter` | `A.safetensors` (repeatable) | required |" in text
    )


def test_readme_is_a_short_true_path():
    """The README stays a newcomer's path: short, the two commands, links that resolve, one parameter count."""
    import torch

    from fdi.adapter import FDIAdapter

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 220
    assert "python -m fdi restore --sd" in text and "\npython -m pytest -q\n" in text
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if not target.startswith("https://"):
            assert (ROOT / target).exists(), f"README links to {target}, which is not in the repository"
    with torch.device("meta"):
        n = sum(p.numel() for p in FDIAdapter().parameters())
    counts = re.findall(r"(\d+(?:\.\d+)?) M parameters", text)
    assert counts == [f"{n / 1e6:.1f}"], (counts, n)
    workflows = sorted(p.stem for p in (ROOT / "workflows").glob("*.json"))
    assert all(name in text for name in workflows)


def test_links_between_the_docs_resolve():
    pages = [ROOT / "README.md", ROOT / "NODES.md", ROOT / "DEVELOPERS.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if not target.startswith(("https://", "http://")) and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert broken == []


def test_nodes_md_lists_every_example_workflow():
    text = (ROOT / "NODES.md").read_text(encoding="utf-8")
    listed = re.findall(r"^\| `(\w+)` \|", text.split("## The example workflows")[1], flags=re.M)
    assert listed and sorted(listed) == sorted(p.stem for p in (ROOT / "workflows").glob("*.json"))


def test_every_translated_node_has_a_chinese_page():
    node_defs = json.loads(ZH.read_text(encoding="utf-8"))
    pages = help_pages()
    zh_pages = {p.parent.name for p in DOCS.glob("*/zh.md")}
    assert zh_pages == set(node_defs) & set(pages)
    for node_id in zh_pages:
        text = (DOCS / node_id / "zh.md").read_text(encoding="utf-8")
        assert text.startswith(f"# {node_defs[node_id]['display_name']}\n")
        assert build_help.page_slots(text) == build_help.page_slots(pages[node_id]), node_id


def test_web_directory_is_declared_and_holds_the_pages():
    import importlib.util

    spec = importlib.util.spec_from_file_location("comfyui_fdi_web_check", ROOT / "__init__.py")
    pack = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pack)
    web = (ROOT / pack.WEB_DIRECTORY).resolve()
    assert web == ROOT / "web" and (web / "docs" / "FDIRestore.md").is_file()
    assert not list(web.rglob("*.js")), "web/ holds no frontend extension code"


# ------------------------------------------------------------------------------------------------ registry metadata


def test_tool_comfy_is_complete():
    tomllib = pytest.importorskip("tomllib")
    from PIL import Image

    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    project, comfy = data["project"], data["tool"]["comfy"]
    assert project["name"] == "comfyui-fdi" and re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert project["description"] and project["license"] and project["urls"]["Repository"].startswith("https://")
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", comfy["PublisherId"]) and comfy["DisplayName"]
    # the icon is a URL to a square image kept in this repository
    repo = project["urls"]["Repository"].removeprefix("https://github.com/")
    prefix = f"https://raw.githubusercontent.com/{repo}/main/"
    assert comfy["Icon"].startswith(prefix), comfy["Icon"]
    icon = ROOT / comfy["Icon"][len(prefix) :]
    with Image.open(icon) as im:
        assert im.width == im.height and 128 <= im.width <= 400, im.size  # registry: square, at most 400 px
    # the minimum is the oldest version of the test matrix, as the README's install line says
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    line = re.search(r"\*\*Inside ComfyUI\*\* \((\S+) or newer; the test matrix is ([^,]+?) and", readme)
    assert line and line.group(1) == line.group(2), "README: the oldest version tested is the minimum"
    assert re.fullmatch(r">=\s*" + re.escape(line.group(1)), comfy["requires-comfyui"]), comfy["requires-comfyui"]


def _tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        files = [f for f in out.splitlines() if f]
    except (OSError, subprocess.CalledProcessError):
        files = []
    if files:
        return files
    return [
        str(p.relative_to(ROOT)).replace(os.sep, "/")
        for p in ROOT.rglob("*")
        if p.is_file() and ".git" not in p.parts and "__pycache__" not in p.parts
    ]


def test_comfyignore_keeps_development_files_out_of_the_archive():
    pathspec = pytest.importorskip("pathspec")
    lines = [ln.strip() for ln in (ROOT / ".comfyignore").read_text().splitlines()]
    spec = pathspec.PathSpec.from_lines("gitwildmatch", [ln for ln in lines if ln and not ln.startswith("#")])
    files = _tracked_files()
    shipped = [f for f in files if not spec.match_file(f)]
    left_out = sorted(set(files) - set(shipped))
    dev = ("tests/", "bench/", ".ci/", "tools/", "workflows/build_workflows.py", "workflows/builder/")
    for f in left_out:
        assert f.startswith(dev) or (f.startswith("docs/") and f.endswith((".jpg", ".png"))), f
    assert any(f.startswith("tests/") for f in left_out) and any(f.startswith("docs/") for f in left_out)
    for f in shipped:
        assert not f.startswith(("tests/", "bench/", ".ci/", "docs/restore_single")), f
    # the template browser shows each workflow with its thumbnail: both ship
    for name in (ROOT / "workflows").glob("*.json"):
        assert f"workflows/{name.name}" in shipped and f"workflows/{name.stem}.jpg" in shipped, name
    # what ComfyUI needs at run time ships
    for needed in (
        "__init__.py",
        "pyproject.toml",
        "requirements.txt",
        "README.md",
        "nodes/__init__.py",
        "fdi/__init__.py",
        "web/icon.png",
        "web/docs/FDIRestore.md",
        "locales/zh/nodeDefs.json",
        "workflows/restore_single.json",
    ):
        assert needed in shipped, needed
    assert all(f in shipped for f in files if f.startswith(("fdi/", "nodes/", "web/", "locales/")))


# ------------------------------------------------------------------------------------------------ against ComfyUI


@pytest.fixture(scope="module")
def node_infos():
    return build_help.collect_node_infos(COMFYUI_DIR)


@needs_comfyui
@pytest.mark.comfyui
def test_help_pages_match_the_schemas(node_infos):
    assert build_help.stale_pages(node_infos) == [], "run tools/build_help.py under ComfyUI's Python"
    assert build_help.stale_nodes_md(node_infos) == [], "run tools/build_help.py under ComfyUI's Python"
    assert len(node_infos) == len(re.findall(r"^### `FDI\w+`", (ROOT / "NODES.md").read_text(), flags=re.M)) == 23


@needs_comfyui
@pytest.mark.comfyui
def test_chinese_translation_covers_every_input_of_the_schemas(node_infos):
    slots = {}
    for node_id, info in node_infos.items():
        inputs = [name for name, _, _, _ in build_help._inputs(info)]
        slots[node_id] = (inputs, info.get("output_name") or [])
    assert translation_problems(slots, json.loads(ZH.read_text(encoding="utf-8"))) == []


@needs_comfyui
@pytest.mark.comfyui
def test_running_comfyui_serves_help_pages_and_chinese_names(tmp_path):
    """The frontend's rule: a node whose python_module is ``custom_nodes.<pack>`` has its help at
    ``/extensions/<pack>/docs/<NodeId>.md``; ``/i18n`` merges every pack's ``locales/``."""
    import comfyui_harness as harness
    import requests

    harness.link_pack(tmp_path)
    server = harness.ComfyServer(tmp_path)
    try:
        info = server.object_info()
        ours = {k: v for k, v in info.items() if v.get("python_module", "").startswith("custom_nodes.comfyui-fdi")}
        assert set(ours) == set(help_pages()), "the pack's nodes and its help pages differ"
        for node_id, node in ours.items():
            pack = node["python_module"].split(".")[1].split("@")[0]
            r = requests.get(f"{server.url}/extensions/{pack}/docs/{node_id}.md", timeout=10)
            # fetch() in the browser decodes UTF-8 whatever the Content-Type says
            page = (DOCS / f"{node_id}.md").read_text(encoding="utf-8")
            assert r.status_code == 200 and r.content.decode("utf-8") == page, node_id
        zh_page = requests.get(f"{server.url}/extensions/comfyui-fdi/docs/FDIRestore/zh.md", timeout=10)
        assert zh_page.status_code == 200 and zh_page.content.decode("utf-8").startswith("# FDI 修复\n")
        icon = requests.get(f"{server.url}/extensions/comfyui-fdi/icon.png", timeout=10)
        assert icon.status_code == 200 and icon.content[:4] == b"\x89PNG"
        zh = requests.get(f"{server.url}/i18n", timeout=10).json()["zh"]["nodeDefs"]
        assert zh["FDIRestore"]["display_name"] == "FDI 修复"
        assert zh["FDIApplyGuidance"]["inputs"]["strength"]["name"] == "强度"
        assert set(ours) <= set(zh)
        assert "Cannot import" not in server.log_tail(400)
    finally:
        server.stop()
