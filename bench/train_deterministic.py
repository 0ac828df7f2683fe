"""Benchmark the cost of ``--deterministic``: seconds per training step with and without it, side by side.

Not a test. :func:`fdi.training.run.train` on the random full-size SD 2.1 diffusers folder the tests cache
(``tests/sd21_fixture.py``; ``--sd`` for another), the default 47 M-parameter adapter, a random task FDI
and two random pairs, batch 1, fp32, CPU. Each round trains ``1 + --steps`` steps plainly and then with
``deterministic=True``, each in a fresh process (MKL reads its reproducibility mode once per process).
Per step: wall time and the process's CPU time (less sensitive to other load on a shared machine), the
first (warm-up) step left out; the summary gives the medians and their ratios.

    python bench/train_deterministic.py                        # 64 px, 3 timed steps, 1 round
    python bench/train_deterministic.py --resolution 256 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))


def child(sd: str, root: Path, resolution: int, steps: int, deterministic: bool) -> None:
    """One run in this process; prints ``{"wall": [...], "cpu": [...]}`` seconds of the steps after the first."""
    from fdi.training.config import TrainConfig
    from fdi.training.run import train

    cfg = TrainConfig(
        sd=sd,
        output=str(root / f"{'det' if deterministic else 'plain'}-{time.time_ns()}.safetensors"),
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
    train(cfg, progress=lambda done, total: marks.append((time.perf_counter(), time.process_time())))
    wall = [b[0] - a[0] for a, b in zip(marks, marks[1:])][1:]
    cpu = [b[1] - a[1] for a, b in zip(marks, marks[1:])][1:]
    print(json.dumps({"wall": wall, "cpu": cpu, "mkl_cbwr_branch": mkl_cbwr_branch()}))


def mkl_cbwr_branch():
    """MKL's CNR branch in this process (1: off, 2: AUTO), read through MKL's service symbol; ``None`` where
    torch's MKL does not export it."""
    import ctypes

    try:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        return int(lib.mkl_serv_cbwr_get(1))
    except (OSError, AttributeError):
        return None


def run_child(args, root: Path, deterministic: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", "--sd", str(args.sd), "--root", str(root)]
    cmd += ["--resolution", str(args.resolution), "--steps", str(args.steps)] + (["--det"] if deterministic else [])
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> int:
    from sd21_fixture import FIXTURE_NAME, cache_dir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sd", type=Path, default=cache_dir() / "diffusers" / FIXTURE_NAME)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per run, after one warm-up step")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=1, help="plain/deterministic pairs of runs")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--det", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(str(args.sd), args.root, args.resolution, args.steps, args.det)
        return 0
    from train_step import write_inputs

    runs = {False: {"wall": [], "cpu": []}, True: {"wall": [], "cpu": []}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_inputs(root, args.resolution, 2)
        for r in range(args.rounds):
            for det in (False, True):
                got = run_child(args, root, det)
                for k in ("wall", "cpu"):
                    runs[det][k] += got[k]
                print(f"round {r}, {'--deterministic' if det else 'plain'}: {json.dumps(got)}", flush=True)
    med = {(d, k): statistics.median(runs[d][k]) for d in (False, True) for k in ("wall", "cpu")}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"train step, full-size SD 2.1 (random weights), batch 1, {args.resolution} px, fp32, CPU, "
        f"{torch.get_num_threads()} threads, medians of {len(runs[False]['wall'])} steps each: "
        f"wall plain {med[False, 'wall']:.2f} s, --deterministic {med[True, 'wall']:.2f} s "
        f"(ratio {med[True, 'wall'] / med[False, 'wall']:.2f}); process CPU plain {med[False, 'cpu']:.2f} s, "
        f"--deterministic {med[True, 'cpu']:.2f} s (ratio {med[True, 'cpu'] / med[False, 'cpu']:.2f}); "
        f"1-min load average {load:.1f} on {os.cpu_count()} CPUs"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
