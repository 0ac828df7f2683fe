"""How much can encoder residuals move a world's frozen UNet, and how much diffusion loss can they buy at best?

``python bench/smallworld/residual_reach.py --world ~/.cache/fdi-learns/world-<key> --task haze`` on ``-n`` seeded TRAIN
pairs (never the test patches), noise seeded by t:

1. **reach**: per UNet level, a random residual (Gaussian, RMS = ``--scale`` × the RMS of the feature it is added
   to) added at that level alone, as FDI guidance adds it: ``rel_change`` = ``|ε̂' − ε̂| / |ε̂|`` and the MSE to the
   UNet's own target (ε or v, the world's scheduler says which; "ε-MSE" below);
   ``--size 128`` measures it on 128 px crops of the train photos instead (16×16 latents; the UNet was trained on
   8×8 ones, so this says whether the deep levels are ignored because they are 1×1 or whatever their size);
   Per decoder point ``up_blocks[0..L-2]``: AdaIN (gate 1) to another image's feature statistics there (the batch
   rolled by one), the same ``rel_change`` and ε-MSE;
2. **oracle** (``--oracle-steps``): free residuals, one set per image and the same at every t (as an adapter's
   guidance is), optimised with Adam (lr ``--oracle-lr``) on the diffusion loss over random t and noise, the
   frozen UNet as in training; then the ε-MSE at the fixed t. No adapter can do better on these images through
   the residuals in as many steps: it is the capacity of the channel, not of the adapter. ``--oracle-t`` fits them
   at one t (the most the residuals can buy there).

JSON lines on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench" / "smallworld"))


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", required=True, type=Path)
    ap.add_argument("--task", default="haze")
    ap.add_argument("-n", type=int, default=16)
    ap.add_argument("--t", type=int, nargs="+", default=[200, 500, 900])
    ap.add_argument("--scale", type=float, nargs="+", default=[1.0])
    ap.add_argument("--oracle-steps", type=int, default=0)
    ap.add_argument("--oracle-lr", type=float, default=1e-2)
    ap.add_argument("--oracle-t", type=int, default=None, help="fit the oracle at this one t (default: t ~ U{0..T-1})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--size",
        type=int,
        default=None,
        help="instead of the pairs, seeded SIZE-px crops of the world's train photos (e.g. 128: 16x16 latents)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from adapter_probe import _pairs

    from fdi.adapter import FDIGuidance, Modulation
    from fdi.conditioning import encode_text
    from fdi.diffusers_backend import guide_unet
    from fdi.models import load_sd, vae_encode
    from fdi.sampling import diffusion_target

    parts = load_sd(args.world / "sd")
    unet, vae = parts.unet.eval().requires_grad_(False), parts.vae.eval().requires_grad_(False)
    ctx = encode_text(parts, "", torch.device("cpu"), torch.float32).embeds
    abar = parts.scheduler.alphas_cumprod.float()
    if args.size:
        import world as W

        cfg = json.loads((args.world / "config.json").read_text())
        gen = torch.Generator().manual_seed(args.seed)
        photos = [W._resize_short(W._load_photo(name), cfg["short_side"]) for name in W.TRAIN_IMAGES]
        crops = []
        for i in range(args.n):
            img = photos[i % len(photos)]
            y = int(torch.randint(0, img.shape[1] - args.size + 1, (), generator=gen))
            x = int(torch.randint(0, img.shape[2] - args.size + 1, (), generator=gen))
            crops.append(img[:, y : y + args.size, x : x + args.size])
        clean = torch.stack(crops)
    else:
        _, clean = _pairs(args.world, args.task, args.n, args.seed)
    with torch.no_grad():
        z0 = vae_encode(vae, clean, torch.float32)
    b = len(z0)
    cond = ctx.expand(b, -1, -1)
    noises = {t: torch.randn(z0.shape, generator=torch.Generator().manual_seed(1000 + t)) for t in args.t}
    z_ts = {t: abar[t].sqrt() * z0 + (1 - abar[t]).sqrt() * noises[t] for t in args.t}
    kind = parts.scheduler.config.prediction_type
    targets = {t: diffusion_target(z0, noises[t], abar[t], kind) for t in args.t}

    feats = {}
    hooks = [
        blk.resnets[-1].register_forward_hook(lambda m, a, o, i=i: feats.__setitem__(i, o.detach()))
        for i, blk in enumerate(unet.down_blocks)
    ]
    plain = {}
    rms = {}
    with torch.no_grad():
        for t in args.t:
            plain[t] = unet(z_ts[t], torch.full((b,), t), encoder_hidden_states=cond).sample
            rms[t] = [float(feats[i].pow(2).mean().sqrt()) for i in sorted(feats)]
    for h in hooks:
        h.remove()
    shapes = [feats[i].shape for i in sorted(feats)]
    levels = len(shapes)

    ch = [int(c) for c in unet.config.block_out_channels]
    points = [ch[level] for level in range(levels - 1, 0, -1)]  # up_blocks[0..L-2] widths (fdi.adapter)
    off = [Modulation(torch.zeros(b, c), torch.ones(b, c), torch.zeros(c)) for c in points]  # gates 0: no-op

    def guided(res):
        return FDIGuidance(res, off)

    def mse(pred, t):
        return round(float((pred - targets[t]).pow(2).mean()), 5)

    g = torch.Generator().manual_seed(args.seed + 7)
    for scale in args.scale:
        for level in range(levels):
            row = {
                "probe": "reach",
                "task": args.task,
                "level": level,
                "size": list(shapes[level][-2:]),
                "scale": scale,
            }
            per_t = {}
            for t in args.t:
                res = [torch.zeros(s) for s in shapes]
                res[level] = torch.randn(shapes[level], generator=g) * scale * rms[t][level]
                with torch.no_grad(), guide_unet(unet, guided(res)):
                    pred = unet(z_ts[t], torch.full((b,), t), encoder_hidden_states=cond).sample
                per_t[t] = {
                    "feat_rms": round(rms[t][level], 4),
                    "rel_change": round(float((pred - plain[t]).norm() / plain[t].norm()), 5),
                    "mse_plain": mse(plain[t], t),
                    "mse": mse(pred, t),
                }
            row["t"] = per_t
            print(json.dumps(row), flush=True)

    # decoder points: AdaIN to another image's statistics there (the batch rolled by one), gate 1
    from fdi.adapter_blocks import token_stats

    for point in range(levels - 1):
        stats = {}
        hook = unet.up_blocks[point].register_forward_hook(lambda m, a, o: stats.__setitem__("d", o.detach()))
        per_t = {}
        for t in args.t:
            with torch.no_grad():
                unet(z_ts[t], torch.full((b,), t), encoder_hidden_states=cond)
            d = stats["d"]
            mean, std = token_stats(d.flatten(2).transpose(1, 2))
            mods = list(off)
            mods[point] = Modulation(mean.roll(1, 0), std.roll(1, 0), torch.ones(d.shape[1]))
            hook.remove()
            with torch.no_grad(), guide_unet(unet, FDIGuidance([torch.zeros(s) for s in shapes], mods)):
                pred = unet(z_ts[t], torch.full((b,), t), encoder_hidden_states=cond).sample
            hook = unet.up_blocks[point].register_forward_hook(lambda m, a, o: stats.__setitem__("d", o.detach()))
            per_t[t] = {
                "rel_change": round(float((pred - plain[t]).norm() / plain[t].norm()), 5),
                "mse_plain": mse(plain[t], t),
                "mse": mse(pred, t),
            }
        hook.remove()
        row = {"probe": "modulation", "task": args.task, "point": point, "size": list(d.shape[-2:]), "t": per_t}
        print(json.dumps(row), flush=True)

    if args.oracle_steps:
        res = [torch.zeros(s, requires_grad=True) for s in shapes]
        opt = torch.optim.Adam(res, lr=args.oracle_lr)
        t0 = time.time()
        for step in range(args.oracle_steps):
            t = torch.randint(0, len(abar), (b,), generator=g)
            if args.oracle_t is not None:
                t = torch.full((b,), args.oracle_t)
            eps = torch.randn(z0.shape, generator=g)
            a = abar[t].view(-1, 1, 1, 1)
            with guide_unet(unet, guided(res)):
                pred = unet(a.sqrt() * z0 + (1 - a).sqrt() * eps, t, encoder_hidden_states=cond).sample
            loss = (pred - diffusion_target(z0, eps, a, kind)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        row = {"probe": "oracle", "task": args.task, "steps": args.oracle_steps, "lr": args.oracle_lr}
        row["fit_t"] = args.oracle_t
        row["seconds"] = round(time.time() - t0, 1)
        row["res_rms"] = [round(float(r.pow(2).mean().sqrt()), 4) for r in res]
        per_t = {}
        with torch.no_grad(), guide_unet(unet, guided([r.detach() for r in res])):
            for t in args.t:
                pred = unet(z_ts[t], torch.full((b,), t), encoder_hidden_states=cond).sample
                per_t[t] = {"mse_plain": mse(plain[t], t), "mse_oracle": mse(pred, t)}
        row["t"] = per_t
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
