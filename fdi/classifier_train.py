"""Training a :class:`~fdi.classifier.DegradationClassifier` from folders of photos.

Sources (any mix): a folder per label (``haze=DIR``), folders of mixed photos (``haze+noise=DIR``), clean photos
(every label 0), and ``fdi degrade`` output folders (``degradations.jsonl`` names the effects of each
``degraded/<name>.png``, mapped to labels by :data:`~fdi.classifier.DEGRADE_LABELS`; ``clean/`` gives negatives).
Every image is encoded once (tokens kept in memory); the MLP trains on those features on the CPU, seeded.
A seeded validation split by photo (:func:`split_by_group`) gives each label its threshold (Youden's J,
:func:`choose_thresholds`) and its validation AUC. Rules and reasons: docs/design.md, "Degradation classifier".
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .classifier import DEGRADE_LABELS, POOLINGS, DegradationClassifier, build_mlp, normalize_label, pool_tokens
from .errors import FDIError
from .files import PathLike
from .progress import ProgressCallback, report

#: training defaults (docs/design.md, "Degradation classifier")
DEFAULTS: Dict[str, object] = dict(
    pooling="flat", hidden=256, dropout=0.1, epochs=200, batch_size=64, lr=1e-3, weight_decay=1e-2
)


@dataclass
class TrainingSet:
    """Images with their labels: ``targets`` ``[N, L]`` 0/1; ``groups[i]`` the photo image ``i`` comes from
    (the unit of the validation split)."""

    paths: List[Path]
    targets: torch.Tensor
    groups: List[str]
    labels: Tuple[str, ...]

    def counts(self) -> Dict[str, int]:
        """Positives per label."""
        return {lab: int(self.targets[:, j].sum()) for j, lab in enumerate(self.labels)}


@dataclass
class TrainResult:
    """A trained classifier and what chose its thresholds: the split indices and the validation probabilities."""

    classifier: DegradationClassifier
    train_idx: torch.Tensor
    val_idx: torch.Tensor
    val_probs: torch.Tensor
    val_auc: Dict[str, float] = field(default_factory=dict)


def parse_task(spec: str) -> Tuple[Tuple[str, ...], Path]:
    """``"haze=DIR"`` or ``"haze+noise=DIR"`` → ``(("haze", "noise"), Path(DIR))``; :class:`FDIError` if malformed."""
    name, sep, folder = str(spec).partition("=")
    if not sep or not name.strip() or not folder.strip():
        raise FDIError(f"cannot read --task {spec!r}; write LABEL=DIR or LABEL+LABEL=DIR (e.g. haze=photos/hazy)")
    labels = tuple(normalize_label(x) for x in name.split("+"))
    if len(set(labels)) != len(labels):
        raise FDIError(f"--task {spec!r} names a label twice; name each once")
    return labels, Path(folder.strip())


def _folder_images(folder: Path, what: str) -> List[Path]:
    from .images import list_images

    if folder.is_dir() and (folder / "degradations.jsonl").is_file() and (folder / "degraded").is_dir():
        raise FDIError(f"{what} {str(folder)!r} is an 'fdi degrade' output folder; pass it as --from-degrade {folder}")
    return list_images(folder, what)


def read_degrade_folder(folder: PathLike, seen_clean: Optional[set] = None) -> List[Tuple[Path, Tuple[str, ...], str]]:
    """``(image, labels, photo)`` of an ``fdi degrade`` output: each ``degraded/<name>.png`` with the labels of its
    effects, and each photo's ``clean/`` image once with no label (once across the calls sharing ``seen_clean``:
    several degrade folders made from one clean folder hold the same clean photos)."""
    root = Path(folder)
    log = root / "degradations.jsonl"
    if not log.is_file():
        raise FDIError(
            f"{str(root)!r} is not an 'fdi degrade' output folder (no degradations.jsonl); "
            "give the folder python -m fdi degrade -o wrote"
        )
    out: List[Tuple[Path, Tuple[str, ...], str]] = []
    seen_clean = set() if seen_clean is None else seen_clean
    for n, line in enumerate(log.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            rec = json.loads(line)
            name, photo = str(rec["name"]), Path(str(rec["source"])).stem
            effects = [str(e["effect"]) for e in rec["effects"]]
        except (ValueError, KeyError, TypeError):
            raise FDIError(
                f"{log}: line {n} is not a degrade record; write the folder again with fdi degrade"
            ) from None
        unknown = [e for e in effects if e not in DEGRADE_LABELS]
        if unknown:
            raise FDIError(f"{log}: line {n} names unknown effects {unknown}; known: {', '.join(DEGRADE_LABELS)}")
        labels = tuple(dict.fromkeys(DEGRADE_LABELS[e] for e in effects))
        degraded, clean = root / "degraded" / f"{name}.png", root / "clean" / f"{name}.png"
        if not degraded.is_file():
            raise FDIError(f"{log} names {name!r} but {degraded} is missing; write the folder again with fdi degrade")
        out.append((degraded, labels, photo))
        if clean.is_file() and photo not in seen_clean:
            seen_clean.add(photo)
            out.append((clean, (), photo))
    if not out:
        raise FDIError(f"{log} lists no images; write the folder again with fdi degrade")
    return out


def collect_training_set(
    tasks: Sequence[str] = (), clean: Sequence[PathLike] = (), from_degrade: Sequence[PathLike] = ()
) -> TrainingSet:
    """The images of every source and their labels (order: first seen across tasks, then degrade folders).

    Each image's photo (its split group) is its file stem, or for a degrade folder the photo it was made from, so
    the same photo under two folders (``hazy/a.png``, ``clean/a.png``) never falls on both sides of the split.
    Raises :class:`FDIError` for a malformed task, a missing or empty folder, an image named as clean and degraded,
    no labels, or a label without positives or without negatives.
    """
    items: List[Tuple[Path, Tuple[str, ...], str]] = []
    for spec in tasks:
        labels, folder = parse_task(spec)
        items += [(p, labels, p.stem) for p in _folder_images(folder, f"--task {'+'.join(labels)} folder")]
    for folder in clean:
        items += [(p, (), p.stem) for p in _folder_images(Path(folder), "--clean folder")]
    seen_clean: set = set()
    for folder in from_degrade:
        items += read_degrade_folder(folder, seen_clean)
    order = list(dict.fromkeys(lab for _, labs, _ in items for lab in labs))
    if not order:
        raise FDIError(
            "no labelled images; give --task LABEL=DIR or --from-degrade DIR (clean photos alone teach nothing)"
        )
    merged: Dict[Path, Tuple[Path, set, str, bool]] = {}
    for path, labs, group in items:
        key = path.resolve()
        prev = merged.get(key)
        if prev is not None and (not labs) != prev[3]:
            raise FDIError(f"{path} is given both as clean and as degraded; keep it in one folder")
        merged[key] = (path, (prev[1] if prev else set()) | set(labs), group, not labs)
    rows = list(merged.values())
    targets = torch.tensor([[float(lab in r[1]) for lab in order] for r in rows], dtype=torch.float32)
    ts = TrainingSet([r[0] for r in rows], targets, [r[2] for r in rows], tuple(order))
    for j, lab in enumerate(order):
        if targets[:, j].min() == 1:
            raise FDIError(f"label {lab!r} has no negative examples; add --clean DIR or folders of other labels")
    return ts


def split_by_group(
    groups: Sequence[str], targets: torch.Tensor, labels: Sequence[str], val_fraction: float, seed: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Seeded split by photo: ``(train_idx, val_idx)``. About ``val_fraction`` of the photos go to validation, more
    where a label would otherwise have no positive there; every label needs positives and negatives on both sides."""
    if not 0.0 < val_fraction < 1.0:
        raise FDIError(f"--val-fraction must be between 0 and 1 (e.g. 0.2), got {val_fraction}")
    names = list(dict.fromkeys(groups))
    if len(names) < 2:
        raise FDIError("all images come from one photo; the validation split needs at least two photos")
    gen = torch.Generator().manual_seed(int(seed))
    perm = [names[i] for i in torch.randperm(len(names), generator=gen).tolist()]
    n_val = min(len(names) - 1, max(1, round(val_fraction * len(names))))
    val = set(perm[:n_val])
    gidx = torch.tensor([names.index(g) for g in groups])
    pos_groups = [{names[int(g)] for g in gidx[targets[:, j] > 0].tolist()} for j in range(len(labels))]
    for j in sorted(range(len(labels)), key=lambda j: len(pos_groups[j])):
        in_train = [g for g in perm if g in pos_groups[j] and g not in val]
        if not pos_groups[j] & val and len(in_train) >= 2:
            val.add(in_train[0])
    is_val = torch.tensor([g in val for g in groups])
    for j, lab in enumerate(labels):
        for side, mask in (("training", ~is_val), ("validation", is_val)):
            col = targets[mask, j]
            if col.numel() == 0 or col.max() < 1 or col.min() > 0:
                raise FDIError(
                    f"label {lab!r} has no {'positive' if col.numel() == 0 or col.max() < 1 else 'negative'} image "
                    f"in the {side} split (photos are split whole); add photos of it from more scenes, "
                    "or change --val-fraction or --seed"
                )
    return torch.nonzero(~is_val).flatten(), torch.nonzero(is_val).flatten()


def encode_paths(
    encoder, paths: Sequence[PathLike], batch_size: int = 16, progress: Optional[ProgressCallback] = None
) -> torch.Tensor:
    """Q-Former tokens ``[N, T, D]`` (CPU, float32) of image files, any sizes, ``batch_size`` per encoder call."""
    from .images import load_image

    out = []
    for start in range(0, len(paths), batch_size):
        images = [load_image(p) for p in paths[start : start + batch_size]]
        out.append(encoder.encode(images).cpu())
        report(progress, start + len(images), len(paths))
    return torch.cat(out)


def roc_auc(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """ROC AUC of ``scores`` ``[N]`` for 0/1 ``targets`` ``[N]``: P(positive scores above negative), ties count half;
    ``nan`` when one class is absent."""
    pos, neg = scores[targets > 0.5].double(), scores[targets <= 0.5].double()
    if pos.numel() == 0 or neg.numel() == 0:
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float((diff > 0).double().mean() + 0.5 * (diff == 0).double().mean())


def choose_thresholds(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-label thresholds ``[L]`` in (0, 1) maximising Youden's J = TPR − FPR on ``probs``/``targets`` ``[N, L]``.

    Cut candidates are the observed probabilities (positive when ``p >= cut``); among equal J the highest cut wins
    (fewest detections). The threshold sits halfway, in logit space, between the cut and the next lower probability,
    so the decisions on these images are the cut's and a small change of score does not flip them."""
    eps = 1e-4
    out = []
    for j in range(probs.shape[1]):
        p, t = probs[:, j].double(), targets[:, j] > 0.5
        n_pos, n_neg = max(int(t.sum()), 1), max(int((~t).sum()), 1)
        cuts = torch.unique(p).flip(0)  # descending
        best_j, best_k = -math.inf, 0
        for k, c in enumerate(cuts.tolist()):
            pred = p >= c
            jv = float((pred & t).sum()) / n_pos - float((pred & ~t).sum()) / n_neg
            if jv > best_j + 1e-12:
                best_j, best_k = jv, k
        lo = torch.logit(cuts[best_k].clamp(eps, 1 - eps))
        below = torch.logit(cuts[best_k + 1].clamp(eps, 1 - eps)) if best_k + 1 < len(cuts) else lo - 2.0
        out.append(float(torch.sigmoid((lo + below) / 2).clamp(eps, 1 - eps)))
    return torch.tensor(out, dtype=torch.float32)


def fit_mlp(
    features: torch.Tensor,
    targets: torch.Tensor,
    hidden: int,
    dropout: float,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    progress: Optional[ProgressCallback] = None,
) -> Tuple[torch.nn.Sequential, torch.Tensor, torch.Tensor]:
    """Train an MLP (``hidden`` = 0: logistic regression) with BCE on features ``[N, F]`` → ``(mlp, mean, std)``,
    ``mean``/``std`` ``[F]`` the standardisation it was trained with. CPU, AdamW, seeded: same inputs, same bits."""
    x = features.detach().float().cpu()
    y = targets.detach().float().cpu()
    mean = x.mean(0)
    std = x.std(0, unbiased=False)
    std = std.clamp_min(1e-3 * float(std.mean()) + 1e-12)
    x = (x - mean) / std
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        mlp = build_mlp(x.shape[1], hidden, y.shape[1], dropout)
        opt = torch.optim.AdamW(mlp.parameters(), lr=lr, weight_decay=weight_decay)
        gen = torch.Generator().manual_seed(int(seed) + 1)
        mlp.train()
        for epoch in range(epochs):
            for idx in torch.randperm(len(x), generator=gen).split(batch_size):
                loss = F.binary_cross_entropy_with_logits(mlp(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            report(progress, epoch + 1, epochs)
    mlp.eval().requires_grad_(False)
    return mlp, mean, std


def train_classifier(
    tokens: torch.Tensor,
    targets: torch.Tensor,
    groups: Sequence[str],
    labels: Sequence[str],
    encoder: str,
    val_fraction: float = 0.2,
    seed: int = 0,
    progress: Optional[ProgressCallback] = None,
    **settings,
) -> TrainResult:
    """Train on encoded images: ``tokens`` ``[N, T, D]``, ``targets`` ``[N, L]``, ``groups`` the photo of each image.

    Splits by photo (:func:`split_by_group`), fits on the training split, chooses thresholds and reports AUC on the
    validation split only. ``settings`` override :data:`DEFAULTS` (pooling, hidden, dropout, epochs, batch_size, lr,
    weight_decay)."""
    unknown = set(settings) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown classifier settings {sorted(unknown)}")
    cfg = {**DEFAULTS, **settings}
    if cfg["pooling"] not in POOLINGS:
        raise FDIError(f"unknown pooling {cfg['pooling']!r}; choose from: {', '.join(POOLINGS)}")
    if int(cfg["epochs"]) < 1 or int(cfg["batch_size"]) < 1 or int(cfg["hidden"]) < 0:
        raise FDIError(f"epochs and batch size must be at least 1 and hidden at least 0, got {cfg}")
    train_idx, val_idx = split_by_group(groups, targets, labels, val_fraction, seed)
    feats = pool_tokens(tokens, str(cfg["pooling"]))
    fit_keys = ("hidden", "dropout", "epochs", "batch_size", "lr", "weight_decay")
    mlp, mean, std = fit_mlp(
        feats[train_idx], targets[train_idx], seed=seed, progress=progress, **{k: cfg[k] for k in fit_keys}
    )
    config = {
        **cfg,
        "num_tokens": int(tokens.shape[1]),
        "width": int(tokens.shape[2]),
        "seed": int(seed),
        "val_fraction": float(val_fraction),
    }
    clf = DegradationClassifier(labels, encoder, config)
    clf.mlp.load_state_dict(mlp.state_dict())
    clf.feature_mean.copy_(mean)
    clf.feature_std.copy_(std)
    val_probs = clf.probabilities(tokens[val_idx])
    clf.thresholds.copy_(choose_thresholds(val_probs, targets[val_idx]))
    auc = {lab: roc_auc(val_probs[:, j], targets[val_idx, j]) for j, lab in enumerate(clf.labels)}
    clf.validation = {"auc": auc, "n_train": int(len(train_idx)), "n_val": int(len(val_idx))}
    return TrainResult(clf, train_idx, val_idx, val_probs, auc)


def train_from_folders(
    encoder,
    data: TrainingSet,
    val_fraction: float = 0.2,
    seed: int = 0,
    batch_size: int = 16,
    progress: Optional[ProgressCallback] = None,
    **settings,
) -> TrainResult:
    """Encode every image of ``data`` once with ``encoder`` (a :class:`~fdi.encoder.QFormerEncoder`), then
    :func:`train_classifier`. ``progress`` counts images encoded, then epochs, as one total."""
    split_by_group(data.groups, data.targets, data.labels, val_fraction, seed)  # refuse a bad split before encoding
    n, epochs = len(data.paths), int(settings.get("epochs", DEFAULTS["epochs"]))
    total = n + epochs
    enc_cb = None if progress is None else (lambda d, _t: progress(d, total))
    fit_cb = None if progress is None else (lambda d, _t: progress(n + d, total))
    tokens = encode_paths(encoder, data.paths, batch_size, enc_cb)
    return train_classifier(
        tokens,
        data.targets,
        data.groups,
        data.labels,
        encoder.fingerprint,
        val_fraction,
        seed,
        fit_cb,
        **settings,
    )


__all__ = [
    "DEFAULTS",
    "TrainResult",
    "TrainingSet",
    "choose_thresholds",
    "collect_training_set",
    "encode_paths",
    "fit_mlp",
    "parse_task",
    "read_degrade_folder",
    "roc_auc",
    "split_by_group",
    "train_classifier",
    "train_from_folders",
]
