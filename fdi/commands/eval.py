"""``python -m fdi eval``: PSNR/SSIM (RGB and Y) and optional LPIPS of restored images vs ground truth."""

from __future__ import annotations

import argparse
import json

from ..errors import FDIError
from .data_args import add_dataset_args, dataset_source


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval",
        help="PSNR/SSIM (RGB and BT.601 Y) and optional LPIPS of restored images against ground truth",
        description=(
            "Compare every image of --pred with the image of the same name (stem) in --gt, or with the clean image "
            "of each pair of --pairs-file or of a data set (--dataset NAME --data ROOT, its test split by default; "
            "predictions named <pair name>.png as 'restore --dataset' writes them, and the set's metric, Y or RGB, "
            "headlined). "
            "PSNR and SSIM are computed on RGB and on the BT.601 Y channel (as restoration papers report), "
            "per image and as a mean. "
            "Identical images have PSNR inf (null in the JSON report)."
        ),
    )
    p.add_argument("--pred", required=True, metavar="DIR", help="folder of restored images")
    p.add_argument("--gt", metavar="DIR", default=None, help="folder of ground-truth images (same file stems)")
    p.add_argument(
        "--pairs-file", metavar="F", default=None, help="CSV/JSONL of pairs: each prediction is <name>.png, GT = clean"
    )
    p.add_argument(
        "--y-channel",
        action="store_true",
        help="headline the Y-channel metrics (PSNR_Y/SSIM_Y first and in the summary line); both are always computed",
    )
    p.add_argument(
        "--crop-border",
        type=int,
        default=None,
        metavar="N",
        help="pixels removed from each edge before the metrics (default 0, or the data set's convention)",
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
    add_dataset_args(p.add_argument_group("a downloaded data set's ground truth (docs/datasets.md)"), "test")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..files import atomic_write, check_output_path
    from ..metrics import evaluate_files
    from ..progress import tqdm_progress

    if args.report:
        check_output_path(args.report)  # fail before computing anything
    items, metric, border = eval_items(args)
    crop = args.crop_border if args.crop_border is not None else border
    if crop < 0:
        raise FDIError(f"--crop-border must be 0 or more, got {crop}")
    y_first = args.y_channel or metric == "y"
    with tqdm_progress("eval", len(items), unit="img", enabled=not args.quiet) as cb:
        result = evaluate_files(items, crop_border=crop, use_lpips=args.lpips, device=args.device, progress=cb)
    if not args.quiet:
        print(result.table(y_first=y_first))
    m = result.mean
    order = ("psnr_y", "ssim_y", "psnr", "ssim") if y_first else ("psnr", "ssim", "psnr_y", "ssim_y")
    extra = f" lpips={m['lpips']:.4f}" if "lpips" in m else ""
    print(f"{len(result.images)} images: " + " ".join(f"{k}={m[k]:.4f}" for k in order) + extra)
    if args.report:
        data = result.to_json()
        data["primary"] = "y" if y_first else "rgb"
        with atomic_write(args.report, "w") as fh:
            json.dump(data, fh, indent=2, allow_nan=False)
            fh.write("\n")
        print(f"report: {args.report}")
    return 0


def eval_items(args: argparse.Namespace):
    """``([(name, prediction, ground truth)], metric, crop border)`` from --gt, --pairs-file or --dataset (exactly
    one); the metric and border are the data set's (``rgb``, 0 otherwise)."""
    from ..data import read_pairs_file
    from ..metrics import match_by_stem, match_predictions

    source = dataset_source(args, args.pred)  # the cache restore --dataset -o PRED made
    given = [n for n, v in (("--gt", args.gt), ("--pairs-file", args.pairs_file), ("--dataset", source)) if v]
    if len(given) != 1:
        raise FDIError(
            "give the ground truth one way: --gt DIR, --pairs-file F or --dataset NAME --data ROOT"
            + (f" (got {' and '.join(given)})" if given else "")
        )
    if args.gt:
        return match_by_stem(args.pred, args.gt), "rgb", 0
    if args.pairs_file:
        return match_predictions(args.pred, read_pairs_file(args.pairs_file)), "rgb", 0
    split = source.read()
    if not split.reference:
        raise FDIError(
            f"{split.dataset} has no ground truth, so PSNR/SSIM/LPIPS do not apply to it; judge its restorations "
            "by eye or with a no-reference score"
        )
    return match_predictions(args.pred, split.pairs), split.metric, split.crop_border
