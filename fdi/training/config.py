"""The options of a training run and their checks: :class:`TrainConfig` (the CLI's, one field per option),
:class:`TrainResult`, and the rules both doors share (resolution, optimiser, determinism).

docs/design.md ("Training") has the decisions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional

import torch

from ..errors import FDIError
from ..sampling import DEFAULT_TIMESTEP_SAMPLING, GUIDANCE_END
from .latents import LATENT_CACHE_MIB
from .preview import PREVIEW_IMAGES

if TYPE_CHECKING:
    from .step import TimestepSampling

MIXED_PRECISION = ("no", "fp16", "bf16")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
#: training crops are square, a multiple of this many pixels: the VAE's 8 × 2^3 for the SD UNets' (at most) three
#: downsamplings, so every UNet level and adapter feature has an integer size (as restoration pads to)
RESOLUTION_MULTIPLE = 64
#: AdamW and clipping defaults of both doors
ADAM_BETA1 = 0.9
ADAM_BETA2 = 0.99
ADAM_WEIGHT_DECAY = 1e-2
ADAM_EPSILON = 1e-8
MAX_GRAD_NORM = 1.0


@dataclass(kw_only=True)
class OptimizerSettings:
    """AdamW, clipping and determinism: the same fields and defaults in both doors' settings."""

    adam_beta1: float = ADAM_BETA1
    adam_beta2: float = ADAM_BETA2
    adam_weight_decay: float = ADAM_WEIGHT_DECAY
    adam_epsilon: float = ADAM_EPSILON
    max_grad_norm: float = MAX_GRAD_NORM
    deterministic: bool = False

    def check_optimizer(self) -> None:
        """Refuse AdamW settings outside their ranges (betas in [0, 1), the rest ≥ 0, ``adam_epsilon`` > 0)."""
        for name, v in (("--adam-beta1", self.adam_beta1), ("--adam-beta2", self.adam_beta2)):
            if not (0 <= v < 1):
                raise FDIError(f"{name} must be in [0, 1), got {v}; the usual values are 0.9 and 0.99")
        for name, v in (("--adam-weight-decay", self.adam_weight_decay), ("--max-grad-norm", self.max_grad_norm)):
            if not (v >= 0 and math.isfinite(v)):
                raise FDIError(f"{name} must be 0 or positive, got {v}")
        if not (self.adam_epsilon > 0 and math.isfinite(self.adam_epsilon)):
            raise FDIError(f"--adam-epsilon must be positive, got {self.adam_epsilon}")

    def adamw(self, params: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.AdamW:
        """The optimiser of both doors: AdamW at ``lr`` with these betas, weight decay and ε."""
        return torch.optim.AdamW(
            params,
            lr=lr,
            betas=(self.adam_beta1, self.adam_beta2),
            weight_decay=self.adam_weight_decay,
            eps=self.adam_epsilon,
        )


@dataclass
class TrainConfig(OptimizerSettings):
    """Everything a training run needs (the command line maps onto it one to one, by field name; the
    optimiser's fields are :class:`OptimizerSettings`').

    Paths: ``sd`` (diffusers folder or single-file SD 1.5 / 2.1 / SDXL checkpoint), ``output`` (the adapter file
    to write, ``.safetensors``), ``blip2`` (BLIP-2 folder; not needed with ``fdi`` or on resume),
    training pairs as ``degraded`` + ``clean`` folders, ``pairs_file``, or the train split of a downloaded data set
    (``dataset`` read under ``data``, :mod:`fdi.datasets`; ``dataset_task`` and ``data_seed`` as there).

    Sizes: ``resolution`` in pixels (square crops), ``batch_size`` = effective batch in pairs per
    optimizer step, ``grad_accum`` micro-steps per optimizer step. Length: ``max_steps`` optimizer
    steps, or ``epochs`` passes over the pairs (50 when neither is given, as in the paper).
    """

    sd: str
    output: str
    sd_config: Optional[str] = None
    prediction_type: Optional[str] = None
    blip2: Optional[str] = None
    degraded: Optional[str] = None
    clean: Optional[str] = None
    pairs_file: Optional[str] = None
    dataset: Optional[str] = None
    data: Optional[str] = None
    dataset_task: Optional[str] = None
    data_seed: int = 0
    fdi: Optional[str] = None
    resolution: int = 512
    max_steps: Optional[int] = None
    epochs: Optional[float] = None
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-5
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    recon_weight: float = 0.1
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    checkpoint_every: int = 500
    checkpoint_dir: Optional[str] = None
    checkpoints_total_limit: Optional[int] = None
    resume: Optional[str] = None
    seed: int = 0
    device: Optional[str] = None
    num_workers: int = 4
    adapter_config: Dict = field(default_factory=dict)
    prompt: str = ""
    label: str = ""
    blip2_batch_size: int = 8
    validate_every: int = 0
    val_degraded: Optional[str] = None
    val_clean: Optional[str] = None
    val_pairs_file: Optional[str] = None
    val_steps: int = 50
    val_max_images: int = 8
    log_every: int = 1
    quiet: bool = False
    timestep_sampling: str = DEFAULT_TIMESTEP_SAMPLING
    guidance_start: float = 0.0
    guidance_end: float = GUIDANCE_END
    # watching a run: strips of restored images every N steps, and clean latents cached where crops recur
    preview_every: int = 0
    preview_images: int = PREVIEW_IMAGES
    latent_cache_mib: int = LATENT_CACHE_MIB

    def timesteps(self) -> "TimestepSampling":
        """How the run draws timesteps (:class:`fdi.training.step.TimestepSampling`): the sampling and the window."""
        from .step import TimestepSampling

        return TimestepSampling(self.timestep_sampling, (self.guidance_start, self.guidance_end))


@dataclass
class TrainResult:
    """What :func:`fdi.training.run.train` returns: the adapter file, the steps done and the loss history (and the
    clean latents this process took from / added to :class:`.latents.LatentCache`)."""

    output: Path
    run_dir: Path
    steps: int
    start_step: int
    losses: List[float]
    base_family: str
    is_main_process: bool = True
    latent_hits: int = 0
    latent_misses: int = 0


def check_resolution(resolution: int, name: str = "resolution") -> None:
    """Refuse a training crop side (px) that is not a positive multiple of :data:`RESOLUTION_MULTIPLE`."""
    if not isinstance(resolution, int) or resolution < RESOLUTION_MULTIPLE or resolution % RESOLUTION_MULTIPLE:
        raise FDIError(
            f"{name} {resolution!r} must be a multiple of {RESOLUTION_MULTIPLE} px "
            "(the VAE's 8 × the UNet's three downsamplings), e.g. 512"
        )


def check_config(cfg: TrainConfig) -> None:
    """Every check of ``cfg`` that needs no file: counts, ranges, names (a clear :class:`FDIError` each)."""
    if cfg.max_steps is not None and cfg.epochs is not None:
        raise FDIError("give either --max-steps or --epochs, not both")
    for name, v, lo in (
        ("--batch-size", cfg.batch_size, 1),
        ("--grad-accum", cfg.grad_accum, 1),
        ("--checkpoint-every", cfg.checkpoint_every, 0),
        ("--validate-every", cfg.validate_every, 0),
        ("--num-workers", cfg.num_workers, 0),
        ("--log-every", cfg.log_every, 1),
        ("--val-steps", cfg.val_steps, 1),
        ("--val-max-images", cfg.val_max_images, 1),
        ("--lr-warmup-steps", cfg.lr_warmup_steps, 0),
        ("--blip2-batch-size", cfg.blip2_batch_size, 1),
    ):
        if not isinstance(v, int) or v < lo:
            raise FDIError(f"{name} must be an integer of at least {lo}, got {v!r}")
    check_resolution(cfg.resolution, "--resolution")
    if cfg.checkpoints_total_limit is not None and (
        not isinstance(cfg.checkpoints_total_limit, int) or cfg.checkpoints_total_limit < 1
    ):
        raise FDIError(
            f"--checkpoints-total-limit must be at least 1 (or left out to keep every checkpoint), "
            f"got {cfg.checkpoints_total_limit!r}"
        )
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise FDIError(f"--max-steps must be at least 1, got {cfg.max_steps}")
    if cfg.epochs is not None and not cfg.epochs > 0:
        raise FDIError(f"--epochs must be positive, got {cfg.epochs}")
    if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise FDIError(f"--lr must be a positive number, got {cfg.lr}")
    if not (cfg.recon_weight >= 0 and math.isfinite(cfg.recon_weight)):
        raise FDIError(f"--recon-weight must be 0 or positive, got {cfg.recon_weight}")
    cfg.check_optimizer()
    cfg.timesteps().check(("--timestep-sampling", "--guidance-start", "--guidance-end"))
    from ..models import check_prediction_type

    check_prediction_type(cfg.prediction_type)
    if cfg.mixed_precision not in MIXED_PRECISION:
        raise FDIError(f"--mixed-precision must be one of {', '.join(MIXED_PRECISION)}, got {cfg.mixed_precision!r}")
    if cfg.lr_scheduler not in LR_SCHEDULERS:
        raise FDIError(f"--lr-scheduler must be one of {', '.join(LR_SCHEDULERS)}, got {cfg.lr_scheduler!r}")
    if cfg.validate_every and not has_val_pairs(cfg):
        raise FDIError(
            "--validate-every needs held-out pairs: --val-degraded DIR and --val-clean DIR (or --val-pairs-file)"
        )
    check_preview_and_cache(cfg)


def has_val_pairs(cfg: TrainConfig) -> bool:
    """Whether held-out pairs are given (``--val-degraded`` and ``--val-clean``, or ``--val-pairs-file``)."""
    return bool(cfg.val_pairs_file or (cfg.val_degraded and cfg.val_clean))


def check_preview_and_cache(cfg: TrainConfig) -> None:
    """``--preview-every`` ≥ 0, ``--preview-images`` ≥ 1, ``--latent-cache-mib`` ≥ 0 (integers)."""
    for name, v, lo in (
        ("--preview-every", cfg.preview_every, 0),
        ("--preview-images", cfg.preview_images, 1),
        ("--latent-cache-mib", cfg.latent_cache_mib, 0),
    ):
        if not isinstance(v, int) or v < lo:
            raise FDIError(f"{name} must be an integer of at least {lo}, got {v!r}")


def check_batch_split(batch_size: int, processes: int, grad_accum: int) -> int:
    """The per-device micro-batch of an effective ``batch_size`` over ``processes`` × ``grad_accum``; refuses a
    batch size that does not split evenly."""
    step = processes * grad_accum
    if batch_size % step:
        raise FDIError(
            f"--batch-size {batch_size} is not divisible by processes × --grad-accum = {processes} × {grad_accum}; "
            f"choose a batch size that is a multiple of {step} (e.g. {step * max(1, batch_size // step)})"
        )
    return batch_size // step


def check_device(device: Optional[str]) -> None:
    """Refuse a ``--device`` that torch cannot name or this machine does not have (``None``: accelerate picks)."""
    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise FDIError(f"--device {device!r} is not a device; give cpu, cuda or cuda:N (or leave it out)") from None
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise FDIError(f"--device {device!r}: this machine has no CUDA GPU usable by torch; give --device cpu")
        if dev.index is not None and dev.index >= count:
            raise FDIError(f"--device {device!r}: this machine has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}")
        return
    if dev.type == "mps" and torch.backends.mps.is_available():
        return
    raise FDIError(f"--device {device!r} is not available here; give cpu or cuda[:N] (or leave it out)")
