"""The report of a reproduction: ``report.json`` (everything) and ``report.md`` (a Markdown table of our figures
beside the paper's where it printed them, the data sets' releases and counts, the device, the differences from
the paper's settings)."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Dict, List, Optional

from ..files import atomic_write
from .config import PAPER_STEPS
from .protocols import PAPER_PARAMS_M, PAPER_SECONDS_PER_IMAGE, PROTOCOLS, TABLE6, TABLE7

if TYPE_CHECKING:
    from .run import Plan

REPORT_FORMAT = "fdi_reproduce_report"
#: the paper's training settings (DESIGN.md §4) and sampler, by option: how a run differs is listed
PAPER_SETTINGS = {
    "resolution": 512,
    "batch_size": 32,
    "lr": 1e-5,
    "max_steps": None,
    "epochs": None,
    "steps": PAPER_STEPS,
    "inversion_steps": PAPER_STEPS,
}
NOTES = (
    "The supplement does not say on which channel its PSNR is computed; ours is headlined on the set's usual "
    "one (Y for rain sets, RGB otherwise) and both are kept.",
    "The paper trains on 4 GPUs with batch 32; AdamW β = (0.9, 0.99), lr 1e-5, 50 epochs, 512 px "
    "(our reconstruction, docs/design.md). Its weights and code are unreleased: differences are expected.",
    "Seconds per image: one restoration (DDIM inversion + guided sampling, batch 1, adapter guidance included), "
    "model loading excluded; the paper's environment for 3.04 s is not stated.",
)


def _row(run: "Plan", variant, metrics: dict, n_train: int, n_test: int) -> dict:
    mean = metrics["mean"]
    fig = run.data.figures(variant.proportion) if variant.ablation == "full" else None
    return {
        "proportion": variant.proportion,
        "ablation": variant.ablation,
        "folder": variant.folder,
        "train_pairs": n_train,
        "test_pairs": n_test,
        **{k: mean.get(k) for k in ("psnr", "ssim", "psnr_y", "ssim_y", "lpips")},
        "lpips_absent": metrics.get("lpips_absent"),
        "no_reference": metrics.get("no_reference"),
        "seconds_per_image": metrics.get("seconds_per_image"),
        "timing_devices": metrics.get("timing_devices", []),
        "adapter_parameters": metrics["adapter_parameters"],
        "paper": None if fig is None else {"psnr": fig.psnr, "lpips": fig.lpips, "source": fig.source},
    }


def differences(settings: dict) -> List[str]:
    """The run's training and sampling options that are not the paper's."""
    out = []
    for key, paper in PAPER_SETTINGS.items():
        ours = settings.get(key)
        if ours != paper:
            said = "50 epochs" if key in ("max_steps", "epochs") else paper
            out.append(f"{key} {ours} (paper: {said})")
    return out


def build_report(run: "Plan", info: dict, metrics: Dict[str, dict]) -> dict:
    """The report as a JSON-safe dict (see the module doc)."""
    from .stages import read_pairs_file

    rows = []
    for v in run.variants:
        n_train = len(read_pairs_file(run.folder / v.subset_dir / "train_pairs.csv"))
        rows.append(_row(run, v, metrics[v.folder], n_train, info["test"]["pairs"]))
    return {
        "format": REPORT_FORMAT,
        "task": run.data.task,
        "protocol": {
            "train": list(run.data.train),
            "test": run.data.test,
            "is_papers": run.data.is_protocol,
            "note": PROTOCOLS[run.data.task].note,
        },
        "datasets": info,
        "metric": info["test"]["metric"],
        "crop_border": info["test"]["crop_border"],
        "device": run.device_name,
        "settings": run.settings,
        "differences_from_paper": differences(run.settings),
        "paper_adapter": {
            "parameters_m": PAPER_PARAMS_M,
            "seconds_per_image": PAPER_SECONDS_PER_IMAGE,
            "source": TABLE7,
        },
        "paper_figures_source": TABLE6 if any(r["paper"] for r in rows) else None,
        "rows": rows,
        "notes": list(NOTES),
    }


def _f(v: Optional[float], digits: int) -> str:
    if v is None:
        return "–"
    return "inf" if isinstance(v, float) and math.isinf(v) else f"{v:.{digits}f}"


def markdown(report: dict) -> str:
    """``report.md``: the table, then the data sets, the device, the differences and notes."""
    y = report["metric"] == "y"
    first, second = ("Y", "RGB") if y else ("RGB", "Y")
    k1, k2 = ("_y", "") if y else ("", "_y")
    lines = [
        f"# FDI reproduction: {report['task']}",
        "",
        f"| ablation | training pairs | PSNR {first} (dB) | SSIM {first} | PSNR {second} | SSIM {second} | LPIPS "
        "| paper PSNR | paper LPIPS | s / image | adapter (M params) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        paper = r["paper"] or {}
        lines.append(
            f"| {r['ablation']} | {round(r['proportion'] * 100)} % ({r['train_pairs']}) | {_f(r['psnr' + k1], 2)} "
            f"| {_f(r['ssim' + k1], 4)} | {_f(r['psnr' + k2], 2)} | {_f(r['ssim' + k2], 4)} | {_f(r['lpips'], 3)} "
            f"| {_f(paper.get('psnr'), 2)} | {_f(paper.get('lpips'), 3)} | {_f(r['seconds_per_image'], 2)} "
            f"| {r['adapter_parameters'] / 1e6:.2f} |"
        )
    pa = report["paper_adapter"]
    lines += [
        f"| paper (Table 7) | | | | | | | | | {pa['seconds_per_image']:.2f} | {pa['parameters_m']:.2f} |",
        "",
        f"Paper figures: {report['paper_figures_source'] or 'none published for these data sets'}; "
        f"adapter size and time: {pa['source']}. Test set of {report['rows'][0]['test_pairs']} pairs; "
        f"PSNR/SSIM headlined on {first} (crop border {report['crop_border']} px).",
        "",
        "## Data sets",
        "",
        "| split | data set | release | pairs | skipped (no ground truth) |",
        "|---|---|---|---|---|",
    ]
    for split, d in [*(("train", d) for d in report["datasets"]["train"]), ("test", report["datasets"]["test"])]:
        lines.append(f"| {split} | {d['dataset']} | {d['release']} | {d['pairs']} | {d['missing_gt']} |")
    lines += ["", f"Device: {report['device']}.", ""]
    timing = sorted({d for r in report["rows"] for d in r["timing_devices"]})
    if timing:
        lines += [f"Timed on: {', '.join(timing)}.", ""]
    sections = [
        ("Differences from the paper's settings", report["differences_from_paper"]),
        (
            "Data set warnings",
            [w for d in (*report["datasets"]["train"], report["datasets"]["test"]) for w in d["warnings"]],
        ),
        ("LPIPS", sorted({r["lpips_absent"] for r in report["rows"] if r["lpips_absent"]})),
        (
            "No ground truth",
            [
                f"{name}'s pairs are their own reference: the test images are restored and kept, no full-reference "
                "score is computed (judge them by eye or with a no-reference score)"
                for name in sorted({r["no_reference"] for r in report["rows"] if r["no_reference"]})
            ],
        ),
        ("Notes", report["notes"]),
    ]
    for title, items in sections:
        if items:
            lines += [f"## {title}", "", *(f"- {i}" for i in items), ""]
    return "\n".join(lines)


def write_report(run: "Plan", info: dict, metrics: Dict[str, dict]) -> dict:
    """Write ``report.json`` and ``report.md`` into the run folder (atomically); returns the report."""
    report = build_report(run, info, metrics)
    with atomic_write(run.folder / "report.json", "w") as fh:
        json.dump(report, fh, indent=2, allow_nan=False)
        fh.write("\n")
    with atomic_write(run.folder / "report.md", "w") as fh:
        fh.write(markdown(report))
    return report
