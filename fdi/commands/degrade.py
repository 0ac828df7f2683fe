"""``python -m fdi degrade``: a paired (degraded, clean) folder from a folder of clean photos."""

from __future__ import annotations


def add_parser(sub) -> None:
    from ..degrade import EFFECTS, _fmt_range

    effects = "; ".join(
        f"{name} ({', '.join(f'{k}={_fmt_range(r)}' for k, r in e.ranges.items())})" for name, e in EFFECTS.items()
    )
    p = sub.add_parser(
        "degrade",
        help="make (degraded, clean) training pairs from clean photos with synthetic degradations",
        description=(
            "Degrade every photo of --clean and write OUT/degraded/<name>.png, "
            "OUT/clean/<name>.png (the photo as decoded) and OUT/degradations.jsonl "
            "(the parameters drawn for each pair). "
            "'extract' and 'train' read the result with --degraded OUT/degraded --clean OUT/clean. "
            f"Effects and their default ranges: {effects}. "
            "Several effects apply in physical order (scene, optics, sensor, codec)."
        ),
    )
    p.add_argument("--clean", required=True, metavar="DIR", help="folder of clean photos (not recursive)")
    p.add_argument(
        "--kind",
        required=True,
        metavar="SPEC",
        help="effects, comma-separated, each optionally with fixed values or ranges: 'haze', 'haze,noise', "
        "'noise:sigma=25', 'jpeg:quality=20..40'",
    )
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed; each pair's randomness comes from (seed, the photo's pixels, copy), as in FDIDegradePairs",
    )
    p.add_argument("--copies", type=int, default=1, help="degraded versions per photo (names <stem>-<k>)")
    p.add_argument("--overwrite", action="store_true", help="write into an output folder that already holds pairs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..degrade import degrade_folder, parse_spec
    from ..images import list_images
    from ..progress import tqdm_progress

    deg = parse_spec(args.kind)  # fail on a bad spec before reading any photo
    n = len(list_images(args.clean, "clean folder")) * max(args.copies, 1)
    with tqdm_progress("degrading", n, unit="img", enabled=not args.quiet) as progress:
        records = degrade_folder(
            args.clean,
            deg,
            args.output,
            seed=args.seed,
            copies=args.copies,
            overwrite=args.overwrite,
            progress=progress,
        )
    print(f"wrote {len(records)} pairs ({deg.describe()}) to {args.output}/degraded and {args.output}/clean")
    return 0
