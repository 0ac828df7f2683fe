"""``python bench/classifier.py --out DIR``: the degradation classifier on held-out photos, beside a baseline.

Photos: scikit-image's sample photos (``bench/smallworld/world.py``'s lists): 12 for training, ``chelsea`` and
``coffee`` held out (never in training nor validation). Each photo is resized to a shorter side of ``--short`` px
and cut into ``--crop`` px squares (no overlap); every crop is degraded by ``fdi degrade`` (``degrade_folder``) with
each spec of :data:`SPECS` (single effects and mixes) and also kept clean. The classifier trains on the training
crops through the library's own sources (``--from-degrade`` folders), split for validation by *photo*, with the
tests' tiny BLIP-2 (32 px input, image-sensitive random init) as encoder. The baseline is a logistic regression
(the same trainer, no hidden layer; thresholds by the same rule on the same validation split) on simple image
statistics, computed on the crop as given and on the crop resized to the encoder's 32 px. Reported on the held-out
crops: per-label ROC AUC and exact-match accuracy (detected label set == true set), mean ± std over ``--seeds``
(each seed: other degradation draws, split and initialisation). Nothing is selected on held-out data.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "tests", ROOT / "bench" / "smallworld"):
    sys.path.insert(0, str(p))

from fdi.classifier import DEGRADE_LABELS  # noqa: E402
from fdi.classifier_train import (  # noqa: E402
    choose_thresholds,
    collect_training_set,
    encode_paths,
    fit_mlp,
    roc_auc,
    train_classifier,
)

#: what each crop becomes: every single effect but poisson (it is the label "noise" too) and five mixes
SPECS = (
    "haze",
    "rain",
    "noise",
    "jpeg",
    "lowlight",
    "motion_blur",
    "defocus",
    "haze,noise",
    "rain,jpeg",
    "lowlight,motion_blur",
    "defocus,jpeg",
    "haze,rain",
)


def write_crops(names: Sequence[str], folder: Path, short: int, crop: int) -> None:
    """Every ``crop`` px square (stride ``crop``) of each photo resized to a shorter side of ``short`` px."""
    from world import _grid, _load_photo, _resize_short

    from fdi.images import save_image

    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        for i, c in enumerate(_grid(_resize_short(_load_photo(name), short), crop, crop)):
            save_image(c, folder / f"{name}_{i:02d}.png")


def image_stats(images: torch.Tensor) -> torch.Tensor:
    """Simple statistics ``[B, 13]`` of images ``[B, 3, H, W]`` in 0..1: per-channel mean and std, dark channel
    (5 px min filter) mean, saturation mean, |Laplacian| mean, gradient energy and its x/y anisotropy, JPEG
    blockiness (steps across 8 px block edges over steps elsewhere), fraction of bright thin pixels (streaks)."""
    x = images.float()
    gray = x.mean(1, keepdim=True)
    mean, std = x.mean((2, 3)), x.std((2, 3))
    dark = -F.max_pool2d(-x.amin(1, keepdim=True), 5, 1, 2)
    mx, mn = x.amax(1), x.amin(1)
    sat = ((mx - mn) / mx.clamp_min(1e-3)).mean((1, 2))
    lap_k = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]).view(1, 1, 3, 3)
    lap = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), lap_k).abs().mean((1, 2, 3))
    gx, gy = (gray[..., :, 1:] - gray[..., :, :-1]).abs(), (gray[..., 1:, :] - gray[..., :-1, :]).abs()
    gxm, gym = gx.mean((1, 2, 3)), gy.mean((1, 2, 3))
    aniso = (gxm - gym).abs() / (gxm + gym + 1e-6)
    w = gx.shape[-1]
    edge = torch.zeros(w, dtype=torch.bool)
    edge[7::8] = True
    block = gx[..., edge].mean((1, 2, 3)) / gx[..., ~edge].mean((1, 2, 3)).clamp_min(1e-6) if edge.any() else gxm * 0
    local = F.avg_pool2d(gray, 5, 1, 2, count_include_pad=False)
    bright = ((gray - local) > 0.1).float().mean((1, 2, 3))
    return torch.cat(
        [mean, std, dark.mean((1, 2, 3))[:, None], torch.stack([sat, lap, gxm + gym, aniso, block, bright], 1)], 1
    )


def labelled(folders: Sequence[Path], groups_of=lambda stem: stem.rsplit("_", 1)[0]):
    """Images, targets ``[N, L]``, photo groups and labels of degrade folders (through the library's reader)."""
    data = collect_training_set(from_degrade=folders)
    return data, [groups_of(p.stem) for p in data.paths]


def load_batch(paths: Sequence[Path], size: int = 0) -> torch.Tensor:
    from fdi.images import load_image

    x = torch.stack([load_image(p) for p in paths])
    if size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    return x


def evaluate(probs: torch.Tensor, targets: torch.Tensor, thresholds: torch.Tensor, labels) -> Dict[str, object]:
    """Per-label AUC and exact-match accuracy on one set."""
    auc = {lab: roc_auc(probs[:, j], targets[:, j]) for j, lab in enumerate(labels)}
    exact = float(((probs >= thresholds) == (targets > 0.5)).all(1).float().mean())
    return {"auc": auc, "exact_match": exact}


def baseline(stats: torch.Tensor, targets, train_idx, val_idx, test_stats, test_targets, labels, seed: int):
    """Logistic regression on statistics: fit on train, thresholds on validation, scored on the held-out set."""
    mlp, mean, std = fit_mlp(stats[train_idx], targets[train_idx], 0, 0.0, 300, 64, 1e-2, 1e-3, seed)
    with torch.no_grad():
        prob = lambda s: torch.sigmoid(mlp((s - mean) / std))  # noqa: E731
        th = choose_thresholds(prob(stats[val_idx]), targets[val_idx])
        return evaluate(prob(test_stats), test_targets, th, labels)


def prepare(work: Path, short: int, crop: int):
    """Write the training and held-out crops under ``work`` and build the tiny BLIP-2 there; returns its encoder."""
    from tiny_blip2 import build_tiny_blip2
    from world import TEST_IMAGES, TRAIN_IMAGES

    from fdi.encoder import QFormerEncoder

    write_crops(TRAIN_IMAGES, work / "train_photos", short, crop)
    write_crops(TEST_IMAGES, work / "test_photos", short, crop)
    build_tiny_blip2(work / "blip2", seed=0)
    return QFormerEncoder.from_pretrained(work / "blip2")


def degrade_splits(work: Path, seed: int, specs: Sequence[str] = SPECS) -> Dict[str, List[Path]]:
    """``fdi degrade`` folders of the training and held-out crops, one per spec: ``{"train": [...], "test": [...]}``."""
    from fdi.degrade import degrade_folder

    dirs: Dict[str, List[Path]] = {"train": [], "test": []}
    for split in dirs:
        for spec in specs:
            out = work / f"seed{seed}" / split / spec.replace(",", "+")
            degrade_folder(work / f"{split}_photos", spec, out, seed=seed, overwrite=True)
            dirs[split].append(out)
    return dirs


def run_seed(seed: int, work: Path, encoder, args) -> Dict[str, object]:
    t0 = time.time()
    dirs = degrade_splits(work, seed)
    train, groups = labelled(dirs["train"])
    test, _ = labelled(dirs["test"])
    labels = train.labels
    assert set(test.labels) == set(labels)
    order = [test.labels.index(lab) for lab in labels]
    test_targets = test.targets[:, order]
    tokens = encode_paths(encoder, train.paths, 64)
    test_tokens = encode_paths(encoder, test.paths, 64)
    res = train_classifier(tokens, train.targets, groups, labels, encoder.fingerprint, args.val_fraction, seed,
                           pooling=args.pooling, epochs=args.epochs)  # fmt: skip
    clf = res.classifier
    out: Dict[str, object] = {
        "seed": seed,
        "n_train": len(res.train_idx),
        "n_val": len(res.val_idx),
        "n_test": len(test.paths),
        "val_auc": res.val_auc,
        "classifier": evaluate(clf.probabilities(test_tokens), test_targets, clf.thresholds, labels),
    }
    for name, size in (("stats_full", 0), ("stats_32px", encoder.image_size)):
        s, ts = image_stats(load_batch(train.paths, size)), image_stats(load_batch(test.paths, size))
        out[name] = baseline(s, train.targets, res.train_idx, res.val_idx, ts, test_targets, labels, seed)
    out["seconds"] = round(time.time() - t0, 1)
    print(f"seed {seed}: {out['n_train']} train, {out['n_val']} val, {out['n_test']} held-out images, "
          f"{out['seconds']} s", flush=True)  # fmt: skip
    return out


def summarise(runs: List[Dict[str, object]], labels: Sequence[str]) -> str:
    def ms(vals):
        t = torch.tensor(vals, dtype=torch.float64)
        return f"{t.mean():.3f} ± {t.std(unbiased=False):.3f}" if len(vals) > 1 else f"{t.mean():.3f}"

    methods = ("classifier", "stats_full", "stats_32px")
    head = "| label | classifier (tiny BLIP-2, 32 px) | stats, crop as given | stats, 32 px | val AUC (classifier) |"
    rows = [head, "|---|---|---|---|---|"]
    for lab in labels:
        cells = [ms([r[m]["auc"][lab] for r in runs]) for m in methods]
        rows.append(f"| {lab} AUC | " + " | ".join(cells) + f" | {ms([r['val_auc'][lab] for r in runs])} |")
    cells = [ms([r[m]["exact_match"] for r in runs]) for m in methods]
    rows.append("| exact-match accuracy | " + " | ".join(cells) + " | |")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for results.json (and the work files with --keep)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--short", type=int, default=192, help="shorter side of each photo before cropping, px")
    ap.add_argument("--crop", type=int, default=64, help="crop size, px")
    ap.add_argument("--pooling", default="flat")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--val-fraction", type=float, default=0.2)
    args = ap.parse_args(argv)
    from world import TEST_IMAGES, TRAIN_IMAGES

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        encoder = prepare(work, args.short, args.crop)
        runs = [run_seed(s, work, encoder, args) for s in args.seeds]
    labels = list(dict.fromkeys(DEGRADE_LABELS[e] for s in SPECS for e in s.split(",")))
    table = summarise(runs, labels)
    print(table)
    result = {
        "command": "python bench/classifier.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads".strip(),
        "torch": torch.__version__,
        "settings": vars(args),
        "specs": SPECS,
        "train_photos": TRAIN_IMAGES,
        "held_out_photos": TEST_IMAGES,
        "seconds": round(time.time() - t0, 1),
        "runs": runs,
        "table": table,
    }
    (out / "results.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {out / 'results.json'} ({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
