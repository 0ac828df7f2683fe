"""``python -m fdi classify train|predict``: the degradation classifier (docs/classifier.md)."""

from __future__ import annotations

from ..dtypes import DTYPES

_BLIP2_HELP = "BLIP-2 checkpoint folder (Hugging Face layout, safetensors), or the file pack-blip2 makes of one"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "classify",
        help="train or run a degradation classifier (which degradations a photo has)",
        description="A multi-label MLP over the BLIP-2 Q-Former tokens of a photo: which degradations it has "
        "(haze, noise, ...). 'train --blip2 DIR --task LABEL=DIR [--task LABEL+LABEL=DIR] [--clean DIR] "
        "[--from-degrade DIR] -o OUT.clf.safetensors [--val-fraction 0.2] [--seed 0] [--epochs 200]' learns it and "
        "prints each label's validation AUC and threshold; 'predict --blip2 DIR --classifier F.clf.safetensors "
        "--image PATH... [--json OUT.json]' prints each image's label probabilities and detected labels. "
        "'classify train --help' and 'classify predict --help' list every option; docs/classifier.md says how to "
        "train one and what it measured.",
    )
    cmds = p.add_subparsers(dest="classify_command", metavar="SUBCOMMAND")
    cmds.required = True
    _add_train(cmds)
    _add_predict(cmds)


def _common(p) -> None:
    p.add_argument("--blip2", required=True, metavar="DIR", help=_BLIP2_HELP)
    p.add_argument("--device", default=None, help="torch device for BLIP-2 (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default="fp32", choices=tuple(DTYPES), help="vision-model precision")
    p.add_argument("--batch-size", type=int, default=16, help="images per encoder call (memory vs speed)")


def _add_train(cmds) -> None:
    from ..classifier_train import DEFAULTS

    p = cmds.add_parser(
        "train",
        help="train a classifier from folders of labelled photos",
        description="Train a degradation classifier. Sources, any mix: --task LABEL=DIR (every image of DIR has "
        "LABEL; LABEL+LABEL=DIR for photos with several), --clean DIR (no label), --from-degrade DIR (an "
        "'fdi degrade' output: degradations.jsonl names each image's effects, mapped to the labels haze, "
        "rainstreak, noise (noise and poisson), jpeg, lowlight, motion-blur, defocus-blur; its clean/ photos are "
        "negatives). Photos are split whole (by file stem, or the photo a degraded image was made from) into "
        "training and validation; each label's threshold is chosen on validation (Youden's J), where its AUC is "
        "also measured and printed.",
    )
    _common(p)
    p.add_argument("--task", action="append", default=[], metavar="LABEL=DIR", help="a labelled folder (repeatable)")
    p.add_argument("--clean", action="append", default=[], metavar="DIR", help="clean photos: all labels 0")
    p.add_argument("--from-degrade", action="append", default=[], metavar="DIR", help="an 'fdi degrade' output")
    p.add_argument("-o", "--output", required=True, metavar="OUT.clf.safetensors", help="classifier file to write")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of the photos held for validation")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the initialisation and the batches")
    p.add_argument("--epochs", type=int, default=DEFAULTS["epochs"], help="training epochs")
    p.add_argument("--hidden", type=int, default=DEFAULTS["hidden"], help="hidden width (0: logistic regression)")
    p.add_argument("--pooling", default=DEFAULTS["pooling"], choices=("mean", "flat", "mean+flat"), help="tokens")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train)


def _add_predict(cmds) -> None:
    p = cmds.add_parser(
        "predict",
        help="per-label probabilities and detected degradations of photos",
        description="Score photos with a classifier: one row per image, the probability of each label and the "
        "labels at or above their thresholds (most probable first).",
    )
    _common(p)
    p.add_argument("--classifier", required=True, metavar="F.clf.safetensors", help="classifier file")
    p.add_argument("--image", required=True, nargs="+", metavar="PATH", help="image files or folders of images")
    p.add_argument("--json", default=None, metavar="OUT.json", help="also write the results as JSON")
    p.set_defaults(func=run_predict)


def _load_encoder(args):
    import torch

    from ..encoder import QFormerEncoder
    from ..errors import FDIError

    if args.batch_size < 1:
        raise FDIError(f"--batch-size must be at least 1, got {args.batch_size}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return QFormerEncoder.from_pretrained(args.blip2, device=device, vision_dtype=args.dtype)


def run_train(args) -> int:
    from ..blip2_source import open_blip2
    from ..classifier import CLASSIFIER_SUFFIX
    from ..classifier_train import collect_training_set, split_by_group, train_from_folders
    from ..errors import FDIError
    from ..files import check_output_path
    from ..progress import tqdm_progress

    out = check_output_path(args.output, suffix=CLASSIFIER_SUFFIX)
    if args.epochs < 1 or args.hidden < 0 or args.batch_size < 1:
        raise FDIError("--epochs and --batch-size must be at least 1, --hidden at least 0")
    data = collect_training_set(args.task, args.clean, args.from_degrade)
    split_by_group(data.groups, data.targets, data.labels, args.val_fraction, args.seed)  # before BLIP-2 loads
    open_blip2(args.blip2)
    encoder = _load_encoder(args)
    counts = ", ".join(f"{k} {v}" for k, v in data.counts().items())
    print(f"{len(data.paths)} images ({counts} positives)")
    with tqdm_progress("training classifier", len(data.paths) + args.epochs, enabled=not args.quiet) as progress:
        res = train_from_folders(
            encoder,
            data,
            val_fraction=args.val_fraction,
            seed=args.seed,
            batch_size=args.batch_size,
            progress=progress,
            epochs=args.epochs,
            hidden=args.hidden,
            pooling=args.pooling,
        )
    clf = res.classifier
    print(f"validation: {len(res.val_idx)} images, {len(res.train_idx)} trained on")
    print(f"{'label':<16} {'val AUC':>8} {'threshold':>10}")
    for lab, th in clf.threshold_map().items():
        print(f"{lab:<16} {res.val_auc[lab]:>8.3f} {th:>10.3f}")
    clf.save(out)
    print(f"wrote {out}: {clf.describe()}")
    return 0


def run_predict(args) -> int:
    import json

    from ..blip2_source import encoder_fingerprint
    from ..classifier import DegradationClassifier
    from ..errors import FDIError
    from ..files import atomic_write, check_output_path
    from ..images import collect_images, load_image

    clf = DegradationClassifier.load(args.classifier)
    paths = collect_images(args.image)
    names = {}
    for p in paths:
        if p.name in names:
            raise FDIError(f"two images are named {p.name!r} ({names[p.name]}, {p}); results are keyed by file name")
        names[p.name] = p
    if args.json is not None:
        check_output_path(args.json)
    clf.check_encoder(encoder_fingerprint(args.blip2))  # before BLIP-2 loads
    encoder = _load_encoder(args)
    results = {}
    for start in range(0, len(paths), args.batch_size):
        chunk = paths[start : start + args.batch_size]
        for p, probs in zip(chunk, clf.predict(encoder, [load_image(q) for q in chunk])):
            results[p.name] = {"probabilities": probs, "detected": clf.detected(probs)}
    width = max(12, *(len(n) for n in results))
    print(f"{'image':<{width}} " + " ".join(f"{lab:>12}" for lab in clf.labels) + "  detected")
    print(f"{'(threshold)':<{width}} " + " ".join(f"{t:>12.3f}" for t in clf.threshold_map().values()))
    for name, r in results.items():
        cells = " ".join(f"{r['probabilities'][lab]:>12.3f}" for lab in clf.labels)
        print(f"{name:<{width}} {cells}  {', '.join(r['detected']) or '-'}")
    if args.json is not None:
        doc = {
            "classifier": str(args.classifier),
            "encoder": clf.encoder,
            "labels": list(clf.labels),
            "thresholds": clf.threshold_map(),
            "images": results,
        }
        with atomic_write(args.json, "w") as fh:
            json.dump(doc, fh, indent=2)
        print(f"wrote {args.json}")
    return 0
