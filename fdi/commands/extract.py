"""``python -m fdi extract``: an FDI from two folders of reference pairs."""

from __future__ import annotations

import argparse

from ..dtypes import DTYPES
from .data_args import add_dataset_args, dataset_source


def add_parser(sub) -> None:
    p = sub.add_parser(
        "extract",
        help="compute an FDI from paired folders of degraded and clean images",
        description="Compute a task FDI: the mean over reference pairs of Q(degraded) - Q(clean), "
        "with a frozen BLIP-2 Q-Former. The pairs come from two folders matched by file name without suffix "
        "(rain_001.png <-> rain_001.jpg), from a list file (--pairs-file), or from a downloaded data set "
        "(--dataset NAME --data ROOT, its train split by default).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--blip2",
        required=True,
        metavar="DIR",
        help="BLIP-2 checkpoint folder (Hugging Face layout, safetensors), or the file pack-blip2 makes of one",
    )
    p.add_argument(
        "--degraded", default=None, metavar="DIR", help="folder of degraded images (or style A for style transfer)"
    )
    p.add_argument("--clean", default=None, metavar="DIR", help="folder of clean images (or style B), same file names")
    p.add_argument(
        "--pairs-file",
        metavar="F",
        default=None,
        help="CSV (columns degraded,clean) or JSONL listing pairs, e.g. from 'datasets pairs'",
    )
    add_dataset_args(p.add_argument_group("a downloaded data set instead (docs/datasets.md)"))
    p.add_argument("-o", "--output", required=True, metavar="OUT.fdi.safetensors", help="FDI file to write")
    p.add_argument("--label", default=None, help="label stored in the file (default: the output name)")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per encoder call (memory vs speed)")
    p.add_argument("--keep-pairs", action="store_true", help="also store the per-pair FDIs (for 'inspect')")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument(
        "--dtype",
        default="fp32",
        choices=tuple(DTYPES),
        help="vision-model precision (the Q-Former always runs in fp32)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from ..data import collect_pairs
    from ..encoder import QFormerEncoder
    from ..extract import extract_fdi_from_pairs
    from ..files import check_output_path
    from ..instruction import FDI_SUFFIX
    from ..progress import tqdm_progress

    out = check_output_path(args.output, suffix=FDI_SUFFIX)
    if args.batch_size < 1:
        from ..errors import FDIError

        raise FDIError(f"--batch-size must be at least 1, got {args.batch_size}")
    source = dataset_source(args, out)
    pairs = collect_pairs(args.degraded, args.clean, args.pairs_file, "reference", source)  # before BLIP-2 loads
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    encoder = QFormerEncoder.from_pretrained(args.blip2, device=device, vision_dtype=args.dtype)
    label = args.label if args.label is not None else out.name[: -len(FDI_SUFFIX)]
    with tqdm_progress("extracting FDI", len(pairs), unit="pair", enabled=not args.quiet) as progress:
        fdi = extract_fdi_from_pairs(
            encoder,
            pairs,
            label=label,
            batch_size=args.batch_size,
            keep_pairs=args.keep_pairs,
            progress=progress,
        )
    fdi.save(out)
    print(f"wrote {out}: {fdi.describe()}")
    return 0
