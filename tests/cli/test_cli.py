"""``python -m fdi`` extract / combine / inspect: results, exit codes, one-line errors, no partial files."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch

from fdi.cli import COMMANDS, main
from fdi.images import save_image
from fdi.instruction import FDI


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
