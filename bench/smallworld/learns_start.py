"""Where does restoration lose what a small-world adapter learnt? Its clean estimate, and sampling from other starts.

``python bench/smallworld/learns_start.py --world ~/.cache/fdi-learns/world-<key> --out DIR --adapter
haze=A.safetensors`` (adapters with their FDI embedded, as ``fdi train`` writes them) reads the held-out test pairs
that ``bench/learns.py`` (or ``bench/smallworld/learns_restore.py``) wrote under ``--pairs
DIR/<task>/{degraded,clean}`` and measures, per task, PSNR (dB) against the clean patches of:

* ``x0_plain@t`` / ``x0_guided@t``: the decoded one-step clean estimate ẑ₀ of the UNet, unguided and guided,
  at the forward-noised *clean* latent of timestep t (what training rewards; seeded noise);
* ``x0_inverted_plain`` / ``x0_inverted_guided``: the same estimate at the first sampling step of restoration,
  from the DDIM-inverted *degraded* latent (where guidance starts; what restoration hands the adapter);
* ``restored``: the project's restoration (inversion, guided in the first third, strength 1);
* ``noise_start`` / ``noise_start_all``: sampling from seeded Gaussian noise instead of the inverted latent,
  guided in the first third / at every step (the adapter as a generator conditioned on the degraded image).

Nothing is selected on these patches; it is a diagnostic. JSON on stdout and in ``DIR/start.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean PSNR (dB) of images ``[B, 3, H, W]`` in 0..1 against ``b``: the project's eval."""
    from fdi.metrics import evaluate_tensors

    return round(float(evaluate_tensors(list(a), list(b)).mean["psnr"]), 3)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", required=True, type=Path)
    ap.add_argument("--pairs", required=True, type=Path, help="learns.py's output folder (DIR/<task>/degraded, clean)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--adapter", action="append", required=True, help="TASK=adapter.safetensors (FDI embedded)")
    ap.add_argument("--t", type=int, nargs="+", default=[500, 900])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from fdi.adapter import FDIAdapter
    from fdi.diffusers_backend import DiffusersGuidance
    from fdi.images import list_images, load_image
    from fdi.pipeline import FDIRestorationPipeline
    from fdi.restoration import AdapterUse
    from fdi.sampling import GUIDANCE_END, predict_x0

    pipe = FDIRestorationPipeline.from_pretrained(args.world / "sd")
    cond = pipe.encode_prompt("")
    kind = pipe.prediction_type
    report: Dict[str, object] = {"world": str(args.world), "prediction_type": kind, "steps": args.steps}
    for spec in args.adapter:
        task, path = spec.split("=", 1)
        deg = torch.stack([load_image(p) for p in list_images(args.pairs / task / "degraded")])
        clean = torch.stack([load_image(p) for p in list_images(args.pairs / task / "clean")])
        use = AdapterUse(FDIAdapter.from_file(path))
        guidance = [(pipe.compute_guidance(use, deg), 1.0)]
        z_clean = pipe.encode_images(clean)
        z_deg = pipe.encode_images(deg)
        row: Dict[str, float] = {"degraded": _psnr(deg, clean), "vae_clean": _psnr(pipe.decode_latents(z_clean), clean)}

        def x0_at(x: torch.Tensor, t: int, guided: bool) -> torch.Tensor:
            with DiffusersGuidance(pipe.unet, guidance, strength=1.0, active=guided):
                out = pipe._unet(x, t, cond)
            return pipe.decode_latents(predict_x0(x, out, pipe._alpha(t), kind))

        with torch.no_grad():
            for t in args.t:
                g = torch.Generator().manual_seed(args.seed + t)
                a = pipe._alpha(t)
                xt = a.sqrt() * z_clean + (1 - a).sqrt() * torch.randn(z_clean.shape, generator=g)
                row[f"x0_plain@{t}"] = _psnr(x0_at(xt, t, False), clean)
                row[f"x0_guided@{t}"] = _psnr(x0_at(xt, t, True), clean)
            t0 = int(pipe.sampling_timesteps(args.steps)[0])
            inverted = pipe.invert(z_deg, cond, args.steps, args.steps)
            row[f"x0_inverted_plain@{t0}"] = _psnr(x0_at(inverted, t0, False), clean)
            row[f"x0_inverted_guided@{t0}"] = _psnr(x0_at(inverted, t0, True), clean)
            g = torch.Generator().manual_seed(args.seed)
            noise = torch.randn(z_deg.shape, generator=g)
            for name, start, end in (
                ("restored", inverted, GUIDANCE_END),
                ("noise_start", noise, GUIDANCE_END),
                ("noise_start_all", noise, 1.0),
            ):
                with DiffusersGuidance(pipe.unet, guidance, strength=1.0, active=False) as hooks:
                    z = pipe.sample(start, cond, args.steps, end, hooks)
                row[name] = _psnr(pipe.decode_latents(z), clean)
            row["noise_start_unguided"] = _psnr(pipe.decode_latents(pipe.sample(noise, cond, args.steps, 0.0)), clean)
        report[task] = row
        print(task, json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "start.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
