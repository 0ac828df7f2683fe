"""``python -m fdi reproduce``: the paper's protocol for one task, from the data sets as downloaded to a report
beside the paper's figures (:mod:`fdi.reproduce`; docs/reproduce.md)."""

from __future__ import annotations

import argparse
import sys

from ..training.config import MIXED_PRECISION


def add_parser(sub) -> None:
    from ..dtypes import DTYPES
    from ..reproduce.config import ABLATIONS, PAPER_STEPS
    from ..reproduce.protocols import PROTOCOLS

    p = sub.add_parser(
        "reproduce",
        help="the paper's protocol for one task: task FDI, adapter, test set restored, metrics, report",
        description=(
            "Reproduce the paper on one task with the data sets as downloaded: (a) the training and test pairs "
            "(fdi.datasets readers), (b) the task FDI from the training pairs (BLIP-2), (c) the adapter trained "
            "with the paper's settings, (d) the test set restored with the paper's sampler (50 DDIM steps after "
            "DDIM inversion, guidance in the first third), (e) PSNR/SSIM on Y and RGB and LPIPS when installed, "
            "then report.json and report.md beside the paper's published figures. Every stage resumes: run the "
            f"same command again after Ctrl-C. Tasks: {', '.join(PROTOCOLS)}."
        ),
    )
    g = p.add_argument_group("task and data")
    g.add_argument("--task", required=True, help="the task (its protocol names the data sets)")
    g.add_argument(
        "--dataset",
        default=None,
        metavar="NAME[,NAME]",
        help="training data set(s) instead of the protocol's (their pairs concatenated)",
    )
    g.add_argument(
        "--test-dataset",
        default=None,
        metavar="NAME",
        help="test data set instead of the protocol's (default with --dataset: that set when it has a test split)",
    )
    g.add_argument("--data", required=True, metavar="ROOT", help="the folder the data sets were unpacked into")
    g.add_argument("--sd", required=True, metavar="MODEL", help="SD 2.1 base diffusers folder or .safetensors file")
    g.add_argument("--sd-config", default=None, metavar="DIR", help="for a single-file checkpoint: its configs")
    g.add_argument("--blip2", required=True, metavar="DIR", help="BLIP-2 folder or packed file (the task FDI)")
    g.add_argument("-o", "--output", required=True, metavar="RUN_DIR", help="run folder (e.g. runs/rainstreak)")
    g.add_argument(
        "--proportions",
        default="1",
        help="fractions of the training set, e.g. 0.3,0.6,1 (Table 6): one FDI + adapter + restoration each, on a "
        "seeded random subset",
    )
    g.add_argument(
        "--ablation",
        default="full",
        help=f"adapter ablations, comma-separated: {', '.join(ABLATIONS)}",
    )
    g.add_argument("--seed", type=int, default=0, help="seed of the subsets, the adapter init and the training")
    g.add_argument("--data-seed", type=int, default=0, help="seed of the degradations synthesized for clean-only sets")
    t = p.add_argument_group("training (the paper's settings by default; smaller for a quick run)")
    n = t.add_mutually_exclusive_group()
    n.add_argument("--max-steps", type=int, default=None, help="optimizer steps (default: 50 epochs)")
    n.add_argument("--epochs", type=float, default=None, help="passes over the training pairs (default 50)")
    t.add_argument("--batch-size", type=int, default=32, help="effective batch")
    t.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation micro-steps")
    t.add_argument("--resolution", type=int, default=512, help="square training crops, pixels")
    t.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate")
    t.add_argument("--mixed-precision", default="no", choices=MIXED_PRECISION, help="training precision")
    t.add_argument("--gradient-checkpointing", action="store_true", help="less memory, slower")
    t.add_argument(
        "--adapter-config", default=None, metavar="JSON", help="adapter architecture overrides (as fdi train)"
    )
    t.add_argument("--checkpoint-every", type=int, default=500, help="resumable checkpoint every N steps")
    t.add_argument("--num-workers", type=int, default=4, help="data-loader workers")
    t.add_argument("--blip2-batch-size", type=int, default=8, help="pairs per BLIP-2 call")
    r = p.add_argument_group("restoration and runtime")
    r.add_argument("--steps", type=int, default=PAPER_STEPS, help="DDIM sampling steps")
    r.add_argument("--inversion-steps", type=int, default=PAPER_STEPS, help="DDIM inversion steps")
    r.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="restoration dtype (default fp16 on cuda)")
    r.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default cuda if available)")
    r.add_argument("--quiet", action="store_true", help="no progress bars or stage lines")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    """The :class:`~fdi.reproduce.ReproduceConfig` of parsed arguments."""
    from dataclasses import fields

    from ..reproduce import ReproduceConfig, parse_ablations, parse_proportions
    from .train import parse_adapter_config

    values = {f.name: getattr(args, f.name) for f in fields(ReproduceConfig) if hasattr(args, f.name)}
    values["datasets"] = [n for n in args.dataset.split(",") if n.strip()] if args.dataset else None
    values["proportions"] = parse_proportions(args.proportions)
    values["ablations"] = parse_ablations(args.ablation)
    values["adapter_config"] = parse_adapter_config(args.adapter_config)
    return ReproduceConfig(**values)


def run(args: argparse.Namespace) -> int:
    from ..reproduce import reproduce

    cfg = config_from_args(args)
    try:
        result = reproduce(cfg)
    except KeyboardInterrupt:
        print(
            f"interrupted: the finished stages in {cfg.output} are kept (and the training's last checkpoint); "
            "run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    for row in result.report["rows"]:
        key = "psnr_y" if result.report["metric"] == "y" else "psnr"
        value = row[key]
        shown = "inf" if value is None else f"{value:.2f} dB"
        print(f"{row['folder']}: {key} {shown} on {row['test_pairs']} test pairs")
    print(f"report: {result.folder / 'report.md'}")
    return 0
