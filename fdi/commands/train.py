"""``python -m fdi train``: train an FDI adapter on paired images (one GPU, a CPU, or ``accelerate launch``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from ..errors import FDIError
from ..models import PREDICTION_TYPES
from ..sampling import DEFAULT_TIMESTEP_SAMPLING, GUIDANCE_END, TIMESTEP_SAMPLINGS
from ..training import config as defaults
from ..training.config import LR_SCHEDULERS, MIXED_PRECISION
from .data_args import add_dataset_args


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train an FDI adapter on (degraded, clean) pairs; the SD 1.5 / SD 2.1 / SDXL model and BLIP-2 stay frozen",
        description=(
            "Train an FDI adapter: the task FDI is computed once from the training pairs with BLIP-2 (or read "
            "with --fdi), then only the adapter learns, with L = MSE(pred, target) + λ·|ẑ0 − z_gt|1. "
            "Runs on one CPU/GPU as is, and on many GPUs or nodes under "
            "'accelerate launch --multi_gpu -m fdi train …'. "
            "--batch-size is the effective batch (per-device batch × --grad-accum × processes)."
        ),
    )
    _model_and_data_options(p.add_argument_group("models and data"))
    _optimisation_options(p.add_argument_group("optimisation"))
    _checkpoint_options(p.add_argument_group("checkpoints, logs, validation"))
    _watch_options(p.add_argument_group("previews and caching"))
    p.set_defaults(func=run)


def _model_and_data_options(g) -> None:
    g.add_argument(
        "--sd",
        required=True,
        metavar="MODEL",
        help="SD 1.5 / SD 2.x / SDXL diffusers folder, or a single-file .safetensors checkpoint",
    )
    g.add_argument(
        "--sd-config",
        metavar="DIR",
        default=None,
        help="for a single-file checkpoint: a diffusers folder with its configs (default: the family's shipped ones)",
    )
    g.add_argument(
        "--prediction-type",
        choices=PREDICTION_TYPES,
        default=None,
        help="override the model's prediction type (default: the scheduler's, or detected from a single file)",
    )
    g.add_argument(
        "--blip2",
        metavar="DIR",
        default=None,
        help="BLIP-2 checkpoint folder, to compute the task FDI from the training pairs",
    )
    g.add_argument(
        "--fdi",
        metavar="F.fdi.safetensors",
        default=None,
        help="use this task FDI instead of computing it (BLIP-2 not needed)",
    )
    g.add_argument(
        "--degraded", metavar="DIR", default=None, help="folder of degraded images (style A for style transfer)"
    )
    g.add_argument("--clean", metavar="DIR", default=None, help="folder of clean images (style B), same file names")
    g.add_argument(
        "--pairs-file",
        metavar="F",
        default=None,
        help="CSV (columns degraded,clean) or JSONL (keys degraded, clean) listing pairs; paths relative to the file",
    )
    add_dataset_args(g, with_split=False)
    g.add_argument(
        "-o", "--output", required=True, metavar="ADAPTER.safetensors", help="adapter file to write at the end"
    )
    g.add_argument("--label", default="", help="label stored in the adapter and FDI (default: the output name)")
    g.add_argument(
        "--adapter-config",
        default=None,
        metavar="JSON",
        help='adapter architecture overrides, as JSON or a .json file (e.g. \'{"res_blocks": '
        "2}'); channels and token sizes default to the UNet's and the FDI's",
    )
    g.add_argument("--prompt", default="", help="text prompt used during training (the paper: empty)")


def _optimisation_options(t) -> None:
    t.add_argument(
        "--resolution",
        type=int,
        default=512,
        help="square training crops, pixels, a multiple of 64 (shorter side resized to it, then random crop + flip)",
    )
    n = t.add_mutually_exclusive_group()
    n.add_argument("--max-steps", type=int, default=None, help="optimizer steps to train (default: 50 epochs)")
    n.add_argument(
        "--epochs", type=float, default=None, help="passes over the training pairs (default 50, the paper's)"
    )
    t.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="effective batch: pairs per optimizer step, over all processes and accumulation",
    )
    t.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation micro-steps per optimizer step")
    t.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate")
    t.add_argument(
        "--lr-scheduler",
        default="constant",
        choices=LR_SCHEDULERS,
        help="learning-rate schedule",
    )
    t.add_argument("--lr-warmup-steps", type=int, default=0, help="linear warm-up steps")
    t.add_argument("--adam-beta1", type=float, default=defaults.ADAM_BETA1, help="AdamW β1")
    t.add_argument("--adam-beta2", type=float, default=defaults.ADAM_BETA2, help="AdamW β2")
    t.add_argument("--adam-weight-decay", type=float, default=defaults.ADAM_WEIGHT_DECAY, help="AdamW weight decay")
    t.add_argument("--adam-epsilon", type=float, default=defaults.ADAM_EPSILON, help="AdamW ε")
    t.add_argument(
        "--max-grad-norm", type=float, default=defaults.MAX_GRAD_NORM, help="gradient-norm clipping (0 = off)"
    )
    t.add_argument("--recon-weight", type=float, default=0.1, help="λ of the latent L1 reconstruction term")
    t.add_argument(
        "--timestep-sampling",
        default=DEFAULT_TIMESTEP_SAMPLING,
        choices=TIMESTEP_SAMPLINGS,
        help="how training draws t: 'window' uniformly inside the guidance window (where restoration uses the "
        "adapter), 'cubic' T2I-Adapter's t = (1-u^3)·T weighted to the noisy steps, 'uniform' over all t "
        "(the pack before 2026-12)",
    )
    t.add_argument(
        "--guidance-start",
        type=float,
        default=0.0,
        help="the guidance window the adapter is trained for, as fractions of the sampling steps (0 = the first, "
        "noisiest step): recorded in the adapter file, restoration's default window",
    )
    t.add_argument(
        "--guidance-end",
        type=float,
        default=GUIDANCE_END,
        help="end of the guidance window (the paper's first third: 0.333)",
    )
    t.add_argument(
        "--mixed-precision",
        default="no",
        choices=MIXED_PRECISION,
        help="frozen models in this dtype, adapter under autocast (fp32 master weights)",
    )
    t.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute UNet activations in the backward pass (less memory, ~30%% slower)",
    )
    t.add_argument(
        "--deterministic",
        action="store_true",
        help="bit-reproducible runs: deterministic kernels, MKL's reproducible mode (MKL_CBWR=AUTO) on the CPU",
    )
    t.add_argument(
        "--seed", type=int, default=0, help="seed of the adapter init, data order, crops, noise and timesteps"
    )
    t.add_argument(
        "--device", default=None, help="single-process device (cpu, cuda, cuda:1); leave out under accelerate launch"
    )
    t.add_argument("--num-workers", type=int, default=4, help="data-loader worker processes per training process")
    t.add_argument("--blip2-batch-size", type=int, default=8, help="pairs per BLIP-2 call when computing the task FDI")


def _checkpoint_options(c) -> None:
    c.add_argument(
        "--checkpoint-every",
        type=int,
        default=500,
        help="save a resumable checkpoint every N steps (0 = only at the end)",
    )
    c.add_argument(
        "--checkpoint-dir",
        default=None,
        metavar="DIR",
        help="run folder for checkpoints and logs (default: <output>-run/ beside the output)",
    )
    c.add_argument(
        "--checkpoints-total-limit", type=int, default=None, metavar="N", help="keep only the newest N checkpoints"
    )
    c.add_argument(
        "--resume",
        default=None,
        metavar="DIR|latest",
        help="continue from a checkpoint folder, or from the run folder's newest ('latest', fresh if none)",
    )
    c.add_argument("--log-every", type=int, default=1, help="write a train_log.csv row every N steps")
    c.add_argument(
        "--validate-every",
        type=int,
        default=0,
        help="restore the held-out pairs every N steps and log PSNR/SSIM (0 = never)",
    )
    c.add_argument("--val-degraded", default=None, metavar="DIR", help="held-out degraded images")
    c.add_argument("--val-clean", default=None, metavar="DIR", help="held-out clean images")
    c.add_argument("--val-pairs-file", default=None, metavar="F", help="held-out pairs as a CSV/JSONL list")
    c.add_argument(
        "--val-steps", type=int, default=50, help="DDIM inversion and sampling steps of a validation restore"
    )
    c.add_argument("--val-max-images", type=int, default=8, help="validate on at most this many held-out pairs")
    c.add_argument("--quiet", action="store_true", help="no progress bars")


def _watch_options(w) -> None:
    w.add_argument(
        "--preview-every",
        type=int,
        default=0,
        metavar="N",
        help="every N steps and at the end, restore a few pairs with the current adapter (--val-steps steps) and "
        "write a strip (rows input / restored / clean) to previews/step-<N>.jpg in the run folder; the held-out "
        "pairs (--val-*) when given, else the first training pairs (0 = never)",
    )
    w.add_argument(
        "--preview-images",
        type=int,
        default=defaults.PREVIEW_IMAGES,
        metavar="K",
        help="images in a preview strip (the first K pairs, centre crops at --resolution)",
    )
    w.add_argument(
        "--latent-cache-mib",
        type=int,
        default=defaults.LATENT_CACHE_MIB,
        metavar="MIB",
        help="keep the clean latents of crops that recur exactly (square pairs: the crop is the whole image, only the "
        "flip varies) in up to this much CPU memory, so the VAE encodes each once; same results (0 = off)",
    )


def parse_adapter_config(value) -> dict:
    """``--adapter-config``: inline JSON or a path to a .json file → dict of overrides."""
    if not value:
        return {}
    text = value
    if not value.lstrip().startswith("{"):
        path = Path(value)
        if not path.is_file():
            raise FDIError(
                f"--adapter-config {value!r} is neither JSON nor an existing .json file; "
                "give e.g. '{\"res_blocks\": 2}'"
            )
        text = path.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FDIError(f"--adapter-config is not valid JSON ({exc.msg}); give e.g. '{{\"res_blocks\": 2}}'") from None
    if not isinstance(data, dict):
        raise FDIError("--adapter-config must be a JSON object such as '{\"res_blocks\": 2}'")
    return data


def config_from_args(args: argparse.Namespace):
    """The :class:`~fdi.training.config.TrainConfig` of parsed arguments: one option per field, same name."""
    from ..training.config import TrainConfig

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    values["adapter_config"] = parse_adapter_config(values["adapter_config"])
    return TrainConfig(**values)


def run(args) -> int:
    import sys

    from ..training.run import train

    cfg = config_from_args(args)
    if cfg.deterministic:  # before the first matrix product of the process: MKL reads its mode once
        from ..training.determinism import request_reproducible_libraries

        request_reproducible_libraries()
    try:
        result = train(cfg)
    except KeyboardInterrupt:
        print(
            "interrupted: the adapter file was not written; the last checkpoint in "
            "the run folder is complete — continue with --resume latest",
            file=sys.stderr,
        )
        return 130
    if result.is_main_process:
        print(
            f"wrote {result.output} after {result.steps} steps (base {result.base_family}); "
            f"checkpoints and logs in {result.run_dir}"
        )
    return 0
