"""Does an FDI adapter lower the diffusion loss of a world's frozen UNet? Its MSE with and without it, at fixed t.

``python bench/smallworld/adapter_probe.py --world ~/.cache/fdi-learns/world-<key> --task haze --fdi FDI --adapter A
...`` takes ``-n`` seeded TRAIN pairs of ``WORLD/pairs/<task>`` (never the test patches), encodes the clean patches
(posterior mode, scaled, as ``train`` encodes), noises them at each ``--t`` with noise seeded by t, and prints per
adapter (``fresh`` = a new adapter as ``fdi train --seed 0`` makes it, or an adapter / checkpoint file):

* ``mse_plain`` / ``mse_guided``: MSE of the UNet to its target (ε or v, as the world's scheduler says) without
  guidance and guided at ``--strength``;
* ``rel_change``: ``|ε̂_guided − ε̂_plain| / |ε̂_plain|`` (does the guidance reach the output at all?);
* ``mse_other_image``: guided by another pair's degraded image (the batch rolled by one): what the adapter gains
  without this image's content (a gain that stays is a correction of the UNet, not information from the image);
* ``res_rms`` / ``feat_rms`` per UNet level: the residual's RMS beside the RMS of the feature it is added to;
* with ``--grads``: the gradient norm of the trainer's loss (ε-MSE + 0.1·L1 of ẑ0, the three t's pooled)
  per adapter part.

JSON on stdout (one object per adapter).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

ADAPTER_CONFIG = {"res_blocks": 1, "heads": 4, "se_reduction": 4}  # bench/learns.py's


def _pairs(world: Path, task: str, n: int, seed: int):
    from fdi.images import load_image

    rows = sorted((world / "pairs" / task / "degraded").glob("*.png"))
    idx = np.random.RandomState(seed).choice(len(rows), min(n, len(rows)), replace=False)
    deg = torch.stack([load_image(rows[i]) for i in sorted(idx)])
    clean = torch.stack([load_image(world / "pairs" / task / "clean" / rows[i].name) for i in sorted(idx)])
    return deg, clean


def _part(name: str) -> str:
    bits = name.split(".")
    if bits[0] == "guidance_heads":
        return f"head{bits[1]}.{'out' if bits[2] == 'out' else 'se'}"
    if bits[0] in ("levels", "decouple_levels", "gates"):
        return f"{bits[0]}{bits[1]}"
    return bits[0]


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", required=True, type=Path)
    ap.add_argument("--task", required=True)
    ap.add_argument("--fdi", required=True, type=Path, help="the task FDI the adapters were trained with")
    ap.add_argument("--adapter", nargs="+", default=["fresh"], help="'fresh' or adapter .safetensors files")
    ap.add_argument("-n", type=int, default=32, help="train pairs")
    ap.add_argument("--t", type=int, nargs="+", default=[200, 500, 900])
    ap.add_argument("--strength", type=float, default=1.0)
    ap.add_argument("--grads", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from fdi.adapter import FDIAdapter, FDIAdapterConfig
    from fdi.conditioning import encode_text
    from fdi.diffusers_backend import guide_unet
    from fdi.instruction import FDI
    from fdi.models import load_sd, vae_encode
    from fdi.sampling import diffusion_target
    from fdi.training.step import fdi_loss

    parts = load_sd(args.world / "sd")
    unet, vae = parts.unet.eval().requires_grad_(False), parts.vae.eval().requires_grad_(False)
    ctx = encode_text(parts, "", torch.device("cpu"), torch.float32).embeds
    abar = parts.scheduler.alphas_cumprod.float()
    fdi = FDI.load(args.fdi)
    deg, clean = _pairs(args.world, args.task, args.n, args.seed)
    with torch.no_grad():
        z0 = vae_encode(vae, clean, torch.float32)
    b = len(z0)
    noises = {t: torch.randn(z0.shape, generator=torch.Generator().manual_seed(1000 + t)) for t in args.t}
    z_ts = {t: abar[t].sqrt() * z0 + (1 - abar[t]).sqrt() * noises[t] for t in args.t}
    kind = parts.scheduler.config.prediction_type
    targets = {t: diffusion_target(z0, noises[t], abar[t], kind) for t in args.t}
    cond = ctx.expand(b, -1, -1)

    feats: Dict[int, torch.Tensor] = {}
    hooks = [
        blk.resnets[-1].register_forward_hook(lambda m, a, o, i=i: feats.__setitem__(i, o.detach()))
        for i, blk in enumerate(unet.down_blocks)
    ]
    plain = {}
    with torch.no_grad():
        for t in args.t:
            plain[t] = unet(z_ts[t], torch.full((b,), t), encoder_hidden_states=cond).sample
    feat_rms = {t: None for t in args.t}
    with torch.no_grad():  # feature RMS at the middle t
        unet(z_ts[args.t[len(args.t) // 2]], torch.full((b,), args.t[len(args.t) // 2]), encoder_hidden_states=cond)
        feat_rms = [round(float(feats[i].pow(2).mean().sqrt()), 4) for i in sorted(feats)]
    for h in hooks:
        h.remove()

    for name in args.adapter:
        if name == "fresh":
            conf = FDIAdapterConfig(
                channels=tuple(unet.config.block_out_channels),
                token_width=fdi.shape[1],
                num_tokens=fdi.shape[0],
                **ADAPTER_CONFIG,
            )
            torch.manual_seed(0)
            adapter = FDIAdapter(conf)
        else:
            adapter = FDIAdapter.from_file(name)
        adapter.eval()
        row: Dict[str, object] = {"adapter": name, "task": args.task, "n": b, "strength": args.strength}
        with torch.no_grad():
            g = adapter(deg, fdi.tokens)
            g_other = adapter(deg.roll(1, 0), fdi.tokens)
            row["res_rms"] = [round(float(r.pow(2).mean().sqrt()), 5) for r in g.residuals]
            row["feat_rms"] = feat_rms
            row["gate_absmax"] = [round(float(m.gate.abs().max()), 5) for m in g.modulations]
            per_t = {}
            for t in args.t:
                with guide_unet(unet, g, strength=args.strength):
                    guided = unet(z_ts[t], torch.full((b,), t), encoder_hidden_states=cond).sample
                with guide_unet(unet, g_other, strength=args.strength):
                    other = unet(z_ts[t], torch.full((b,), t), encoder_hidden_states=cond).sample
                per_t[t] = {
                    "mse_other_image": round(float((other - targets[t]).pow(2).mean()), 5),
                    "mse_plain": round(float((plain[t] - targets[t]).pow(2).mean()), 5),
                    "mse_guided": round(float((guided - targets[t]).pow(2).mean()), 5),
                    "rel_change": round(float((guided - plain[t]).norm() / plain[t].norm()), 5),
                }
            row["t"] = per_t
        if args.grads:
            adapter.train()
            adapter.zero_grad(set_to_none=True)
            total = 0.0
            for t in args.t:
                tt = torch.full((b,), t)
                gg = adapter(deg, fdi.tokens)
                with guide_unet(unet, gg):
                    pred = unet(z_ts[t], tt, encoder_hidden_states=cond).sample
                loss, _, _ = fdi_loss(pred, z_ts[t], z0, noises[t], abar[tt], kind, 0.1)
                (loss / len(args.t)).backward()
                total += float(loss.detach()) / len(args.t)
            sq = defaultdict(float)
            for pname, p in adapter.named_parameters():
                if p.grad is not None:
                    sq[_part(pname)] += float(p.grad.pow(2).sum())
            row["loss"] = round(total, 5)
            row["grad_norm"] = round(sum(sq.values()) ** 0.5, 6)
            row["grads"] = {k: float(f"{v**0.5:.3g}") for k, v in sorted(sq.items())}
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
