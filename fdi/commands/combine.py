"""``python -m fdi combine``: weighted sum, mean or difference of FDI files."""

from __future__ import annotations

import argparse

from ..instruction import COMBINE_MODES


def add_parser(sub) -> None:
    p = sub.add_parser(
        "combine",
        help="combine FDI files (weighted sum, mean or difference)",
        description="Combine FDIs linearly: sum = sum_k w_k F_k; mean = sum_k w_k F_k / sum_k w_k; "
        "difference = w_1 F_1 - w_2 F_2. "
        "All inputs must come from the same BLIP-2 encoder.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="IN.fdi.safetensors", help="FDI files")
    p.add_argument(
        "--weights", type=float, nargs="+", default=None, metavar="W", help="one weight per input (default: all 1)"
    )
    p.add_argument("--mode", choices=COMBINE_MODES, default="sum", help="how to combine")
    p.add_argument("--label", default=None, help="label of the result (default: a formula of the inputs' labels)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.fdi.safetensors", help="FDI file to write")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import FDIError
    from ..files import check_output_path
    from ..instruction import FDI, FDI_SUFFIX, combine

    out = check_output_path(args.output, suffix=FDI_SUFFIX)
    if args.weights is not None and len(args.weights) != len(args.inputs):
        raise FDIError(
            f"{len(args.weights)} --weights for {len(args.inputs)} input files; give exactly one weight per input"
        )
    fdis = [FDI.load(p) for p in args.inputs]
    result = combine(fdis, args.weights, mode=args.mode, label=args.label)
    result.save(out)
    print(f"wrote {out}: {result.describe()}")
    return 0
