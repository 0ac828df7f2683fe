"""Training an FDI adapter (docs/design.md, "Training"): SD 2.x and BLIP-2 frozen, only the adapter learns.

:func:`train` runs :class:`TrainConfig` (the ``python -m fdi train`` options) on one device or under
``accelerate launch``: check inputs → task FDI → models (:func:`fdi.models.load_sd`) → the loop of
:func:`fdi.training.step.training_step` (the step the ComfyUI node shares) in :mod:`fdi.training.loop`
(AdamW, logs), checkpoints (:mod:`fdi.training.state`) and validation (:mod:`fdi.training.validation`).

Files of a run (the *run folder*, default ``<output stem>-run/`` beside the output, or
``--checkpoint-dir``): ``checkpoint-<step>/``, ``train_log.csv`` (step, epoch, loss, loss_diffusion,
loss_recon, lr, grad_norm, sec_per_step), ``val_log.csv`` (step, psnr, ssim, psnr_y, ssim_y) when
validating, ``train.fdi.safetensors`` (the task FDI), ``tensorboard/`` when TensorBoard is installed.
"""

from __future__ import annotations

import gc
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import torch

from .errors import FDIError
from .files import check_output_path
from .progress import ProgressCallback
from .training.loop import log_row, run_loop
from .training.state import CHECKPOINT_PREFIX, fdi_hash, list_checkpoints, load_checkpoint, save_checkpoint
from .training.step import (
    StepLoss,
    diffusers_predictor,
    encode_clean,
    fdi_loss,
    step_generator,
    training_step,
    unet_checkpointing,
)

__all__ = [
    "CHECKPOINT_PREFIX",
    "TrainConfig",
    "TrainResult",
    "TrainRun",
    "encode_prompt",
    "fdi_loss",
    "list_checkpoints",
    "step_generator",
    "train",
]
MIXED_PRECISION = ("no", "fp16", "bf16")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")


@dataclass
class TrainConfig:
    """Everything a training run needs (the command line maps onto it one to one).

    Paths: ``sd`` (diffusers folder or single-file SD 2.1 checkpoint), ``output`` (the adapter file
    to write, ``.safetensors``), ``blip2`` (BLIP-2 folder; not needed with ``fdi`` or on resume),
    training pairs as ``degraded`` + ``clean`` folders or ``pairs_file``.

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
    fdi: Optional[str] = None
    resolution: int = 512
    max_steps: Optional[int] = None
    epochs: Optional[float] = None
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-5
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
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


@dataclass
class TrainResult:
    """What :func:`train` returns: the adapter file, the steps done and the loss history."""

    output: Path
    run_dir: Path
    steps: int
    start_step: int
    losses: List[float]
    base_family: str
    is_main_process: bool = True


# ---------------------------------------------------------------------------------------------- the run
def encode_prompt(text_encoder, tokenizer, prompt: str, device, dtype: torch.dtype) -> torch.Tensor:
    """Text conditioning ``[1, 77, D]`` of ``prompt`` (``last_hidden_state``, padded to the context length) on
    ``device`` in ``dtype``. The encoder runs where it is (the CPU after loading): it is not moved to the
    training device, which it would occupy for the whole run."""
    length = min(int(tokenizer.model_max_length), int(text_encoder.config.max_position_embeddings))
    ids = tokenizer(prompt, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
    where = next(text_encoder.parameters()).device
    with torch.no_grad():
        return text_encoder(ids.to(where))[0].to(device=device, dtype=dtype)


class TrainRun:
    """State of one training run (each phase a method: check, accelerator, build, loop, finish)."""

    def __init__(self, cfg: TrainConfig, progress: Optional[ProgressCallback], models=None):
        self.cfg = cfg
        self.progress = progress
        self.given_models = models

    # ---- phase 1: everything that can be checked before a model is loaded ------------------------
    def check_inputs(self) -> None:
        cfg = self.cfg
        self.output = check_output_path(cfg.output, suffix=".safetensors")
        if cfg.max_steps is not None and cfg.epochs is not None:
            raise FDIError("give either --max-steps or --epochs, not both")
        for name, v, lo in (
            ("--batch-size", cfg.batch_size, 1),
            ("--grad-accum", cfg.grad_accum, 1),
            ("--resolution", cfg.resolution, 8),
            ("--checkpoint-every", cfg.checkpoint_every, 0),
            ("--validate-every", cfg.validate_every, 0),
            ("--num-workers", cfg.num_workers, 0),
            ("--log-every", cfg.log_every, 1),
            ("--val-steps", cfg.val_steps, 1),
            ("--val-max-images", cfg.val_max_images, 1),
            ("--lr-warmup-steps", cfg.lr_warmup_steps, 0),
        ):
            if not isinstance(v, int) or v < lo:
                raise FDIError(f"{name} must be an integer of at least {lo}, got {v!r}")
        if cfg.max_steps is not None and cfg.max_steps < 1:
            raise FDIError(f"--max-steps must be at least 1, got {cfg.max_steps}")
        if cfg.epochs is not None and not cfg.epochs > 0:
            raise FDIError(f"--epochs must be positive, got {cfg.epochs}")
        if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
            raise FDIError(f"--lr must be a positive number, got {cfg.lr}")
        if not (cfg.recon_weight >= 0 and math.isfinite(cfg.recon_weight)):
            raise FDIError(f"--recon-weight must be 0 or positive, got {cfg.recon_weight}")
        from .models import check_prediction_type

        check_prediction_type(cfg.prediction_type)
        if cfg.mixed_precision not in MIXED_PRECISION:
            raise FDIError(
                f"--mixed-precision must be one of {', '.join(MIXED_PRECISION)}, got {cfg.mixed_precision!r}"
            )
        if cfg.lr_scheduler not in LR_SCHEDULERS:
            raise FDIError(f"--lr-scheduler must be one of {', '.join(LR_SCHEDULERS)}, got {cfg.lr_scheduler!r}")
        if cfg.resolution % 8:
            raise FDIError(f"--resolution {cfg.resolution} must be a multiple of 8 (the VAE's factor), e.g. 512")
        if cfg.validate_every and not (cfg.val_pairs_file or (cfg.val_degraded and cfg.val_clean)):
            raise FDIError(
                "--validate-every needs held-out pairs: --val-degraded DIR and --val-clean DIR (or --val-pairs-file)"
            )
        if self.given_models is None and (not cfg.sd or not Path(cfg.sd).exists()):
            raise FDIError(
                f"Stable Diffusion model {cfg.sd!r} does not exist; give a diffusers folder "
                "or a .safetensors checkpoint"
            )
        from .data import collect_pairs

        self.pairs = collect_pairs(cfg.degraded, cfg.clean, cfg.pairs_file)
        self.val_pairs = (
            collect_pairs(cfg.val_degraded, cfg.val_clean, cfg.val_pairs_file, what="validation")
            if cfg.validate_every
            else []
        )
        self.run_dir = (
            Path(cfg.checkpoint_dir)
            if cfg.checkpoint_dir
            else self.output.with_name(self.output.name[: -len(".safetensors")] + "-run")
        )
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise FDIError(f"checkpoint folder {str(self.run_dir)!r} is a file; give a folder with --checkpoint-dir")
        parent = self.run_dir if self.run_dir.exists() else self.run_dir.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise FDIError(
                f"checkpoint folder {str(self.run_dir)!r} cannot be created or written; "
                "choose another --checkpoint-dir or fix the permissions"
            )
        self.resume_from: Optional[Path] = None
        if cfg.resume:
            if cfg.resume == "latest":
                found = list_checkpoints(self.run_dir)
                self.resume_from = found[-1][1] if found else None
            else:
                r = Path(cfg.resume)
                if not (r / "state.json").is_file():
                    raise FDIError(
                        f"--resume {cfg.resume!r} is not a training checkpoint (no state.json); "
                        "give a checkpoint-<step> folder or 'latest'"
                    )
                self.resume_from = r
        if cfg.resume == "latest" and self.resume_from is None and not cfg.quiet and os.environ.get("RANK", "0") == "0":
            print(f"no checkpoint in {self.run_dir} yet: starting a new run")
        if self.resume_from is None and list_checkpoints(self.run_dir):
            raise FDIError(
                f"{self.run_dir} already holds checkpoints of another run; continue it with "
                "--resume latest, or start anew with another --checkpoint-dir (or delete "
                "that folder)"
            )
        if self.resume_from is None and not cfg.fdi and not cfg.blip2:
            raise FDIError(
                "the task FDI is needed: give --blip2 DIR (it is computed from the training "
                "pairs) or --fdi FILE.fdi.safetensors"
            )

    # ---- phase 2: accelerate, batch split --------------------------------------------------------
    def setup_accelerator(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        cfg = self.cfg
        cpu = cfg.device is not None and str(cfg.device).startswith("cpu")
        if cfg.device and str(cfg.device).startswith("cuda:") and int(os.environ.get("WORLD_SIZE", "1")) == 1:
            torch.cuda.set_device(torch.device(cfg.device))
        self.acc = Accelerator(
            mixed_precision=cfg.mixed_precision,
            cpu=cpu,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
        )
        if cfg.device and self.acc.num_processes > 1 and not cpu:
            raise FDIError(
                "--device selects one device for a single process; with 'accelerate launch' "
                "leave it out (accelerate assigns the GPUs)"
            )
        P = self.acc.num_processes
        if cfg.batch_size % (P * cfg.grad_accum):
            step = P * cfg.grad_accum
            raise FDIError(
                f"--batch-size {cfg.batch_size} is not divisible by processes × --grad-accum = {P} × {cfg.grad_accum}; "
                f"choose a batch size that is a multiple of {step} (e.g. {step * max(1, cfg.batch_size // step)})"
            )
        self.micro = cfg.batch_size // (P * cfg.grad_accum)
        self.device = self.acc.device
        from .dtypes import parse_dtype  # the package's one dtype map

        self.weight_dtype = parse_dtype("fp32" if cfg.mixed_precision == "no" else cfg.mixed_precision)
        from .training.precision import loss_scaler

        # fp16 needs dynamic loss scaling; accelerate gives it a scaler on GPUs, not on the CPU: ours there
        self.scaler = (
            loss_scaler(self.device, torch.float16)
            if cfg.mixed_precision == "fp16" and self.acc.scaler is None
            else None
        )
        self.main = self.acc.is_main_process
        n = len(self.pairs)
        self.max_steps = (
            cfg.max_steps if cfg.max_steps is not None else max(1, math.ceil((cfg.epochs or 50) * n / cfg.batch_size))
        )

    # ---- phase 3: FDI, models ----------------------------------------------------------------------
    def load_fdi(self):
        from .instruction import FDI

        cfg = self.cfg
        if self.resume_from is not None:
            from .adapter import FDIAdapter

            fdi = FDIAdapter.from_file(self.resume_from / "adapter.safetensors").fdi
            if fdi is None:
                raise FDIError(
                    f"checkpoint {self.resume_from} has no embedded FDI; it is incomplete, resume "
                    "from an earlier checkpoint"
                )
            if cfg.fdi and fdi_hash(FDI.load(cfg.fdi).tokens) != fdi_hash(fdi.tokens):
                raise FDIError(
                    f"--fdi {cfg.fdi} differs from the FDI the run in {self.resume_from.parent} "
                    "was trained with; leave out --fdi to resume, or start a new run"
                )
            return fdi
        if cfg.fdi:
            return FDI.load(cfg.fdi)
        fdi_file = self.run_dir / "train.fdi.safetensors"
        if self.main:
            from .encoder import QFormerEncoder
            from .extract import extract_fdi_from_sources
            from .images import load_image
            from .progress import tqdm_progress

            encoder = QFormerEncoder.from_pretrained(cfg.blip2, device=self.device)
            sources = [((lambda p=pr.degraded: load_image(p)), (lambda p=pr.clean: load_image(p))) for pr in self.pairs]
            with tqdm_progress("task FDI", len(sources), unit="pair", enabled=not cfg.quiet) as cb:
                fdi = extract_fdi_from_sources(
                    encoder, sources, label=cfg.label or self.output.stem, batch_size=cfg.blip2_batch_size, progress=cb
                )
            del encoder, sources
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fdi.save(fdi_file)
        self.acc.wait_for_everyone()
        return FDI.load(fdi_file)

    def build(self) -> None:
        from diffusers.optimization import get_scheduler

        from .adapter import FDIAdapter, FDIAdapterConfig
        from .models import load_sd, place
        from .pipeline import FDIRestorationPipeline, detect_base_family

        cfg = self.cfg
        self.fdi = self.load_fdi()
        parts = self.given_models or load_sd(
            cfg.sd, dtype=self.weight_dtype, config=cfg.sd_config, prediction_type=cfg.prediction_type
        )
        self.unet = place(parts.unet, self.device, self.weight_dtype)
        self.vae = place(parts.vae, self.device, self.weight_dtype)
        self.prompt_embeds = encode_prompt(
            parts.text_encoder, parts.tokenizer, cfg.prompt, self.device, self.weight_dtype
        )
        self.pipe = None  # restoration pipeline for validation: the same modules, built once
        if cfg.validate_every:
            self.pipe = FDIRestorationPipeline(
                self.vae,
                parts.text_encoder,
                parts.tokenizer,
                self.unet,
                parts.scheduler,
                device=self.device,
                dtype=self.weight_dtype,
                source=parts.source,
            )
        scheduler = parts.scheduler  # load_sd applied --prediction-type to it
        del parts
        gc.collect()
        # the pack's own checkpointing of the blocks' resnets/attentions/samplers (as in ComfyUI): diffusers'
        # enable_gradient_checkpointing() acts only in train() before diffusers 0.32, and the UNet is in eval()
        self.checkpointing = unet_checkpointing(self.unet, cfg.gradient_checkpointing)
        self.prediction_type = cfg.prediction_type or scheduler.config.prediction_type
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)
        self.alphas_cumprod = scheduler.alphas_cumprod.to(device=self.device, dtype=torch.float32)
        self.family = detect_base_family(self.unet.config, self.prediction_type)
        unet = self.unet

        tokens, width = self.fdi.shape
        conf = {
            "channels": tuple(int(c) for c in unet.config.block_out_channels),
            "token_width": width,
            "num_tokens": tokens,
        }
        conf.update(cfg.adapter_config or {})
        try:
            adapter_config = FDIAdapterConfig(**conf)
        except TypeError as exc:
            raise FDIError(
                f"--adapter-config has an unknown key ({exc}); use the fields of FDIAdapterConfig "
                "(channels, res_blocks, bottleneck, heads, se_reduction, …)"
            ) from None
        with torch.random.fork_rng(devices=[]):  # initial weights depend on --seed only; global RNG untouched
            torch.manual_seed(cfg.seed)
            adapter = FDIAdapter(
                adapter_config, base_family=self.family, encoder=self.fdi.encoder, label=cfg.label or self.output.stem
            )
        from .diffusers_backend import check_adapter_for_unet

        check_adapter_for_unet(adapter, unet)
        adapter.check_fdi(self.fdi)
        adapter.train()
        self.signature = {
            "adapter_config": json.loads(adapter_config.to_json()),
            "base_family": self.family,
            "batch_size": cfg.batch_size,
            "resolution": cfg.resolution,
            "seed": cfg.seed,
            "n_pairs": len(self.pairs),
            "fdi": fdi_hash(self.fdi.tokens),
        }
        optimizer = torch.optim.AdamW(
            adapter.parameters(),
            lr=cfg.lr,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            weight_decay=cfg.adam_weight_decay,
            eps=cfg.adam_epsilon,
        )
        self.lr_scheduler = get_scheduler(
            cfg.lr_scheduler,
            optimizer=optimizer,
            num_warmup_steps=cfg.lr_warmup_steps,
            num_training_steps=self.max_steps,
        )
        self.adapter, self.optimizer = self.acc.prepare(adapter, optimizer)
        self.fdi_tokens = self.fdi.tokens.to(self.device)
        self.predict = diffusers_predictor(self.unet, self.prompt_embeds, self.weight_dtype)
        self.start_step = 0
        if self.resume_from is not None:
            load_checkpoint(self, self.resume_from)

    # ---- checkpoints -------------------------------------------------------------------------------
    def raw_adapter(self):
        return self.acc.unwrap_model(self.adapter)

    def log_row(self, path: Path, fields, row: dict) -> None:
        log_row(self, path, fields, row)

    # ---- one micro-batch ---------------------------------------------------------------------------
    def micro_loss(self, batch: dict, micro_index: int) -> StepLoss:
        gen = step_generator(self.cfg.seed, micro_index, self.acc.process_index)
        degraded = batch["degraded"].to(self.device, non_blocking=True)
        z0 = encode_clean(self.vae, batch["clean"].to(self.device, non_blocking=True), self.weight_dtype)
        with self.acc.autocast():
            return training_step(
                self.adapter,
                self.predict,
                degraded,
                z0,
                self.fdi_tokens,
                self.alphas_cumprod,
                self.prediction_type,
                self.cfg.recon_weight,
                gen,
            )

    def loop(self) -> List[float]:
        with self.checkpointing:
            return run_loop(self)

    def finish(self) -> None:
        if self.main:
            adapter = self.raw_adapter()
            adapter.save(self.output, fdi=self.fdi)
        self.acc.wait_for_everyone()


def train(cfg: TrainConfig, progress: Optional[ProgressCallback] = None, models=None) -> TrainResult:
    """Train an FDI adapter and write it to ``cfg.output``.

    ``models``: already loaded frozen parts (:class:`fdi.models.SDParts`) to train against (then
    ``cfg.sd`` is not read; they are moved to the training device and dtype), for benchmarks and
    hosts that hold the model in memory.

    ``progress(done_steps, total_steps)`` is called after every optimizer step and may raise (e.g.
    :class:`~fdi.errors.FDIInterrupted`) to stop: the last checkpoint stays loadable and the
    output file is not written. Raises :class:`FDIError` for every user error, before any model is
    loaded where possible (paths, batch split, pairs).
    """
    run = TrainRun(cfg, progress, models)
    run.check_inputs()
    run.setup_accelerator()
    run.build()
    if run.start_step >= run.max_steps:  # e.g. a job restarted after its last checkpoint: just write the adapter
        if run.main and not cfg.quiet:
            print(
                f"the checkpoint is already at step {run.start_step} of {run.max_steps}: "
                "writing the adapter without training "
                "(raise --max-steps or --epochs to train further)"
            )
        run.steps_done, losses = run.start_step, []
    else:
        losses = run.loop()
        if cfg.checkpoint_every:
            save_checkpoint(run, run.steps_done)
    run.finish()
    return TrainResult(
        output=run.output,
        run_dir=run.run_dir,
        steps=run.steps_done,
        start_step=run.start_step,
        losses=losses,
        base_family=run.family,
        is_main_process=run.main,
    )
