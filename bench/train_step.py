"""Benchmark one FDI training step at real size: seconds per optimizer step and peak memory.

Not a test. Full-size SD 2.1 architectures with random weights, built in memory from the
hand-written configs of ``tests/sd21_fixture.py`` (UNet 320/640/1280/1280, KL-f8 VAE, 23-layer
OpenCLIP-H text tower), the default FDI adapter (47 M parameters), a random task FDI of shape
(32, 768) given as a file (so BLIP-2 is not needed), and random image pairs. The step is the real
one: :func:`fdi.training.run.train` is run for ``1 + --steps`` steps on the in-memory models and the
per-step wall and process-CPU times are taken in its progress callback; the first step (warm-up: allocator,
kernels) is reported separately. Data loading is included (``--num-workers 0``: in the step).

    python bench/train_step.py                                  # CPU, batch 1, 256 px, fp32
    python bench/train_step.py --device cuda --resolution 512 --batch-size 1 --mixed-precision bf16
    --gradient-checkpointing

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over the training steps (the models
included: they are moved to the GPU by the run), on CPU the process's peak resident set size.

Prints one summary line. Random weights make the timing meaningful and the losses meaningless.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def build_models():
    """Full-size SD 2.1-base parts with random weights (fp32, CPU), as :func:`fdi.models.load_sd` returns them."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from sd21_fixture import scheduler_config, text_config, unet_config, vae_config
    from transformers import CLIPTextConfig, CLIPTextModel

    from fdi.models import SDParts
    from fdi.tokenizers import sd2_tokenizer

    torch.manual_seed(0)
    return SDParts(
        vae=AutoencoderKL(**vae_config()),
        text_encoder=CLIPTextModel(CLIPTextConfig(**text_config())),
        tokenizer=sd2_tokenizer(),
        unet=UNet2DConditionModel(**unet_config()),
        scheduler=DDIMScheduler(**scheduler_config()),
        source="random SD 2.1",
    )


def write_inputs(root: Path, resolution: int, n_pairs: int) -> None:
    """``n_pairs`` random pairs (``deg/``, ``clean/``, a little larger than ``resolution``) and a random
    (32, 768) task FDI (``task.fdi.safetensors``) under ``root``."""
    from fdi.images import save_image
    from fdi.instruction import FDI

    g = torch.Generator().manual_seed(0)
    for d in ("deg", "clean"):
        (root / d).mkdir()
    for i in range(n_pairs):
        clean = torch.rand(3, resolution + 24, resolution + 40, generator=g)
        save_image(clean, root / "clean" / f"{i}.png")
        save_image((0.7 * clean + 0.2).clamp(0, 1), root / "deg" / f"{i}.png")
    FDI(tokens=torch.randn(32, 768, generator=g), encoder="bench:0000000000000000", n_pairs=n_pairs).save(
        root / "task.fdi.safetensors"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    ap.add_argument("--gradient-checkpointing", action="store_true")
    args = ap.parse_args(argv)

    from fdi.adapter import count_parameters
    from fdi.training.config import TrainConfig
    from fdi.training.run import train

    t0 = time.perf_counter()
    models = build_models()
    build_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_inputs(root, args.resolution, max(2, args.batch_size))
        cfg = TrainConfig(
            sd="",
            output=str(root / "a.safetensors"),
            fdi=str(root / "task.fdi.safetensors"),
            degraded=str(root / "deg"),
            clean=str(root / "clean"),
            resolution=args.resolution,
            max_steps=1 + args.steps,
            batch_size=args.batch_size,
            num_workers=0,
            checkpoint_every=0,
            device=args.device,
            mixed_precision=args.mixed_precision,
            gradient_checkpointing=args.gradient_checkpointing,
            quiet=True,
        )
        marks = []  # (wall, process CPU) after each optimizer step; the first mark is before step 1

        def progress(done, total):
            marks.append((time.perf_counter(), time.process_time()))

        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        train(cfg, progress=progress, models=models)
        peak = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else None
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    times = [b[0] - a[0] for a, b in zip(marks, marks[1:])]
    cpu = [b[1] - a[1] for a, b in zip(marks, marks[1:])]
    timed, timed_cpu = times[1:], cpu[1:]
    dev = args.device
    if dev.startswith("cuda") and torch.cuda.is_available():
        dev = torch.cuda.get_device_name(torch.device(dev))
    else:
        dev = f"{dev}, {torch.get_num_threads()} threads"
    print(
        f"train step, full-size SD 2.1 (random weights) + {count_parameters() / 1e6:.1f} "
        f"M-parameter adapter, batch {args.batch_size}, "
        f"{args.resolution} px, {args.mixed_precision if args.mixed_precision != 'no' else 'fp32'}"
        f"{', gradient checkpointing' if args.gradient_checkpointing else ''}, {dev}: "
        f"{statistics.median(timed):.2f} s/step wall (median of {len(timed)} after a {times[0]:.2f} s warm-up step; "
        f"min {min(timed):.2f}, max {max(timed):.2f}), {statistics.median(timed_cpu):.2f} s/step process CPU time; "
        f"1-min load average {load:.1f} on {os.cpu_count()} CPUs; model build {build_s:.0f} s; "
        + (
            f"peak CUDA memory allocated {peak:.2f} GiB"
            if peak is not None
            else f"peak RSS of the process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} "
            "GiB (CPU figure)"
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
