"""Training on pairs held in memory (the ComfyUI node's door): the shared step, AdamW, no files.

The loop of :func:`train_on_pairs` draws each step's pairs from a seeded permutation, crops them
with :func:`fdi.data.transform_pair` (random square crop + flip at ``resolution``), encodes the clean
crops with the caller's ``encode`` and runs :func:`fdi.training.step.training_step`. It stops early,
keeping the weights of the last finished step, when ``should_stop()`` turns true or after
:class:`fdi.training.precision.NonFiniteGuard`'s run of non-finite steps (each is skipped). fp16 compute
gets dynamic loss scaling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from ..errors import FDIError
from ..progress import ProgressCallback, report
from .precision import NonFiniteGuard, loss_scaler, scaled_grads, scaled_update
from .step import Predictor, step_generator, training_step

#: smallest image side accepted for training (one 64-px crop = an 8×8 latent)
MIN_TRAIN_SIDE = 64
ADAM_BETAS = (0.9, 0.99)
ADAM_WEIGHT_DECAY = 1e-2
MAX_GRAD_NORM = 1.0


@dataclass
class TrainSettings:
    """Options of an in-memory run: ``steps`` optimizer steps of ``batch_size`` pairs, square crops of
    ``resolution`` px, AdamW at ``lr`` (β = 0.9, 0.99), ``recon_weight`` = λ, ``seed`` for order, crops,
    noise and timesteps."""

    steps: int = 200
    lr: float = 1e-4
    batch_size: int = 1
    resolution: int = 512
    seed: int = 0
    recon_weight: float = 0.1

    def check(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 1:
            raise FDIError(f"steps must be at least 1, got {self.steps}; train for 1 step or more")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise FDIError(f"learning rate must be a positive number, got {self.lr}")
        if self.batch_size < 1:
            raise FDIError(f"batch size must be at least 1, got {self.batch_size}")
        if self.resolution < MIN_TRAIN_SIDE or self.resolution % 64:
            raise FDIError(
                f"resolution {self.resolution} must be a multiple of 64 of at least {MIN_TRAIN_SIDE} px, e.g. 512"
            )
        if not (self.recon_weight >= 0 and math.isfinite(self.recon_weight)):
            raise FDIError(f"the reconstruction weight must be 0 or positive, got {self.recon_weight}")


@dataclass
class MemoryTrainResult:
    """``losses`` per finished step; ``stopped``: why training ended early (``None``: all steps done);
    ``cancelled``: it was ``should_stop``."""

    steps: int
    losses: List[float] = field(default_factory=list)
    stopped: Optional[str] = None
    cancelled: bool = False


def check_pairs(degraded: Sequence[torch.Tensor], clean: Sequence[torch.Tensor]) -> None:
    """Pairs of ``[3, H, W]`` images: equal counts, at least one, every side ≥ :data:`MIN_TRAIN_SIDE`."""
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
            if min(img.shape[-2:]) < MIN_TRAIN_SIDE:
                raise FDIError(
                    f"{what} image {i} is {img.shape[-1]}x{img.shape[-2]} px; training needs at least "
                    f"{MIN_TRAIN_SIDE} px a side, use larger images"
                )


def batch_for_step(
    degraded: Sequence[torch.Tensor], clean: Sequence[torch.Tensor], step: int, settings: TrainSettings
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The crops of step ``step`` (0-based): ``([b, 3, R, R], [b, 3, R, R])`` float32, a function of the seed."""
    from ..data import transform_pair

    n, b = len(degraded), settings.batch_size
    order: List[int] = []
    first = step * b
    epoch = 0
    while len(order) < first + b:  # the permutations of every epoch up to this step (cheap: n is small)
        order += torch.randperm(n, generator=torch.Generator().manual_seed(int(settings.seed) * 31 + epoch)).tolist()
        epoch += 1
    idx = order[first : first + b]
    g = torch.Generator().manual_seed(int(settings.seed) * 7_919 + step * 613 + 104_729)
    crops = [transform_pair(degraded[i].float(), clean[i].float(), settings.resolution, g) for i in idx]
    return torch.stack([d for d, _ in crops]), torch.stack([c for _, c in crops])


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
    params = [p for p in adapter.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.lr, betas=ADAM_BETAS, weight_decay=ADAM_WEIGHT_DECAY)
    alphas = alphas_cumprod.to(device, torch.float32)
    tokens = fdi_tokens.to(device, torch.float32)
    result = MemoryTrainResult(steps=0)
    scaler = loss_scaler(device, compute_dtype or autocast_dtype)
    guard = NonFiniteGuard(scaled=scaler.is_enabled())
    adapter.train()
    report(progress, 0, settings.steps)
    try:
        for step in range(settings.steps):
            if should_stop is not None and should_stop():
                result.stopped = f"stopped by the user after {step} of {settings.steps} steps"
                result.cancelled = True
                break
            d, c = batch_for_step(degraded, clean, step, settings)
            z0 = encode(c.to(device))
            gen = step_generator(settings.seed, step)
            ctx = (
                torch.autocast(device.type, dtype=autocast_dtype)
                if autocast_dtype not in (None, torch.float32)
                else torch.autocast(device.type, enabled=False)
            )
            with ctx:
                out = training_step(
                    adapter, predict, d.to(device), z0, tokens, alphas, prediction_type, settings.recon_weight, gen
                )
            value = float(out.loss.detach())
            skipped = True
            if math.isfinite(value) or scaler.is_enabled():  # an unscaled non-finite loss is not backpropagated
                scaled_grads(out.loss, params, scaler)
                skipped, _ = scaled_update(scaler, opt, params, MAX_GRAD_NORM)
                opt.zero_grad(set_to_none=True)
            if guard.record(value, skipped):
                result.stopped = guard.message(step + 1)
                break
            if skipped:  # an overflow the scaler recovers from: no update, the step still counts as done
                report(progress, step + 1, settings.steps)
                continue
            result.steps += 1
            result.losses.append(value)
            if on_step is not None:
                on_step(step + 1, value)
            report(progress, step + 1, settings.steps)
    finally:
        adapter.eval()
    return result
