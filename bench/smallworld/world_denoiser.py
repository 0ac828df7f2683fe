"""How good a denoiser is a world's UNet? ε-prediction error per timestep, beside two references.

``python bench/smallworld/world_denoiser.py --sd ~/.cache/fdi-learns/world-<key>/sd --patches DIR`` encodes 64 patches
of DIR (the posterior mode, scaled, as ``train`` and ``restore`` encode), noises them at a few timesteps of
the world's schedule with seeded noise and prints, per timestep, the mean squared error of

* the UNet's ε-prediction (empty prompt, the world's own text tower);
* the best *linear* denoiser for Gaussian latents with the data's per-channel mean and variance
  (``ε̂ = sqrt(1-ᾱ)·(z_t − sqrt(ᾱ)·μ) / (ᾱ·σ² + 1 − ᾱ)``): a UNet that does worse has learnt less than the
  latents' first two moments;
* predicting zero (≈ 1).

A working denoiser's error falls as t grows (at high noise ``ε ≈ z_t``); a flat curve means the UNet
has not learnt to use the timestep. JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

TIMESTEPS = (50, 200, 400, 600, 800, 950)


def _patches(folder: Path, n: int, seed: int) -> torch.Tensor:
    from PIL import Image

    files = sorted(folder.glob("*.png"))
    if not files:
        raise SystemExit(f"no .png patches in {folder}")
    idx = np.random.RandomState(seed).choice(len(files), min(n, len(files)), replace=False)
    arrays = [np.asarray(Image.open(files[i]).convert("RGB"), dtype=np.float32) / 255.0 for i in idx]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def measure(sd: Path, patches: Path, n: int = 64, seed: int = 0) -> List[Dict[str, float]]:
    """One row per timestep: ``t``, ``alpha_bar``, ``unet``, ``gaussian_linear``, ``zero`` (ε-MSE)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    vae = AutoencoderKL.from_pretrained(sd, subfolder="vae").eval()
    unet = UNet2DConditionModel.from_pretrained(sd, subfolder="unet").eval()
    abar = DDPMScheduler.from_pretrained(sd, subfolder="scheduler").alphas_cumprod
    tok = AutoTokenizer.from_pretrained(sd / "tokenizer")
    text = CLIPTextModel.from_pretrained(sd, subfolder="text_encoder").eval()
    x = _patches(patches, n, seed)
    rows = []
    with torch.no_grad():
        ids = tok([""], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
        ctx = text(ids)[0].expand(len(x), -1, -1)
        z0 = vae.encode(x * 2 - 1).latent_dist.mode() * vae.config.scaling_factor
        mu, var = z0.mean((0, 2, 3), keepdim=True), z0.var((0, 2, 3), keepdim=True)
        for t in TIMESTEPS:
            a = abar[t]
            eps = torch.randn(z0.shape, generator=torch.Generator().manual_seed(seed + t))
            zt = a.sqrt() * z0 + (1 - a).sqrt() * eps
            pred = unet(zt, torch.full((len(x),), t), encoder_hidden_states=ctx).sample
            linear = (1 - a).sqrt() * (zt - a.sqrt() * mu) / (a * var + 1 - a)
            rows.append(
                {
                    "t": t,
                    "alpha_bar": round(float(a), 4),
                    "unet": round(float(((pred - eps) ** 2).mean()), 4),
                    "gaussian_linear": round(float(((linear - eps) ** 2).mean()), 4),
                    "zero": round(float((eps**2).mean()), 4),
                }
            )
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sd", required=True, type=Path, help="the world's diffusers folder (WORLD/sd)")
    ap.add_argument("--patches", required=True, type=Path, help="a folder of patches (WORLD/patches/train)")
    ap.add_argument("-n", type=int, default=64, help="patches measured")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = measure(args.sd, args.patches, args.n)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'t':>5} {'alpha_bar':>9} {'unet':>8} {'gaussian-linear':>16} {'zero':>7}")
    for r in rows:
        print(f"{r['t']:>5} {r['alpha_bar']:>9} {r['unet']:>8} {r['gaussian_linear']:>16} {r['zero']:>7}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
