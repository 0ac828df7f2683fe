"""Training precision: the frozen model's compute dtype, dynamic loss scaling for fp16, the non-finite rule.

Every door (the CLI loop, the ComfyUI node's in-memory loop) uses these; docs/design.md ("Training")
has the decisions.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ..errors import FDIError

#: consecutive non-finite steps after which training stops. Without a loss scaler nothing can recover
#: (1: stop at the first); with one, each overflow halves the scale, so a few are normal at the start.
MAX_NONFINITE_UNSCALED = 1
MAX_NONFINITE_SCALED = 5
#: first loss scale of fp16 training (2^16, halved on overflow, doubled after 2000 clean steps)
INITIAL_LOSS_SCALE = 2.0**16


def compute_dtype(requested: str, device: torch.device, supports_bf16: bool, supports_fp16: bool) -> torch.dtype:
    """The dtype the frozen UNet computes in for a requested ``"fp32"``/``"bf16"``/``"fp16"`` on ``device``.

    ``"fp32"`` is fp32 compute whatever the weights' storage dtype; ``"bf16"`` falls back to fp16 (with
    loss scaling) where the device lacks bf16, and fp16 to fp32 where it lacks fp16. The CPU computes
    in fp32 (half-precision kernels there are slow and not what a GPU run would give)."""
    from ..dtypes import parse_dtype

    want = parse_dtype(requested)
    if device.type == "cpu" or want == torch.float32:
        return torch.float32
    if want == torch.bfloat16:
        if supports_bf16:
            return torch.bfloat16
        want = torch.float16
    return torch.float16 if supports_fp16 else torch.float32


def loss_scaler(device: torch.device, dtype: Optional[torch.dtype]) -> torch.amp.GradScaler:
    """A dynamic loss scaler for a model computing in ``dtype``: on for fp16, a pass-through otherwise."""
    return torch.amp.GradScaler(
        device.type if device.type in ("cuda", "cpu", "xpu", "mps") else "cuda",
        init_scale=INITIAL_LOSS_SCALE,
        enabled=dtype == torch.float16,
    )


class NonFiniteGuard:
    """The one rule for non-finite steps: a step whose loss or gradients are not finite is skipped (no
    update); ``limit`` such steps in a row stop training with :meth:`message`."""

    def __init__(self, scaled: bool):
        self.limit = MAX_NONFINITE_SCALED if scaled else MAX_NONFINITE_UNSCALED
        self.scaled = scaled
        self.run = 0
        self.last_loss = float("nan")

    def record(self, loss: float, skipped: bool) -> bool:
        """Count one step (``skipped``: its update was skipped for non-finite gradients); ``True`` = stop now."""
        bad = skipped or not math.isfinite(loss)
        self.run = self.run + 1 if bad else 0
        if bad:
            self.last_loss = loss
        return self.run >= self.limit

    def message(self, step: int, fix: str = "") -> str:
        """Why training stopped at 1-based ``step`` (the adapter keeps the weights of the last good step);
        ``fix``: the door's own advice (default: in the node's words)."""
        what = f"the loss became {self.last_loss}" if not math.isfinite(self.last_loss) else "the gradients overflowed"
        runs = f" ({self.run} steps in a row)" if self.run > 1 else ""
        fix = fix or (
            "train in bf16 or fp32, or lower the learning rate"
            if self.scaled
            else "lower the learning rate, or train in fp32"
        )
        return f"{what} at step {step}{runs}; training stopped with the adapter of the last good step ({fix})"

    def error(self, step: int, fix: str = "") -> FDIError:
        return FDIError(self.message(step, fix))


def scaled_update(
    scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer, params, max_grad_norm: float
) -> tuple:
    """Unscale, clip to ``max_grad_norm`` (0: no clipping), step and update the scale; ``(skipped, grad_norm)``.

    With the scaler on, a step with non-finite gradients is skipped by the scaler (and the scale halved);
    with it off, such a step is skipped here: the weights never take a non-finite update."""
    scaler.unscale_(optimizer)
    norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else float("inf")))
    if not scaler.is_enabled():
        if not math.isfinite(norm):
            optimizer.zero_grad(set_to_none=True)
            return True, norm
        optimizer.step()
        return False, norm
    before = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    return scaler.get_scale() < before, norm


def guarded_update(
    scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer, params, max_grad_norm: float, loss: float
) -> tuple:
    """The update of both doors after the backward pass: :func:`scaled_update`, except that a non-finite
    ``loss`` without loss scaling updates nothing (its gradients are dropped); ``(skipped, grad_norm)``."""
    if not math.isfinite(loss) and not scaler.is_enabled():
        optimizer.zero_grad(set_to_none=True)
        return True, float("nan")
    return scaled_update(scaler, optimizer, params, max_grad_norm)


def scaled_grads(loss: torch.Tensor, params, scaler: torch.amp.GradScaler) -> None:
    """Set ``params``' ``.grad`` to d(scale·loss)/dp (still scaled: :func:`scaled_update` unscales)."""
    grads = torch.autograd.grad(scaler.scale(loss), params, allow_unused=True)
    for p, gr in zip(params, grads):
        p.grad = None if gr is None else gr.detach()
