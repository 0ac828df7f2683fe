"""``python -m fdi restore``: restore images with FDI adapters on Stable Diffusion 2.1 (diffusers)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..errors import FDIError


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "restore",
        help="restore images with one or more FDI adapters (DDIM inversion + guided DDIM sampling)",
        description=(
            "Restore images with FDI adapters on SD 2.1: the image is VAE-encoded, DDIM-inverted, then denoised "
            "with the adapters' guidance active during the first --guidance-end fraction of the steps. "
            "Several adapters are combined by weighted sum (--mode composite) or run one after another "
            "(--mode progressive). Each FDI comes from --fdi or from the adapter file. Outputs are "
            "OUT_DIR/<input name>.png at the input's size. Nothing is downloaded; BLIP-2 is not needed."
        ),
    )
    p.add_argument("--sd", required=True, metavar="MODEL", help="diffusers SD 2.1 folder, or a single-file .safetensors checkpoint")
    p.add_argument("--sd-config", metavar="FOLDER", help="for a single-file checkpoint: a diffusers folder with the matching configs (no download)")
    p.add_argument("--prediction-type", choices=("epsilon", "v_prediction"), default=None,
                   help="override the model's prediction type (default: the scheduler's, or for a single file detected from the weights)")
    p.add_argument("--adapter", required=True, action="append", metavar="A.safetensors", help="FDI adapter file; repeat for several")
    p.add_argument("--weight", action="append", type=float, metavar="W", help="weight of each adapter, in --adapter order (default 1 each)")
    p.add_argument("--fdi", action="append", metavar="F.fdi.safetensors",
                   help="FDI file: once for all adapters, or once per adapter (default: the FDI embedded in each adapter file)")
    p.add_argument("--image", required=True, nargs="+", metavar="IN", help="degraded image file(s)")
    p.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="output folder (created if missing)")
    p.add_argument("--steps", type=int, default=50, help="DDIM sampling steps (default 50)")
    p.add_argument("--inversion-steps", type=int, default=50, help="DDIM inversion steps (default 50)")
    p.add_argument("--guidance-end", type=float, default=0.333, help="fraction of the sampling steps that are guided, 0..1 (default 0.333, the paper's first third)")
    p.add_argument("--strength", type=float, default=1.0, help="global guidance strength (default 1.0)")
    p.add_argument("--mode", choices=("composite", "progressive"), default="composite", help="how several adapters combine (default composite)")
    p.add_argument("--prompt", default="", help="text prompt (default empty, as in the paper)")
    p.add_argument("--negative-prompt", default="", help="negative prompt, used when --cfg > 1")
    p.add_argument("--cfg", type=float, default=1.0, help="classifier-free guidance scale (default 1 = none)")
    p.add_argument("--device", default=None, help="torch device (default cuda if available, else cpu)")
    p.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default=None, help="UNet/VAE dtype (default fp16 on cuda, fp32 on cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    from ..adapter import FDIAdapter
    from ..encoder import parse_dtype
    from ..images import load_image, save_image
    from ..instruction import FDI
    from ..pipeline import MIN_SIDE, AdapterUse, FDIRestorationPipeline
    from ..progress import tqdm_progress

    # ---- every cheap check first: nothing is loaded or written before all inputs are valid ----
    if not (math.isfinite(args.guidance_end) and 0.0 <= args.guidance_end <= 1.0):
        raise FDIError(f"--guidance-end {args.guidance_end} is outside 0..1; it is the fraction of sampling steps that are guided (paper: 0.333)")
    if args.steps < 1 or args.inversion_steps < 1:
        raise FDIError(f"--steps ({args.steps}) and --inversion-steps ({args.inversion_steps}) must be at least 1")
    n = len(args.adapter)
    weights = args.weight or [1.0] * n
    if len(weights) != n:
        raise FDIError(f"{len(weights)} --weight values for {n} --adapter files; give one weight per adapter, in the same order")
    fdis = args.fdi or []
    if len(fdis) not in (0, 1, n):
        raise FDIError(f"{len(fdis)} --fdi files for {n} adapters; give one FDI for all adapters or one per adapter")
    sd = Path(args.sd)
    if not sd.exists():
        raise FDIError(f"model {str(sd)!r} does not exist; give a diffusers SD 2.1 folder or a single-file .safetensors checkpoint")
    adapters = [FDIAdapter.from_file(a) for a in args.adapter]
    loaded = [FDI.load(f) for f in fdis]
    uses = []
    for i, (adapter, w) in enumerate(zip(adapters, weights)):
        fdi = loaded[0] if len(loaded) == 1 else (loaded[i] if loaded else None)
        use = AdapterUse(adapter, fdi, w)
        adapter.tokens_for(use.resolved_fdi(), 1)  # no FDI at all, width, token count, encoder
        uses.append(use)
    images, names = [], {}
    for path in args.image:
        img = load_image(path)
        if img.shape[1] < MIN_SIDE or img.shape[2] < MIN_SIDE:
            raise FDIError(f"image {Path(path).name!r} is {img.shape[2]}x{img.shape[1]} pixels; restoration needs at least {MIN_SIDE} pixels a side")
        stem = Path(path).stem
        if stem in names:
            raise FDIError(f"images {names[stem]!r} and {path!r} would both be written as {stem}.png; rename one")
        names[stem] = path
        images.append((stem, img))
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise FDIError(f"output {str(out_dir)!r} is a file; give a folder (-o OUT_DIR)")

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = parse_dtype(args.dtype or ("fp16" if device.type == "cuda" else "fp32"))
    pipe = FDIRestorationPipeline.from_pretrained(sd, device=device, dtype=dtype, config=args.sd_config,
                                                prediction_type=args.prediction_type)
    for use in uses:  # family and channel layout, before any work
        pipe.check_adapter(use.adapter)

    results = []
    per_image = (args.steps + args.inversion_steps) * (n if args.mode == "progressive" else 1)
    with tqdm_progress("restore", per_image * len(images), unit="step", enabled=not args.quiet) as cb:
        for k, (stem, img) in enumerate(images):
            offset = k * per_image
            progress = (lambda d, t, o=offset: cb(o + d, per_image * len(images))) if cb else None
            out = pipe.restore(img[None], uses, steps=args.steps, inversion_steps=args.inversion_steps,
                               guidance_end=args.guidance_end, strength=args.strength, mode=args.mode,
                               prompt=args.prompt, negative_prompt=args.negative_prompt, cfg=args.cfg, progress=progress)
            results.append((stem, out[0]))
    out_dir.mkdir(parents=True, exist_ok=True)
    for stem, img in results:
        save_image(img, out_dir / f"{stem}.png")
        print(out_dir / f"{stem}.png")
    return 0
