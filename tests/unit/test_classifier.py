"""The degradation classifier (``fdi/classifier.py``, ``fdi/classifier_train.py``) with the tests' tiny BLIP-2.

Data: 64 px crops of scikit-image's photos, degraded by ``fdi degrade``; ``chelsea`` and ``coffee`` are held out
(never trained on, never validated on). The tiny BLIP-2 sees 32 px: haze and low light survive that view, fine
texture (noise, JPEG blocks) mostly does not (docs/classifier.md), so only haze and low light are bounded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from fdi.classifier import CLASSIFIER_SUFFIX, DegradationClassifier
from fdi.classifier_train import (
    choose_thresholds,
    collect_training_set,
    encode_paths,
    read_degrade_folder,
    roc_auc,
    split_by_group,
    train_classifier,
    train_from_folders,
)
from fdi.degrade import degrade_folder
from fdi.errors import FDIError, FDIInterrupted
from fdi.images import save_image

pytest.importorskip("skimage.data")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
write_crops = pytest.importorskip("classifier").write_crops  # bench/classifier.py: crops of scikit-image's photos

TRAIN_PHOTOS = ("astronaut", "rocket", "camera", "coins", "grass", "brick", "gravel", "immunohistochemistry")
HELD_OUT = ("chelsea", "coffee")
SPECS = ("haze", "lowlight", "noise", "jpeg")


@pytest.fixture(scope="module")
def encoder(tiny_blip2_folder):
    from fdi.encoder import QFormerEncoder

    return QFormerEncoder.from_pretrained(tiny_blip2_folder)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, encoder):
    """A classifier trained on degrade folders of the training photos, and the held-out set encoded."""
    root = tmp_path_factory.mktemp("clf")
    write_crops(TRAIN_PHOTOS, root / "train", 128, 64)
    write_crops(HELD_OUT, root / "held", 128, 64)
    for spec in SPECS:
        degrade_folder(root / "train", spec, root / f"train_{spec}", seed=0)
        degrade_folder(root / "held", spec, root / f"held_{spec}", seed=1)
    data = collect_training_set(from_degrade=[root / f"train_{s}" for s in SPECS])
    res = train_from_folders(encoder, data, val_fraction=0.25, seed=0, epochs=100)
    held = collect_training_set(from_degrade=[root / f"held_{s}" for s in SPECS])
    assert held.labels == data.labels
    return {
        "root": root,
        "data": data,
        "res": res,
        "held": held,
        "held_tokens": encode_paths(encoder, held.paths),
        "tokens": encode_paths(encoder, data.paths),
    }


def test_the_classifier_sees_haze_and_lowlight_on_held_out_photos(trained):
    clf, held = trained["res"].classifier, trained["held"]
    probs = clf.probabilities(trained["held_tokens"])
    auc = {lab: roc_auc(probs[:, j], held.targets[:, j]) for j, lab in enumerate(clf.labels)}
    print("held-out AUC", auc)
    assert auc["haze"] >= 0.9
    assert auc["lowlight"] >= 0.95
    # thresholds chosen on validation (two photos) carry to other scenes less well than the ranking does: hazy held-out
    # crops score lower than the validation ones (4/12 detected here, 7/12 with other crops; docs/classifier.md);
    # false alarms stay rare and low light, far from every clean crop, is found
    rates = {}
    for lab in ("haze", "lowlight"):
        j = clf.labels.index(lab)
        hit = probs[:, j] >= clf.thresholds[j]
        pos = held.targets[:, j] > 0
        rates[lab] = (hit[pos].float().mean().item(), hit[~pos].float().mean().item())
    print("detected, false alarms", rates)
    assert rates["lowlight"][0] >= 0.9 and rates["haze"][0] >= 0.25
    assert rates["lowlight"][1] <= 0.1 and rates["haze"][1] <= 0.1


def test_degrade_folder_source_reads_labels_right(tmp_path):
    write_crops(("coins",), tmp_path / "photos", 64, 32)
    photos = sorted(p.stem for p in (tmp_path / "photos").iterdir())
    degrade_folder(tmp_path / "photos", "haze,poisson", tmp_path / "mix", seed=0, copies=2)
    degrade_folder(tmp_path / "photos", "rain", tmp_path / "rain", seed=0)
    rows = read_degrade_folder(tmp_path / "mix")
    degraded = [r for r in rows if r[1]]
    assert len(degraded) == 2 * len(photos) and all(r[1] == ("haze", "noise") for r in degraded)  # poisson -> noise
    assert sorted(r[2] for r in rows if not r[1]) == photos  # one clean image per photo, not per copy
    assert {r[2] for r in degraded} == set(photos)  # copies <stem>-<k> belong to their photo
    data = collect_training_set(from_degrade=[tmp_path / "mix", tmp_path / "rain"])
    assert data.labels == ("haze", "noise", "rainstreak")
    assert len(data.paths) == 3 * len(photos) + len(photos)  # clean photos once across both folders
    by_name = {(p.parent.parent.name, p.parent.name, p.stem): t.tolist() for p, t in zip(data.paths, data.targets)}
    assert by_name[("rain", "degraded", photos[0])] == [0, 0, 1]
    assert by_name[("mix", "degraded", f"{photos[0]}-1")] == [1, 1, 0]
    assert by_name[("mix", "clean", f"{photos[0]}-0")] == [0, 0, 0]
    with pytest.raises(FDIError, match="--from-degrade"):
        collect_training_set(tasks=[f"haze={tmp_path / 'mix'}"])


def test_task_and_clean_folders_and_their_groups(tmp_path):
    for sub, seed in (("hazy", 0), ("both", 1), ("clean", 2)):
        (tmp_path / sub).mkdir()
        for i in range(3):
            save_image(
                torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(seed * 10 + i)),
                tmp_path / sub / f"p{i}.png",
            )
    data = collect_training_set([f"Haze={tmp_path / 'hazy'}", f"haze+noise={tmp_path / 'both'}"], [tmp_path / "clean"])
    assert data.labels == ("haze", "noise")
    assert data.targets.sum(0).tolist() == [6.0, 3.0] and len(data.paths) == 9
    assert sorted(set(data.groups)) == ["p0", "p1", "p2"]  # one photo under three folders is one group
    for bad, msg in (("haze", "LABEL=DIR"), ("=x", "LABEL=DIR"), ("ha ze=x", "plain name"), ("haze+haze=x", "twice")):
        with pytest.raises(FDIError, match=msg):
            collect_training_set([bad])
    with pytest.raises(FDIError, match="no negative"):
        collect_training_set([f"haze={tmp_path / 'hazy'}"])
    with pytest.raises(FDIError, match="does not exist"):
        collect_training_set([f"haze={tmp_path / 'nope'}"], [tmp_path / "clean"])


def test_split_is_by_photo_seeded_and_covers_every_label(trained):
    data = trained["data"]
    tr, va = split_by_group(data.groups, data.targets, data.labels, 0.25, 0)
    assert {data.groups[i] for i in tr.tolist()}.isdisjoint({data.groups[i] for i in va.tolist()})
    assert len(tr) + len(va) == len(data.paths)
    assert torch.equal(va, split_by_group(data.groups, data.targets, data.labels, 0.25, 0)[1])
    assert not torch.equal(va, split_by_group(data.groups, data.targets, data.labels, 0.25, 1)[1])
    res = trained["res"]
    assert torch.equal(res.val_idx, va) and torch.equal(res.train_idx, tr)
    with pytest.raises(FDIError, match="between 0 and 1"):
        split_by_group(data.groups, data.targets, data.labels, 1.0, 0)


def test_thresholds_come_from_the_validation_split_only(trained):
    res, data = trained["res"], trained["data"]
    clf, tokens = res.classifier, trained["tokens"]
    val_probs = clf.probabilities(tokens[res.val_idx])
    assert torch.equal(val_probs, res.val_probs)
    assert torch.equal(clf.thresholds, choose_thresholds(val_probs, data.targets[res.val_idx]))
    on_train = choose_thresholds(clf.probabilities(tokens[res.train_idx]), data.targets[res.train_idx])
    assert not torch.equal(clf.thresholds, on_train)
    assert ((clf.thresholds > 0) & (clf.thresholds < 1)).all()


def test_choose_thresholds_and_auc_on_known_numbers():
    p = torch.tensor([[0.9], [0.8], [0.6], [0.4], [0.3], [0.1]])
    t = torch.tensor([[1.0], [1.0], [0.0], [1.0], [0.0], [0.0]])
    # cuts: 0.8 -> J = 2/3; 0.4 -> J = 1 - 1/3 = 2/3; equal J: the higher cut wins, placed between 0.8 and 0.6
    th = float(choose_thresholds(p, t)[0])
    lo, hi = torch.logit(torch.tensor(0.6)), torch.logit(torch.tensor(0.8))
    assert th == pytest.approx(float(torch.sigmoid((lo + hi) / 2)), abs=1e-6)
    assert roc_auc(p[:, 0], t[:, 0]) == pytest.approx(8 / 9)
    assert roc_auc(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0])) == 0.5


def test_save_load_round_trip_is_exact(trained, tmp_path):
    clf = trained["res"].classifier
    path = tmp_path / f"c{CLASSIFIER_SUFFIX}"
    clf.save(path)
    back = DegradationClassifier.load(path)
    assert back.labels == clf.labels and back.encoder == clf.encoder and back.config == clf.config
    assert torch.equal(back.thresholds, clf.thresholds)
    assert back.validation == json.loads(json.dumps(clf.validation))
    for k, v in clf.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    tokens = trained["held_tokens"]
    assert torch.equal(back.probabilities(tokens), clf.probabilities(tokens))
    with pytest.raises(FDIError, match="must end with"):
        clf.save(tmp_path / "c.safetensors")
    with pytest.raises(FDIError, match="does not exist"):
        DegradationClassifier.load(tmp_path / "missing.clf.safetensors")
    from fdi.instruction import FDI

    FDI(tokens=torch.zeros(8, 32), encoder="x:1").save(tmp_path / "x.fdi.safetensors")
    with pytest.raises(FDIError, match="not an FDI degradation classifier"):
        DegradationClassifier.load(tmp_path / "x.fdi.safetensors")


def test_another_encoder_is_refused(trained, encoder, tmp_path):
    import copy

    from tiny_blip2 import build_tiny_blip2

    from fdi.encoder import QFormerEncoder

    clf = trained["res"].classifier
    build_tiny_blip2(tmp_path / "other", seed=1)
    other = QFormerEncoder.from_pretrained(tmp_path / "other")
    assert other.fingerprint != encoder.fingerprint
    image = torch.rand(3, 40, 40)
    with pytest.raises(FDIError, match="trained on encoder") as err:
        clf.predict(other, [image])
    assert clf.encoder in str(err.value) and other.fingerprint in str(err.value)
    renamed = copy.copy(encoder)
    renamed.fingerprint = "elsewhere:" + encoder.fingerprint.rsplit(":", 1)[1]
    out = clf.predict(renamed, [image, torch.rand(3, 64, 48)])  # same encoder from another folder name: accepted
    assert len(out) == 2 and set(out[0]) == set(clf.labels) and all(0 <= v <= 1 for v in out[0].values())


def test_detected_orders_by_probability():
    clf = DegradationClassifier(("a", "b", "c"), "e:1", dict(pooling="mean", hidden=0, num_tokens=2, width=3))
    clf.thresholds.copy_(torch.tensor([0.5, 0.2, 0.9]))
    assert clf.detected({"a": 0.6, "b": 0.7, "c": 0.8}) == ["b", "a"]
    assert clf.detected({"a": 0.1, "b": 0.1, "c": 0.1}) == []


def test_detected_breaks_ties_as_restore_auto_decides():
    """Equal probabilities: the classifier (detection node, classify predict) and fdi.auto.decide list the labels in
    one order, by name, whatever the classifier's column order."""
    from fdi.auto import decide

    clf = DegradationClassifier(("noise", "haze"), "e:1", dict(pooling="mean", hidden=0, num_tokens=2, width=3))
    clf.thresholds.copy_(torch.tensor([0.5, 0.5]))
    probs = {"noise": 0.7, "haze": 0.7}
    decision = decide(probs, clf.threshold_map(), ["noise", "haze"], "progressive")
    assert clf.detected(probs) == ["haze", "noise"] == list(decision.detected)


def test_training_is_deterministic_and_an_interrupt_returns_nothing(trained):
    data, tokens = trained["data"], trained["tokens"]
    args = (tokens, data.targets, data.groups, data.labels, "e:1", 0.25, 3)
    a = train_classifier(*args, epochs=5).classifier
    b = train_classifier(*args, epochs=5).classifier
    for k, v in a.state_dict().items():
        assert torch.equal(b.state_dict()[k], v), k
    c = train_classifier(*args[:-1], 4, epochs=5).classifier
    assert not torch.equal(c.mlp[0].weight, a.mlp[0].weight)

    def stop(done, total):
        if done >= 2:
            raise FDIInterrupted("stopped")

    with pytest.raises(FDIInterrupted):
        train_classifier(*args, progress=stop, epochs=5)
