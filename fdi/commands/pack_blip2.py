"""``python -m fdi pack-blip2``: a BLIP-2 folder's vision model, query tokens and Q-Former in one file."""

from __future__ import annotations

import argparse

from ..blip2_pack import PACK_DTYPES


def add_parser(sub) -> None:
    p = sub.add_parser(
        "pack-blip2",
        help="pack the part of a BLIP-2 folder that FDI reads into one .safetensors file",
        description="Copy the vision model, query tokens and Q-Former of a BLIP-2 checkpoint folder (Hugging Face "
        "layout), with their configs and image-processor settings, into one .safetensors file (about 2.2 GB in fp16 "
        "for Salesforce/blip2-opt-2.7b; the language model is left out). --blip2 and ComfyUI's models/blip2 take "
        "the file wherever they take the folder; FDIs from the file and from the folder combine (same encoder "
        "fingerprint). An existing output is kept unless --overwrite is given.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("folder", metavar="DIR", help="BLIP-2 checkpoint folder (config.json, model*.safetensors)")
    p.add_argument("-o", "--output", required=True, metavar="FILE.safetensors", help="file to write")
    p.add_argument(
        "--dtype",
        default="fp16",
        choices=tuple(PACK_DTYPES),
        help="precision of the weights (the query tokens stay fp32); fp32 gives FDIs equal to the folder's",
    )
    p.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..blip2_pack import pack_blip2
    from ..progress import tqdm_progress

    with tqdm_progress("packing BLIP-2", 0, unit="tensor", enabled=not args.quiet) as progress:
        done = pack_blip2(args.folder, args.output, dtype=args.dtype, overwrite=args.overwrite, progress=progress)
    print(
        f"wrote {done.path}: {done.parameters / 1e9:.3g} B parameters in {done.dtype} "
        f"({done.bytes / 1e9:.3g} GB), encoder {done.fingerprint}"
    )
    return 0
