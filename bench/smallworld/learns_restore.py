"""Restoration metrics of given adapters on a world's held-out patches (stages 1, 3 and 4 of bench/learns.py).

``python bench/smallworld/learns_restore.py --world ~/.cache/fdi-learns/world-<key> --out DIR --adapter
haze=A.safetensors --adapter noise=B.safetensors`` makes the test pairs as ``learns.py`` does (``fdi degrade``, seed
2), restores them with ``fdi restore`` (strength 0, guided, and the other task's FDI when both tasks are given; the
project's defaults: 50 + 50 DDIM steps, guidance in the first third, strength 1) and writes ``DIR/report.json`` with
``psnr_degraded``, ``psnr_unguided``, ``psnr_restored``, ``psnr_wrong_fdi`` (and SSIMs) per task. Nothing is selected
on these patches.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench" / "smallworld"))


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--adapter", action="append", required=True, help="TASK=adapter.safetensors (FDI embedded)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    import learns_jobs as L
    from learns_report import metrics

    world = {"root": args.world, "train": args.world / "patches" / "train", "test": args.world / "patches" / "test"}
    adapters = dict(a.split("=", 1) for a in args.adapter)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for task in adapters:
        te = out / task
        L.fdi(
            ["degrade", "--clean", world["test"], "--kind", L.TASKS[task], "-o", te / "pairs", "--seed", 2, "--quiet"],
            1,
        )
        L.copy_pngs(te / "pairs" / "degraded", te / "degraded")
        L.copy_pngs(te / "pairs" / "clean", te / "clean")
    common = ["--steps", args.steps, "--inversion-steps", args.steps, "--batch-size", 16, "--device", "cpu"]
    common += ["--quiet", "--sd", args.world / "sd"]
    jobs = []
    for task, a in adapters.items():
        base = ["restore", "--adapter", a, "--image", out / task / "degraded", *common]
        jobs.append([*base, "-o", out / task / "unguided", "--strength", 0])
        jobs.append([*base, "-o", out / task / "restored"])
        others = [t for t in adapters if t != task]
        if others:
            wrong = out / f"{others[0]}.fdi.safetensors"
            if not wrong.exists():
                from fdi.adapter import FDIAdapter

                FDIAdapter.from_file(adapters[others[0]]).fdi.save(wrong)
            jobs.append([*base, "-o", out / task / "wrong_fdi", "--fdi", wrong])
    L.run_jobs([L.Job(j) for j in jobs], args.threads, 1)
    report = {"world": str(args.world), "adapters": adapters, "steps": args.steps}
    for task in adapters:
        row = {}
        for kind in ("degraded", "unguided", "restored", "wrong_fdi"):
            if (out / task / kind).is_dir():
                m = metrics(out / task / kind, out / task / "clean")
                row[f"psnr_{kind}"], row[f"ssim_{kind}"] = m["psnr"], m["ssim"]
        report[task] = row
        print(task, json.dumps(row), flush=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
