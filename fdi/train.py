"""Training an FDI adapter (DESIGN §1.4): SD 2.1 and BLIP-2 frozen, only the adapter learns.

Per optimizer step, over an effective batch of ``batch_size`` pairs (default 32, the paper's)::

    z_gt = VAE(2·clean − 1).sample · scaling_factor                 [b, 4, R/8, R/8]
    ε ~ N(0, 1),  t ~ U{0 … T−1},  z_t = sqrt(ᾱ_t)·z_gt + sqrt(1−ᾱ_t)·ε
    g    = adapter(degraded, F)                                     (FDIGuidance, once per image)
    pred = UNet(z_t, t, empty prompt; guidance g)                   (fdi.diffusers_backend)
    L    = MSE(pred, target) + λ · mean|ẑ_0 − z_gt|                  λ = --recon-weight (0.1)

* epsilon models: ``target = ε``, ``ẑ_0 = (z_t − sqrt(1−ᾱ_t)·pred) / sqrt(ᾱ_t)``;
* v-prediction models: ``target = v = sqrt(ᾱ_t)·ε − sqrt(1−ᾱ_t)·z_gt``,
  ``ẑ_0 = sqrt(ᾱ_t)·z_t − sqrt(1−ᾱ_t)·pred``;
* ``sample`` models: ``target = z_gt``, ``ẑ_0 = pred``.

Decisions (the design and the paper are silent; recorded here):

* **The L1 term is a mean**, not the paper's sum over latent elements (eq. 6): with a sum, λ = 0.1
  would weigh it ~16,000× more than the (mean) MSE at 512 px, which cannot be what was tuned.
* The prompt is the empty string (as at restoration time); its embedding is computed once and the
  text encoder freed. ``t`` is uniform over the scheduler's training timesteps.
* AdamW (β = 0.9, 0.99, weight decay 0.01, ε = 1e-8), constant learning rate after an optional
  linear warm-up (``--lr-scheduler`` offers diffusers' other schedules), gradient-norm clipping
  at 1.0 (``--max-grad-norm``, 0 = off) as diffusers' adapter scripts do.
* **Effective batch** = per-device micro-batch × gradient accumulation × processes; the command
  takes the effective batch and refuses one that does not divide.
* **Randomness is derived, not carried**: the noise, timesteps and VAE sample of micro-batch ``g``
  on process ``p`` come from a generator seeded with ``(seed, g, p)``; crops and flips from
  ``(seed, epoch, index)``; the sample order from ``(seed, epoch)`` (:mod:`fdi.data`). A resumed run
  therefore continues *exactly* like an uninterrupted one (a test holds it to 1e-6), whatever the
  number of data-loader workers. The global RNG states are saved in checkpoints all the same.
* **Own checkpoint format, no pickle** (DESIGN §4: only safetensors are read). A checkpoint is a
  folder ``checkpoint-<step>`` holding ``adapter.safetensors`` (an ordinary adapter file with the
  training FDI embedded: usable for restoration as is), ``optimizer.safetensors`` (AdamW moments
  + JSON param groups + the fp16 loss-scaler state), ``rng-<process>.safetensors`` and
  ``state.json`` (step, lr-scheduler state, the run's signature). It is written to
  ``.checkpoint-<step>.tmp`` and renamed when complete, so an interrupt (Ctrl-C, a killed job)
  never leaves a half-written checkpoint under a real name. ``--resume latest`` takes the newest
  complete one. accelerate's ``save_state`` was not used because it pickles the optimizer and RNG.
* **Run signature**: a checkpoint records the adapter config, base family, effective batch,
  resolution, seed, number of pairs and a hash of the training FDI. Resuming with any of them
  different is refused (the data order and the model would not be the run's); the learning rate,
  the schedule length and the logging options may change.
* The data loader is *not* passed through ``accelerator.prepare``: :class:`fdi.data.PairStream`
  already shards micro-batches across processes and resumes at a micro-batch index (no batches
  are read to be skipped). The LR scheduler is stepped once per optimizer step (accelerate's
  prepared scheduler would step once per process).
* Multi-process: every process computes its micro-batch, DDP averages gradients, only the main
  process writes files (the run folder must be on a file system all processes share, as with
  ``accelerate``'s own checkpoints).

Files of a run (the *run folder*, default ``<output stem>-run/`` beside the output, or
``--checkpoint-dir``): ``checkpoint-<step>/``, ``train_log.csv`` (step, epoch, loss, loss_diffusion,
loss_recon, lr, grad_norm, sec_per_step), ``val_log.csv`` (step, psnr, ssim, psnr_y, ssim_y) when
validating, ``train.fdi.safetensors`` (the task FDI), ``tensorboard/`` when TensorBoard is installed.
"""

from __future__ import annotations

import csv
import gc
import hashlib
import json
import math
import os
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .errors import FDIError
from .files import PathLike, check_output_path, load_safetensors, save_safetensors
from .progress import ProgressCallback, report
from .sampling import diffusion_target, predict_x0

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FORMAT = "fdi_train_state"
STATE_VERSION = 1
LOG_FIELDS = ("step", "epoch", "loss", "loss_diffusion", "loss_recon", "lr", "grad_norm", "sec_per_step")
VAL_FIELDS = ("step", "psnr", "ssim", "psnr_y", "ssim_y")
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


# ---------------------------------------------------------------------------------------------- loss
def fdi_loss(pred: torch.Tensor, z_t: torch.Tensor, z0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor,
             prediction_type: str, recon_weight: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(L, L_diffusion, L_recon)`` with ``L = MSE(pred, target) + λ·mean|ẑ_0 − z_0|`` (float32 scalars)."""
    pred = pred.float()
    target = diffusion_target(z0, noise, alpha_bar, prediction_type)
    l_diff = F.mse_loss(pred, target)
    l_rec = F.l1_loss(predict_x0(z_t, pred, alpha_bar, prediction_type), z0) if recon_weight else pred.new_zeros(())
    return l_diff + recon_weight * l_rec, l_diff, l_rec


def step_generator(seed: int, micro_batch: int, process_index: int) -> torch.Generator:
    """CPU generator for the noise/timesteps/VAE sample of one micro-batch on one process."""
    g = torch.Generator()
    g.manual_seed((int(seed) * 6_700_417 + int(micro_batch) * 1_000_033 + int(process_index) * 9_973 + 271_828) % (2**63 - 1))
    return g


# ---------------------------------------------------------------------------------------------- models
def fdi_hash(tokens: torch.Tensor) -> str:
    """Short hash of FDI tokens (part of the run signature)."""
    return hashlib.sha256(tokens.detach().to(torch.float32).cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- checkpoints
def list_checkpoints(run_dir: PathLike) -> List[Tuple[int, Path]]:
    """Complete checkpoints of a run folder, ``[(step, path)]`` sorted by step (temp folders ignored)."""
    d = Path(run_dir)
    out = []
    if d.is_dir():
        for p in d.iterdir():
            if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and p.name[len(CHECKPOINT_PREFIX):].isdigit() and (p / "state.json").is_file():
                out.append((int(p.name[len(CHECKPOINT_PREFIX):]), p))
    return sorted(out)


def _optimizer_to_file(optimizer, scaler) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    sd = optimizer.state_dict()
    tensors: Dict[str, torch.Tensor] = {}
    scalars: Dict[str, Dict[str, float]] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{idx}.{k}"] = v.detach().cpu().clone()
            else:
                scalars.setdefault(str(idx), {})[k] = v
    meta = {"param_groups": json.dumps(sd["param_groups"]), "scalars": json.dumps(scalars),
            "scaler": json.dumps(scaler.state_dict() if scaler is not None else None)}
    return tensors, meta


def _optimizer_from_file(path: Path, optimizer, scaler) -> None:
    tensors, meta = load_safetensors(path, what="optimizer checkpoint")
    state: Dict[int, Dict] = {}
    for name, t in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = t
    for idx, kv in json.loads(meta.get("scalars", "{}")).items():
        state.setdefault(int(idx), {}).update(kv)
    groups = json.loads(meta["param_groups"])
    for g in groups:
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    sc = json.loads(meta.get("scaler", "null"))
    if scaler is not None and sc:
        scaler.load_state_dict(sc)


def _rng_to_file() -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    py = random.getstate()
    npst = np.random.get_state()
    meta = {"python": json.dumps([py[0], list(py[1]), py[2]]),
            "numpy": json.dumps([npst[0], npst[1].tolist(), int(npst[2]), int(npst[3]), float(npst[4])])}
    return tensors, meta


def _rng_from_file(path: Path) -> None:
    tensors, meta = load_safetensors(path, what="RNG checkpoint")
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k.split(".")[1]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    py = json.loads(meta["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = json.loads(meta["numpy"])
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))


def _lr_state(scheduler) -> dict:
    sd = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    json.dumps(sd)  # the schedules we build hold numbers only; fail loudly otherwise
    return sd


# ---------------------------------------------------------------------------------------------- the run
class _Run:
    """State of one training run (split from :func:`train` to keep each phase readable)."""

    def __init__(self, cfg: TrainConfig, progress: Optional[ProgressCallback], pipeline=None):
        self.cfg = cfg
        self.progress = progress
        self.given_pipeline = pipeline

    # ---- phase 1: everything that can be checked before a model is loaded ------------------------
    def check_inputs(self) -> None:
        cfg = self.cfg
        self.output = check_output_path(cfg.output, suffix=".safetensors")
        if cfg.max_steps is not None and cfg.epochs is not None:
            raise FDIError("give either --max-steps or --epochs, not both")
        for name, v, lo in (("--batch-size", cfg.batch_size, 1), ("--grad-accum", cfg.grad_accum, 1), ("--resolution", cfg.resolution, 8),
                            ("--checkpoint-every", cfg.checkpoint_every, 0), ("--validate-every", cfg.validate_every, 0),
                            ("--num-workers", cfg.num_workers, 0), ("--log-every", cfg.log_every, 1), ("--val-steps", cfg.val_steps, 1),
                            ("--val-max-images", cfg.val_max_images, 1), ("--lr-warmup-steps", cfg.lr_warmup_steps, 0)):
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
        if cfg.mixed_precision not in MIXED_PRECISION:
            raise FDIError(f"--mixed-precision must be one of {', '.join(MIXED_PRECISION)}, got {cfg.mixed_precision!r}")
        if cfg.lr_scheduler not in LR_SCHEDULERS:
            raise FDIError(f"--lr-scheduler must be one of {', '.join(LR_SCHEDULERS)}, got {cfg.lr_scheduler!r}")
        if cfg.resolution % 8:
            raise FDIError(f"--resolution {cfg.resolution} must be a multiple of 8 (the VAE's factor), e.g. 512")
        if cfg.validate_every and not (cfg.val_pairs_file or (cfg.val_degraded and cfg.val_clean)):
            raise FDIError("--validate-every needs held-out pairs: --val-degraded DIR and --val-clean DIR (or --val-pairs-file)")
        if self.given_pipeline is None and (not cfg.sd or not Path(cfg.sd).exists()):
            raise FDIError(f"Stable Diffusion model {cfg.sd!r} does not exist; give a diffusers folder or a .safetensors checkpoint")
        from .data import collect_pairs

        self.pairs = collect_pairs(cfg.degraded, cfg.clean, cfg.pairs_file)
        self.val_pairs = collect_pairs(cfg.val_degraded, cfg.val_clean, cfg.val_pairs_file, what="validation") if cfg.validate_every else []
        self.run_dir = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else self.output.with_name(self.output.name[: -len(".safetensors")] + "-run")
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise FDIError(f"checkpoint folder {str(self.run_dir)!r} is a file; give a folder with --checkpoint-dir")
        parent = self.run_dir if self.run_dir.exists() else self.run_dir.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise FDIError(f"checkpoint folder {str(self.run_dir)!r} cannot be created or written; choose another --checkpoint-dir or fix the permissions")
        self.resume_from: Optional[Path] = None
        if cfg.resume:
            if cfg.resume == "latest":
                found = list_checkpoints(self.run_dir)
                self.resume_from = found[-1][1] if found else None
            else:
                r = Path(cfg.resume)
                if not (r / "state.json").is_file():
                    raise FDIError(f"--resume {cfg.resume!r} is not a training checkpoint (no state.json); give a checkpoint-<step> folder or 'latest'")
                self.resume_from = r
        if cfg.resume == "latest" and self.resume_from is None and not cfg.quiet and os.environ.get("RANK", "0") == "0":
            print(f"no checkpoint in {self.run_dir} yet: starting a new run")
        if self.resume_from is None and list_checkpoints(self.run_dir):
            raise FDIError(f"{self.run_dir} already holds checkpoints of another run; continue it with --resume latest, or start anew with another --checkpoint-dir (or delete that folder)")
        if self.resume_from is None and not cfg.fdi and not cfg.blip2:
            raise FDIError("the task FDI is needed: give --blip2 DIR (it is computed from the training pairs) or --fdi FILE.fdi.safetensors")

    # ---- phase 2: accelerate, batch split --------------------------------------------------------
    def setup_accelerator(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        cfg = self.cfg
        cpu = cfg.device is not None and str(cfg.device).startswith("cpu")
        if cfg.device and str(cfg.device).startswith("cuda:") and int(os.environ.get("WORLD_SIZE", "1")) == 1:
            torch.cuda.set_device(torch.device(cfg.device))
        self.acc = Accelerator(mixed_precision=cfg.mixed_precision, cpu=cpu,
                               kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)])
        if cfg.device and self.acc.num_processes > 1 and not cpu:
            raise FDIError("--device selects one device for a single process; with 'accelerate launch' leave it out (accelerate assigns the GPUs)")
        P = self.acc.num_processes
        if cfg.batch_size % (P * cfg.grad_accum):
            raise FDIError(
                f"--batch-size {cfg.batch_size} is not divisible by processes × --grad-accum = {P} × {cfg.grad_accum}; "
                f"choose a batch size that is a multiple of {P * cfg.grad_accum} (e.g. {P * cfg.grad_accum * max(1, cfg.batch_size // (P * cfg.grad_accum))})"
            )
        self.micro = cfg.batch_size // (P * cfg.grad_accum)
        self.device = self.acc.device
        self.weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[cfg.mixed_precision]
        self.main = self.acc.is_main_process
        n = len(self.pairs)
        self.max_steps = cfg.max_steps if cfg.max_steps is not None else max(1, math.ceil((cfg.epochs or 50) * n / cfg.batch_size))

    # ---- phase 3: FDI, models ----------------------------------------------------------------------
    def load_fdi(self):
        from .instruction import FDI

        cfg = self.cfg
        if self.resume_from is not None:
            from .adapter import FDIAdapter

            fdi = FDIAdapter.from_file(self.resume_from / "adapter.safetensors").fdi
            if fdi is None:
                raise FDIError(f"checkpoint {self.resume_from} has no embedded FDI; it is incomplete, resume from an earlier checkpoint")
            if cfg.fdi and fdi_hash(FDI.load(cfg.fdi).tokens) != fdi_hash(fdi.tokens):
                raise FDIError(f"--fdi {cfg.fdi} differs from the FDI the run in {self.resume_from.parent} was trained with; leave out --fdi to resume, or start a new run")
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
                fdi = extract_fdi_from_sources(encoder, sources, label=cfg.label or self.output.stem, batch_size=cfg.blip2_batch_size, progress=cb)
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
        from .pipeline import FDIRestorationPipeline

        cfg = self.cfg
        self.fdi = self.load_fdi()
        # the frozen SD parts, loaded (offline, safetensors only) by the restoration pipeline's loader
        if self.given_pipeline is not None:
            pipe = self.given_pipeline
            for m in (pipe.unet, pipe.vae, pipe.text_encoder):
                if m is not None:  # a host may have dropped the text encoder (it only encodes the prompt)
                    m.to(device=self.device, dtype=self.weight_dtype)
            pipe.device, pipe.dtype = torch.device(self.device), self.weight_dtype
        else:
            pipe = FDIRestorationPipeline.from_pretrained(cfg.sd, device=self.device, dtype=self.weight_dtype, config=cfg.sd_config)
        for m in (pipe.unet, pipe.vae, pipe.text_encoder):
            if m is not None:
                m.requires_grad_(False)
        self.prompt_embeds = pipe.encode_prompt(cfg.prompt).to(self.device, self.weight_dtype)
        if not cfg.validate_every and self.given_pipeline is None:  # the prompt embedding is all training needs of it
            pipe.text_encoder = None
            gc.collect()
        if cfg.gradient_checkpointing:
            pipe.unet.enable_gradient_checkpointing()
        self.pipe, self.unet, self.vae = pipe, pipe.unet, pipe.vae
        self.prediction_type = pipe.prediction_type
        self.num_train_timesteps = int(pipe.scheduler.config.num_train_timesteps)
        self.alphas_cumprod = pipe.scheduler.alphas_cumprod.to(device=self.device, dtype=torch.float32)
        self.scaling = float(self.vae.config.scaling_factor)
        self.shift = float(getattr(self.vae.config, "shift_factor", None) or 0.0)
        self.family = pipe.base_family
        unet = pipe.unet

        tokens, width = self.fdi.shape
        conf = {"channels": tuple(int(c) for c in unet.config.block_out_channels), "token_width": width, "num_tokens": tokens}
        conf.update(cfg.adapter_config or {})
        try:
            adapter_config = FDIAdapterConfig(**conf)
        except TypeError as exc:
            raise FDIError(f"--adapter-config has an unknown key ({exc}); use the fields of FDIAdapterConfig (channels, res_blocks, bottleneck, heads, se_reduction, …)") from None
        with torch.random.fork_rng(devices=[]):  # initial weights depend on --seed only; global RNG untouched
            torch.manual_seed(cfg.seed)
            adapter = FDIAdapter(adapter_config, base_family=self.family, encoder=self.fdi.encoder, label=cfg.label or self.output.stem)
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
        optimizer = torch.optim.AdamW(adapter.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                      weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon)
        self.lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer=optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                                          num_training_steps=self.max_steps)
        self.adapter, self.optimizer = self.acc.prepare(adapter, optimizer)
        self.fdi_tokens = self.fdi.tokens.to(self.device)
        self.start_step = 0
        if self.resume_from is not None:
            self.load_checkpoint(self.resume_from)

    # ---- checkpoints -------------------------------------------------------------------------------
    def raw_adapter(self):
        return self.acc.unwrap_model(self.adapter)

    def save_checkpoint(self, step: int) -> Path:
        """Write ``checkpoint-<step>`` atomically (temp folder + rename); returns its path."""
        final = self.run_dir / f"{CHECKPOINT_PREFIX}{step}"
        tmp = self.run_dir / f".{CHECKPOINT_PREFIX}{step}.tmp"
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
        self.acc.wait_for_everyone()
        t, m = _rng_to_file()
        save_safetensors(t, tmp / f"rng-{self.acc.process_index}.safetensors", m)
        self.acc.wait_for_everyone()
        if self.main:
            self.raw_adapter().save(tmp / "adapter.safetensors", fdi=self.fdi)
            t, m = _optimizer_to_file(self.optimizer, self.acc.scaler)
            save_safetensors(t, tmp / "optimizer.safetensors", m)
            state = {"format": STATE_FORMAT, "format_version": STATE_VERSION, "step": step, "signature": self.signature,
                     "lr_scheduler": _lr_state(self.lr_scheduler), "num_processes": self.acc.num_processes,
                     "max_steps": self.max_steps, "config": {k: v for k, v in asdict(self.cfg).items() if k != "progress"}}
            (tmp / "state.json").write_text(json.dumps(state, indent=2, default=str))
            if final.exists():  # a re-run over the same step: replace it
                old = self.run_dir / f".{CHECKPOINT_PREFIX}{step}.old"
                if old.exists():
                    shutil.rmtree(old)
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old)
            else:
                os.replace(tmp, final)
            limit = self.cfg.checkpoints_total_limit
            if limit:
                for _, p in list_checkpoints(self.run_dir)[:-limit]:
                    shutil.rmtree(p, ignore_errors=True)
        self.acc.wait_for_everyone()
        return final

    def load_checkpoint(self, ckpt: Path) -> None:
        from .adapter import FDIAdapter

        try:
            state = json.loads((ckpt / "state.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            raise FDIError(f"{ckpt}/state.json is unreadable; the checkpoint is damaged, resume from an earlier one") from None
        if state.get("format") != STATE_FORMAT or state.get("format_version") != STATE_VERSION:
            raise FDIError(f"{ckpt} is not an FDI training checkpoint of this version; resume from a checkpoint written by 'python -m fdi train'")
        theirs = state.get("signature", {})
        diff = sorted(k for k in set(theirs) | set(self.signature) if theirs.get(k) != self.signature.get(k))
        if diff:
            details = "; ".join(f"{k}: checkpoint {theirs.get(k)!r}, this run {self.signature.get(k)!r}" for k in diff)
            raise FDIError(f"cannot resume from {ckpt}: it belongs to a different run ({details}); use the same settings, or start a new run with another --checkpoint-dir")
        saved = FDIAdapter.from_file(ckpt / "adapter.safetensors")
        self.raw_adapter().load_state_dict(saved.state_dict(), strict=True)
        _optimizer_from_file(ckpt / "optimizer.safetensors", self.optimizer, self.acc.scaler)
        # The schedule is a function of the step: restore its saved state, then take this run's --lr
        # and schedule length (both may change on resume) and set the learning rate of the saved step.
        lr_state = dict(state["lr_scheduler"])
        lr_state["lr_lambdas"] = [None] * len(self.lr_scheduler.lr_lambdas)
        self.lr_scheduler.load_state_dict(lr_state)
        self.lr_scheduler.base_lrs = [self.cfg.lr for _ in self.lr_scheduler.base_lrs]
        step = int(state["step"])
        if self.lr_scheduler.last_epoch != step:
            raise FDIError(f"{ckpt}/state.json is inconsistent (scheduler at {self.lr_scheduler.last_epoch}, step {step}); resume from another checkpoint")
        for g, base, f in zip(self.optimizer.param_groups, self.lr_scheduler.base_lrs, self.lr_scheduler.lr_lambdas):
            g["initial_lr"] = base
            g["lr"] = base * f(step)
        self.lr_scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        rng = ckpt / f"rng-{self.acc.process_index}.safetensors"
        if rng.is_file():
            _rng_from_file(rng)
        self.start_step = step

    # ---- logs --------------------------------------------------------------------------------------
    def open_logs(self) -> None:
        self.tb = None
        if not self.main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.run_dir / "train_log.csv"
        self.val_path = self.run_dir / "val_log.csv"
        for path, fields in ((self.log_path, LOG_FIELDS), (self.val_path, VAL_FIELDS)):
            rows = []
            if path.is_file() and self.start_step > 0:  # keep the rows of the steps that the checkpoint covers
                with open(path, newline="") as fh:
                    rows = [r for r in csv.DictReader(fh) if r.get("step", "").isdigit() and int(r["step"]) <= self.start_step]
            if path is self.val_path and not self.cfg.validate_every and not rows:
                continue
            from .files import atomic_write

            with atomic_write(path, "w") as fh:
                w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
                w.writeheader()
                w.writerows(rows)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            if not self.cfg.quiet:
                print("TensorBoard is not installed: logging to train_log.csv only (pip install tensorboard to get both)")
        else:
            self.tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=self.start_step + 1 if self.start_step else None)

    def log_row(self, path: Path, fields, row: dict) -> None:
        with open(path, "a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore").writerow(row)
        if self.tb is not None:
            tag = "val" if path == self.val_path else "train"
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(f"{tag}/{k}", v, row["step"])

    # ---- one micro-batch ---------------------------------------------------------------------------
    def micro_loss(self, batch: dict, micro_index: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from .diffusers_backend import guide_unet

        gen = step_generator(self.cfg.seed, micro_index, self.acc.process_index)
        degraded = batch["degraded"].to(self.device, non_blocking=True)
        clean = batch["clean"].to(self.device, non_blocking=True)
        b = clean.shape[0]
        with torch.no_grad():
            dist = self.vae.encode((clean * 2 - 1).to(self.weight_dtype)).latent_dist
            eps_vae = torch.randn(dist.mean.shape, generator=gen, dtype=torch.float32).to(self.device)
            z0 = (dist.mean.float() + dist.std.float() * eps_vae - self.shift) * self.scaling
            noise = torch.randn(z0.shape, generator=gen, dtype=torch.float32).to(self.device)
            t = torch.randint(0, self.num_train_timesteps, (b,), generator=gen).to(self.device)
            a = self.alphas_cumprod[t]
            z_t = a.sqrt().view(-1, 1, 1, 1) * z0 + (1 - a).sqrt().view(-1, 1, 1, 1) * noise
        with self.acc.autocast():
            guidance = self.adapter(degraded, self.fdi_tokens)
            with guide_unet(self.unet, guidance):
                pred = self.unet(z_t.to(self.weight_dtype), t, encoder_hidden_states=self.prompt_embeds.expand(b, -1, -1)).sample
        return fdi_loss(pred.float(), z_t, z0, noise, a, self.prediction_type, self.cfg.recon_weight)

    # ---- validation ----------------------------------------------------------------------------------
    def validate(self, step: int) -> Optional[Dict[str, float]]:
        """Restore the held-out pairs (centre crops at the training resolution) and log PSNR/SSIM.

        Uses the restoration pipeline as a user would (DDIM inversion + guided sampling, ``val_steps``
        steps each, seed = ``--seed``), with the adapter's current weights. Main process only.
        """
        metrics = None
        if self.main:
            from .data import transform_pair
            from .images import load_image
            from .metrics import evaluate_tensors
            from .pipeline import AdapterUse

            adapter = self.raw_adapter()
            degs, cleans, names = [], [], []
            for pr in self.val_pairs[: self.cfg.val_max_images]:
                d, c = transform_pair(load_image(pr.degraded), load_image(pr.clean), self.cfg.resolution, None)
                degs.append(d), cleans.append(c), names.append(pr.name)
            restored = []
            try:
                for i in range(0, len(degs), self.micro):
                    out = self.pipe.restore(torch.stack(degs[i:i + self.micro]), [AdapterUse(adapter, self.fdi, 1.0)],
                                            steps=self.cfg.val_steps, inversion_steps=self.cfg.val_steps,
                                            prompt=self.cfg.prompt)
                    restored.extend(out)
            finally:
                adapter.train()
            res = evaluate_tensors([r.float() for r in restored], cleans, names)
            metrics = {k: res.mean[k] for k in VAL_FIELDS[1:]}
            self.log_row(self.val_path, VAL_FIELDS, {"step": step, **{k: round(v, 6) for k, v in metrics.items()}})
        self.acc.wait_for_everyone()
        return metrics

    # ---- the loop --------------------------------------------------------------------------------------
    def loop(self) -> List[float]:
        from torch.utils.data import DataLoader

        from .data import PairedImageDataset, PairStream

        cfg, acc = self.cfg, self.acc
        accum = cfg.grad_accum
        dataset = PairedImageDataset(self.pairs, cfg.resolution, train=True, seed=cfg.seed)
        sampler = PairStream(len(self.pairs), self.micro, seed=cfg.seed, num_processes=acc.num_processes,
                             process_index=acc.process_index, start=self.start_step * accum, stop=self.max_steps * accum)
        loader = DataLoader(dataset, batch_size=self.micro, sampler=sampler, num_workers=cfg.num_workers,
                            pin_memory=self.device.type == "cuda", drop_last=False,
                            persistent_workers=False)
        self.open_logs()
        bar = None
        if self.main and not cfg.quiet:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.max_steps, initial=self.start_step, desc="training", unit="step", dynamic_ncols=True)
        losses: List[float] = []
        step = self.start_step
        report(self.progress, step, self.max_steps)
        micro_index = step * accum
        sums = torch.zeros(3, device=self.device)
        t0 = time.perf_counter()
        trainable = [p for p in self.adapter.parameters() if p.requires_grad]
        try:
            for batch in loader:
                m = micro_index % accum
                ctx = acc.no_sync(self.adapter) if m < accum - 1 else nullcontext()
                with ctx:
                    loss, l_diff, l_rec = self.micro_loss(batch, micro_index)
                    acc.backward(loss / accum)
                sums += torch.stack([loss.detach(), l_diff.detach(), l_rec.detach()]) / accum
                micro_index += 1
                if m < accum - 1:
                    continue
                grad_norm = float("nan")
                if cfg.max_grad_norm and cfg.max_grad_norm > 0:
                    grad_norm = float(acc.clip_grad_norm_(trainable, cfg.max_grad_norm))
                self.optimizer.step()
                lr = self.optimizer.param_groups[0]["lr"]
                self.lr_scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                step += 1
                mean = acc.reduce(sums, reduction="mean") if acc.num_processes > 1 else sums
                sums = torch.zeros(3, device=self.device)
                vals = [float(v) for v in mean.cpu()]
                # checked on the reduced loss, so every process stops together; with fp16 the loss
                # scaler skips overflowing steps by itself
                if not math.isfinite(vals[0]) and cfg.mixed_precision != "fp16":
                    raise FDIError(f"the loss became {vals[0]} at step {step}; lower --lr (or use --mixed-precision no) and resume from the last checkpoint")
                losses.append(vals[0])
                now = time.perf_counter()
                if self.main and (step % cfg.log_every == 0 or step == self.max_steps):
                    self.log_row(self.log_path, LOG_FIELDS, {
                        "step": step, "epoch": round(step * cfg.batch_size / len(self.pairs), 4), "loss": round(vals[0], 7),
                        "loss_diffusion": round(vals[1], 7), "loss_recon": round(vals[2], 7), "lr": lr,
                        "grad_norm": round(grad_norm, 6) if math.isfinite(grad_norm) else "", "sec_per_step": round(now - t0, 4)})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{vals[0]:.4f}")
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < self.max_steps:
                    self.save_checkpoint(step)
                if cfg.validate_every and step % cfg.validate_every == 0:
                    self.validate(step)
                report(self.progress, step, self.max_steps)
                t0 = time.perf_counter()  # checkpoint/validation time is not counted as step time
        finally:
            if bar is not None:
                bar.close()
            if self.tb is not None:
                self.tb.close()
        self.steps_done = step
        return losses

    def finish(self) -> None:
        if self.main:
            adapter = self.raw_adapter()
            adapter.save(self.output, fdi=self.fdi)
        self.acc.wait_for_everyone()


def train(cfg: TrainConfig, progress: Optional[ProgressCallback] = None, pipeline=None) -> TrainResult:
    """Train an FDI adapter and write it to ``cfg.output`` (see the module doc).

    ``pipeline``: an already loaded :class:`fdi.pipeline.FDIRestorationPipeline` whose frozen parts
    to train against (then ``cfg.sd`` is not read; its modules are moved to the training device
    and dtype). Used by benchmarks and by
    hosts that have the model in memory already.

    ``progress(done_steps, total_steps)`` is called after every optimizer step and may raise (e.g.
    :class:`~fdi.errors.FDIInterrupted`) to stop: the last checkpoint stays loadable and the
    output file is not written. Raises :class:`FDIError` for every user error, before any model is
    loaded where possible (paths, batch split, pairs).
    """
    run = _Run(cfg, progress, pipeline)
    run.check_inputs()
    run.setup_accelerator()
    run.build()
    if run.start_step >= run.max_steps:  # e.g. a job restarted after its last checkpoint: just write the adapter
        if run.main and not cfg.quiet:
            print(f"the checkpoint is already at step {run.start_step} of {run.max_steps}: writing the adapter without training "
                  "(raise --max-steps or --epochs to train further)")
        run.steps_done, losses = run.start_step, []
    else:
        losses = run.loop()
        if cfg.checkpoint_every:
            run.save_checkpoint(run.steps_done)
    run.finish()
    return TrainResult(output=run.output, run_dir=run.run_dir, steps=run.steps_done, start_step=run.start_step,
                       losses=losses, base_family=run.family, is_main_process=run.main)
