"""``python -m fdi eval``: PSNR/SSIM (RGB and Y) and optional LPIPS of restored images vs ground truth."""

from __future__ import annotations

import argparse
import json

from ..errors import FDIError


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval",
        help="PSNR/SSIM (RGB and BT.601 Y) and optional LPIPS of restored images against ground truth",
        description=(
            "Compare every image of --pred with the image of the same name (stem) in --gt. "
            "PSNR and SSIM are computed on RGB and on the BT.601 Y channel (as restoration papers report), "
            "per image and as a mean. "
            "Identical images have PSNR inf (null in the JSON report)."
        ),
    )
    p.add_argument("--pred", required=True, metavar="DIR", help="folder of restored images")
    p.add_argument("--gt", required=True, metavar="DIR", help="folder of ground-truth images (same file stems)")
    p.add_argument(
        "--y-channel",
        action="store_true",
        help="headline the Y-channel metrics (PSNR_Y/SSIM_Y first and in the summary line); both are always computed",
    )
    p.add_argument(
        "--crop-border",
        type=int,
        default=0,
        metavar="N",
        help="pixels removed from each edge before the metrics (default 0)",
    )
    p.add_argument(
        "--lpips",
        action="store_true",
        help="also compute LPIPS (AlexNet); needs the lpips package and cached AlexNet weights",
    )
    p.add_argument("--device", default="cpu", help="device for LPIPS (default cpu)")
    p.add_argument(
        "--report", metavar="OUT.json", help="write the per-image and mean metrics to this JSON file (atomically)"
    )
    p.add_argument("--quiet", action="store_true", help="print only the summary line, not the per-image table")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..files import atomic_write, check_output_path
    from ..metrics import evaluate_folders
    from ..progress import tqdm_progress

    if args.crop_border < 0:
        raise FDIError(f"--crop-border must be 0 or more, got {args.crop_border}")
    if args.report:
        check_output_path(args.report)  # fail before computing anything
    from ..metrics import match_by_stem

    n = len(match_by_stem(args.pred, args.gt))
    with tqdm_progress("eval", n, unit="img", enabled=not args.quiet) as cb:
        result = evaluate_folders(
            args.pred, args.gt, crop_border=args.crop_border, use_lpips=args.lpips, device=args.device, progress=cb
        )
    if not args.quiet:
        print(result.table(y_first=args.y_channel))
    m = result.mean
    order = ("psnr_y", "ssim_y", "psnr", "ssim") if args.y_channel else ("psnr", "ssim", "psnr_y", "ssim_y")
    extra = f" lpips={m['lpips']:.4f}" if "lpips" in m else ""
    print(f"{len(result.images)} images: " + " ".join(f"{k}={m[k]:.4f}" for k in order) + extra)
    if args.report:
        data = result.to_json()
        data["primary"] = "y" if args.y_channel else "rgb"
        with atomic_write(args.report, "w") as fh:
            json.dump(data, fh, indent=2, allow_nan=False)
            fh.write("\n")
        print(f"report: {args.report}")
    return 0
