"""bench/learns.py's report: PSNR/SSIM of every restoration folder, as a mean and a range over the adapter seeds.

A figure that depends on an adapter is written as ``<key>`` (the mean over seeds), ``<key>_range`` ([min, max]) and
``<key>_per_seed`` (in seed order) in the task rows, and as ``{"mean", "min", "max", "per_seed"}`` in the
``sampling_comparison`` and ``windows`` sections. Nothing here is selected on the held-out patches: the preferred
sampling and window are the validation split's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

from learns_jobs import COMPOSITE, TASKS, VALIDATION_IMAGES, WINDOWS, Arm, run_dir

KINDS_BY_SEED = ("restored", "wrong_fdi")


def metrics(pred: Path, gt: Path) -> Dict[str, float]:
    """Mean PSNR (dB) and SSIM of the images of ``pred`` against ``gt`` (the project's eval)."""
    from fdi.metrics import evaluate_folders

    m = evaluate_folders(pred, gt).mean
    return {k: round(float(m[k]), 4) for k in ("psnr", "ssim")}


def spread(values: Sequence[float]) -> Dict[str, object]:
    """``{"mean", "min", "max", "per_seed"}`` of one figure over the seeds (4 decimals)."""
    vals = [round(float(v), 4) for v in values]
    return {"mean": round(sum(vals) / len(vals), 4), "min": min(vals), "max": max(vals), "per_seed": vals}


def _flat(row: Dict[str, object], key: str, values: Sequence[float]) -> None:
    s = spread(values)
    row[key], row[f"{key}_range"], row[f"{key}_per_seed"] = s["mean"], [s["min"], s["max"]], s["per_seed"]


class Figures:
    """PSNR/SSIM of the restoration folders of one run, measured once each."""

    def __init__(self, out: Path, plan: Dict):
        self.out, self.plan = out, plan
        self._cache: Dict[Path, Dict[str, float]] = {}

    def of(self, folder: Path, clean: Path) -> Dict[str, float]:
        if folder not in self._cache:
            self._cache[folder] = metrics(folder, clean)
        return self._cache[folder]

    def seeds(self, arm: Arm, task: str, kind: str, split: str = "heldout", key: str = "psnr") -> List[float]:
        """``key`` of ``kind`` (restored, wrong_fdi, ...) of ``task``, one value per adapter seed."""
        sub = Path(task) if split == "heldout" else Path("val") / task
        clean = self.out / sub / "clean"
        return [self.of(run_dir(self.out, arm, s) / sub / kind, clean)[key] for s in self.plan["seeds"]]

    def fixed(self, task: str, kind: str, split: str = "heldout") -> Dict[str, float]:
        """The seed-independent figures: the degraded input and strength 0."""
        sub = Path(task) if split == "heldout" else Path("val") / task
        return self.of(self.out / sub / kind, self.out / sub / "clean")


def _versus(restored: Sequence[float], base: float) -> Dict[str, object]:
    return spread([r - base for r in restored])


def arm_figures(fig: Figures, arm: Arm, task: str) -> Dict[str, object]:
    """One arm on one task: the restored PSNR over seeds and its gain over the input and strength 0, held out and
    on the validation split."""
    res: Dict[str, object] = {"sampling": arm.sampling, "guidance_window": list(arm.bounds)}
    for split in ("validation", "heldout"):
        restored = fig.seeds(arm, task, "restored", split)
        deg, ung = fig.fixed(task, "degraded", split)["psnr"], fig.fixed(task, "unguided", split)["psnr"]
        res[split] = {
            "psnr_restored": spread(restored),
            "vs_degraded_db": _versus(restored, deg),
            "vs_unguided_db": _versus(restored, ung),
        }
    return res


def task_row(fig: Figures, task: str, world: Dict) -> Dict[str, object]:
    """The default arm on ``task``: today's keys (``psnr_restored`` the mean over seeds), their ranges and per-seed
    values, the few-pairs curve and the validation split's figures."""
    plan, arm = fig.plan, fig.plan["default"]
    row: Dict[str, object] = {"spec": TASKS.get(task, COMPOSITE[1]), "test_patches": world["info"]["test_patches"]}
    row.update(sampling=arm.sampling, guidance_window=list(arm.bounds), seeds=list(plan["seeds"]))
    for kind in ("degraded", "unguided"):
        m = fig.fixed(task, kind)
        row[f"psnr_{kind}"], row[f"ssim_{kind}"] = m["psnr"], m["ssim"]
    kinds = KINDS_BY_SEED if task in TASKS else ("restored", "haze_only", "noise_only")
    for kind in kinds:
        for key in ("psnr", "ssim"):
            _flat(row, f"{key}_{kind}", fig.seeds(arm, task, kind, key=key))
    if task in plan["curve_tasks"]:
        row["few_pairs_curve"] = []
        for frac in plan["fractions"]:
            kind = "restored" if frac == 1.0 else f"restored_{int(round(frac * 100))}pct"
            point: Dict[str, object] = {"fraction": frac, "pairs": plan["n_pairs"][(task, frac)]}
            for key in ("psnr", "ssim"):
                _flat(point, key, fig.seeds(arm, task, kind, key=key))
            row["few_pairs_curve"].append(point)
    if task in TASKS:
        row["train_pairs"] = plan["n_pairs"][(task, 1.0)]
        val = {"photos": list(VALIDATION_IMAGES), "patches": len(list((fig.out / "val" / task / "clean").glob("*")))}
        for kind in ("degraded", "unguided"):
            val[f"psnr_{kind}"] = fig.fixed(task, kind, "validation")["psnr"]
        _flat(val, "psnr_restored", fig.seeds(arm, task, "restored", "validation"))
        row["validation"] = val
    row["gain_db"] = round(float(row["psnr_restored"]) - float(row["psnr_degraded"]), 3)
    row["gain_over_unguided_db"] = round(float(row["psnr_restored"]) - float(row["psnr_unguided"]), 3)
    return row


def _preferred(table: Dict[str, Dict[str, Dict]], names: Sequence[str]) -> Dict[str, Optional[str]]:
    """Per task (and over both tasks: the highest summed mean), the name whose validation ``psnr_restored`` mean is
    highest."""
    best: Dict[str, Optional[str]] = {}
    for task, by_name in table.items():
        best[task] = max(by_name, key=lambda n: by_name[n]["validation"]["psnr_restored"]["mean"])
    common = [n for n in names if all(n in by_name for by_name in table.values())]
    if len(table) > 1 and common:
        best["overall"] = max(
            common, key=lambda n: sum(by_name[n]["validation"]["psnr_restored"]["mean"] for by_name in table.values())
        )
    return best


def sampling_comparison(fig: Figures) -> Dict[str, object]:
    """Every ``--timestep-sampling`` in the first-third window, per task; which the validation split prefers."""
    samplings = fig.plan["samplings"]
    table = {task: {s: arm_figures(fig, Arm(s), task) for s in samplings} for task in TASKS}
    return {
        "samplings": list(samplings),
        "criterion": "highest mean (over seeds) restored PSNR on the validation split (train photos "
        f"{', '.join(VALIDATION_IMAGES)}, never in adapter training); 'overall' sums both tasks",
        **table,
        "preferred_on_validation": _preferred(table, samplings),
    }


def window_comparison(fig: Figures) -> Dict[str, object]:
    """Per ``--window-tasks`` task, the adapters trained and restored on each window (``window`` sampling)."""
    tasks = fig.plan["window_tasks"]
    table = {t: {arm.window: arm_figures(fig, arm, t) for arm in fig.plan["arms"][t] if arm.sampling == "window"}
             for t in tasks}  # fmt: skip
    return {
        "sampling": "window",
        "criterion": "highest mean restored PSNR on the validation split",
        **table,
        "preferred_on_validation": _preferred(table, list(WINDOWS)),
    }


def goal(report: Dict[str, object]) -> Dict[str, Dict[str, bool]]:
    """The issue's goals on the held-out means: 2 dB over the input, above strength 0, above the wrong FDI."""
    out = {}
    for t in TASKS:
        row = report[t]
        out[t] = {
            "gain_ge_2db": row["gain_db"] >= 2.0,
            "beats_unguided": row["psnr_restored"] > row["psnr_unguided"],
            "beats_wrong_fdi": row["psnr_restored"] > row["psnr_wrong_fdi"],
        }
    return out


def figure(out: Path, rows: List[tuple], path: Path, caption: str) -> None:
    """Input / strength 0 / restored / clean for a few test patches of each task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fdi.images import load_image

    cols = ("degraded input", "strength 0 (unguided)", "FDI restored", "clean")
    fig, axes = plt.subplots(len(rows), 4, figsize=(8, 2.05 * len(rows) + 0.5), squeeze=False)
    for r, (task, name) in enumerate(rows):
        for c, kind in enumerate(("degraded", "unguided", "restored", "clean")):
            ax = axes[r][c]
            ax.imshow(load_image(out / task / kind / name).permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=9)
            if c == 0:
                ax.set_ylabel(task, fontsize=9)
    import textwrap

    fig.suptitle(textwrap.fill(caption, 110), fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, pil_kwargs={"quality": 88})
    plt.close(fig)


def write_figure(out: Path, path: Path, arm: Arm, seed: int) -> None:
    names = sorted(p.name for p in (out / "haze" / "clean").glob("*.png"))
    picks = [names[1], names[-2]] if len(names) > 3 else names[:1]
    tasks = (*TASKS, COMPOSITE[0])
    rows = [(t, n) for t in tasks for n in picks[:1]] + [(t, picks[-1]) for t in tasks]
    caption = (
        "A small model trained here from scratch on 64 px patches of scikit-image's photos (not SD 2.1); "
        f"held-out photos; adapters trained with 'fdi train' ({arm.sampling} sampling, seed {seed})"
    )
    figure(out, rows, path, caption)
