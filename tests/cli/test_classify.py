"""``python -m fdi classify train|predict`` with the tests' tiny BLIP-2: end to end, and every bad input refused
with exit 2, one line, nothing written, before BLIP-2 loads."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from fdi.cli import main
from fdi.degrade import degrade_folder

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
pytest.importorskip("skimage.data")
write_crops = pytest.importorskip("classifier").write_crops  # bench/classifier.py: crops of scikit-image's photos


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_blip2_folder):
    r = tmp_path_factory.mktemp("classify")
    shutil.copytree(tiny_blip2_folder, r / "blip2")
    write_crops(("astronaut", "rocket", "camera", "coins", "grass", "brick"), r / "clean", 128, 64)
    write_crops(("chelsea",), r / "held", 128, 64)
    for spec in ("haze", "lowlight"):
        degrade_folder(r / "clean", spec, r / f"deg_{spec}", seed=0)
        degrade_folder(r / "held", spec, r / f"held_{spec}", seed=1)
    (r / "empty").mkdir()
    return r


def _train(r: Path, out: Path, *extra) -> int:
    return main(
        ["classify", "train", "--blip2", str(r / "blip2"), "--task", f"haze={r / 'deg_haze' / 'degraded'}",
         "--task", f"lowlight={r / 'deg_lowlight' / 'degraded'}", "--clean", str(r / "clean"), "-o", str(out),
         "--epochs", "60", "--quiet", *extra]
    )  # fmt: skip


def test_train_then_predict(world, tmp_path, capsys):
    out = tmp_path / "m.clf.safetensors"
    assert _train(world, out) == 0
    text = capsys.readouterr().out
    assert "haze" in text and "val AUC" in text and "threshold" in text and out.is_file()
    images = [world / "held_haze" / "degraded", world / "held_lowlight" / "degraded" / "chelsea_00.png"]
    shutil.copy(world / "held" / "chelsea_01.png", tmp_path / "plain.png")
    js = tmp_path / "p.json"
    args = ["classify", "predict", "--blip2", str(world / "blip2"), "--classifier", str(out), "--image"]
    assert main(args + [str(images[0]), str(tmp_path / "plain.png"), "--json", str(js)]) == 0
    doc = json.loads(js.read_text())
    assert doc["labels"] == ["haze", "lowlight"] and set(doc["thresholds"]) == {"haze", "lowlight"}
    hazy = [v for k, v in doc["images"].items() if k.startswith("chelsea")]
    assert len(hazy) == 6 and len(doc["images"]) == 7
    # the hazy crops score higher for haze than the same scene clean, and no clean crop is called dark
    plain = doc["images"]["plain.png"]["probabilities"]
    assert min(v["probabilities"]["haze"] for v in hazy) > plain["haze"]
    assert "lowlight" not in doc["images"]["plain.png"]["detected"]
    assert sum("haze" in v["detected"] for v in hazy) >= 3
    table = capsys.readouterr().out
    assert "plain.png" in table and "detected" in table
    assert main(args[:-1] + ["--image", str(images[1])]) == 0
    assert "lowlight" in capsys.readouterr().out.splitlines()[2].split()[-1]


def test_train_from_a_degrade_folder(world, tmp_path, capsys):
    out = tmp_path / "d.clf.safetensors"
    sources = ["--from-degrade", str(world / "deg_haze"), "--from-degrade", str(world / "deg_lowlight")]
    code = main(["classify", "train", "--blip2", str(world / "blip2"), *sources, "-o", str(out), "--epochs", "30"])
    assert code == 0
    from fdi.classifier import DegradationClassifier

    clf = DegradationClassifier.load(out)
    assert clf.labels == ("haze", "lowlight") and clf.validation["n_val"] > 0


@pytest.fixture
def tripwire(monkeypatch):
    """BLIP-2 must not load for a refused input."""
    from fdi.encoder import QFormerEncoder

    def boom(*a, **k):
        raise AssertionError("BLIP-2 loaded before the input was refused")

    monkeypatch.setattr(QFormerEncoder, "from_pretrained", classmethod(boom))


def _other_classifier(world: Path, tmp: Path) -> Path:
    """A classifier whose recorded encoder is another one."""
    from fdi.classifier import DegradationClassifier

    clf = DegradationClassifier(
        ("haze",), "other:0123456789abcdef", dict(pooling="mean", hidden=0, num_tokens=8, width=32)
    )
    clf.save(tmp / "other.clf.safetensors")
    return tmp / "other.clf.safetensors"


TRAIN_CASES = {
    "malformed task": (["--task", "haze"], "LABEL=DIR"),
    "bad label": (["--task", "ha ze={deg}"], "plain name"),
    "missing folder": (["--task", "haze={root}/nope"], "does not exist"),
    "empty folder": (["--task", "haze={root}/empty"], "holds no images"),
    "degrade folder as a task": (["--task", "haze={root}/deg_haze"], "--from-degrade"),
    "not a degrade folder": (["--from-degrade", "{root}/clean"], "degradations.jsonl"),
    "no negatives": (["--task", "haze={deg}"], "no negative"),
    "only clean": (["--clean", "{root}/clean"], "no labelled images"),
    "bad val fraction": (["--task", "haze={deg}", "--clean", "{root}/clean", "--val-fraction", "0"], "between 0 and 1"),
    "missing blip2": (
        ["--task", "haze={deg}", "--clean", "{root}/clean", "--blip2", "{root}/noblip"],
        "does not exist",
    ),
}


@pytest.mark.parametrize("name", sorted(TRAIN_CASES))
def test_train_refuses_bad_input(world, tmp_path, capsys, tripwire, name):
    extra, msg = TRAIN_CASES[name]
    extra = [e.format(root=world, deg=world / "deg_haze" / "degraded") for e in extra]
    out = tmp_path / "x.clf.safetensors"
    code = main(["classify", "train", "--blip2", str(world / "blip2"), "-o", str(out), "--quiet", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and msg in err, err
    assert list(tmp_path.iterdir()) == []


def test_train_refuses_an_output_name_without_the_suffix(world, tmp_path, capsys, tripwire):
    code = main(["classify", "train", "--blip2", str(world / "blip2"), "-o", str(tmp_path / "x.safetensors"),
                 "--task", f"haze={world / 'deg_haze' / 'degraded'}", "--clean", str(world / "clean")])  # fmt: skip
    assert code == 2 and ".clf.safetensors" in capsys.readouterr().err and list(tmp_path.iterdir()) == []


def test_predict_refuses_bad_input(world, tmp_path, capsys, tripwire):
    other = _other_classifier(world, tmp_path)
    image = str(world / "held" / "chelsea_00.png")
    base = ["classify", "predict", "--blip2", str(world / "blip2"), "--json", str(tmp_path / "o.json")]
    cases = [
        (["--classifier", str(other), "--image", image], "trained on encoder other:0123456789abcdef"),
        (["--classifier", str(tmp_path / "none.clf.safetensors"), "--image", image], "does not exist"),
        (["--classifier", str(other), "--image", str(world / "empty")], "holds no images"),
        (["--classifier", str(other), "--image", str(tmp_path / "nope.png")], "does not exist"),
    ]
    for extra, msg in cases:
        code = main(base + extra)
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and msg in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.clf.safetensors"]


def test_an_interrupt_leaves_no_file(world, tmp_path, monkeypatch, capsys):
    import fdi.classifier_train as ct

    real = ct.fit_mlp

    def interrupted(*a, **k):
        real(*a, **{**k, "progress": None})
        raise KeyboardInterrupt

    monkeypatch.setattr(ct, "fit_mlp", interrupted)
    out = tmp_path / "m.clf.safetensors"
    assert _train(world, out) == 130
    assert list(tmp_path.iterdir()) == []
