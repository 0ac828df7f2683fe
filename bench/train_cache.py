"""Benchmark the clean-latent cache of training: seconds per step with the cache and without, side by side.

Not a test. The models and the step are bench/train_step.py's (full-size SD 2.1 architectures with random weights,
the default 47 M-parameter adapter, :func:`fdi.training.run.train` on the in-memory models, data loading in the
step). The pairs are square images at the training resolution, so every crop is the whole image and its clean
latent recurs (:mod:`fdi.training.latents`): with the cache (``--latent-cache-mib`` 1024, the default) the VAE
encodes each (pair, flip) once; without (``0``) it encodes every step, as before the cache. One pair, batch 1:
after the first steps of a run every step is a hit.

Runs alternate (without, with, without, with …, ``--rounds`` of each) on the same models in one process, so
both see the same machine; each run is ``1 + --steps`` steps and its first (warm-up) step is dropped. Prints
each run's per-step times, the medians and their ratio (with / without: below 1 is faster), and the cache's hits.

    python bench/train_cache.py                          # CPU, 256 px, 4 timed steps a run, 2 rounds
    python bench/train_cache.py --device cuda --resolution 512 --mixed-precision bf16

Random weights make the timing meaningful and the losses meaningless.
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from train_step import build_models  # noqa: E402  (adds the repository and tests/ to sys.path)


def write_square_inputs(root: Path, resolution: int, n_pairs: int) -> None:
    """``n_pairs`` random square pairs at ``resolution`` px (``deg/``, ``clean/``) and a random (32, 768) task FDI."""
    from fdi.images import save_image
    from fdi.instruction import FDI

    g = torch.Generator().manual_seed(0)
    for d in ("deg", "clean"):
        (root / d).mkdir()
    for i in range(n_pairs):
        clean = torch.rand(3, resolution, resolution, generator=g)
        save_image(clean, root / "clean" / f"{i}.png")
        save_image((0.7 * clean + 0.2).clamp(0, 1), root / "deg" / f"{i}.png")
    FDI(tokens=torch.randn(32, 768, generator=g), encoder="bench:0000000000000000", n_pairs=n_pairs).save(
        root / "task.fdi.safetensors"
    )


def timed_run(models, root: Path, args, cache_mib: int, tag: str) -> tuple:
    """One training run: ``(wall seconds, process CPU seconds of each step after the warm-up step, hits, misses)``."""
    from fdi.training.config import TrainConfig
    from fdi.training.run import train

    cfg = TrainConfig(
        sd="",
        output=str(root / f"{tag}.safetensors"),
        checkpoint_dir=str(root / f"{tag}-run"),
        fdi=str(root / "task.fdi.safetensors"),
        degraded=str(root / "deg"),
        clean=str(root / "clean"),
        resolution=args.resolution,
        max_steps=1 + args.steps,
        batch_size=1,
        num_workers=0,
        checkpoint_every=0,
        device=args.device,
        mixed_precision=args.mixed_precision,
        latent_cache_mib=cache_mib,
        quiet=True,
    )
    marks = []

    def progress(done, total):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        marks.append((time.perf_counter(), time.process_time()))

    result = train(cfg, progress=progress, models=models)
    wall = [b[0] - a[0] for a, b in zip(marks, marks[1:])]
    cpu = [b[1] - a[1] for a, b in zip(marks, marks[1:])]
    return wall[1:], cpu[1:], result.latent_hits, result.latent_misses


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4, help="timed steps a run, after one warm-up step")
    ap.add_argument("--rounds", type=int, default=2, help="runs with and without the cache, alternating")
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    models = build_models()
    build_s = time.perf_counter() - t0
    runs = {"without": ([], []), "with": ([], [])}  # (wall, CPU) seconds per timed step
    hits = misses = 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_square_inputs(root, args.resolution, 1)
        for r in range(args.rounds):
            for label, mib in (("without", 0), ("with", 1024)):
                wall, cpu, h, m = timed_run(models, root, args, mib, f"{label}{r}")
                runs[label][0].extend(wall)
                runs[label][1].extend(cpu)
                hits, misses = (hits + h, misses + m) if mib else (hits, misses)
                print(
                    f"round {r + 1}, {label} the cache: wall "
                    + ", ".join(f"{t:.2f}" for t in wall)
                    + " s/step; process CPU "
                    + ", ".join(f"{t:.2f}" for t in cpu)
                    + " s/step",
                    flush=True,
                )
    (without, without_cpu), (with_, with_cpu) = (
        tuple(statistics.median(v) for v in runs[k]) for k in ("without", "with")
    )
    dev = args.device
    if dev.startswith("cuda") and torch.cuda.is_available():
        dev = torch.cuda.get_device_name(torch.device(dev))
    else:
        dev = f"{dev}, {torch.get_num_threads()} threads"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"train step, full-size SD 2.1 (random weights), batch 1, {args.resolution} px square pairs, "
        f"{args.mixed_precision if args.mixed_precision != 'no' else 'fp32'}, {dev}: median wall "
        f"{without:.2f} s/step without the latent cache, {with_:.2f} s/step with it (ratio with/without "
        f"{with_ / without:.3f}); median process CPU {without_cpu:.2f} → {with_cpu:.2f} s/step (ratio "
        f"{with_cpu / without_cpu:.3f}); {len(runs['with'][0])} timed steps each over {args.rounds} alternating "
        f"rounds; cache {hits} hits, {misses} misses (the first step of each run is a miss); 1-min load average "
        f"{load:.1f} on "
        f"{os.cpu_count()} CPUs; model build {build_s:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
