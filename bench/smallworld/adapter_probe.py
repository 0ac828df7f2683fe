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
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

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


@dataclass
class Probe:
    """A world's frozen UNet and VAE with seeded train pairs encoded and noised at each t (noise seeded by t)."""

    unet: torch.nn.Module
    abar: torch.Tensor
    kind: str
    z0: torch.Tensor
    noises: Dict[int, torch.Tensor]
    z_ts: Dict[int, torch.Tensor]
    targets: Dict[int, torch.Tensor]
    cond: torch.Tensor

    def unet_out(self, t: int, x: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The UNet's output at ``t`` for ``x`` (default: the noised clean latents of ``t``)."""
        x = self.z_ts[t] if x is None else x
        return self.unet(x, torch.full((len(self.z0),), t), encoder_hidden_states=self.cond).sample

    def mse(self, pred: torch.Tensor, t: int) -> float:
        return round(float((pred - self.targets[t]).pow(2).mean()), 5)


def load_probe(world: Path, clean: torch.Tensor, ts: List[int]) -> Probe:
    """Load ``world/sd`` frozen, encode ``clean`` ``[B, 3, H, W]`` (posterior mode, scaled) and noise it at ``ts``."""
    from fdi.conditioning import encode_text
    from fdi.models import load_sd, vae_encode
    from fdi.sampling import diffusion_target

    parts = load_sd(world / "sd")
    unet, vae = parts.unet.eval().requires_grad_(False), parts.vae.eval().requires_grad_(False)
    ctx = encode_text(parts, "", torch.device("cpu"), torch.float32).embeds
    abar = parts.scheduler.alphas_cumprod.float()
    with torch.no_grad():
        z0 = vae_encode(vae, clean, torch.float32)
    noises = {t: torch.randn(z0.shape, generator=torch.Generator().manual_seed(1000 + t)) for t in ts}
    z_ts = {t: abar[t].sqrt() * z0 + (1 - abar[t]).sqrt() * noises[t] for t in ts}
    kind = parts.scheduler.config.prediction_type
    targets = {t: diffusion_target(z0, noises[t], abar[t], kind) for t in ts}
    return Probe(unet, abar, kind, z0, noises, z_ts, targets, ctx.expand(len(z0), -1, -1))


def plain_and_features(p: Probe, ts: List[int]) -> Tuple[Dict[int, torch.Tensor], Dict[int, List[float]], List]:
    """Unguided outputs per t, the RMS of each level's last resnet output per t, and those outputs' shapes."""
    feats: Dict[int, torch.Tensor] = {}
    hooks = [
        blk.resnets[-1].register_forward_hook(lambda m, a, o, i=i: feats.__setitem__(i, o.detach()))
        for i, blk in enumerate(p.unet.down_blocks)
    ]
    plain, rms = {}, {}
    with torch.no_grad():
        for t in ts:
            plain[t] = p.unet_out(t)
            rms[t] = [float(feats[i].pow(2).mean().sqrt()) for i in sorted(feats)]
    for h in hooks:
        h.remove()
    return plain, rms, [feats[i].shape for i in sorted(feats)]


def _args(argv: Optional[List[str]]) -> argparse.Namespace:
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
    return ap.parse_args(argv)


def _adapter(name: str, unet, fdi):
    from fdi.adapter import FDIAdapter, FDIAdapterConfig

    if name != "fresh":
        return FDIAdapter.from_file(name).eval()
    conf = FDIAdapterConfig(
        channels=tuple(unet.config.block_out_channels),
        token_width=fdi.shape[1],
        num_tokens=fdi.shape[0],
        **ADAPTER_CONFIG,
    )
    torch.manual_seed(0)
    return FDIAdapter(conf).eval()


@torch.no_grad()
def _effects(p: Probe, adapter, deg, tokens, plain, ts: List[int], strength: float) -> Dict[str, object]:
    """Residual and gate sizes, and per t the MSE unguided / guided / guided by another image, the output's change."""
    from fdi.diffusers_backend import guide_unet

    g = adapter(deg, tokens)
    g_other = adapter(deg.roll(1, 0), tokens)
    row: Dict[str, object] = {"res_rms": [round(float(r.pow(2).mean().sqrt()), 5) for r in g.residuals]}
    row["gate_absmax"] = [round(float(m.gate.abs().max()), 5) for m in g.modulations]
    per_t = {}
    for t in ts:
        with guide_unet(p.unet, g, strength=strength):
            guided = p.unet_out(t)
        with guide_unet(p.unet, g_other, strength=strength):
            other = p.unet_out(t)
        per_t[t] = {
            "mse_other_image": p.mse(other, t),
            "mse_plain": p.mse(plain[t], t),
            "mse_guided": p.mse(guided, t),
            "rel_change": round(float((guided - plain[t]).norm() / plain[t].norm()), 5),
        }
    row["t"] = per_t
    return row


def _grads(p: Probe, adapter, deg, tokens, ts: List[int]) -> Dict[str, object]:
    """The trainer's loss (the t's pooled) and its gradient norm per adapter part."""
    from fdi.diffusers_backend import guide_unet
    from fdi.training.step import fdi_loss

    adapter.train()
    adapter.zero_grad(set_to_none=True)
    total, b = 0.0, len(p.z0)
    for t in ts:
        tt = torch.full((b,), t)
        gg = adapter(deg, tokens)
        with guide_unet(p.unet, gg):
            pred = p.unet(p.z_ts[t], tt, encoder_hidden_states=p.cond).sample
        loss, _, _ = fdi_loss(pred, p.z_ts[t], p.z0, p.noises[t], p.abar[tt], p.kind, 0.1)
        (loss / len(ts)).backward()
        total += float(loss.detach()) / len(ts)
    sq: Dict[str, float] = defaultdict(float)
    for pname, prm in adapter.named_parameters():
        if prm.grad is not None:
            sq[_part(pname)] += float(prm.grad.pow(2).sum())
    return {
        "loss": round(total, 5),
        "grad_norm": round(sum(sq.values()) ** 0.5, 6),
        "grads": {k: float(f"{v**0.5:.3g}") for k, v in sorted(sq.items())},
    }


def main(argv: Optional[List[str]] = None) -> int:
    args = _args(argv)
    torch.set_num_threads(1)
    from fdi.instruction import FDI

    fdi = FDI.load(args.fdi)
    deg, clean = _pairs(args.world, args.task, args.n, args.seed)
    p = load_probe(args.world, clean, args.t)
    plain, rms, _ = plain_and_features(p, args.t)
    feat_rms = [round(v, 4) for v in rms[args.t[len(args.t) // 2]]]  # at the middle t
    for name in args.adapter:
        adapter = _adapter(name, p.unet, fdi)
        row: Dict[str, object] = {"adapter": name, "task": args.task, "n": len(p.z0), "strength": args.strength}
        effects = _effects(p, adapter, deg, fdi.tokens, plain, args.t, args.strength)
        row.update(res_rms=effects["res_rms"], feat_rms=feat_rms, gate_absmax=effects["gate_absmax"], t=effects["t"])
        if args.grads:
            row.update(_grads(p, adapter, deg, fdi.tokens, args.t))
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
