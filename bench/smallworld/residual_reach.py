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


def _args(argv: Optional[List[str]]) -> argparse.Namespace:
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
    return ap.parse_args(argv)


def _crops(world: Path, n: int, size: int, seed: int) -> torch.Tensor:
    """``n`` seeded ``size``-px crops of the world's train photos, one photo after another."""
    import world as W

    cfg = json.loads((world / "config.json").read_text())
    gen = torch.Generator().manual_seed(seed)
    photos = [W._resize_short(W._load_photo(name), cfg["short_side"]) for name in W.TRAIN_IMAGES]
    crops = []
    for i in range(n):
        img = photos[i % len(photos)]
        y = int(torch.randint(0, img.shape[1] - size + 1, (), generator=gen))
        x = int(torch.randint(0, img.shape[2] - size + 1, (), generator=gen))
        crops.append(img[:, y : y + size, x : x + size])
    return torch.stack(crops)


def _no_modulation(p, levels: int) -> list:
    """Gate-0 modulations (no-ops) at every decoder point ``up_blocks[0..L-2]`` (fdi.adapter's widths)."""
    from fdi.adapter import Modulation

    ch = [int(c) for c in p.unet.config.block_out_channels]
    b = len(p.z0)
    return [
        Modulation(torch.zeros(b, ch[lv]), torch.ones(b, ch[lv]), torch.zeros(ch[lv]))
        for lv in range(levels - 1, 0, -1)
    ]


def reach(p, args, plain, rms, shapes, g: torch.Generator) -> None:
    """Per scale and level: a random residual of the feature's RMS × scale at that level alone."""
    from fdi.adapter import FDIGuidance
    from fdi.diffusers_backend import guide_unet

    off = _no_modulation(p, len(shapes))
    for scale in args.scale:
        for level in range(len(shapes)):
            row = {"probe": "reach", "task": args.task, "level": level, "size": list(shapes[level][-2:])}
            row["scale"] = scale
            per_t = {}
            for t in args.t:
                res = [torch.zeros(s) for s in shapes]
                res[level] = torch.randn(shapes[level], generator=g) * scale * rms[t][level]
                with torch.no_grad(), guide_unet(p.unet, FDIGuidance(res, off)):
                    pred = p.unet_out(t)
                per_t[t] = {
                    "feat_rms": round(rms[t][level], 4),
                    "rel_change": round(float((pred - plain[t]).norm() / plain[t].norm()), 5),
                    "mse_plain": p.mse(plain[t], t),
                    "mse": p.mse(pred, t),
                }
            row["t"] = per_t
            print(json.dumps(row), flush=True)


def modulation(p, args, plain, shapes) -> None:
    """Per decoder point: AdaIN (gate 1) to another image's statistics there (the batch rolled by one)."""
    from fdi.adapter import FDIGuidance, Modulation
    from fdi.adapter_blocks import token_stats
    from fdi.diffusers_backend import guide_unet

    off = _no_modulation(p, len(shapes))
    for point in range(len(shapes) - 1):
        stats = {}
        hook = p.unet.up_blocks[point].register_forward_hook(lambda m, a, o: stats.__setitem__("d", o.detach()))
        per_t = {}
        for t in args.t:
            with torch.no_grad():
                p.unet_out(t)
            d = stats["d"]
            mean, std = token_stats(d.flatten(2).transpose(1, 2))
            mods = list(off)
            mods[point] = Modulation(mean.roll(1, 0), std.roll(1, 0), torch.ones(d.shape[1]))
            hook.remove()
            with torch.no_grad(), guide_unet(p.unet, FDIGuidance([torch.zeros(s) for s in shapes], mods)):
                pred = p.unet_out(t)
            hook = p.unet.up_blocks[point].register_forward_hook(lambda m, a, o: stats.__setitem__("d", o.detach()))
            per_t[t] = {
                "rel_change": round(float((pred - plain[t]).norm() / plain[t].norm()), 5),
                "mse_plain": p.mse(plain[t], t),
                "mse": p.mse(pred, t),
            }
        hook.remove()
        row = {"probe": "modulation", "task": args.task, "point": point, "size": list(d.shape[-2:]), "t": per_t}
        print(json.dumps(row), flush=True)


def oracle(p, args, plain, shapes, g: torch.Generator) -> None:
    """Free residuals, one set per image and the same at every t, fitted by Adam on the diffusion loss."""
    from fdi.adapter import FDIGuidance
    from fdi.diffusers_backend import guide_unet
    from fdi.sampling import diffusion_target

    off = _no_modulation(p, len(shapes))
    b = len(p.z0)
    res = [torch.zeros(s, requires_grad=True) for s in shapes]
    opt = torch.optim.Adam(res, lr=args.oracle_lr)
    t0 = time.time()
    for _ in range(args.oracle_steps):
        t = torch.randint(0, len(p.abar), (b,), generator=g)
        if args.oracle_t is not None:
            t = torch.full((b,), args.oracle_t)
        eps = torch.randn(p.z0.shape, generator=g)
        a = p.abar[t].view(-1, 1, 1, 1)
        with guide_unet(p.unet, FDIGuidance(res, off)):
            pred = p.unet(a.sqrt() * p.z0 + (1 - a).sqrt() * eps, t, encoder_hidden_states=p.cond).sample
        loss = (pred - diffusion_target(p.z0, eps, a, p.kind)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    row = {"probe": "oracle", "task": args.task, "steps": args.oracle_steps, "lr": args.oracle_lr}
    row["fit_t"] = args.oracle_t
    row["seconds"] = round(time.time() - t0, 1)
    row["res_rms"] = [round(float(r.detach().pow(2).mean().sqrt()), 4) for r in res]
    per_t = {}
    with torch.no_grad(), guide_unet(p.unet, FDIGuidance([r.detach() for r in res], off)):
        for t in args.t:
            per_t[t] = {"mse_plain": p.mse(plain[t], t), "mse_oracle": p.mse(p.unet_out(t), t)}
    row["t"] = per_t
    print(json.dumps(row), flush=True)


def main(argv: Optional[List[str]] = None) -> int:
    args = _args(argv)
    torch.set_num_threads(1)
    from adapter_probe import _pairs, load_probe, plain_and_features

    clean = (
        _crops(args.world, args.n, args.size, args.seed)
        if args.size
        else _pairs(args.world, args.task, args.n, args.seed)[1]
    )
    p = load_probe(args.world, clean, args.t)
    plain, rms, shapes = plain_and_features(p, args.t)
    g = torch.Generator().manual_seed(args.seed + 7)
    reach(p, args, plain, rms, shapes, g)
    modulation(p, args, plain, shapes)
    if args.oracle_steps:
        oracle(p, args, plain, shapes, g)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
