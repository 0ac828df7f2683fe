"""Train a world's UNet further (does a longer-trained UNet start to use its deep levels?).

``python bench/smallworld/world_unet_more.py --world ~/.cache/fdi-learns/world-<key> --steps 400 --out DIR`` copies
``WORLD/sd`` to ``DIR/sd`` and continues its UNet's training as :func:`world.train_unet` trains it (ε-prediction on
the scaled posterior modes of the train patches and their mirror images, the empty prompt, AdamW, batch
``--batch``, gradients clipped to 1), at a constant ``--lr`` with a fresh optimizer, then saves the UNet there.
Measure the result with ``bench/smallworld/residual_reach.py --world DIR`` (it reads ``DIR/sd`` and ``DIR/pairs``:
linked to the world's) and ``bench/smallworld/world_denoiser.py --sd DIR/sd``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import List, Optional

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench" / "smallworld"))


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    import world as W

    from fdi.conditioning import encode_text
    from fdi.models import load_sd

    out: Path = args.out
    if (out / "sd").exists():
        shutil.rmtree(out / "sd")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(args.world / "sd", out / "sd")
    for name in ("pairs", "patches", "config.json"):
        if not (out / name).exists():
            (out / name).symlink_to(args.world / name)
    parts = load_sd(out / "sd")
    vae, unet = parts.vae.eval().requires_grad_(False), parts.unet
    ctx = encode_text(parts, "", torch.device("cpu"), torch.float32).embeds
    train = W._load_folder(args.world / "patches" / "train")
    mean, _ = W._latents(vae, torch.cat([train, train.flip(-1)]))
    z_all = mean * vae.config.scaling_factor
    abar = parts.scheduler.alphas_cumprod.float()
    unet.train().requires_grad_(True)
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(args.seed)
    t0, ema = time.time(), None
    for step in range(args.steps):
        idx = torch.randint(0, len(z_all), (args.batch,), generator=g)
        z0 = z_all[idx]
        t = torch.randint(0, len(abar), (args.batch,), generator=g)
        eps = torch.randn(z0.shape, generator=g)
        a = abar[t].view(-1, 1, 1, 1)
        pred = unet(
            a.sqrt() * z0 + (1 - a).sqrt() * eps, t, encoder_hidden_states=ctx.expand(args.batch, -1, -1)
        ).sample
        loss = F.mse_loss(pred, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step}/{args.steps} loss(ema) {ema:.4f} ({time.time() - t0:.0f} s)", flush=True)
    unet.eval().save_pretrained(out / "sd" / "unet", safe_serialization=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
