"""``python bench/strength.py --out DIR``: can the Q-Former tokens tell *how strong* a degradation is?

The data are bench/classifier.py's (imported, not copied): 64 px crops of scikit-image's photos, 12 photos for
training and validation (split by photo with the classifier's own rule, ``split_by_group``), ``chelsea`` and
``coffee`` held out; every crop degraded by ``fdi degrade`` with each spec of ``SPECS`` (single effects and mixes).
Each image's drawn parameters come from its folder's ``degradations.jsonl``. For each parameter an effect draws
(haze ``beta``, noise ``sigma``, ...; motion blur's ``angle`` is left out: 0° and 180° are the same kernel), a
regressor is fitted on the training images that carry the effect (single or mixed; rows ``(single)``: only the
images with that one effect), its setting chosen on the validation images, and scored on the held-out images that
carry it (never fitted or chosen on):

* ``tokens ridge``: ridge regression on the flattened Q-Former tokens of the tests' tiny BLIP-2 (32 px view),
  standardised on the training split, ridge strength chosen on validation MSE;
* ``tokens MLP``: one hidden layer (64, GELU), MSE, AdamW, the epoch kept by validation MSE;
* ``stats ridge``: ridge on bench/classifier.py's 13 image statistics, on the crop as given and at 32 px;
* ``train mean``: the training images' mean.

Reported: R² (1 − SSE / the held-out variance around the held-out mean) and MAE in the parameter's units, mean ± std
over ``--seeds`` (each seed: other degradation draws, split and initialisation).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from classifier import SPECS, degrade_splits, image_stats, labelled, load_batch, prepare  # noqa: E402

from fdi.classifier import pool_tokens  # noqa: E402
from fdi.classifier_train import encode_paths, split_by_group  # noqa: E402
from fdi.degrade import EFFECTS  # noqa: E402

#: parameters not regressed, and why
SKIPPED = {("motion_blur", "angle"): "periodic: 0° and 180° are the same kernel"}
ALPHAS = tuple(10.0**k for k in range(-2, 6))
METHODS = ("tokens_ridge", "tokens_mlp", "stats_full_ridge", "stats_32px_ridge", "train_mean")

Param = Tuple[str, str]


def drawn_parameters(folders: Sequence[Path]) -> Dict[Path, Dict[Param, float]]:
    """``degraded/<name>.png`` (resolved) → {(effect, parameter): drawn value} of every degrade folder."""
    out: Dict[Path, Dict[Param, float]] = {}
    for folder in folders:
        for line in (folder / "degradations.jsonl").read_text(encoding="utf-8").splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            rec = json.loads(line)
            vals = {(e["effect"], k): float(v) for e in rec["effects"] for k, v in e.items() if k != "effect"}
            out[(folder / "degraded" / f"{rec['name']}.png").resolve()] = vals
    return out


def parameters_of(specs: Sequence[str]) -> List[Param]:
    """Every (effect, parameter) the specs draw, in effect order, less :data:`SKIPPED`."""
    effects = [e for e in EFFECTS if any(e in s.split(",") for s in specs)]
    return [(e, k) for e in effects for k in EFFECTS[e].ranges if (e, k) not in SKIPPED]


def _standardise(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    mean, std = x[idx].mean(0), x[idx].std(0, unbiased=False)
    return (x - mean) / std.clamp_min(1e-3 * float(std.mean()) + 1e-12)


def ridge(x: torch.Tensor, y: torch.Tensor, tr: torch.Tensor, va: torch.Tensor) -> Tuple[torch.Tensor, float]:
    """Ridge on features ``x`` ``[N, F]`` → predictions ``[N]`` with the strength of least validation MSE."""
    x = _standardise(x.double(), tr)
    y = y.double()
    ym = y[tr].mean()
    a = x[tr].T @ x[tr]
    b = x[tr].T @ (y[tr] - ym)
    best = (float("inf"), None, 0.0)
    for alpha in ALPHAS:
        w = torch.linalg.solve(a + alpha * torch.eye(a.shape[0], dtype=a.dtype), b)
        pred = x @ w + ym
        mse = float(((pred[va] - y[va]) ** 2).mean())
        if mse < best[0]:
            best = (mse, pred, alpha)
    return best[1].float(), best[2]


def mlp(x: torch.Tensor, y: torch.Tensor, tr: torch.Tensor, va: torch.Tensor, seed: int, epochs: int = 300):
    """One hidden layer (64, GELU) with MSE on standardised inputs and target; the epoch of least validation MSE."""
    x = _standardise(x.float(), tr)
    ym, ys = y[tr].mean(), y[tr].std().clamp_min(1e-6)
    t = (y - ym) / ys
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 64), torch.nn.GELU(), torch.nn.Linear(64, 1))
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-2)
        gen = torch.Generator().manual_seed(seed + 1)
        best = (float("inf"), None, 0)
        for epoch in range(1, epochs + 1):
            net.train()
            for idx in tr[torch.randperm(len(tr), generator=gen)].split(32):
                loss = ((net(x[idx])[:, 0] - t[idx]) ** 2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if epoch % 10 == 0:
                with torch.no_grad():
                    net.eval()
                    pred = net(x)[:, 0] * ys + ym
                mse = float(((pred[va] - y[va]) ** 2).mean())
                if mse < best[0]:
                    best = (mse, pred, epoch)
    return best[1], best[2]


def scores(pred: torch.Tensor, y: torch.Tensor) -> Dict[str, float]:
    """R² around the set's own mean, and MAE."""
    sse = float(((pred - y) ** 2).sum())
    sst = float(((y - y.mean()) ** 2).sum())
    return {"r2": 1.0 - sse / max(sst, 1e-12), "mae": float((pred - y).abs().mean())}


def run_seed(seed: int, work: Path, encoder, args) -> Dict[str, object]:
    t0 = time.time()
    dirs = degrade_splits(work, seed)
    train, groups = labelled(dirs["train"])
    test, _ = labelled(dirs["test"])
    tr_all, va_all = split_by_group(groups, train.targets, train.labels, args.val_fraction, seed)
    paths = train.paths + test.paths
    n_train = len(train.paths)
    drawn = drawn_parameters(dirs["train"] + dirs["test"])
    feats = {
        "tokens": pool_tokens(encode_paths(encoder, paths, 64), "flat"),
        "stats_full": image_stats(load_batch(paths)),
        "stats_32px": image_stats(load_batch(paths, encoder.image_size)),
    }
    is_val = torch.zeros(len(paths), dtype=torch.bool)
    is_val[va_all] = True
    out: Dict[str, object] = {"seed": seed, "params": {}}
    for param, only_single in [(p, s) for s in (False, True) for p in parameters_of(SPECS)]:
        rows = [i for i, p in enumerate(paths) if param in drawn.get(p.resolve(), {})]
        if only_single:
            rows = [i for i in rows if len({e for e, _ in drawn[paths[i].resolve()]}) == 1]
        y = torch.tensor([drawn[paths[i].resolve()][param] for i in rows])
        rows_t = torch.tensor(rows)
        in_train = rows_t < n_train
        tr = torch.nonzero(in_train & ~is_val[rows_t]).flatten()
        va = torch.nonzero(in_train & is_val[rows_t]).flatten()
        te = torch.nonzero(~in_train).flatten()
        preds, chosen = {}, {}
        for name in ("tokens", "stats_full", "stats_32px"):
            preds[f"{name}_ridge"], chosen[f"{name}_ridge_alpha"] = ridge(feats[name][rows_t], y, tr, va)
        preds["tokens_mlp"], chosen["tokens_mlp_epoch"] = mlp(feats["tokens"][rows_t], y, tr, va, seed)
        preds["train_mean"] = torch.full_like(y, float(y[tr].mean()))
        key = f"{param[0]}.{param[1]}" + (" (single)" if only_single else "")
        out["params"][key] = {
            "n": [len(tr), len(va), len(te)],
            "chosen": chosen,
            "val": {m: scores(preds[m][va], y[va]) for m in METHODS},
            "test": {m: scores(preds[m][te], y[te]) for m in METHODS},
            "test_pairs": {"true": y[te].tolist(), "tokens_ridge": preds["tokens_ridge"][te].tolist()},
        }
    out["seconds"] = round(time.time() - t0, 1)
    print(f"seed {seed}: {out['seconds']} s", flush=True)
    return out


def summarise(runs: List[Dict[str, object]], metric: str) -> str:
    def ms(vals):
        t = torch.tensor(vals, dtype=torch.float64)
        return f"{t.mean():.2f} ± {t.std(unbiased=False):.2f}" if len(vals) > 1 else f"{t.mean():.2f}"

    head = "| parameter (range) | n train/val/held-out | tokens ridge | tokens MLP | stats ridge, crop "
    head += "| stats ridge, 32 px | train mean |"
    rows = [head, "|---|---|---|---|---|---|---|"]
    for key in runs[0]["params"]:
        eff, k = key.split(" ")[0].split(".")
        lo, hi = EFFECTS[eff].ranges[k]
        n = "/".join(str(v) for v in runs[0]["params"][key]["n"])
        cells = [ms([r["params"][key]["test"][m][metric] for r in runs]) for m in METHODS]
        rows.append(f"| {key} ({lo:g}..{hi:g}) | {n} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for results.json")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--short", type=int, default=192, help="shorter side of each photo before cropping, px")
    ap.add_argument("--crop", type=int, default=64, help="crop size, px")
    ap.add_argument("--val-fraction", type=float, default=0.2)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        encoder = prepare(work, args.short, args.crop)
        runs = [run_seed(s, work, encoder, args) for s in args.seeds]
    tables = {m: summarise(runs, m) for m in ("r2", "mae")}
    for m, t in tables.items():
        print(f"\nheld-out {m.upper()}\n{t}")
    result = {
        "command": "python bench/strength.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads".strip(),
        "torch": torch.__version__,
        "settings": vars(args),
        "specs": SPECS,
        "skipped": {f"{e}.{k}": why for (e, k), why in SKIPPED.items()},
        "seconds": round(time.time() - t0, 1),
        "runs": runs,
        "tables": tables,
    }
    (out / "results.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {out / 'results.json'} ({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
