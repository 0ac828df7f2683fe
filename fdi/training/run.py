"""A CLI training run (``python -m fdi train``): :class:`TrainRun` holds its whole state, :func:`train` runs it.

Phases: check inputs → accelerator and batch split → task FDI → models (:func:`fdi.models.load_sd`) →
the loop of :mod:`.loop` (the shared :func:`.step.training_step`), checkpoints (:mod:`.state`) and
validation (:mod:`.validation`) → the adapter file.

Files of a run (the *run folder*, default ``<output stem>-run/`` beside the output, or
``--checkpoint-dir``): ``checkpoint-<step>/``, ``train_log.csv`` (step, epoch, loss, loss_diffusion,
loss_recon, lr, grad_norm, sec_per_step), ``val_log.csv`` (step, psnr, ssim, psnr_y, ssim_y) when
validating, ``train.fdi.safetensors`` (the task FDI), ``tensorboard/`` when TensorBoard is installed,
``previews/step-<step>.jpg`` with ``--preview-every`` (:mod:`.preview`).
"""

from __future__ import annotations

import gc
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

import torch

from ..conditioning import encode_text
from ..errors import FDIError
from ..files import check_output_path
from ..models import check_sd_source, vae_encode
from ..progress import ProgressCallback
from .checks import (
    adapter_config_for,
    check_instruction,
    read_pairs,
    resume_point,
    run_folder,
    timestep_signature,
    unet_channels,
)
from .config import TrainConfig, TrainResult, check_batch_split, check_config, check_device
from .determinism import deterministic_algorithms
from .latents import LatentCache
from .loop import run_loop
from .state import (
    fdi_hash,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from .step import StepLoss, diffusers_predictor, step_generator, training_step, unet_checkpointing


@dataclass(eq=False, slots=True)
class TrainRun:
    """The state of one training run, every attribute declared here (slots: no other can be created).

    Filled phase by phase: :meth:`check_inputs` (paths, pairs, resume point), :meth:`setup_accelerator`
    (devices, batch split), :meth:`build` (models, adapter, optimizer; ``start_step`` from a checkpoint),
    :func:`.loop.run_loop` (logs, ``steps_done``)."""

    cfg: TrainConfig
    progress: Optional[ProgressCallback] = None
    given_models: Any = None
    # check_inputs
    output: Optional[Path] = None
    pairs: list = field(default_factory=list)
    val_pairs: list = field(default_factory=list)
    run_dir: Optional[Path] = None
    created_run_dir: bool = False
    resume_from: Optional[Path] = None
    # setup_accelerator
    acc: Any = None
    micro: int = 0
    device: Optional[torch.device] = None
    weight_dtype: torch.dtype = torch.float32
    vae_dtype: torch.dtype = torch.float32
    scaler: Optional[torch.amp.GradScaler] = None
    main: bool = True
    max_steps: int = 0
    # build
    fdi: Any = None
    fdi_tokens: Optional[torch.Tensor] = None
    unet: Any = None
    vae: Any = None
    pipe: Any = None
    checkpointing: Any = None
    prediction_type: str = ""
    alphas_cumprod: Optional[torch.Tensor] = None
    family: str = ""
    signature: dict = field(default_factory=dict)
    adapter: Any = None
    optimizer: Any = None
    lr_scheduler: Any = None
    predict: Any = None
    start_step: int = 0
    # the loop
    steps_done: int = 0
    log_path: Optional[Path] = None
    val_path: Optional[Path] = None
    tb: Any = None
    latents: Any = None  # the clean latents' cache (:class:`.latents.LatentCache`)

    # ---- phase 1: everything that can be checked before a model is loaded (:mod:`.checks`) ------------
    def check_inputs(self) -> None:
        """Every input, before any model is loaded, any pair extracted or any file written: options, devices,
        the SD model (format, header, family), the pairs (readable images), the output and run folders, the
        resume point, the task FDI's source (``--fdi`` file or BLIP-2) and the adapter config."""
        cfg = self.cfg
        self.output = check_output_path(cfg.output, suffix=".safetensors")
        check_config(cfg)
        check_device(cfg.device)
        check_batch_split(cfg.batch_size, int(os.environ.get("WORLD_SIZE", "1")), cfg.grad_accum)
        if self.given_models is None:
            if not cfg.sd:
                raise FDIError("no Stable Diffusion model: give a diffusers folder or a .safetensors checkpoint")
            check_sd_source(cfg.sd, cfg.sd_config, cfg.prediction_type)
        self.pairs, self.val_pairs = read_pairs(cfg)
        self.run_dir, self.created_run_dir = run_folder(cfg, self.output)
        self.resume_from = resume_point(cfg, self.run_dir, len(self.pairs))
        check_instruction(cfg, self.resume_from, unet_channels(cfg, self.given_models))

    # ---- phase 2: accelerate, batch split --------------------------------------------------------
    def setup_accelerator(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        from ..dtypes import parse_dtype
        from .precision import loss_scaler

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
        self.micro = check_batch_split(cfg.batch_size, self.acc.num_processes, cfg.grad_accum)
        self.device = self.acc.device
        self.weight_dtype = parse_dtype("fp32" if cfg.mixed_precision == "no" else cfg.mixed_precision)
        # where accelerate gives no loss scaler (the CPU; fp32 and bf16 everywhere): ours, a pass-through but for fp16
        if self.acc.scaler is None:
            self.scaler = loss_scaler(self.device, torch.float16 if cfg.mixed_precision == "fp16" else None)
        self.main = self.acc.is_main_process
        epochs = cfg.epochs or 50
        self.max_steps = cfg.max_steps or max(1, math.ceil(epochs * len(self.pairs) / cfg.batch_size))

    # ---- phase 3: FDI, models, adapter, optimizer -----------------------------------------------------
    def load_fdi(self):
        from ..instruction import FDI

        cfg = self.cfg
        if self.resume_from is not None:
            from ..adapter import FDIAdapter

            fdi = FDIAdapter.from_file(self.resume_from / "adapter.safetensors").fdi
            if fdi is None:
                raise FDIError(
                    f"checkpoint {self.resume_from} has no embedded FDI; it is incomplete, resume from an earlier one"
                )
            if cfg.fdi and fdi_hash(FDI.load(cfg.fdi).tokens) != fdi_hash(fdi.tokens):
                raise FDIError(
                    f"--fdi {cfg.fdi} differs from the FDI the run in {self.resume_from.parent} was trained with; "
                    "leave out --fdi to resume, or start a new run"
                )
            return fdi
        if cfg.fdi:
            return FDI.load(cfg.fdi)
        fdi_file = self.run_dir / "train.fdi.safetensors"
        if self.main:
            self.extract_fdi(fdi_file)
        self.acc.wait_for_everyone()
        return FDI.load(fdi_file)

    def extract_fdi(self, fdi_file: Path) -> None:
        from ..encoder import QFormerEncoder
        from ..extract import extract_fdi_from_pairs
        from ..progress import tqdm_progress

        cfg = self.cfg
        encoder = QFormerEncoder.from_pretrained(cfg.blip2, device=self.device)
        with tqdm_progress("task FDI", len(self.pairs), unit="pair", enabled=not cfg.quiet) as cb:
            fdi = extract_fdi_from_pairs(
                encoder, self.pairs, label=cfg.label or self.output.stem, batch_size=cfg.blip2_batch_size, progress=cb
            )
        del encoder
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fdi.save(fdi_file)

    def build(self) -> None:
        self.fdi = self.load_fdi()
        self.load_models()
        adapter, adapter_config = self.make_adapter()
        self.signature = {
            "adapter_config": json.loads(adapter_config.to_json()),
            "base_family": self.family,
            "batch_size": self.cfg.batch_size,
            "resolution": self.cfg.resolution,
            "seed": self.cfg.seed,
            "n_pairs": len(self.pairs),
            "fdi": fdi_hash(self.fdi.tokens),
            **timestep_signature(self.cfg),
        }
        from diffusers.optimization import get_scheduler

        optimizer = self.cfg.adamw(adapter.parameters(), self.cfg.lr)
        self.lr_scheduler = get_scheduler(
            self.cfg.lr_scheduler,
            optimizer=optimizer,
            num_warmup_steps=self.cfg.lr_warmup_steps,
            num_training_steps=self.max_steps,
        )
        self.adapter, self.optimizer = self.acc.prepare(adapter, optimizer)
        self.fdi_tokens = self.fdi.tokens.to(self.device)
        if self.resume_from is not None:
            load_checkpoint(self, self.resume_from)

    def load_models(self) -> None:
        """The frozen UNet and VAE on the device, the prompt's embedding, the schedule (and the text encoder
        freed unless validation restores)."""
        from ..models import load_sd, place, vae_dtype
        from ..pipeline import FDIRestorationPipeline, detect_base_family

        cfg = self.cfg
        parts = self.given_models or load_sd(
            cfg.sd, dtype=self.weight_dtype, config=cfg.sd_config, prediction_type=cfg.prediction_type
        )
        self.unet = place(parts.unet, self.device, self.weight_dtype)
        self.vae_dtype = vae_dtype(parts.vae, self.weight_dtype)  # SDXL's VAE stays fp32 under fp16
        self.vae = place(parts.vae, self.device, self.vae_dtype)
        prompt = encode_text(parts, cfg.prompt, self.device, self.weight_dtype)
        prompt_embeds = prompt if prompt.pooled is not None else prompt.embeds
        if cfg.validate_every or cfg.preview_every:  # restoration pipeline for validation and previews, built once
            self.pipe = FDIRestorationPipeline(
                self.vae,
                parts.text_encoder,
                parts.tokenizer,
                self.unet,
                parts.scheduler,
                device=self.device,
                dtype=self.weight_dtype,
                source=parts.source,
                text_encoder_2=parts.text_encoder_2,
                tokenizer_2=parts.tokenizer_2,
            )
        scheduler = parts.scheduler  # load_sd applied --prediction-type to it
        del parts
        gc.collect()
        # the pack's own checkpointing of the blocks' resnets/attentions/samplers (as in ComfyUI): diffusers'
        # enable_gradient_checkpointing() acts only in train() before diffusers 0.32, and the UNet is in eval()
        self.checkpointing = unet_checkpointing(self.unet, cfg.gradient_checkpointing)
        self.prediction_type = cfg.prediction_type or scheduler.config.prediction_type
        self.alphas_cumprod = scheduler.alphas_cumprod.to(device=self.device, dtype=torch.float32)
        self.family = detect_base_family(self.unet.config, self.prediction_type)
        self.predict = diffusers_predictor(self.unet, prompt_embeds, self.weight_dtype)
        self.latents = LatentCache(lambda x: vae_encode(self.vae, x, self.vae_dtype), cfg.latent_cache_mib)

    def make_adapter(self) -> tuple:
        """A new adapter (weights a function of ``--seed``) sized to the UNet and the FDI, in train mode."""
        from ..adapter import FDIAdapter
        from ..diffusers_backend import check_adapter_for_unet

        cfg = self.cfg
        tokens, width = self.fdi.shape
        channels = tuple(int(c) for c in self.unet.config.block_out_channels)
        adapter_config = adapter_config_for(channels, tokens, width, cfg.adapter_config)
        with torch.random.fork_rng(devices=[]):  # initial weights depend on --seed only; global RNG untouched
            torch.manual_seed(cfg.seed)
            label = cfg.label or self.output.stem
            adapter = FDIAdapter(
                adapter_config,
                base_family=self.family,
                encoder=self.fdi.encoder,
                label=label,
                guidance_window=(cfg.guidance_start, cfg.guidance_end),
                timestep_sampling=cfg.timestep_sampling,
            )
        check_adapter_for_unet(adapter, self.unet)
        adapter.check_fdi(self.fdi)
        adapter.train()
        return adapter, adapter_config

    # ---- the loop's parts ----------------------------------------------------------------------------
    def raw_adapter(self):
        return self.acc.unwrap_model(self.adapter)

    def micro_loss(self, batch: dict, micro_index: int) -> StepLoss:
        gen = step_generator(self.cfg.seed, micro_index, self.acc.process_index)
        degraded = batch["degraded"].to(self.device, non_blocking=True)
        z0 = self.latents.encode(batch["clean"].to(self.device, non_blocking=True), batch["crop_key"].tolist())
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
                self.cfg.timesteps(),
            )

    def finish(self) -> None:
        if self.main:
            self.raw_adapter().save(self.output, fdi=self.fdi)
        self.acc.wait_for_everyone()

    def discard(self) -> None:
        """After a refusal: remove the run folder this run created, unless it holds a checkpoint."""
        if self.main and self.created_run_dir and self.run_dir.is_dir() and not list_checkpoints(self.run_dir):
            import shutil

            shutil.rmtree(self.run_dir, ignore_errors=True)


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
    with deterministic_algorithms(cfg.deterministic):
        run.setup_accelerator()
        try:
            run.build()
        except FDIError:  # a refusal only the loaded models can tell (e.g. an adapter config the UNet cannot take)
            run.discard()
            raise
        losses: List[float] = []
        if run.start_step >= run.max_steps:  # e.g. a job restarted after its last checkpoint: just write the adapter
            if run.main and not cfg.quiet:
                print(
                    f"the checkpoint is already at step {run.start_step} of {run.max_steps}: writing the adapter "
                    "without training (raise --max-steps or --epochs to train further)"
                )
            run.steps_done = run.start_step
        else:
            with run.checkpointing:
                losses = run_loop(run)
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
        latent_hits=run.latents.hits if run.latents is not None else 0,
        latent_misses=run.latents.misses if run.latents is not None else 0,
    )
