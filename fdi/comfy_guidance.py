"""What the ComfyUI patches read: each Apply node's entry (its guidance, kept where it was made) and which steps it
guides.

The patches read an entry's tensors where they are (ComfyUI's intermediate device, the CPU by default) and the
guidance math copies what one model call needs to the feature's device (:func:`fdi.guidance.fit_residual`,
:func:`fdi.guidance.targets_coefficients`): moved per use, as ComfyUI's own weight patches are (docs/design.md,
"Guidance memory"). Which steps are guided is decided with tensor arithmetic only (a 0/1 gate per entry, from the
current sigma and the sampler's ``sample_sigmas``): no host sync, no Python branch on a tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple, Union

import torch

from .adapter import FDIGuidance, Modulation
from .errors import FDIError
from .sampling import guided_step_range

Gate = Union[float, torch.Tensor]


@dataclass(frozen=True)
class GuidanceEntry:
    """One Apply node's contribution: guidance, strength and the guided part of the sampling.

    ``start``/``end`` are fractions of the sampler's steps (:func:`fdi.sampling.guided_step_range`);
    ``sigma_start``/``sigma_end`` are the same window in noise levels (ComfyUI's ``percent_to_sigma``),
    used when the sampler's schedule is not known (a sampler that calls the model directly). The patches read
    ``guidance``'s tensors where they are and never move them."""

    guidance: FDIGuidance
    strength: float
    start: float = 0.0
    end: float = 1.0
    sigma_start: float = float("inf")
    sigma_end: float = 0.0

    def residual(self, level: int) -> torch.Tensor:
        """``r_{level+1}`` ``[B, C_i, h_i, w_i]`` where the guidance keeps it."""
        return self.guidance.residuals[level]

    def modulation(self, point: int) -> Optional[Modulation]:
        """The AdaIN targets of decoder point ``point`` (mean, std ``[B, C]``, gate ``[C]``) where the guidance
        keeps them; ``None`` for an adapter without the visual modulator."""
        return self.guidance.modulation(point)

    def gate(self, transformer_options: dict) -> Gate:
        """1 where this entry guides the current model call, else 0: a float32 0-d tensor, or 1.0 when
        the call carries no sigma (traceable: comparisons of tensors, no ``.item()``)."""
        sigmas = transformer_options.get("sigmas")
        if not isinstance(sigmas, torch.Tensor):
            return 1.0
        sigma = sigmas.reshape(-1)[0].float()
        window = ((sigma <= self.sigma_start) & (sigma >= self.sigma_end)).float()
        schedule = transformer_options.get("sample_sigmas")
        if not isinstance(schedule, torch.Tensor) or schedule.numel() < 2:
            return window
        schedule = schedule.reshape(-1).to(sigma.device, torch.float32)
        # a sampler's schedule descends; an inversion's ascends (then the sigma window decides)
        return torch.where(schedule[0] > schedule[-1], _step_gate(sigma, schedule, self.start, self.end), window)


def _step_gate(sigma: torch.Tensor, schedule: torch.Tensor, start: float, end: float) -> torch.Tensor:
    """1 when ``sigma`` belongs to a guided step ``k`` of ``schedule`` (``start·N ≤ k < end·N``).

    A model call at a sigma between two steps counts for the nearer one (midpoint bounds), so float
    noise cannot move a step in or out of the window."""
    n = schedule.shape[0] - 1
    first, stop = guided_step_range(n, start, end)
    if stop <= first:
        return sigma.new_zeros(())
    hi = (schedule[first - 1] + schedule[first]) / 2 if first > 0 else sigma.new_tensor(float("inf"))
    lo = (schedule[stop - 1] + schedule[stop]) / 2
    return ((sigma > lo) & (sigma < hi)).float()


def sigma_window(
    percent_to_sigma: Callable[[float], float], start_percent: float, end_percent: float
) -> Tuple[float, float]:
    """``(sigma_start, sigma_end)`` of a ``[start, end]`` percent window (refuses ``end < start``)."""
    start, end = float(start_percent), float(end_percent)
    if not (0.0 <= start <= 1.0 and 0.0 <= end <= 1.0):
        raise FDIError(f"start_percent and end_percent must be between 0 and 1, got {start} and {end}")
    if end < start:
        raise FDIError(
            f"end_percent ({end}) is smaller than start_percent ({start}); "
            "guidance would never be active, set end_percent >= start_percent"
        )
    return float(percent_to_sigma(start)), float(percent_to_sigma(end))
