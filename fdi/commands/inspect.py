"""``python -m fdi inspect``: similarity matrix and per-pair map of FDI files (the paper's Fig. 11)."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser(
        "inspect",
        help="plot FDI similarities and a 2-D map of per-pair FDIs",
        description="Print each FDI's summary and the cosine-similarity matrix between them, and plot it; "
        "where the files store per-pair FDIs (extract --keep-pairs), "
        "add a PCA map of the pairs coloured by file.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="IN.fdi.safetensors", help="FDI files")
    p.add_argument(
        "-o", "--output", default=None, metavar="PLOT.png", help="plot to write (png, pdf or svg); omit to print only"
    )
    p.add_argument(
        "--stability",
        default=None,
        metavar="PLOT.png",
        help="for one FDI with per-pair FDIs: plot how close the FDI of k random pairs is to the FDI of all pairs "
        "(k = 1…N), to see whether the pairs are enough",
    )
    p.add_argument("--resamples", type=int, default=50, help="random draws of k pairs per k, for --stability")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..errors import FDIError
    from ..files import check_output_path
    from ..instruction import FDI, cosine_similarity_matrix, same_encoder

    out = check_output_path(args.output) if args.output else None
    stab = check_output_path(args.stability) if args.stability else None
    if stab is not None and len(args.inputs) != 1:
        raise FDIError(f"--stability takes one FDI file, got {len(args.inputs)}; inspect the files one at a time")
    if args.resamples < 1:
        raise FDIError(f"--resamples must be at least 1, got {args.resamples}")
    fdis = [FDI.load(p) for p in args.inputs]
    for p, f in zip(args.inputs[1:], fdis[1:]):
        if not same_encoder(f.encoder, fdis[0].encoder) or f.shape != fdis[0].shape:
            raise FDIError(
                f"{Path(p).name} (encoder {f.encoder}, {f.shape}) and {Path(args.inputs[0]).name} "
                f"(encoder {fdis[0].encoder}, {fdis[0].shape}) come from different encoders and cannot be compared; "
                "inspect FDIs of one encoder together"
            )
    names = [Path(p).name.split(".")[0] for p in args.inputs]
    for name, f in zip(names, fdis):
        print(f"{name}: {f.describe()}" + ("" if f.pairs is None else f" (per-pair FDIs stored: {f.pairs.shape[0]})"))
    if len(fdis) > 1:
        sim = cosine_similarity_matrix(fdis)
        width = max(len(n) for n in names)
        print(" " * width + "  " + "  ".join(f"{n[:8]:>8}" for n in names))
        for n, row in zip(names, sim.tolist()):
            print(f"{n:>{width}}  " + "  ".join(f"{v:8.3f}" for v in row))
    if stab is not None:
        from ..extract import pair_stability
        from ..plots import save_figure, stability_figure

        if fdis[0].pairs is None:
            raise FDIError(
                f"{Path(args.inputs[0]).name} stores no per-pair FDIs; "
                "re-extract it with --keep-pairs to plot the stability"
            )
        curve = pair_stability(fdis[0].pairs, resamples=args.resamples)
        for k, m, lo, hi in zip(curve["k"], curve["mean"], curve["low"], curve["high"]):
            print(f"k={k:3d}  cosine to all pairs: mean {m:.4f}  10-90% {lo:.4f}..{hi:.4f}")
        save_figure(stability_figure(curve["k"], curve["mean"], curve["low"], curve["high"], names[0]), stab)
        print(f"wrote {stab}")
    if out is not None:
        from ..plots import save_inspection

        save_inspection(fdis, names, out)
        print(f"wrote {out}")
    return 0
