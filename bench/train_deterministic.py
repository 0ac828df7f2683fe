"""Benchmark the cost of ``--deterministic``: seconds per training step with and without it, side by side.

Not a test. The models of ``bench/train_step.py`` (full-size SD 2.1 with random weights, the default
47 M-parameter adapter, a random task FDI), built once; then :func:`fdi.training.run.train` runs
``1 + --steps`` steps plainly and ``1 + --steps`` steps with ``deterministic=True``, alternating
``--rounds`` times, on the same in-memory models. The first step of each run (warm-up) is left out.
Prints one line per run and the ratio of the medians.

    python bench/train_deterministic.py                     # CPU, batch 1, 64 px, fp32, 2 rounds
    python bench/train_deterministic.py --resolution 256 --steps 3 --rounds 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))


def write_inputs(root: Path, resolution: int) -> None:
    """Two random pairs and a random (32, 768) task FDI under ``root``."""
    from fdi.images import save_image
    from fdi.instruction import FDI

    g = torch.Generator().manual_seed(0)
    for d in ("deg", "clean"):
        (root / d).mkdir()
    for i in range(2):
        clean = torch.rand(3, resolution + 24, resolution + 40, generator=g)
        save_image(clean, root / "clean" / f"{i}.png")
        save_image((0.7 * clean + 0.2).clamp(0, 1), root / "deg" / f"{i}.png")
    FDI(tokens=torch.randn(32, 768, generator=g), encoder="bench:0000000000000000", n_pairs=2).save(
        root / "task.fdi.safetensors"
    )


def seconds_per_step(models, root: Path, resolution: int, steps: int, deterministic: bool, name: str) -> float:
    """Median wall seconds of the steps after the first of one run."""
    from fdi.training.config import TrainConfig
    from fdi.training.run import train

    cfg = TrainConfig(
        sd="",
        output=str(root / f"{name}.safetensors"),
        fdi=str(root / "task.fdi.safetensors"),
        degraded=str(root / "deg"),
        clean=str(root / "clean"),
        resolution=resolution,
        max_steps=1 + steps,
        batch_size=1,
        num_workers=0,
        checkpoint_every=0,
        device="cpu",
        deterministic=deterministic,
        quiet=True,
    )
    marks = []
    train(cfg, progress=lambda done, total: marks.append(time.perf_counter()), models=models)
    times = [b - a for a, b in zip(marks, marks[1:])]
    return statistics.median(times[1:])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3, help="timed steps per run, after one warm-up step")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2, help="plain/deterministic pairs of runs")
    args = ap.parse_args(argv)

    from train_step import build_models

    models = build_models()
    plain, det = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_inputs(root, args.resolution)
        for r in range(args.rounds):
            plain.append(seconds_per_step(models, root, args.resolution, args.steps, False, f"plain{r}"))
            print(f"round {r}: plain {plain[-1]:.2f} s/step", flush=True)
            det.append(seconds_per_step(models, root, args.resolution, args.steps, True, f"det{r}"))
            print(f"round {r}: --deterministic {det[-1]:.2f} s/step", flush=True)
    a, b = statistics.median(plain), statistics.median(det)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"train step, full-size SD 2.1 (random weights), batch 1, {args.resolution} px, fp32, CPU with "
        f"{torch.get_num_threads()} threads: plain {a:.2f} s/step, --deterministic {b:.2f} s/step "
        f"(ratio {b / a:.2f}; medians of {args.rounds} runs of {args.steps} steps); 1-min load average {load:.1f} "
        f"on {os.cpu_count()} CPUs"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
