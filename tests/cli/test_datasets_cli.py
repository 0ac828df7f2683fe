"""``python -m fdi datasets list|pairs`` and the ``--dataset NAME --data ROOT`` shortcut of extract, train, restore
and eval: the same numbers as the long way round (folders or a pairs file), and refusals that write nothing."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from dataset_trees import make_tree, numbered
from PIL import Image
from tiny_sd import make_adapter, tiny_adapter_config, tiny_fdi

from fdi.cli import main
from fdi.datasets import DATASETS
from fdi.instruction import FDI


@pytest.fixture()
def rain(tmp_path):
    """A 2018-release Rain100H test split (three pairs, one rain image without ground truth) and a 2017 train split:
    images 64×48, as the tiny models take them."""
    files = numbered("rain_heavy_test/rain/X2/norain-{}x2.png", (1, 2, 3, 4)) + numbered(
        "rain_heavy_test/norain/norain-{}.png", (1, 2, 3)
    )
    files += [f"rain_data_train_Heavy/{s}-{n}.png" for s in ("rain", "norain", "rainstreak") for n in (1, 2, 3)]
    make_tree(tmp_path / "data", files, size=(64, 48))
    return tmp_path


def snapshot(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_list_names_every_reader_with_its_counts(capsys):
    assert main(["datasets", "list"]) == 0
    text = capsys.readouterr().out
    assert all(name in text for name in DATASETS)
    assert main(["datasets", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["rain100h"]["published"] == {"train": 1800, "test": 100} and rows["rain100h"]["metric"] == "y"
    assert [r["name"] for r in rows["rain100h"]["releases"]][0].startswith("2018 release")


def test_pairs_writes_the_csv_and_warns(rain, capsys):
    out = rain / "pairs.csv"
    assert main(["datasets", "pairs", "rain100h", str(rain / "data"), "--split", "test", "-o", str(out)]) == 0
    captured = capsys.readouterr()
    rows = list(csv.DictReader(out.open()))
    assert [(r["name"], Path(r["degraded"]).name, Path(r["clean"]).name) for r in rows] == [
        ("norain-1", "norain-1x2.png", "norain-1.png"),
        ("norain-2", "norain-2x2.png", "norain-2.png"),
        ("norain-3", "norain-3x2.png", "norain-3.png"),
    ]
    assert all(Path(r["degraded"]).is_absolute() for r in rows)
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2 and "norain-4x2.png" in warnings[0] and "reports 100" in warnings[1]


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["datasets", "pairs", "rain100h", "{data}/rain_data_train_Heavy", "--split", "test"],
            "does not hold Rain100H",
        ),
        (["datasets", "pairs", "cbsd68", "{data}", "--split", "test"], "does not hold CBSD68"),
        (["datasets", "pairs", "rain100x", "{data}", "--split", "test"], "unknown data set"),
        (["datasets", "pairs", "cbsd68", "{data}", "--split", "train"], "no 'train' split"),
        (["datasets", "pairs", "rain100h", "{data}", "--split", "test", "--task", "haze"], "no task 'haze'"),
    ],
)
def test_pairs_refusals_exit_2_and_write_nothing(rain, capsys, argv, message):
    before = snapshot(rain)
    argv = [a.format(data=rain / "data") for a in argv] + ["-o", str(rain / "p.csv")]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(err) == 1 and message in err[0]
    assert snapshot(rain) == before


def test_wrong_tree_error_shows_the_expected_layout_and_what_was_found(rain, capsys):
    assert (
        main(
            [
                "datasets",
                "pairs",
                "rain100h",
                str(rain / "data" / "rain_data_train_Heavy"),
                "--split",
                "test",
                "-o",
                str(rain / "p.csv"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "rain_heavy_test/rain/X2/norain-Nx2.png" in err and "Found:" in err and "9 images at the top" in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--data", "{data}"], "--data ROOT needs --dataset"),
        (["--dataset", "rain100h"], "needs --data ROOT"),
        (["--dataset", "rain100h", "--data", "{data}", "--degraded", "{data}", "--clean", "{data}"], "one way"),
    ],
)
def test_extract_refuses_half_or_double_sources(rain, tiny_blip2_folder, capsys, extra, message):
    before = snapshot(rain)
    argv = ["extract", "--blip2", str(tiny_blip2_folder), "-o", str(rain / "t.fdi.safetensors"), "--quiet"]
    assert main(argv + [a.format(data=rain / "data") for a in extra]) == 2
    assert message in capsys.readouterr().err
    assert snapshot(rain) == before


def test_extract_from_a_dataset_equals_extract_from_its_pairs_file(rain, tiny_blip2_folder, capsys):
    data, pairs = rain / "data", rain / "pairs.csv"
    assert main(["datasets", "pairs", "rain100h", str(data), "--split", "train", "-o", str(pairs)]) == 0
    common = ["extract", "--blip2", str(tiny_blip2_folder), "--quiet", "--batch-size", "2"]
    assert main(common + ["--dataset", "rain100h", "--data", str(data), "-o", str(rain / "a.fdi.safetensors")]) == 0
    assert main(common + ["--pairs-file", str(pairs), "-o", str(rain / "b.fdi.safetensors")]) == 0
    a, b = FDI.load(rain / "a.fdi.safetensors"), FDI.load(rain / "b.fdi.safetensors")
    assert a.n_pairs == 3 and torch.equal(a.tokens, b.tokens)
    assert float(a.tokens.abs().mean()) > 0  # the pairs differ, so the FDI is not trivially zero


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def test_restore_and_eval_a_dataset_split_by_pair_name(rain, tiny_sd_folder, capsys):
    adapter = make_adapter().save(rain / "a.safetensors", fdi=tiny_fdi())
    fast = ["--steps", "2", "--inversion-steps", "2", "--quiet", "--device", "cpu"]
    base = ["restore", "--sd", str(tiny_sd_folder), "--adapter", str(adapter), *fast]
    data = rain / "data"
    assert main(base + ["-o", str(rain / "ds"), "--dataset", "rain100h", "--data", str(data)]) == 0
    names = sorted(p.name for p in (rain / "ds").iterdir())
    assert names == ["norain-1.png", "norain-2.png", "norain-3.png"]  # pair names, the GT-less image skipped
    one = data / "rain_heavy_test" / "rain" / "X2" / "norain-2x2.png"
    assert main(base + ["-o", str(rain / "img"), "--image", str(one)]) == 0
    assert np.array_equal(pixels(rain / "ds" / "norain-2.png"), pixels(rain / "img" / "norain-2x2.png"))
    capsys.readouterr()

    report = rain / "r.json"
    ev = ["eval", "--pred", str(rain / "ds"), "--dataset", "rain100h", "--data", str(data), "--report", str(report)]
    assert main(ev + ["--quiet"]) == 0
    summary = capsys.readouterr().out.splitlines()[0]
    assert summary.startswith("3 images: psnr_y=")  # Rain100H is reported on Y
    got = json.loads(report.read_text())
    assert got["primary"] == "y" and [r["name"] for r in got["images"]] == ["norain-1", "norain-2", "norain-3"]
    # the same numbers as eval --gt over a folder holding the same ground truth under the pair names
    (rain / "gt").mkdir()
    for n in (1, 2, 3):
        os.link(data / "rain_heavy_test" / "norain" / f"norain-{n}.png", rain / "gt" / f"norain-{n}.png")
    assert (
        main(
            [
                "eval",
                "--pred",
                str(rain / "ds"),
                "--gt",
                str(rain / "gt"),
                "--y-channel",
                "--report",
                str(rain / "g.json"),
                "--quiet",
            ]
        )
        == 0
    )
    assert json.loads((rain / "g.json").read_text())["mean"] == got["mean"]
    (rain / "ds" / "norain-3.png").unlink()
    assert main(ev + ["--quiet"]) == 2
    assert "1 of 3 pairs have no prediction" in capsys.readouterr().err


def test_train_from_a_dataset_uses_its_train_split(rain, tiny_sd_folder, capsys):
    fdi_file = rain / "t.fdi.safetensors"
    tiny_fdi().save(fdi_file)
    out = rain / "adapter.safetensors"
    argv = [
        "train",
        "--sd",
        str(tiny_sd_folder),
        "--fdi",
        str(fdi_file),
        "--dataset",
        "rain100h",
        "--data",
        str(rain / "data"),
        "-o",
        str(out),
        "--max-steps",
        "1",
        "--batch-size",
        "1",
        "--resolution",
        "64",
        "--num-workers",
        "0",
        "--checkpoint-every",
        "0",
        "--adapter-config",
        tiny_adapter_config().to_json(),
        "--quiet",
    ]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "warning: rain100h train: 3 pairs found, the paper's supplement reports 1800" in err
    assert out.is_file()
