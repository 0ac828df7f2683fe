"""Benchmark a whole FDI restore against plain SD sampling: time and peak memory, side by side, eager and compiled.

Not a test: prints one summary line per figure. The models are SD 2.1 base's UNet and VAE with
random weights (see ``bench/guidance_overhead.py``; ``--tiny``: the tests' tiny SD, for a quick CPU
smoke run) and a default-config adapter whose gates and last layers are non-zero. Measured in one
run, on one machine, for every ``--batch-size`` (a batch is one restore call: one UNet batch per step):

1. ``seconds per image``: one restore (VAE encode, adapter, DDIM inversion, guided DDIM sampling,
   decode) ÷ the batch size, median of ``--reps``; eager, and with ``--compile`` also compiled
   (:meth:`fdi.pipeline.FDIRestorationPipeline.compile`: UNet in channels_last, CUDA graphs on CUDA,
   VAE compiled on CUDA), with the compiled warm-up (first restore of that shape, compilation
   included) printed separately;
2. ``restore ÷ plain UNet passes``: that restore ÷ the same number of plain UNet passes (no FDI
   hooks) at the same batch size under the same settings (eager, or compiled the same way);
3. ``peak memory``: the restore's peak ÷ the peak of *plain sampling* — the same inversion and
   sampling loop with the same VAE work and no adapter (target: at most +0.3 GB at 512² fp16),
   eager, first batch size. On CUDA this is ``torch.cuda.max_memory_allocated``; on the CPU the
   figure is skipped (process RSS cannot separate the two runs in one process).
4. inference never loads BLIP-2: asserted (no ``transformers.models.blip_2`` module and no
   :class:`fdi.encoder.QFormerEncoder` ever built) — the FDI comes from a file or the adapter.

Goals (H100/H200, fp16, 512², 50 + 50 steps): compiled ≤ 1.5 s per image at batch 1, ≤ 0.8 s at
batch 8, restore ÷ plain passes ≤ 1.05.

    python bench/restore.py --tiny --size 64 --steps 2 --batch-size 1 2 --compile   # CPU smoke run
    python bench/restore.py --device cuda --dtype fp16 --size 512 --steps 50 --batch-size 1 8 --compile
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT.parent / "tests"))

from guidance_overhead import build_random_sd21, sync, timed, trained_like_adapter  # noqa: E402


def plain_sampling(pipe, image: torch.Tensor, steps: int) -> torch.Tensor:
    """The restore's work without the adapter: VAE encode, DDIM inversion, DDIM sampling, decode."""
    from fdi.sampling import pad_to_multiple

    with torch.no_grad():
        cond = pipe.encode_prompt("")
        padded = pad_to_multiple(image.to(pipe.device, torch.float32))
        lat = pipe.encode_images(padded)
        lat = pipe.invert(lat, cond, steps, steps)
        lat = pipe.sample(lat, cond, steps, 0.0)
        return pipe.decode_latents(lat).cpu()


def peak_bytes(fn, device: torch.device) -> int:
    sync(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device) - base


def build_tiny(device: torch.device, dtype: torch.dtype):
    """The tests' tiny SD 2.1-shaped pipeline (widths 32/32/64/64), random weights, and a matching adapter."""
    from tiny_sd import (
        randomise_adapter,
        tiny_adapter_config,
        tiny_scheduler,
        tiny_text_encoder,
        tiny_tokenizer,
        tiny_unet,
        tiny_vae,
    )

    from fdi.adapter import FDIAdapter
    from fdi.pipeline import FDIRestorationPipeline

    torch.manual_seed(0)
    tok = tiny_tokenizer()
    pipe = FDIRestorationPipeline(
        tiny_vae(),
        tiny_text_encoder(len(tok), tok.bos_token_id, tok.eos_token_id),
        tok,
        tiny_unet(),
        tiny_scheduler("epsilon"),
        device=device,
        dtype=dtype,
        source="tiny-random",
    )
    adapter = randomise_adapter(FDIAdapter(tiny_adapter_config(), base_family=pipe.base_family).eval())
    return pipe, adapter, torch.randn(8, 32)


def unet_passes(call, pipe, batch: int, size: int, steps: int, device: torch.device) -> float:
    """Seconds for ``2·steps`` UNet passes at ``batch`` (a restore's inversion + sampling count), through ``call``."""
    lat = torch.randn(batch, 4, size // 8, size // 8, device=device).to(pipe.dtype)
    cond = pipe.encode_prompt("").expand(batch, -1, -1).to(pipe.dtype)
    ts = [torch.full((batch,), int(t), device=device) for t in pipe.sampling_timesteps(steps).tolist()] * 2
    with torch.no_grad():
        return timed(lambda: [call(lat, t, encoder_hidden_states=cond).sample.float() for t in ts], device)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32")
    ap.add_argument("--size", type=int, default=128, help="image side in pixels")
    ap.add_argument("--steps", type=int, default=3, help="sampling steps (inversion uses the same number)")
    ap.add_argument(
        "--batch-size",
        type=int,
        nargs="+",
        default=[1],
        metavar="B",
        help="images per restore call (one UNet batch per step); several values are measured in turn",
    )
    ap.add_argument("--compile", action="store_true", help="also measure the compiled pipeline (pipe.compile())")
    ap.add_argument("--tiny", action="store_true", help="the tests' tiny SD instead of SD 2.1's sizes (CPU smoke run)")
    ap.add_argument("--reps", type=int, default=None, help="timed restores per setting (default 1 on CPU, 3 on GPU)")
    return ap.parse_args()


def record_qformer_builds() -> list:
    """Wrap :meth:`fdi.encoder.QFormerEncoder.from_pretrained` so that every call is appended to the returned list."""
    import fdi.encoder

    built = []
    original_from_pretrained = fdi.encoder.QFormerEncoder.from_pretrained
    fdi.encoder.QFormerEncoder.from_pretrained = classmethod(
        lambda cls, *a, **k: built.append(a) or original_from_pretrained(*a, **k)
    )
    return built


def build_models(tiny: bool, device: torch.device, dtype: torch.dtype):
    """``(pipeline, adapter, FDI tokens)``: the tests' tiny SD, or SD 2.1's sizes; random weights."""
    if tiny:
        return build_tiny(device, dtype)
    return build_random_sd21(device, dtype), trained_like_adapter("sd2.1-base"), torch.randn(32, 768)


def measure_eager(restore, pipe, images: dict, args, reps: int, device: torch.device):
    """Eager seconds per image, ``({batch: restore}, {batch: 2·steps plain UNet passes})``."""
    eager, eager_passes = {}, {}
    restore(args.batch_size[0])  # warm-up (kernels' first calls, cached alphas)
    plain_sampling(pipe, images[args.batch_size[0]], 1)
    for b in args.batch_size:
        restore(b)
        eager[b] = statistics.median(timed(lambda: restore(b), device) for _ in range(reps)) / b
        unet_passes(pipe.unet, pipe, b, args.size, args.steps, device)
        eager_passes[b] = unet_passes(pipe.unet, pipe, b, args.size, args.steps, device) / b
    return eager, eager_passes


def report_peak_memory(restore, pipe, use, images: dict, args, tag: str, device: torch.device) -> None:
    """Print the eager restore's peak memory against plain sampling's (CUDA only; skipped on the CPU)."""
    if device.type == "cuda":
        b = args.batch_size[0]
        plain_peak = peak_bytes(lambda: plain_sampling(pipe, images[b], args.steps), device)
        restore_peak = peak_bytes(lambda: restore(b), device)
        adapter_bytes = sum(p.numel() * p.element_size() for p in use.adapter.parameters())
        extra = restore_peak - plain_peak + adapter_bytes
        print(
            f"restore.peak_memory[{tag}, batch {b}, eager]: working memory restore {restore_peak / 2**30:.3f} GiB "
            f"vs plain sampling {plain_peak / 2**30:.3f} GiB (ratio {restore_peak / plain_peak:.3f}); "
            f"with the adapter's {adapter_bytes / 1e9:.3f} GB of weights the restore needs +{extra / 1e9:.3f} GB "
            "over plain sampling (target: at most +0.3 GB)"
        )
    else:
        print(
            f"restore.peak_memory[{tag}]: skipped on the CPU (measured with torch.cuda.max_memory_allocated on a GPU)"
        )


def measure_compiled(restore, pipe, args, reps: int, tag: str, device: torch.device):
    """Compiled seconds per image: plain UNet first (no FDI hooks), then the pipeline.

    ``({batch: restore}, {batch: plain UNet passes}, {("passes" | "restore", batch): warm-up seconds})``."""
    from fdi.compile import compile_module, default_mode

    compiled, compiled_passes, warmup = {}, {}, {}
    mode = default_mode(device)
    bare = compile_module(pipe.unet, device, "UNet", mode)
    for b in args.batch_size:
        t0 = time.perf_counter()
        unet_passes(bare, pipe, b, args.size, args.steps, device)
        warmup[("passes", b)] = time.perf_counter() - t0
        compiled_passes[b] = unet_passes(bare, pipe, b, args.size, args.steps, device) / b
    torch._dynamo.reset()  # the bare graphs must not serve the hooked UNet below
    ok = pipe.compile(mode=mode)
    for b in args.batch_size:
        warmup[("restore", b)] = timed(lambda: restore(b), device)
        compiled[b] = statistics.median(timed(lambda: restore(b), device) for _ in range(reps)) / b
    if not ok or not pipe.compiled_unet.is_compiled:
        print(
            f"restore.compiled[{tag}]: torch.compile was unavailable or failed (see the warning); "
            "the figures below are eager"
        )
    return compiled, compiled_passes, warmup


def report_times(args, reps: int, tag: str, eager, eager_passes, compiled, compiled_passes, warmup) -> None:
    """Print the seconds-per-image and restore ÷ plain-passes lines, one per batch size."""
    goal = "goal: compiled <= 1.5 s/image at batch 1, <= 0.8 s/image at batch 8 (H100/H200, fp16, 512x512, 50+50 steps)"
    for b in args.batch_size:
        line = f"restore.seconds_per_image[{tag}, batch {b}]: eager {eager[b]:.3f} s"
        if b in compiled:
            line += (
                f", compiled {compiled[b]:.3f} s (eager / compiled = {eager[b] / compiled[b]:.2f}x; median of {reps}); "
                f"warm-up: first compiled restore {warmup[('restore', b)]:.1f} s, first compiled UNet passes "
                f"{warmup[('passes', b)]:.1f} s (shorter when inductor's on-disk cache holds the graphs); {goal}"
            )
        else:
            line += f" (median of {reps}; {goal})"
        print(line)
    for b in args.batch_size:
        line = (
            f"restore.vs_plain_passes[{tag}, batch {b}]: eager restore {eager[b]:.3f} s / "
            f"{2 * args.steps} plain UNet passes {eager_passes[b]:.3f} s = {eager[b] / eager_passes[b]:.4f}"
        )
        if b in compiled:
            line += (
                f"; compiled restore {compiled[b]:.3f} s / {2 * args.steps} compiled plain UNet passes "
                f"{compiled_passes[b]:.3f} s = {compiled[b] / compiled_passes[b]:.4f}"
            )
        print(line + " (per image; goal <= 1.05)")


def check_no_blip2(built: list, tag: str) -> None:
    """Assert that no Q-Former was built and no transformers BLIP-2 module imported; print the line that says so."""
    blip2_modules = sorted(m for m in sys.modules if m.startswith("transformers.models.blip_2"))
    assert not built and not blip2_modules, f"BLIP-2 was loaded during inference: {built or blip2_modules}"
    print(f"restore.blip2_loaded[{tag}]: no (no Q-Former built, no transformers BLIP-2 module imported)")


def main() -> int:
    args = parse_args()

    from fdi.encoder import parse_dtype
    from fdi.pipeline import AdapterUse

    built = record_qformer_builds()
    device, dtype = torch.device(args.device), parse_dtype(args.dtype)
    reps = args.reps or (3 if device.type == "cuda" else 1)
    pipe, adapter, fdi_tokens = build_models(args.tiny, device, dtype)
    use = AdapterUse(adapter, fdi_tokens, 1.0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    model = "tiny SD" if args.tiny else "SD 2.1 sizes"
    tag = f"{name}, {model}, {args.dtype}, {args.size}x{args.size}, {args.steps}+{args.steps} steps"
    images = {
        b: torch.rand(b, 3, args.size, args.size, generator=torch.Generator().manual_seed(b)) for b in args.batch_size
    }

    def restore(b: int) -> torch.Tensor:
        return pipe.restore(images[b], [use], steps=args.steps, inversion_steps=args.steps)

    eager, eager_passes = measure_eager(restore, pipe, images, args, reps, device)
    report_peak_memory(restore, pipe, use, images, args, tag, device)
    compiled, compiled_passes, warmup = {}, {}, {}
    if args.compile:
        compiled, compiled_passes, warmup = measure_compiled(restore, pipe, args, reps, tag, device)
    report_times(args, reps, tag, eager, eager_passes, compiled, compiled_passes, warmup)
    check_no_blip2(built, tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
