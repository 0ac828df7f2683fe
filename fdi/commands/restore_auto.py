"""``python -m fdi restore --auto CLF --blip2 DIR``: a degradation classifier picks each image's adapters.

Every check first (classifier file, encoders of the classifier, BLIP-2 and adapters, labels; nothing loaded, nothing
written); then each input is classified (BLIP-2's Q-Former tokens → :class:`fdi.classifier.DegradationClassifier`),
BLIP-2 is freed, and the images are restored through the same pipeline call as ``restore``, batched only with images
of the same size and the same decision (:func:`fdi.auto.decide`). An image with nothing to restore is written
unchanged. Beside each output ``OUT/<name>.png`` the decision goes to ``OUT/<name>.json`` and to the PNG's text
chunk ``fdi_decision``; the JSON is written first, the PNG last (both atomically; the JSON is removed again when the PNG
is not written), so ``--skip-existing`` skipping an image skips both.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Dict, List, Tuple

from ..errors import FDIError

#: the PNG text chunk that holds the decision (JSON)
DECISION_CHUNK = "fdi_decision"


def add_auto_args(g) -> None:
    """--auto and --blip2 (on the restore parser, or a group of it)."""
    g.add_argument(
        "--auto",
        metavar="CLF",
        default=None,
        help="degradation classifier file ('classify train'): per image, use the adapters whose label it detects, "
        "weighted by probability (--mode composite) or most probable first (--mode progressive); an image where "
        "nothing is detected is written unchanged. The decision is written beside each output (<name>.json and "
        "the PNG text chunk fdi_decision). Refuses --weight",
    )
    g.add_argument(
        "--blip2",
        metavar="DIR",
        default=None,
        help="with --auto: the BLIP-2 folder (or pack-blip2 file) the classifier was trained with",
    )


def check_auto_args(args: argparse.Namespace) -> bool:
    """Whether the run is ``--auto``; :class:`FDIError` for --auto without --blip2 or with --weight, and --blip2
    without --auto."""
    if args.auto is None:
        if args.blip2 is not None:
            raise FDIError("--blip2 is read only by --auto; give --auto CLF or leave out --blip2")
        return False
    if args.weight:
        raise FDIError("--auto takes each adapter's weight from the classifier; leave out --weight")
    if args.blip2 is None:
        raise FDIError("--auto needs --blip2 DIR: the classifier reads each input's Q-Former tokens from BLIP-2")
    return True


def check_encoders(clf, fingerprint: str, uses: list) -> None:
    """:class:`FDIError` (one line, both encoders named) unless the classifier and every adapter (or its FDI) come
    from the encoder ``fingerprint``."""
    from ..instruction import FDI, same_encoder

    try:
        clf.check_encoder(fingerprint)
    except FDIError as exc:
        raise FDIError(f"--auto/--blip2: {exc}") from None
    for use in uses:
        fdi = use.resolved_fdi()
        encoder = use.adapter.encoder or (fdi.encoder if isinstance(fdi, FDI) else "")
        if encoder and not same_encoder(encoder, fingerprint):
            raise FDIError(
                f"adapter {use.adapter.display_name} takes FDIs of encoder {encoder} but --blip2 is encoder "
                f"{fingerprint}; give the BLIP-2 the adapters and the classifier were made with"
            )


def _check(args: argparse.Namespace):
    """Every check before loading a model: returns the classifier, the adapters' uses and the label match."""
    from ..auto import match_adapters
    from ..blip2_source import encoder_fingerprint
    from ..classifier import DegradationClassifier
    from .restore import check_args

    clf = DegradationClassifier.load(args.auto)
    uses = check_args(args)
    check_encoders(clf, encoder_fingerprint(args.blip2), uses)  # BLIP-2's configs and query tokens only
    matched = match_adapters(clf.labels, [u.adapter.label for u in uses])
    return clf, uses, matched


def classify_jobs(args: argparse.Namespace, clf, uses: list, matched: Dict[str, int], jobs: list, device) -> list:
    """One :class:`fdi.auto.AutoDecision` per job (BLIP-2 loaded for this and freed after)."""
    import torch

    from ..auto import decide
    from ..encoder import QFormerEncoder
    from ..images import load_image

    encoder = QFormerEncoder.from_pretrained(args.blip2, device=device)
    thresholds = dict(zip(clf.labels, clf.thresholds.tolist()))
    labels = [u.adapter.label for u in uses]
    decisions = []
    with torch.inference_mode():
        for job in jobs:
            probs = clf.predict(encoder, [load_image(job.source)])[0]
            decisions.append(decide(probs, thresholds, labels, args.mode, matched))
    del encoder
    return decisions


def run_auto(args: argparse.Namespace) -> int:
    """``restore --auto``: checks, classification, then restoration with each image's decision."""
    from ..pipeline import GuidanceWindowNote
    from .restore import load_pipeline, pick_device, remove_stale_temporaries, todo_jobs

    clf, uses, matched = _check(args)
    jobs, skipped, (_, world, local_rank) = todo_jobs(args)
    if skipped:
        print(f"skipping {skipped} image(s) whose output exists", file=sys.stderr)
    if not jobs:
        return 0
    device = pick_device(args.device, world, local_rank)
    decisions = classify_jobs(args, clf, uses, matched, jobs, device)
    pipe = load_pipeline(args, uses, device)
    if args.compile:
        pipe.compile()
    Path(args.output).mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(jobs + [j._replace(output=decision_path(j.output)) for j in jobs])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GuidanceWindowNote)  # check_args printed the notes once
        return restore_decided(pipe, uses, list(zip(jobs, decisions)), args)


def decision_path(output: Path) -> Path:
    """Where the decision of the output ``OUT/<name>.png`` goes: ``OUT/<name>.json``."""
    return output.with_suffix(".json")


def write_output(image, job, decision) -> None:
    """The decision (JSON file, then PNG text chunk) and the image of one job, each atomically, the PNG last."""
    from ..files import atomic_write
    from ..images import save_image

    record = dict(decision.to_json(), input=str(job.source))
    path = decision_path(job.output)
    with atomic_write(path, "w") as fh:
        fh.write(json.dumps(record, indent=1) + "\n")
    try:
        save_image(image, job.output, text={DECISION_CHUNK: json.dumps(record)})
    except BaseException:  # Ctrl-C or a write error: no decision without its image
        path.unlink(missing_ok=True)
        raise


def restore_decided(pipe, uses: list, pairs: List[Tuple], args: argparse.Namespace) -> int:
    """Restore each (job, decision) with its decision's adapters, write outputs as they finish; 130 when
    interrupted (the finished outputs and their decisions stay)."""
    import torch

    from ..colorfix import color_fix
    from ..images import load_image
    from ..progress import tqdm_progress
    from ..restoration import AdapterUse
    from .restore import make_batches, restore_settings, sigterm_interrupts

    settings = restore_settings(args)
    per_stage = args.steps + args.inversion_steps

    def steps_of(decision) -> int:
        return 0 if decision.unchanged else per_stage * (len(decision.uses) if args.mode == "progressive" else 1)

    total, done, written = sum(steps_of(d) for _, d in pairs), 0, 0
    same = lambda pair: (pair[0].size, pair[1].key())  # noqa: E731  (a batch: one size, one decision)
    try:
        with sigterm_interrupts(), tqdm_progress(f"restore {len(pairs)} image(s)", total, "step", not args.quiet) as cb:
            for batch in make_batches(pairs, args.batch_size, same):
                images = torch.stack([load_image(job.source) for job, _ in batch])
                decision, b = batch[0][1], len(batch)
                if decision.unchanged:
                    out = images
                else:
                    chosen = [AdapterUse(uses[i].adapter, uses[i].fdi, w) for i, w in decision.uses]
                    progress = (lambda d, t, o=done, b=b: cb(o + d * b, total)) if cb else None
                    out = pipe.restore(images, chosen, progress=progress, **settings)
                    out = color_fix(out, images, args.color_fix)
                for (job, dec), img in zip(batch, out):
                    write_output(img, job, dec)
                    print(job.output, flush=True)
                    print(f"{job.output.name}: {dec.reason}", file=sys.stderr)
                done, written = done + steps_of(decision) * b, written + b
    except KeyboardInterrupt:
        print(
            f"interrupted after {written} of {len(pairs)} image(s): the finished outputs and their decisions are "
            "kept; rerun with --skip-existing to resume",
            file=sys.stderr,
        )
        return 130
    return 0
