"""The figures a GPU should give, in one run: restore speed, training memory, fp16 gradient error, an offloaded restore.

Not a test. One script, meant to take at most 8 minutes on one GPU (an H200-class or a 12–24 GB card).
Full-size SD 2.1 (base, epsilon) with random weights, built in memory from the configs shipped in
``fdi/configs/sd2.1-base`` (nothing is downloaded), a default-config FDI adapter whose gates and last
layers are non-zero, random FDI tokens (no BLIP-2). Random weights make timings and memory meaningful,
images meaningless. Figures (JSON keys):

* ``restore.b{B}.eager_s_per_image`` / ``compiled_s_per_image``: one whole restore (VAE encode, adapter,
  DDIM inversion, guided DDIM sampling, decode) ÷ B, median of ``--reps``, fp16, ``--size``² (512),
  ``--steps`` + ``--steps`` (50 + 50), batch 1 and 8; compiled = :meth:`FDIRestorationPipeline.compile`
  (CUDA graphs on CUDA); ``compile_warmup_s``: the first compiled restore of that shape.
* ``restore.b{B}.vs_plain_eager`` / ``vs_plain_compiled``: that restore ÷ the same number of UNet passes
  without FDI work (eager UNet; compiled: the same compiled UNet with the guidance inactive).
* ``restore.peak_extra_bytes``: peak GPU memory of a batch-1 restore above what the models hold (CUDA only).
* ``train.{checkpointing,no_checkpointing}.peak_extra_bytes``: peak GPU memory of one training step
  (forward + backward, batch 1, ``--train-resolution`` px, fp16 UNet, fp32 adapter) above the resident
  models; ``train.checkpointing_ratio`` = with ÷ without (CUDA only; ``null`` elsewhere). Checkpointing
  is the CLI's: diffusers' ``enable_gradient_checkpointing`` on the UNet.
* ``grad.fp16_rel_l2`` / ``grad.fp16_scaled_rel_l2``: relative L2 error of the adapter's gradients with
  the UNet in fp16 against fp32, same batch, noise and timestep, at ``--grad-resolution`` px; unscaled,
  and with the loss scaled by 2^16 before backward (then unscaled): what loss scaling buys.
* ``offload.*``: a ``--novram``-like restore: accelerate's sequential CPU offload (``cpu_offload``): the
  weights stay in CPU memory and each layer's are copied to the GPU just for its forward. Seconds per
  image and peak GPU memory at batch 1, ``--offload-steps`` + ``--offload-steps`` steps.

``--smoke``: the tests' tiny SD on the CPU (64 px, 2 + 2 steps, batches 1 and 2, compiled with the
``eager`` dynamo backend), under 2 minutes, so the script can be exercised without a GPU; its figures
mean nothing. Writes ``--json`` (default ``gpu_check.json``) and prints a table.

    python bench/gpu_check.py                      # on the GPU: cuda, fp16, 512², 50 + 50 steps, batch 1 and 8
    python bench/gpu_check.py --smoke --json /tmp/smoke.json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

ROOT = Path(__file__).resolve().parent
for p in (ROOT, ROOT.parent, ROOT.parent / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from guidance_overhead import sync, timed, trained_like_adapter  # noqa: E402
from restore import build_tiny, peak_bytes, unet_passes  # noqa: E402

from fdi.training.precision import INITIAL_LOSS_SCALE  # noqa: E402
from fdi.training.step import unet_checkpointing  # noqa: E402

GRAD_SCALE = INITIAL_LOSS_SCALE  # the first scale of the library's fp16 loss scaler


# ---- models ---------------------------------------------------------------------------------------


def build_sd21(device: torch.device, dtype: torch.dtype):
    """An :class:`fdi.pipeline.FDIRestorationPipeline` of full-size SD 2.1-base parts with random weights, from the
    shipped configs (UNet, KL-f8 VAE, the 23-layer OpenCLIP-H text tower, DDIM schedule), drawn on ``device``."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from fdi.models import family_config_dir
    from fdi.pipeline import FDIRestorationPipeline
    from fdi.tokenizers import sd2_tokenizer

    cfg = family_config_dir("sd2.1-base")
    torch.manual_seed(0)
    with torch.device(device):  # random init where the models run (fast on a GPU)
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(cfg / "unet")))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(cfg / "vae")))
        text = CLIPTextModel(CLIPTextConfig.from_json_file(str(cfg / "text_encoder" / "config.json")))
    scheduler = DDIMScheduler.from_config(DDIMScheduler.load_config(str(cfg / "scheduler")))
    return FDIRestorationPipeline(
        vae, text, sd2_tokenizer(), unet, scheduler, device=device, dtype=dtype, source="sd21-random"
    )


def build(smoke: bool, device: torch.device, dtype: torch.dtype):
    """``(pipeline, adapter, FDI tokens)``: tiny (``smoke``) or full size."""
    if smoke:
        return build_tiny(device, dtype)
    torch.manual_seed(0)
    return build_sd21(device, dtype), trained_like_adapter("sd2.1-base"), torch.randn(32, 768)


# ---- 1. restore -----------------------------------------------------------------------------------


def median_time(fn: Callable[[], object], device: torch.device, reps: int) -> float:
    return statistics.median(timed(fn, device) for _ in range(max(1, reps)))


def restore_images(batches: List[int], size: int) -> Dict[int, torch.Tensor]:
    return {b: torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(b)) for b in batches}


def restore_figures(pipe, use, size: int, steps: int, batches: List[int], reps: int) -> Dict:
    """Eager seconds per image and restore ÷ plain UNet passes per batch size; peak memory at the first."""
    device = pipe.device
    images = restore_images(batches, size)
    out: Dict = {}

    def restore(b: int):
        return pipe.restore(images[b], [use], steps=steps, inversion_steps=steps)

    for b in batches:
        restore(b)  # warm-up: kernels' first calls, cached tables
        r = out[f"b{b}"] = {"eager_s_per_image": median_time(lambda: restore(b), device, reps) / b}
        unet_passes(pipe.unet, pipe, b, size, steps, device)
        r["plain_passes_eager_s_per_image"] = unet_passes(pipe.unet, pipe, b, size, steps, device) / b
        r["vs_plain_eager"] = r["eager_s_per_image"] / r["plain_passes_eager_s_per_image"]
    if device.type == "cuda":
        adapter_bytes = sum(p.numel() * p.element_size() for p in use.adapter.parameters())
        out["peak_extra_bytes"] = peak_bytes(lambda: restore(batches[0]), device) + adapter_bytes
    else:
        out["peak_extra_bytes"] = None
    return out


def compiled_figures(
    pipe, use, size: int, steps: int, batches: List[int], reps: int, backend, out: Dict, deadline: float
) -> None:
    """Adds the compiled seconds per image, warm-up and restore ÷ compiled plain passes to ``out`` (per batch).
    Run last on ``pipe``: compiling installs the UNet's guidance slot for good. A batch size is skipped (and
    said so) once ``time.perf_counter()`` is past ``deadline``."""
    device = pipe.device
    images = restore_images(batches, size)

    def restore(b: int):
        return pipe.restore(images[b], [use], steps=steps, inversion_steps=steps)

    out["compiled"] = bool(pipe.compile(backend=backend))
    for b in batches:
        r = out[f"b{b}"]
        if time.perf_counter() > deadline:
            r["compiled_skipped"] = "time budget (--budget-s) spent"
            continue
        r["compile_warmup_s"] = timed(lambda: restore(b), device)
        r["compiled_s_per_image"] = median_time(lambda: restore(b), device, reps) / b
        unet_passes(pipe.compiled_unet, pipe, b, size, steps, device)
        r["plain_passes_compiled_s_per_image"] = unet_passes(pipe.compiled_unet, pipe, b, size, steps, device) / b
        r["vs_plain_compiled"] = r["compiled_s_per_image"] / r["plain_passes_compiled_s_per_image"]
    torch._dynamo.reset()
    return out


# ---- 2. and 3. training -----------------------------------------------------------------------------


def train_batch(pipe, resolution: int) -> Dict[str, torch.Tensor]:
    """A fixed batch of one pair at ``resolution`` px: degraded image, clean latent (the library's
    fdi.models.vae_encode), empty-prompt embedding, ᾱ table; made before any measurement."""
    from fdi.models import vae_encode

    device = pipe.device
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(1, 3, resolution, resolution, generator=g).to(device)
    with torch.no_grad():
        return {
            "degraded": torch.rand(1, 3, resolution, resolution, generator=g).to(device),
            "z0": vae_encode(pipe.vae, clean, pipe.dtype),
            "embeds": pipe.encode_prompt(""),
            "alphas": pipe.scheduler.alphas_cumprod.to(device, torch.float32),
        }


def adapter_grads(pipe, unet, adapter, fdi_tokens, batch: Dict, dtype: torch.dtype, loss_scale: float = 1.0):
    """One training step's adapter gradients (one fp32 vector) through ``unet`` in ``dtype``: the library's
    :func:`fdi.training.step.training_step` with its diffusers predictor, fixed batch, noise and timestep;
    ``(loss · loss_scale).backward()``, gradients divided by ``loss_scale``."""
    from fdi.training.step import diffusers_predictor, step_generator, training_step

    adapter.zero_grad(set_to_none=True)
    step = training_step(
        adapter,
        diffusers_predictor(unet, batch["embeds"], dtype),
        batch["degraded"],
        batch["z0"],
        fdi_tokens.to(pipe.device),
        batch["alphas"],
        pipe.prediction_type,
        0.1,
        step_generator(0, 0),
    )
    (step.loss * loss_scale).backward()
    grads = [p.grad.detach().float().flatten() / loss_scale for p in adapter.parameters() if p.grad is not None]
    adapter.zero_grad(set_to_none=True)
    return torch.cat(grads) if grads else torch.zeros(0, device=pipe.device)


def training_figures(pipe, adapter, fdi_tokens, resolution: int, grad_resolution: int) -> Dict:
    device = pipe.device
    adapter = adapter.to(device, torch.float32).train().requires_grad_(True)
    out: Dict = {"resolution": resolution, "grad_resolution": grad_resolution}
    batch = train_batch(pipe, resolution)
    for name, on in (("no_checkpointing", False), ("checkpointing", True)):
        fig = out[name] = {"peak_extra_bytes": None}
        # the library's checkpointing of the frozen UNet, as `fdi train --gradient-checkpointing` and the node use
        with unet_checkpointing(pipe.unet, on):
            if device.type == "cuda":
                try:
                    fig["peak_extra_bytes"] = peak_bytes(
                        lambda: adapter_grads(pipe, pipe.unet, adapter, fdi_tokens, batch, pipe.dtype), device
                    )
                except torch.cuda.OutOfMemoryError:
                    fig["error"] = "out of memory"
                    torch.cuda.empty_cache()
                    continue
            fig["step_s"] = timed(
                lambda: adapter_grads(pipe, pipe.unet, adapter, fdi_tokens, batch, pipe.dtype), device
            )
    a, b = out["checkpointing"]["peak_extra_bytes"], out["no_checkpointing"]["peak_extra_bytes"]
    out["checkpointing_ratio"] = a / b if a is not None and b else None

    # fp16 vs fp32 gradients: the same step through an fp32 copy of the UNet and through an fp16 one
    ref_unet = copy.deepcopy(pipe.unet).to(torch.float32)
    batch = train_batch(pipe, grad_resolution)
    ref = adapter_grads(pipe, ref_unet, adapter, fdi_tokens, batch, torch.float32)
    del ref_unet
    half_unet = pipe.unet if pipe.dtype == torch.float16 else copy.deepcopy(pipe.unet).to(torch.float16)
    grad = {}
    for key, scale in (("fp16_rel_l2", 1.0), ("fp16_scaled_rel_l2", GRAD_SCALE)):
        try:
            g16 = adapter_grads(pipe, half_unet, adapter, fdi_tokens, batch, torch.float16, scale)
            grad[key] = float((g16 - ref).norm() / ref.norm().clamp_min(1e-30))
        except RuntimeError as exc:  # e.g. an fp16 kernel missing on this device (old CPUs)
            grad[key] = None
            grad[key + "_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    grad["median_abs_grad_fp32"] = float(ref.abs().median()) if ref.numel() else None
    grad["grad_scale"] = GRAD_SCALE
    out["grad"] = grad
    adapter.eval().requires_grad_(False)
    return out


# ---- 4. offloaded restore -------------------------------------------------------------------------------


def offload_figures(smoke: bool, device: torch.device, dtype: torch.dtype, size: int, steps: int) -> Dict:
    """A batch-1 restore with accelerate's sequential CPU offload of the UNet, VAE and text encoder."""
    from accelerate import cpu_offload

    from fdi.pipeline import AdapterUse

    pipe, adapter, tokens = build(smoke, device, dtype)
    for name in ("unet", "vae", "text_encoder"):  # the weights go back to the CPU; accelerate streams them in
        cpu_offload(getattr(pipe, name).to("cpu"), execution_device=device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    use = AdapterUse(adapter, tokens, 1.0)

    def restore():
        return pipe.restore(image, [use], steps=steps, inversion_steps=steps)

    restore()  # warm-up
    out: Dict = {
        "method": "accelerate.cpu_offload (sequential: weights in CPU memory, each layer's copied for its forward)",
        "steps": steps,
        "peak_bytes": peak_bytes(restore, device) if device.type == "cuda" else None,
    }
    out["s_per_image"] = timed(restore, device)
    return out


# ---- driver -------------------------------------------------------------------------------------------


def flatten(d: Dict, prefix: str = "") -> Dict[str, object]:
    flat: Dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def table(results: Dict) -> str:
    rows = []
    for k, v in flatten(results).items():
        if isinstance(v, float):
            if k.endswith("bytes"):
                v = f"{v / 2**30:.3f} GiB"
            elif k.endswith("_s") or "_s_per" in k:
                v = f"{v:.3f} s"
            else:
                v = f"{v:.4g}"
        elif isinstance(v, int) and k.endswith("bytes"):
            v = f"{v / 2**30:.3f} GiB"
        elif v is None:
            v = "n/a (CUDA only)" if k.endswith("bytes") or k.endswith("ratio") else "n/a"
        rows.append((k, str(v)))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--smoke", action="store_true", help="tiny SD on the CPU, seconds: exercises the script only")
    ap.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    ap.add_argument("--size", type=int, default=None, help="restore image side, px (512; smoke 64)")
    ap.add_argument("--steps", type=int, default=None, help="sampling = inversion steps (50; smoke 2)")
    ap.add_argument("--batch-size", type=int, nargs="+", default=None, help="restore batch sizes (1 8; smoke 1 2)")
    ap.add_argument("--reps", type=int, default=None, help="timed restores per setting (2; smoke 1)")
    ap.add_argument("--train-resolution", type=int, default=None, help="training-step memory, px (512; smoke 64)")
    ap.add_argument("--grad-resolution", type=int, default=None, help="fp16 gradient check, px (256; smoke 64)")
    ap.add_argument("--offload-steps", type=int, default=None, help="offloaded restore steps (20; smoke 2)")
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled restore")
    ap.add_argument(
        "--budget-s", type=float, default=420, help="start no compiled batch size after this many seconds (420)"
    )
    ap.add_argument("--json", default="gpu_check.json", help="where to write the figures")
    args = ap.parse_args(argv)

    smoke = args.smoke
    device = torch.device(args.device or ("cpu" if smoke else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here; run with --smoke for the CPU check of the script itself", file=sys.stderr)
        return 2

    def pick(value, full, small):
        return value if value is not None else (small if smoke else full)

    size, steps = pick(args.size, 512, 64), pick(args.steps, 50, 2)
    batches, reps = pick(args.batch_size, [1, 8], [1, 2]), pick(args.reps, 2, 1)
    train_res, grad_res = pick(args.train_resolution, 512, 64), pick(args.grad_resolution, 256, 64)
    offload_steps = pick(args.offload_steps, 20, 2)
    dtype = torch.float32 if device.type == "cpu" else torch.float16  # fp16 convolutions are slow or missing on CPUs
    compile_backend = None if args.no_compile else ("eager" if device.type == "cpu" else "inductor")

    from fdi.pipeline import AdapterUse

    t_start = time.perf_counter()
    results: Dict = {
        "meta": {
            "device": torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)",
            "torch": torch.__version__,
            "smoke": smoke,
            "model": "tiny SD (tests/tiny_sd.py)" if smoke else "SD 2.1-base sizes, random weights (fdi/configs)",
            "dtype": str(dtype).replace("torch.", ""),
            "size": size,
            "steps": steps,
            "batches": batches,
            "compile_backend": compile_backend,
        }
    }
    pipe, adapter, tokens = build(smoke, device, dtype)
    use = AdapterUse(adapter, tokens, 1.0)
    t = time.perf_counter()
    results["restore"] = restore_figures(pipe, use, size, steps, batches, reps)
    results["meta"]["restore_wall_s"] = time.perf_counter() - t
    t = time.perf_counter()
    results["train"] = training_figures(pipe, adapter, tokens, train_res, grad_res)
    results["meta"]["train_wall_s"] = time.perf_counter() - t
    if compile_backend is not None:
        t = time.perf_counter()
        deadline = t_start + args.budget_s
        compiled_figures(pipe, use, size, steps, batches, reps, compile_backend, results["restore"], deadline)
        results["meta"]["compiled_wall_s"] = time.perf_counter() - t
    del pipe
    if device.type == "cuda":
        torch.cuda.empty_cache()
    t = time.perf_counter()
    results["offload"] = offload_figures(smoke, device, dtype, size, offload_steps)
    results["meta"]["offload_wall_s"] = time.perf_counter() - t
    sync(device)
    results["meta"]["wall_s"] = time.perf_counter() - t_start
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(table(results))
    print(f"(written to {args.json})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
