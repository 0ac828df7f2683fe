"""Training on pairs held in memory (the ComfyUI node's door): the shared step, AdamW, no files.

The loop of :func:`train_on_pairs` draws each step's pairs from a seeded permutation, crops them
with :func:`fdi.data.crop_pair` (random square crop + flip at ``resolution``), encodes the clean
crops with the caller's ``encode`` (whole-image crops once: :class:`.latents.LatentCache`) and runs
:func:`fdi.training.step.training_step`. It stops early, keeping the weights of the last finished step,
when ``should_stop()`` turns true or after :class:`fdi.training.precision.NonFiniteGuard`'s run of
non-finite steps (each is skipped). fp16 compute gets dynamic loss scaling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from ..errors import FDIError
from ..progress import ProgressCallback, report
from ..sampling import DEFAULT_TIMESTEP_SAMPLING, GUIDANCE_END
from ..seeds import seeded_generator
from .config import RESOLUTION_MULTIPLE, OptimizerSettings, check_resolution
from .determinism import deterministic_algorithms
from .latents import LATENT_CACHE_MIB, LatentCache
from .precision import NonFiniteGuard, guarded_update, loss_scaler, scaled_grads
from .step import Predictor, TimestepSampling, step_generator, training_step


@dataclass
class TrainSettings(OptimizerSettings):
    """Options of an in-memory run: ``steps`` optimizer steps of ``batch_size`` pairs, square crops of
    ``resolution`` px, AdamW at ``lr`` (the optimiser's fields: :class:`.config.OptimizerSettings`),
    ``recon_weight`` = λ, ``seed`` for order, crops, noise and timesteps; timesteps drawn by
    ``timestep_sampling`` for the guidance window ``guidance_start``..``guidance_end`` (fractions of sampling)."""

    steps: int = 200
    lr: float = 1e-4
    batch_size: int = 1
    resolution: int = 512
    seed: int = 0
    recon_weight: float = 0.1
    timestep_sampling: str = DEFAULT_TIMESTEP_SAMPLING
    guidance_start: float = 0.0
    guidance_end: float = GUIDANCE_END
    latent_cache_mib: int = LATENT_CACHE_MIB

    def timesteps(self) -> TimestepSampling:
        return TimestepSampling(self.timestep_sampling, (self.guidance_start, self.guidance_end))

    def check(self) -> None:
        """A clear :class:`FDIError` for each setting out of range."""
        if not isinstance(self.steps, int) or self.steps < 1:
            raise FDIError(f"steps must be at least 1, got {self.steps}; train for 1 step or more")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise FDIError(f"learning rate must be a positive number, got {self.lr}")
        if self.batch_size < 1:
            raise FDIError(f"batch size must be at least 1, got {self.batch_size}")
        check_resolution(self.resolution)
        if not (self.recon_weight >= 0 and math.isfinite(self.recon_weight)):
            raise FDIError(f"the reconstruction weight must be 0 or positive, got {self.recon_weight}")
        if not isinstance(self.latent_cache_mib, int) or self.latent_cache_mib < 0:
            raise FDIError(f"the latent cache budget must be 0 (off) or more MiB, got {self.latent_cache_mib!r}")
        self.check_optimizer()
        self.timesteps().check()


@dataclass
class MemoryTrainResult:
    """``losses`` per finished step; ``stopped``: why training ended early (``None``: all steps done);
    ``cancelled``: it was ``should_stop``; ``latent_hits``/``latent_misses``: clean latents taken from / added to the
    :class:`.latents.LatentCache`."""

    steps: int
    losses: List[float] = field(default_factory=list)
    stopped: Optional[str] = None
    cancelled: bool = False
    latent_hits: int = 0
    latent_misses: int = 0


def check_pairs(degraded: Sequence[torch.Tensor], clean: Sequence[torch.Tensor]) -> None:
    """Pairs of ``[3, H, W]`` images: equal counts, at least one, every side ≥ one training crop's multiple
    (:data:`.config.RESOLUTION_MULTIPLE` px)."""
    if len(degraded) != len(clean):
        raise FDIError(
            f"{len(degraded)} degraded images but {len(clean)} clean ones; the pairs need the same count "
            "(one clean/style-B image per degraded/style-A image)"
        )
    if not degraded:
        raise FDIError("no training pairs; connect at least one degraded/clean pair")
    for i, (d, c) in enumerate(zip(degraded, clean)):
        for what, img in (("degraded", d), ("clean", c)):
            if img.ndim != 3 or img.shape[0] != 3:
                raise FDIError(f"{what} image {i} has shape {tuple(img.shape)}, expected [3, H, W]")
            if min(img.shape[-2:]) < RESOLUTION_MULTIPLE:
                raise FDIError(
                    f"{what} image {i} is {img.shape[-1]}x{img.shape[-2]} px; training needs at least "
                    f"{RESOLUTION_MULTIPLE} px a side, use larger images"
                )


def batch_for_step(
    degraded: Sequence[torch.Tensor], clean: Sequence[torch.Tensor], step: int, settings: TrainSettings
) -> Tuple[torch.Tensor, torch.Tensor, List[int]]:
    """The crops of step ``step`` (0-based): ``([b, 3, R, R], [b, 3, R, R], keys)`` float32, a function of the seed;
    ``keys``: each crop's :func:`fdi.data.crop_key` (for :class:`.latents.LatentCache`)."""
    from ..data import crop_key, crop_pair, sample_generator

    n, b = len(degraded), settings.batch_size
    crops, keys = [], []
    for position in range(step * b, step * b + b):  # the CLI's stream: a permutation per epoch, a crop per sample
        epoch, i = divmod(position, n)
        index = int(torch.randperm(n, generator=seeded_generator("order", settings.seed, epoch))[i])
        gen = sample_generator(settings.seed, epoch, index)
        d, c, whole_flip = crop_pair(degraded[index].float(), clean[index].float(), settings.resolution, gen)
        crops.append((d, c))
        keys.append(crop_key(index, whole_flip))
    return torch.stack([d for d, _ in crops]), torch.stack([c for _, c in crops]), keys


def train_on_pairs(
    adapter: torch.nn.Module,
    predict: Predictor,
    encode: Callable[[torch.Tensor], torch.Tensor],
    degraded: Sequence[torch.Tensor],
    clean: Sequence[torch.Tensor],
    fdi_tokens: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str,
    settings: TrainSettings,
    device: torch.device,
    autocast_dtype: Optional[torch.dtype] = None,
    compute_dtype: Optional[torch.dtype] = None,
    progress: Optional[ProgressCallback] = None,
    should_stop: Optional[Callable[[], bool]] = None,
    on_step: Optional[Callable[[int, float], None]] = None,
) -> MemoryTrainResult:
    """Train ``adapter`` (float32, on ``device``) in place for ``settings.steps`` steps.

    ``encode(clean [b,3,R,R] on device) → z0 [b,4,R/8,R/8]`` (posterior mode, scaled); ``predict``
    as :data:`fdi.training.step.Predictor`; ``autocast_dtype``: run the step under autocast in this
    dtype (fp16/bf16), the adapter's weights stay float32; ``compute_dtype``: the dtype ``predict``
    computes in (default ``autocast_dtype``). fp16 either way turns dynamic loss scaling on."""
    settings.check()
    check_pairs(degraded, clean)
    sampling = settings.timesteps()
    adapter.guidance_window, adapter.timestep_sampling = sampling.window, sampling.rule  # recorded in its file
    params = [p for p in adapter.parameters() if p.requires_grad]
    opt = settings.adamw(params, settings.lr)
    alphas = alphas_cumprod.to(device, torch.float32)
    tokens = fdi_tokens.to(device, torch.float32)
    result = MemoryTrainResult(steps=0)
    latents = LatentCache(encode, settings.latent_cache_mib)
    scaler = loss_scaler(device, compute_dtype or autocast_dtype)
    guard = NonFiniteGuard(scaled=scaler.is_enabled())
    autocast = _autocast(device, autocast_dtype)
    adapter.train()
    report(progress, 0, settings.steps)
    try:
        with deterministic_algorithms(settings.deterministic):
            for step in range(settings.steps):
                if should_stop is not None and should_stop():
                    result.stopped = f"stopped by the user after {step} of {settings.steps} steps"
                    result.cancelled = True
                    break
                d, c, keys = batch_for_step(degraded, clean, step, settings)
                z0 = latents.encode(c.to(device), keys)
                gen = step_generator(settings.seed, step)
                with autocast:
                    out = training_step(
                        adapter,
                        predict,
                        d.to(device),
                        z0,
                        tokens,
                        alphas,
                        prediction_type,
                        settings.recon_weight,
                        gen,
                        sampling,
                    )
                value = float(out.loss.detach())
                if math.isfinite(value) or scaler.is_enabled():  # an unscaled non-finite loss is not backpropagated
                    scaled_grads(out.loss, params, scaler)
                skipped, _ = guarded_update(scaler, opt, params, settings.max_grad_norm, value)
                opt.zero_grad(set_to_none=True)
                if guard.record(value, skipped):
                    result.stopped = guard.message(step + 1)
                    break
                if not skipped:  # an overflow the scaler recovers from: no update, the step still counts as done
                    result.steps += 1
                    result.losses.append(value)
                    if on_step is not None:
                        on_step(step + 1, value)
                report(progress, step + 1, settings.steps)
    finally:
        adapter.eval()
        result.latent_hits, result.latent_misses = latents.hits, latents.misses
    return result


def _autocast(device: torch.device, dtype: Optional[torch.dtype]) -> torch.autocast:
    """Autocast to ``dtype`` on ``device`` (fp16/bf16), or off (``None``, float32)."""
    if dtype in (None, torch.float32):
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


def adapter_for_training(fdi, family: str, seed: int, previous=None) -> torch.nn.Module:
    """A float32 adapter to train for ``fdi`` on a ``family`` base (:mod:`fdi.families`: ``sd1.5``, ``sd2.1-base``,
    ``sd2.1-v``, ``sdxl``…): a copy of ``previous`` (its Q-Former and family must match; it stays untouched), or a
    new one of the family's level widths (:meth:`FDIAdapterConfig.for_family`) sized to the FDI, with weights a
    function of ``seed``."""
    from ..adapter import FDIAdapter, FDIAdapterConfig
    from ..families import family_title
    from ..instruction import same_encoder

    if previous is not None:
        if previous.encoder and not same_encoder(previous.encoder, fdi.encoder):
            raise FDIError(
                f"the adapter was trained with FDIs of another Q-Former ({previous.encoder}) than this FDI "
                f"({fdi.encoder}); extract the FDI with that Q-Former or train a new adapter"
            )
        if previous.base_family != family:
            was, now = family_title(previous.base_family), family_title(family)
            raise FDIError(
                f"the adapter was trained for {was}, the MODEL is {now}; continue it on an {was} model, "
                f"or train a new adapter for {now}"
            )
        config = previous.config
    else:
        tokens, width = fdi.shape
        config = FDIAdapterConfig.for_family(family, token_width=width, num_tokens=tokens)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        adapter = FDIAdapter(config, base_family=family, encoder=fdi.encoder, label=fdi.label)
    if previous is not None:
        adapter.load_state_dict({k: v.clone() for k, v in previous.state_dict().items()})
    adapter.check_fdi(fdi)
    return adapter.float()
