"""Benchmark the cost of ``--deterministic``: seconds per training step with and without it, side by side.

Not a test. ``python -m fdi train`` on the random full-size SD 2.1 diffusers folder the tests cache
(``tests/sd21_fixture.py``; ``--sd`` for another), the default 47 M-parameter adapter, a random task FDI
and two random pairs, batch 1, fp32, CPU. Each round runs ``1 + --steps`` steps plainly and then with
``--deterministic``, each in a fresh process (MKL reads its reproducibility mode once per process); the
seconds per step are the runs' ``train_log.csv`` ``sec_per_step`` after the first (warm-up) step.

    python bench/train_deterministic.py                        # 64 px, 3 timed steps, 1 round
    python bench/train_deterministic.py --resolution 256 --rounds 2
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))


def seconds_per_step(sd: Path, root: Path, resolution: int, steps: int, deterministic: bool, name: str) -> list:
    """``sec_per_step`` of the steps after the first of one ``python -m fdi train`` run."""
    args = [sys.executable, "-m", "fdi", "train", "--sd", str(sd), "--fdi", str(root / "task.fdi.safetensors")]
    args += ["--degraded", str(root / "deg"), "--clean", str(root / "clean"), "--resolution", str(resolution)]
    args += ["--batch-size", "1", "--num-workers", "0", "--device", "cpu", "--checkpoint-every", "0", "--quiet"]
    args += ["--max-steps", str(1 + steps), "-o", str(root / f"{name}.safetensors")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MKL_CBWR", None)
    subprocess.run(args + (["--deterministic"] if deterministic else []), env=env, check=True, capture_output=True)
    with open(root / f"{name}-run" / "train_log.csv", newline="") as fh:
        return [float(r["sec_per_step"]) for r in csv.DictReader(fh)][1:]


def main(argv=None) -> int:
    from sd21_fixture import FIXTURE_NAME, cache_dir
    from train_step import write_inputs

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sd", type=Path, default=cache_dir() / "diffusers" / FIXTURE_NAME)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per run, after one warm-up step")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=1, help="plain/deterministic pairs of runs")
    args = ap.parse_args(argv)
    plain, det = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_inputs(root, args.resolution, 2)
        for r in range(args.rounds):
            plain += seconds_per_step(args.sd, root, args.resolution, args.steps, False, f"plain{r}")
            det += seconds_per_step(args.sd, root, args.resolution, args.steps, True, f"det{r}")
            print(f"round {r}: plain {plain[-args.steps :]} s, --deterministic {det[-args.steps :]} s", flush=True)
    a, b = statistics.median(plain), statistics.median(det)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"train step, full-size SD 2.1 (random weights), batch 1, {args.resolution} px, fp32, CPU, "
        f"{torch.get_num_threads()} threads: plain {a:.2f} s/step, --deterministic {b:.2f} s/step, ratio {b / a:.2f} "
        f"(medians of {len(plain)} steps each, {args.rounds} round(s)); 1-min load average {load:.1f} "
        f"on {os.cpu_count()} CPUs"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
