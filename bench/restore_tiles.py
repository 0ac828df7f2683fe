"""Benchmark tiled restoration: peak memory of a large tiled restore ÷ that of a 512² untiled restore.

Not a test: prints one summary line per figure. The models are SD 2.1 base's UNet and VAE with
random weights and a default-config adapter whose gates and last layers are non-zero (see
``bench/guidance_overhead.py``). Each restore runs in its own child process, so its peak is its own:

* on CUDA: ``torch.cuda.max_memory_allocated`` (weights included), and the peak above the memory
  held once the models are loaded;
* on the CPU: the child's peak resident set size (``ru_maxrss``, which includes Python, torch and
  the fp32 weights), and the peak above the RSS once the models are loaded.

    python bench/restore_tiles.py                                    # CPU: 2048² in 512 px tiles vs 512²
    python bench/restore_tiles.py --device cuda --dtype fp16 --steps 10
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT.parent / "tests"))


def rss_bytes() -> int:
    """Current resident set size of this process (Linux ``/proc/self/statm``)."""
    import os

    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(args: argparse.Namespace) -> dict:
    """One restore of a ``size``² image with ``tile`` px tiles (0 = untiled) in this process: its memory figures."""
    from guidance_overhead import build_random_sd21, sync, trained_like_adapter

    from fdi.encoder import parse_dtype
    from fdi.instruction import FDI
    from fdi.pipeline import AdapterUse

    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), parse_dtype(args.dtype)
    pipe = build_random_sd21(device, dtype)
    adapter = trained_like_adapter(pipe.base_family)
    fdi = FDI(torch.randn(32, 768, generator=torch.Generator().manual_seed(0)), encoder=adapter.encoder, n_pairs=1)
    use = AdapterUse(adapter, fdi, 1.0)
    pipe.compute_guidance(use, torch.rand(1, 3, 64, 64))  # the adapter on the device before the baseline
    image = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    sync(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        loaded = torch.cuda.memory_allocated(device)
    else:
        loaded = rss_bytes()
    t = time.perf_counter()
    out = pipe.restore(
        image, [use], steps=args.steps, inversion_steps=args.steps, tile_size=args.tile, tile_overlap=args.overlap
    )
    sync(device)
    seconds = time.perf_counter() - t
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert out.shape[-2:] == (args.size, args.size) and torch.isfinite(out).all()
    return {"peak": peak, "loaded": loaded, "seconds": seconds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32")
    ap.add_argument("--size", type=int, default=2048, help="side of the large image, restored in tiles")
    ap.add_argument("--tile", type=int, default=512, help="tile size in pixels for the large image")
    ap.add_argument("--overlap", type=int, default=128, help="tile overlap in pixels")
    ap.add_argument("--base", type=int, default=512, help="side of the untiled reference image")
    ap.add_argument("--steps", type=int, default=1, help="sampling steps (inversion uses the same number)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.size, args.tile = json.loads(args.child)
        print(json.dumps(child(args)))
        return 0
    common = [
        sys.executable,
        __file__,
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--steps",
        str(args.steps),
        "--overlap",
        str(args.overlap),
        "--threads",
        str(args.threads),
    ]
    results = {}
    for name, size, tile in (("untiled", args.base, 0), ("tiled", args.size, args.tile)):
        run = subprocess.run(common + ["--child", json.dumps([size, tile])], capture_output=True, text=True)
        if run.returncode:
            print(run.stderr[-3000:], file=sys.stderr)
            return 1
        results[name] = json.loads(run.stdout.strip().splitlines()[-1])
    u, t = results["untiled"], results["tiled"]
    kind = "torch.cuda.max_memory_allocated" if args.device.startswith("cuda") else "peak RSS (ru_maxrss)"
    gib = 1024**3
    print(
        f"machine: {args.device} {args.dtype}, {kind}, {args.steps} + {args.steps} steps, "
        f"SD 2.1 base sizes with random weights"
    )
    print(
        f"untiled {args.base}²: peak {u['peak'] / gib:.2f} GiB (models loaded: {u['loaded'] / gib:.2f} GiB), "
        f"{u['seconds']:.1f} s"
    )
    print(
        f"tiled {args.size}² in {args.tile} px tiles, overlap {args.overlap}: peak {t['peak'] / gib:.2f} GiB "
        f"(models loaded: {t['loaded'] / gib:.2f} GiB), {t['seconds']:.1f} s"
    )
    print(f"peak ratio tiled {args.size}² ÷ untiled {args.base}²: {t['peak'] / u['peak']:.2f} (goal ≤ 1.5)")
    above = (t["peak"] - t["loaded"]) / max(u["peak"] - u["loaded"], 1)
    print(f"ratio of the peaks above the loaded models: {above:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
