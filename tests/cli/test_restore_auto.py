"""``python -m fdi restore --auto CLF --blip2 DIR``: the classifier picks each image's adapters (tiny SD, tiny BLIP-2).

Two classifiers:

* one trained through :func:`fdi.classifier_train.train_classifier` on the tiny BLIP-2's tokens of 40 photos, each
  clean, hazed and darkened (``fdi degrade``'s ``haze`` at beta 1.5..1.8, airlight 0.9..1, and ``lowlight``): both
  survive the tiny encoder's 32-pixel input (global brightness and contrast), so the right adapter for held-out
  photos is known from what was applied; the test asserts the classifier finds it. Noise, rain and blur do not
  survive that input size and are not used here.
* one whose output is known by construction (zero weights, biases = the logits of chosen probabilities): every image
  gets the same probabilities, so weights, order and batching are known exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_sd import make_adapter, tiny_fdi

import fdi.images
from fdi.classifier import DegradationClassifier
from fdi.classifier_train import train_classifier
from fdi.cli import main
from fdi.degrade import degrade_image
from fdi.encoder import QFormerEncoder
from fdi.images import load_image, save_image
from fdi.pipeline import AdapterUse, FDIRestorationPipeline

FAST = ["--steps", "2", "--inversion-steps", "2", "--quiet", "--device", "cpu"]
LABELS = ("haze", "lowlight")
HAZE = "haze:beta=1.5..1.8:airlight=0.9..1"
KINDS = {"clean": None, "haze": HAZE, "lowlight": "lowlight"}


def photo(i: int, h: int = 48, w: int = 48) -> torch.Tensor:
    """A smooth random photo ``[3, h, w]``: a colour cast plus a 4×4 field upsampled."""
    g = torch.Generator().manual_seed(1000 + i)
    cast = torch.rand(3, 1, 1, generator=g) * 0.6 + 0.2
    field = torch.rand(1, 3, 4, 4, generator=g)
    field = torch.nn.functional.interpolate(field, size=(h, w), mode="bilinear", align_corners=False)[0]
    return (0.5 * cast + 0.5 * field).clamp(0, 1)


def degraded(i: int, kind: str, h: int = 48, w: int = 48) -> torch.Tensor:
    p = photo(i, h, w)
    return p if KINDS[kind] is None else degrade_image(p, KINDS[kind], seed=i * 10 + list(KINDS).index(kind))[0]


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_sd_folder, tiny_blip2_folder):
    """Adapters labelled haze, lowlight and derain (for the tiny BLIP-2's encoder), the trained classifier, the
    constant-classifier maker and six held-out inputs (two photos never trained on, × clean, haze, lowlight)."""
    r = tmp_path_factory.mktemp("auto")
    encoder = QFormerEncoder.from_pretrained(tiny_blip2_folder)
    fp = encoder.fingerprint
    adapters = {}
    for seed, label in enumerate(("haze", "lowlight", "derain")):
        a = make_adapter(seed=seed)
        a.encoder, a.label = fp, label
        adapters[label] = a.save(r / f"{label}.safetensors", fdi=dataclasses.replace(tiny_fdi(seed), encoder=fp))
    images, targets, groups = [], [], []
    for i in range(40):
        for kind in KINDS:
            images.append(degraded(i, kind))
            targets.append([float(kind == lab) for lab in LABELS])
            groups.append(f"p{i}")
    result = train_classifier(
        encoder.encode(images), torch.tensor(targets), groups, LABELS, fp, seed=0, pooling="mean+flat", hidden=64
    )
    clf = r / "trained.clf.safetensors"
    result.classifier.save(clf)
    held = r / "held"
    held.mkdir()
    for i in (100, 101):
        for kind in KINDS:
            save_image(degraded(i, kind), held / f"{kind}{i}.png")
    return {
        "root": r,
        "sd": tiny_sd_folder,
        "blip2": tiny_blip2_folder,
        "fp": fp,
        "adapters": adapters,
        "clf": clf,
        "held": held,
        "encoder": encoder,
    }


def constant_classifier(path: Path, encoder: str, probs: dict, thresholds: float = 0.5) -> Path:
    """A classifier file whose output is ``probs`` for every image (zero weights, biases = logits)."""
    clf = DegradationClassifier(list(probs), encoder, {"num_tokens": 8, "width": 32, "pooling": "mean", "hidden": 0})
    with torch.no_grad():
        clf.mlp[0].weight.zero_()
        clf.mlp[0].bias.copy_(torch.tensor([math.log(p / (1 - p)) for p in probs.values()]))
        clf.thresholds.fill_(thresholds)
    clf.save(path)
    return path


def auto_args(world, clf, out, *images, adapters=("haze", "lowlight", "derain")):
    a = [x for label in adapters for x in ("--adapter", str(world["adapters"][label]))]
    return [
        "restore",
        "--sd",
        str(world["sd"]),
        "--auto",
        str(clf),
        "--blip2",
        str(world["blip2"]),
        *a,
        "-o",
        str(out),
        "--image",
        *map(str, images),
        *FAST,
    ]


class Spy:
    """Records each ``FDIRestorationPipeline.restore`` call: batch size, adapters' labels and weights, mode."""

    def __init__(self, monkeypatch):
        self.calls = []
        original = FDIRestorationPipeline.restore

        def restore(pipe, images, uses, **k):
            self.calls.append((images.shape[0], [(u.adapter.label, round(u.weight, 6)) for u in uses], k["mode"]))
            return original(pipe, images, uses, **k)

        monkeypatch.setattr(FDIRestorationPipeline, "restore", restore)


def library_restore(pipe, path: Path, uses, mode: str = "composite") -> np.ndarray:
    out = pipe.restore(load_image(path)[None], uses, steps=2, inversion_steps=2, mode=mode)[0]
    return (out.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.int16)


def test_auto_picks_the_right_adapter_for_held_out_single_degradations(world, tiny_pipeline, tmp_path, capsys):
    from fdi.adapter import FDIAdapter

    out = tmp_path / "out"
    assert main(auto_args(world, world["clf"], out, world["held"])) == 0
    err = capsys.readouterr().err
    clf = DegradationClassifier.load(world["clf"])
    for src in sorted(world["held"].iterdir()):
        kind = src.stem.rstrip("0123456789")
        record = json.loads((out / f"{src.stem}.json").read_text())
        with Image.open(out / f"{src.stem}.png") as im:
            assert json.loads(im.text["fdi_decision"]) == record
        assert record["input"] == str(src)
        probs = clf.predict(world["encoder"], [load_image(src)])[0]
        assert record["probabilities"] == pytest.approx(probs, abs=1e-6)
        assert record["not_picked"] == ["derain"]
        if kind == "clean":
            assert record["detected"] == [] and record["adapters"] == [] and record["unchanged"]
            assert record["reason"].startswith("no degradation detected")
            assert np.array_equal(pixels(out / f"{src.stem}.png"), pixels(src))  # written unchanged
            continue
        p = record["probabilities"][kind]
        assert record["detected"] == [kind], record
        assert record["adapters"] == [{"order": 1, "index": LABELS.index(kind), "label": kind, "weight": p}]
        assert record["reason"].startswith(f"detected {kind} {p:.2f}: composite restoration with {kind} ")
        assert f"{src.stem}.png: detected {kind}" in err
        use = AdapterUse(FDIAdapter.from_file(world["adapters"][kind]), None, p)
        assert np.abs(pixels(out / f"{src.stem}.png") - library_restore(tiny_pipeline, src, [use])).max() <= 2


def test_constructed_classifier_composite_weights_progressive_order_and_batches(
    world, tiny_pipeline, tmp_path, monkeypatch
):
    from fdi.adapter import FDIAdapter

    clf = constant_classifier(tmp_path / "c.clf.safetensors", world["fp"], {"haze": 0.6, "lowlight": 0.8, "noise": 0.2})
    imgs = tmp_path / "in"
    imgs.mkdir()
    for i, (h, w) in enumerate([(48, 48), (40, 56), (48, 48)]):
        save_image(degraded(200 + i, "clean", h, w), imgs / f"x{i}.png")
    spy = Spy(monkeypatch)
    out = tmp_path / "composite"
    assert main([*auto_args(world, clf, out, imgs), "--batch-size", "2"]) == 0
    assert spy.calls == [
        (2, [("lowlight", 0.8), ("haze", 0.6)], "composite"),
        (1, [("lowlight", 0.8), ("haze", 0.6)], "composite"),
    ]
    record = json.loads((out / "x1.json").read_text())
    assert record["detected"] == ["lowlight", "haze"] and record["detected_without_adapter"] == []
    adapters = {k: FDIAdapter.from_file(world["adapters"][k]) for k in LABELS}
    uses = [AdapterUse(adapters["lowlight"], None, 0.8), AdapterUse(adapters["haze"], None, 0.6)]
    assert np.abs(pixels(out / "x1.png") - library_restore(tiny_pipeline, imgs / "x1.png", uses)).max() <= 2

    spy.calls.clear()
    out = tmp_path / "progressive"
    assert main([*auto_args(world, clf, out, imgs / "x0.png"), "--mode", "progressive"]) == 0
    assert spy.calls == [(1, [("lowlight", 1.0), ("haze", 1.0)], "progressive")]
    record = json.loads((out / "x0.json").read_text())
    assert [(a["order"], a["label"], a["weight"]) for a in record["adapters"]] == [
        (1, "lowlight", 1.0),
        (2, "haze", 1.0),
    ]
    assert "progressive restoration with lowlight, haze (in this order, most probable first)" in record["reason"]


def test_decisions_that_differ_do_not_share_a_batch(world, tmp_path, monkeypatch):
    clf = world["clf"]
    spy = Spy(monkeypatch)
    out = tmp_path / "out"
    ins = [world["held"] / n for n in ("haze100.png", "lowlight100.png", "haze101.png", "clean100.png")]
    assert main([*auto_args(world, clf, out, *ins), "--batch-size", "4"]) == 0
    assert [(n, [lab for lab, _ in uses]) for n, uses, _ in spy.calls] == [
        (1, ["haze"]),
        (1, ["haze"]),
        (1, ["lowlight"]),
    ]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{p.stem}{s}" for p in ins for s in (".json", ".png"))


def test_skip_existing_and_interrupt_keep_image_and_decision_together(world, tmp_path, monkeypatch):
    clf = constant_classifier(tmp_path / "c.clf.safetensors", world["fp"], {"haze": 0.9, "lowlight": 0.1})
    imgs = tmp_path / "in"
    imgs.mkdir()
    for i in range(3):
        save_image(degraded(300 + i, "clean"), imgs / f"y{i}.png")
    out = tmp_path / "out"
    original = fdi.images.save_image
    count = {"n": 0}

    def interrupted_second(image, path, text=None):
        count["n"] += 1
        if count["n"] == 2:
            raise KeyboardInterrupt
        return original(image, path, text=text)

    monkeypatch.setattr(fdi.images, "save_image", interrupted_second)
    assert main(auto_args(world, clf, out, imgs)) == 130
    assert sorted(p.name for p in out.iterdir()) == ["y0.json", "y0.png"]  # no decision without its image, no .tmp
    monkeypatch.setattr(fdi.images, "save_image", original)
    before = (out / "y0.json").stat().st_mtime_ns
    spy = Spy(monkeypatch)
    assert main([*auto_args(world, clf, out, imgs), "--skip-existing"]) == 0
    assert len(spy.calls) == 2 and (out / "y0.json").stat().st_mtime_ns == before
    assert sorted(p.name for p in out.iterdir()) == [f"y{i}{s}" for i in range(3) for s in (".json", ".png")]
    spy.calls.clear()
    assert main([*auto_args(world, clf, out, imgs), "--skip-existing"]) == 0
    assert spy.calls == []


def _bad_cases(world, tmp_path):
    fp = world["fp"]
    corrupt = tmp_path / "corrupt.clf.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    other_adapter = make_adapter(seed=5)
    other_adapter.label = "haze"
    other = other_adapter.save(tmp_path / "other.safetensors", fdi=tiny_fdi(5))  # encoder blip2-tiny:abcd
    empty = tmp_path / "empty"
    empty.mkdir()
    good = constant_classifier(tmp_path / "good.clf.safetensors", fp, {"haze": 0.9, "lowlight": 0.1})
    return {
        "missing classifier": (["--auto", str(tmp_path / "none.clf.safetensors")], "does not exist"),
        "corrupt classifier": (["--auto", str(corrupt)], "corrupt.clf.safetensors"),
        "classifier of another encoder": (
            ["--auto", str(constant_classifier(tmp_path / "o.clf.safetensors", "x:0123456789abcdef", {"haze": 0.9}))],
            "x:0123456789abcdef",
        ),
        "adapter of another encoder": (["--auto", str(good), "--adapter", str(other)], "blip2-tiny:abcd"),
        "labels with no matching adapter": (
            ["--auto", str(constant_classifier(tmp_path / "r.clf.safetensors", fp, {"rainstreak": 0.9}))],
            "no adapter's label matches a classifier label (classifier: rainstreak; adapters: 'haze', 'lowlight'",
        ),
        "--weight with --auto": (["--auto", str(good), "--weight", "1", "--weight", "1"], "leave out --weight"),
        "--auto without --blip2": (["--auto", str(good), "--blip2", None], "--auto needs --blip2"),
        "--blip2 without --auto": (["--auto", None], "--blip2 is read only by --auto"),
        "empty input folder": (["--image", str(empty)], "holds no images"),
    }


CASES = [
    "missing classifier",
    "corrupt classifier",
    "classifier of another encoder",
    "adapter of another encoder",
    "labels with no matching adapter",
    "--weight with --auto",
    "--auto without --blip2",
    "--blip2 without --auto",
    "empty input folder",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exit_2_one_line_nothing_loaded_or_written(world, tmp_path, monkeypatch, capsys, case):
    change, needle = _bad_cases(world, tmp_path)[case]
    args = auto_args(
        world, world["clf"], tmp_path / "out", world["held"] / "haze100.png", adapters=("haze", "lowlight")
    )
    for i in range(0, len(change), 2):
        flag, value = change[i], change[i + 1]
        if flag == "--adapter" or flag == "--weight":
            args += [flag, value]
        elif value is None:
            j = args.index(flag)
            del args[j : j + 2]
        else:
            args[args.index(flag) + 1] = value

    def no_loading(*a, **k):
        raise AssertionError("a model was loaded before the checks ended")

    monkeypatch.setattr(QFormerEncoder, "from_pretrained", no_loading)
    monkeypatch.setattr(FDIRestorationPipeline, "from_pretrained", no_loading)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and needle in err, err
    assert not (tmp_path / "out").exists()
