"""Benchmark the cost of FDI guidance on a full-size SD 2.1 UNet (random weights).

Not a test: prints one summary line per figure, measured in one run, side by side:

1. ``step ratio``: a UNet step with guidance active ÷ the plain step (target ≤ 1.02). Plain and
   guided steps are interleaved and the medians compared, so drift of a shared machine hits both.
2. ``adapter``: the adapter's one-time forward (default config, 47.3 M parameters) on one image.
3. ``restore ratio``: a whole :meth:`fdi.pipeline.FDIRestorationPipeline.restore` (VAE encode, adapter,
   DDIM inversion, guided DDIM sampling, decode) ÷ the same number of plain UNet passes
   (target ≤ 1.10). With few steps (the CPU default) the VAE's one-time cost weighs more than with
   the paper's 50 + 50.

Models: the UNet is SD 2.1 base's architecture written out by hand (sample_size 64,
cross_attention_dim 1024, attention_head_dim [5, 10, 20, 20], linear projections, widths
320/640/1280/1280, two layers per block) and the VAE is SD's KL-f8 (128/256/512/512); both random.
The text tower is reduced to 2 layers of width 1024 (it runs once per restore, so it does not
affect the ratios). Random weights say nothing about quality; they time the same kernels.

    python bench/guidance_overhead.py                                   # CPU, 256 px, 4+4 steps
    python bench/guidance_overhead.py --device cuda --dtype fp16 --size 512 --steps 50
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

SD21_BASE_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=1024,
    attention_head_dim=[5, 10, 20, 20],
    use_linear_projection=True,
    upcast_attention=False,
)

SD_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def build_random_sd21(device: torch.device, dtype: torch.dtype):
    """An :class:`fdi.pipeline.FDIRestorationPipeline` with SD 2.1 base's UNet and VAE, random weights.

    The text tower is reduced to 2 layers of width 1024 (it runs once per restore)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from tiny_sd import tiny_scheduler, tiny_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel

    from fdi.pipeline import FDIRestorationPipeline

    torch.manual_seed(0)
    tok = tiny_tokenizer()
    with torch.device(device):  # random init where the models will run (much faster on a GPU)
        unet = UNet2DConditionModel(**SD21_BASE_UNET)
        vae = AutoencoderKL(**SD_VAE)
        text = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tok),
                hidden_size=1024,
                intermediate_size=4096,
                num_hidden_layers=2,
                num_attention_heads=16,
                max_position_embeddings=tok.model_max_length,
                bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.eos_token_id,
            )
        )
    return FDIRestorationPipeline(
        vae, text, tok, unet, tiny_scheduler("epsilon"), device=device, dtype=dtype, source="sd21-random"
    )


def trained_like_adapter(base_family: str):
    """A default-config adapter whose gates and last layers are non-zero (a fresh one is a no-op)."""
    from fdi.adapter import FDIAdapter

    adapter = FDIAdapter(base_family=base_family).eval()
    with torch.no_grad():
        for g in adapter.gates:
            g.fill_(0.1)
        for head in adapter.guidance_heads:
            head.out.weight.normal_(0, 1e-3)
    return adapter


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32")
    ap.add_argument("--size", type=int, default=256, help="image side in pixels (latent = size/8)")
    ap.add_argument(
        "--steps", type=int, default=4, help="sampling steps of the restore (inversion uses the same number)"
    )
    ap.add_argument(
        "--reps", type=int, default=None, help="interleaved plain/guided step pairs (default 5 on CPU, 30 on GPU)"
    )
    return ap.parse_args()


def time_adapter(pipe, use, image: torch.Tensor, device: torch.device):
    """The adapter's one-time forward (the first call warms up): ``(seconds of 3 calls, guidance)``."""
    pipe.compute_guidance(use, image)
    adapter_times = [timed(lambda: pipe.compute_guidance(use, image), device) for _ in range(3)]
    return adapter_times, pipe.compute_guidance(use, image)


def time_steps(pipe, guidance, size: int, steps: int, reps: int, device: torch.device):
    """Interleaved plain / guided UNet steps: ``(plain seconds, guided seconds, the plain step)``.

    The hooks are removed on return, so the returned step is a plain UNet pass."""
    from fdi.diffusers_backend import DiffusersGuidance

    lat = torch.randn(1, 4, size // 8, size // 8, device=device)
    cond = pipe.encode_prompt("")
    t = int(pipe.sampling_timesteps(steps)[0])
    hooks = DiffusersGuidance(pipe.unet, [(guidance, 1.0)], strength=1.0, active=False).attach()
    step = lambda: pipe._unet(lat, t, cond)  # noqa: E731
    with torch.no_grad():
        step()
        hooks.active = True
        step()
        plain, guided = [], []
        for _ in range(reps):
            hooks.active = False
            plain.append(timed(step, device))
            hooks.active = True
            guided.append(timed(step, device))
    hooks.remove()
    return plain, guided, step


def time_restore(pipe, use, image: torch.Tensor, steps: int, step, device: torch.device):
    """A whole restore and the same number of plain UNet passes (``2·steps`` calls of ``step``), in seconds."""
    from fdi.sampling import GUIDANCE_END

    passes = 2 * steps
    # warm-up: VAE and text kernels' first calls
    pipe.restore(image, [use], steps=2, inversion_steps=2, guidance_end=0.5)
    restore_s = timed(
        lambda: pipe.restore(image, [use], steps=steps, inversion_steps=steps, guidance_end=GUIDANCE_END), device
    )
    with torch.no_grad():
        plain_passes_s = timed(lambda: [step() for _ in range(passes)], device)
    return restore_s, plain_passes_s


def report(args, reps: int, plain, guided, adapter_times, restore_s: float, plain_passes_s: float) -> None:
    p_med, g_med = statistics.median(plain), statistics.median(guided)
    passes = 2 * args.steps
    print(
        f"step ratio: guided {g_med * 1e3:.1f} ms / plain {p_med * 1e3:.1f} ms = "
        f"{g_med / p_med:.4f} (target <= 1.02; medians of {reps} interleaved pairs)"
    )
    print(
        f"adapter: one-time forward {statistics.median(adapter_times) * 1e3:.1f} "
        f"ms per {args.size}x{args.size} image (median of 3)"
    )
    print(
        f"restore ratio: restore {restore_s:.2f} s / {passes} plain UNet passes "
        f"{plain_passes_s:.2f} s = {restore_s / plain_passes_s:.4f} "
        f"(target <= 1.10; {args.steps} inversion + {args.steps} sampling steps, "
        "VAE encode/decode and adapter included)"
    )


def main() -> int:
    args = parse_args()

    from fdi.encoder import parse_dtype
    from fdi.pipeline import AdapterUse

    device, dtype = torch.device(args.device), parse_dtype(args.dtype)
    reps = args.reps or (30 if device.type == "cuda" else 5)
    pipe = build_random_sd21(device, dtype)
    adapter = trained_like_adapter(pipe.base_family)
    fdi = torch.randn(32, 768)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    unet_m = sum(p.numel() for p in pipe.unet.parameters()) / 1e6
    print(
        f"device {device} ({where}), dtype {args.dtype}, image {args.size}x{args.size}, UNet {unet_m:.0f} M, "
        f"adapter {adapter.num_parameters() / 1e6:.1f} M parameters"
    )

    image = torch.rand(1, 3, args.size, args.size)
    use = AdapterUse(adapter, fdi, 1.0)
    adapter_times, guidance = time_adapter(pipe, use, image, device)  # 2. the adapter's one-time forward
    plain, guided, step = time_steps(pipe, guidance, args.size, args.steps, reps, device)  # 1. interleaved steps
    # 3. whole restore vs the same number of plain UNet passes
    restore_s, plain_passes_s = time_restore(pipe, use, image, args.steps, step, device)
    report(args, reps, plain, guided, adapter_times, restore_s, plain_passes_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
