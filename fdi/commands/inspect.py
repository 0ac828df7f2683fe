"""``python -m fdi inspect``: similarity matrix and per-pair map of FDI files (the paper's Fig. 11)."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser(
        "inspect",
        help="plot FDI similarities and a 2-D map of per-pair FDIs",
        description="Print each FDI's summary and the cosine-similarity matrix between them, and plot it; where the "
                    "files store per-pair FDIs (extract --keep-pairs), add a PCA map of the pairs coloured by file.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="IN.fdi.safetensors", help="FDI files")
    p.add_argument("-o", "--output", default=None, metavar="PLOT.png", help="plot to write (png, pdf or svg); omit to print only")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..files import check_output_path
    from ..errors import FDIError
    from ..instruction import FDI, cosine_similarity_matrix, same_encoder

    out = check_output_path(args.output) if args.output else None
    fdis = [FDI.load(p) for p in args.inputs]
    for p, f in zip(args.inputs[1:], fdis[1:]):
        if not same_encoder(f.encoder, fdis[0].encoder) or f.shape != fdis[0].shape:
            raise FDIError(f"{Path(p).name} (encoder {f.encoder}, {f.shape}) and {Path(args.inputs[0]).name} (encoder {fdis[0].encoder}, "
                           f"{fdis[0].shape}) come from different encoders and cannot be compared; inspect FDIs of one encoder together")
    names = [Path(p).name.split(".")[0] for p in args.inputs]
    for name, f in zip(names, fdis):
        print(f"{name}: {f.describe()}" + ("" if f.pairs is None else f" (per-pair FDIs stored: {f.pairs.shape[0]})"))
    if len(fdis) > 1:
        sim = cosine_similarity_matrix(fdis)
        width = max(len(n) for n in names)
        print(" " * width + "  " + "  ".join(f"{n[:8]:>8}" for n in names))
        for n, row in zip(names, sim.tolist()):
            print(f"{n:>{width}}  " + "  ".join(f"{v:8.3f}" for v in row))
    if out is not None:
        from ..plots import save_inspection

        save_inspection(fdis, names, out)
        print(f"wrote {out}")
    return 0
