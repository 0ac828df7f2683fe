"""``python -m fdi`` extract / combine / inspect: results, exit codes, one-line errors, no partial files."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fdi.cli import COMMANDS, main
from fdi.images import save_image
from fdi.instruction import FDI

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_blip2_folder):
    root = tmp_path_factory.mktemp("cli")
    shutil.copytree(tiny_blip2_folder, root / "blip2")
    torch.manual_seed(0)
    for task in ("rain", "snow"):
        (root / task / "deg").mkdir(parents=True)
        (root / task / "clean").mkdir(parents=True)
        for i in range(3):
            clean = torch.rand(3, 24 + i, 30)
            deg = (clean + (0.3 if task == "rain" else -0.3) * torch.rand(3, 24 + i, 30)).clamp(0, 1)
            save_image(deg, root / task / "deg" / f"{i:03d}.png")
            save_image(clean, root / task / "clean" / f"{i:03d}.jpg")
    return root


def run_cli(*args):
    return main([str(a) for a in args])


def test_extract_combine_inspect(setup, tmp_path, capsys):
    r = setup
    for task in ("rain", "snow"):
        assert (
            run_cli(
                "extract",
                "--blip2",
                r / "blip2",
                "--degraded",
                r / task / "deg",
                "--clean",
                r / task / "clean",
                "-o",
                tmp_path / f"{task}.fdi.safetensors",
                "--keep-pairs",
                "--batch-size",
                "2",
                "--quiet",
            )
            == 0
        )
    rain = FDI.load(tmp_path / "rain.fdi.safetensors")
    snow = FDI.load(tmp_path / "snow.fdi.safetensors")
    assert rain.n_pairs == 3 and rain.pairs.shape[0] == 3 and rain.label == "rain"
    assert torch.allclose(rain.tokens, rain.pairs.mean(0), atol=1e-6)
    assert (
        run_cli(
            "combine",
            tmp_path / "rain.fdi.safetensors",
            tmp_path / "snow.fdi.safetensors",
            "--weights",
            "0.7",
            "0.3",
            "-o",
            tmp_path / "mix.fdi.safetensors",
        )
        == 0
    )
    mix = FDI.load(tmp_path / "mix.fdi.safetensors")
    assert (mix.tokens - (0.7 * rain.tokens + 0.3 * snow.tokens)).abs().max() < 1e-6
    assert (
        run_cli(
            "inspect",
            tmp_path / "rain.fdi.safetensors",
            tmp_path / "snow.fdi.safetensors",
            tmp_path / "mix.fdi.safetensors",
            "-o",
            tmp_path / "plot.png",
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "rain" in out and "1.000" in out
    from PIL import Image

    with Image.open(tmp_path / "plot.png") as im:
        assert im.size[0] > 400 and im.size[1] > 300


@pytest.mark.parametrize(
    "case",
    [
        "unmatched",
        "empty_folder",
        "non_image",
        "not_blip2",
        "pickle_ckpt",
        "bad_out_dir",
        "weights_count",
        "mixed_encoders",
        "nan_fdi",
        "wrong_suffix",
    ],
)
def test_user_errors_exit_2_with_one_line_and_no_file(setup, tmp_path, capsys, case):
    r = setup
    out = tmp_path / "out.fdi.safetensors"
    base = [
        "extract",
        "--blip2",
        r / "blip2",
        "--degraded",
        r / "rain" / "deg",
        "--clean",
        r / "rain" / "clean",
        "-o",
        out,
        "--quiet",
    ]
    if case == "unmatched":
        d = tmp_path / "d"
        d.mkdir()
        save_image(torch.rand(3, 8, 8), d / "zzz.png")
        args = base[:4] + [d] + base[5:]
    elif case == "empty_folder":
        (tmp_path / "e").mkdir()
        args = base[:4] + [tmp_path / "e"] + base[5:]
    elif case == "non_image":
        d = tmp_path / "d"
        d.mkdir()
        for i in range(3):
            save_image(torch.rand(3, 8, 8), d / f"{i:03d}.png")
        (d / "readme.txt").write_text("x")
        args = base[:4] + [d] + base[5:]
    elif case == "not_blip2":
        (tmp_path / "nb").mkdir()
        args = base[:2] + [tmp_path / "nb"] + base[3:]
    elif case == "pickle_ckpt":
        d = tmp_path / "pk"
        d.mkdir()
        (d / "config.json").write_text((r / "blip2" / "config.json").read_text())
        (d / "preprocessor_config.json").write_text((r / "blip2" / "preprocessor_config.json").read_text())
        torch.save({}, d / "pytorch_model.bin")
        args = base[:2] + [d] + base[3:]
    elif case == "bad_out_dir":
        out = tmp_path / "no" / "such" / "x.fdi.safetensors"
        args = base[:-3] + ["-o", out, "--quiet"]
    elif case == "weights_count":
        f = FDI(tokens=torch.ones(8, 32), encoder="t:1", label="a")
        f.save(tmp_path / "a.fdi.safetensors")
        args = ["combine", tmp_path / "a.fdi.safetensors", tmp_path / "a.fdi.safetensors", "--weights", "1", "-o", out]
    elif case == "mixed_encoders":
        FDI(tokens=torch.ones(8, 32), encoder="x:1").save(tmp_path / "a.fdi.safetensors")
        FDI(tokens=torch.ones(8, 32), encoder="y:2").save(tmp_path / "b.fdi.safetensors")
        args = ["combine", tmp_path / "a.fdi.safetensors", tmp_path / "b.fdi.safetensors", "-o", out]
    elif case == "nan_fdi":
        from safetensors.torch import save_file

        save_file(
            {"fdi": torch.full((8, 32), float("nan"))},
            tmp_path / "n.fdi.safetensors",
            metadata={"format": "fdi", "format_version": "1", "encoder": "x:1", "n_pairs": "1", "label": ""},
        )
        args = ["combine", tmp_path / "n.fdi.safetensors", "-o", out]
    elif case == "wrong_suffix":
        out = tmp_path / "out.png"
        args = base[:-3] + ["-o", out, "--quiet"]
    capsys.readouterr()
    assert run_cli(*args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert not out.exists()
    assert not any(p.name.endswith(".tmp") for p in tmp_path.rglob("*"))


def test_help_on_every_command():
    for cmd in (None,) + COMMANDS:
        args = [sys.executable, "-m", "fdi"] + ([cmd] if cmd else []) + ["--help"]
        res = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0 and "usage:" in res.stdout, res.stderr


def test_import_is_light():
    code = (
        "import sys, fdi, fdi.instruction, fdi.encoder, fdi.extract, fdi.cli; print(any(m.startswith('diffusers') "
        "for m in sys.modules))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.stdout.strip() == "False", res.stderr


def _option_block(help_text: str, option: str) -> str:
    """The lines ``--help`` gives one option (its invocation and help), joined."""
    lines = help_text.splitlines()

    def names(line: str) -> list:
        return [w.rstrip(",") for w in line.split()] if line.startswith("  -") else []

    start = next(i for i, line in enumerate(lines) if option in names(line))
    block = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.strip() or names(line):
            break
        block.append(line)
    return " ".join(" ".join(block).split())


def test_every_command_help_shows_its_defaults(monkeypatch):
    """Each option with a default says it in --help; none says "(default: None)" or "(default: False)"."""
    import argparse

    from fdi.cli import build_parser

    monkeypatch.setenv("COLUMNS", "100")
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(commands) == set(COMMANDS)
    shown = 0
    for name, sub in commands.items():
        text = sub.format_help()
        assert "(default: None)" not in text and "(default: False)" not in text, name
        for a in sub._actions:
            d = a.default
            if not a.option_strings or a.required or d is None or isinstance(d, bool) or d in ("", [], ()):
                continue
            if d is argparse.SUPPRESS:
                continue
            block = _option_block(text, a.option_strings[-1])
            values = {str(d), f"{d:g}" if isinstance(d, float) else str(d)}
            assert "default" in block and any(v in block for v in values), (name, a.option_strings, block)
            shown += 1
    assert shown >= 35  # the test reads options (39 with a default when written)


def _console_script() -> str:
    """``python -c`` code that does what pip's ``fdi`` console script does, for pyproject's entry point."""
    import re

    text = (ROOT / "pyproject.toml").read_text()
    target = re.search(r'^\[project\.scripts\]\s*\nfdi\s*=\s*"([\w.]+):(\w+)"', text, re.M)
    module, func = target.groups()
    return f"import sys\nfrom {module} import {func}\nsys.argv[0] = 'fdi'\nsys.exit({func}())"


def test_usage_names_the_program_as_it_was_typed():
    """The console script's usage says ``fdi …``; ``python -m fdi``'s says ``python -m fdi …``."""
    script = [sys.executable, "-c", _console_script()]
    module = [sys.executable, "-m", "fdi"]
    for cmd, prog in ((script, "fdi"), (module, "python -m fdi")):
        res = subprocess.run(cmd + ["--help"], capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert res.returncode == 0 and res.stdout.startswith(f"usage: {prog} [-h] COMMAND"), res.stdout[:200]
        res = subprocess.run(cmd + ["train", "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert res.stdout.startswith(f"usage: {prog} train [-h] --sd MODEL"), res.stdout[:200]
        res = subprocess.run(cmd + ["degrade"], capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert res.returncode == 2 and res.stderr.startswith(f"usage: {prog} degrade"), res.stderr[:200]


def _sd1_header_only(path):
    """A single file whose header reads as SD 1.x (768-wide cross attention) and holds nothing else."""
    from safetensors.torch import save_file

    key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    save_file({key: torch.zeros(320, 768, dtype=torch.float16)}, str(path))
    return path


def test_train_on_a_single_file_prints_no_torchvision_warning(tmp_path):
    """Loading a single file imports diffusers' SD pipelines, which import transformers' CLIP and SigLIP image
    processors; without torchvision transformers warns about each. The pack runs neither: no warning."""
    (tmp_path / "d").mkdir(), (tmp_path / "c").mkdir()
    for i in range(2):
        save_image(torch.rand(3, 16, 16), tmp_path / "d" / f"{i}.png")
        save_image(torch.rand(3, 16, 16), tmp_path / "c" / f"{i}.png")
    FDI(tokens=torch.randn(8, 32), encoder="tiny:aaaa", n_pairs=2).save(tmp_path / "t.fdi.safetensors")
    args = ["train", "--sd", _sd1_header_only(tmp_path / "m.safetensors"), "--fdi", tmp_path / "t.fdi.safetensors"]
    args += ["--degraded", tmp_path / "d", "--clean", tmp_path / "c", "-o", tmp_path / "a.safetensors"]
    args += ["--max-steps", "1", "--resolution", "64", "--batch-size", "2", "--device", "cpu", "--quiet"]
    res = subprocess.run(
        [sys.executable, "-m", "fdi", *[str(a) for a in args]], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    # the header-only file gets as far as diffusers' single-file loader (after the imports), which refuses it
    assert res.returncode == 2 and "could not load the single-file checkpoint" in res.stderr, res.stderr[-2000:]
    assert "requires torchvision" not in res.stderr + res.stdout, res.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "d", "m.safetensors", "t.fdi.safetensors"]


PROCESSORS = """
import json, sys
import numpy as np
from PIL import Image
if sys.argv[1] == "bound":
    from fdi.transformers_compat import use_pil_image_processors
    use_pil_image_processors()
import transformers
image = Image.fromarray((np.arange(37 * 45 * 3) % 251).astype(np.uint8).reshape(37, 45, 3))
out = {}
for name, kwargs in (("BlipImageProcessor", {"size": {"height": 32, "width": 32}}), ("CLIPImageProcessor", {})):
    processor = getattr(transformers, name)(**kwargs)
    pixels = processor(image, return_tensors="np")["pixel_values"]
    out[name] = {"pixels": pixels.tolist(), "config": processor.to_dict()}
print(json.dumps(out))
"""


def test_the_quiet_processors_are_the_ones_transformers_falls_back_to():
    """With the names bound, BLIP's and CLIP's processors give the same pixels and write the same config as
    transformers' own fallback; only the warning is gone."""
    import json

    runs = {}
    for mode in ("plain", "bound"):
        res = subprocess.run(
            [sys.executable, "-c", PROCESSORS, mode], capture_output=True, text=True, timeout=300, cwd=ROOT
        )
        assert res.returncode == 0, res.stderr[-2000:]
        runs[mode] = (json.loads(res.stdout), res.stderr)
    (plain, plain_err), (bound, bound_err) = runs["plain"], runs["bound"]
    for name in ("BlipImageProcessor", "CLIPImageProcessor"):
        assert np.array_equal(np.array(plain[name]["pixels"]), np.array(bound[name]["pixels"])), name
        assert plain[name]["config"] == bound[name]["config"], name
    assert "requires torchvision" not in bound_err
    from transformers.utils import is_torchvision_available

    if not is_torchvision_available():  # the warning this avoids, seen without the binding
        assert "requires torchvision" in plain_err
