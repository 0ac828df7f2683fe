"""What the ComfyUI patches read: a guidance's one device copy, each Apply node's entry, and which steps it guides.

Which steps are guided is decided with tensor arithmetic only (a 0/1 gate per entry, from the current sigma and
the sampler's ``sample_sigmas``): no host sync, no Python branch on a tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple, Union

import torch

from .adapter import FDIGuidance, Modulation
from .errors import FDIError
from .sampling import guided_step_range

Gate = Union[float, torch.Tensor]


class GuidanceTensors(torch.nn.Module):
    """One part of an :class:`FDIGuidance` as buffers of a module ComfyUI can load and offload like a model:
    ``part="residuals"`` (``r_1..r_4``, what the input patch reads) or ``"modulations"`` (mean, std and gate of
    each decoder point, what the output patch reads). ``refined`` is read by neither and is not held.

    The buffers start as the guidance's own tensors (no copy). Moving the module to the device and dtype
    those tensors came from reuses them instead of copying back, so there is at most one copy on any
    other device and never a second one at home. ``moves`` counts moves (caches derived from the tensors
    compare it)."""

    PARTS = ("residuals", "modulations")

    def __init__(self, guidance: FDIGuidance, part: str):
        super().__init__()
        if part not in self.PARTS:
            raise ValueError(f"part must be one of {self.PARTS}, got {part!r}")
        self.part = part
        if part == "residuals":
            tensors = {f"r{i}": r for i, r in enumerate(guidance.residuals)}
            self.count = len(guidance.residuals)
        else:
            tensors = {}
            for j, m in enumerate(guidance.modulations):
                tensors.update({f"mean{j}": m.mean, f"std{j}": m.std, f"gate{j}": m.gate})
            self.count = len(guidance.modulations)
        for name, t in tensors.items():
            self.register_buffer(name, t)
        self._home = dict(tensors)
        self.moves = 0

    def _apply(self, fn, recurse=True):  # what Module.to/cuda/cpu/half call
        for name, buf in list(self._buffers.items()):
            home = self._home[name]
            target = fn(torch.empty(0, dtype=buf.dtype))  # where fn sends a tensor of buf's dtype
            if target.device == home.device and target.dtype == home.dtype:
                self._buffers[name] = home
            elif not (target.device == buf.device and target.dtype == buf.dtype):
                self._buffers[name] = fn(buf)
        self.moves += 1
        return self

    def residual(self, level: int) -> torch.Tensor:
        """``r_{level+1}`` ``[B, C_i, h_i, w_i]`` where the module is now."""
        return self._buffers[f"r{level}"]

    def modulation(self, point: int) -> Modulation:
        """The targets of decoder point ``point`` (mean, std ``[B, C]``, gate ``[C]``) where the module is now."""
        b = self._buffers
        return Modulation(b[f"mean{point}"], b[f"std{point}"], b[f"gate{point}"])

    @property
    def nbytes(self) -> int:
        """Bytes of the buffers (one copy)."""
        return sum(t.numel() * t.element_size() for t in self._buffers.values())


@dataclass(frozen=True, eq=False)
class SharedGuidance:
    """The device copy of a guidance that every patch and every MODEL using it shares: ``residuals`` and
    ``modulations`` (:class:`GuidanceTensors`), and what the input and the output patch report from
    ``models()`` so that ComfyUI loads, offloads and counts them (``nodes/`` puts a ``ModelPatcher`` of each
    there; the library leaves them empty)."""

    residuals: GuidanceTensors
    modulations: GuidanceTensors
    residual_models: Tuple[object, ...] = ()
    modulation_models: Tuple[object, ...] = ()

    @classmethod
    def of(
        cls, guidance: FDIGuidance, manage: Optional[Callable[[torch.nn.Module], object]] = None
    ) -> "SharedGuidance":
        """Both parts of ``guidance``; ``manage(module)`` (e.g. a ``ModelPatcher`` factory) gives each its model."""
        r, m = GuidanceTensors(guidance, "residuals"), GuidanceTensors(guidance, "modulations")
        if manage is None:
            return cls(r, m)
        return cls(r, m, (manage(r),), (manage(m),))


@dataclass(frozen=True)
class GuidanceEntry:
    """One Apply node's contribution: guidance, strength and the guided part of the sampling.

    ``start``/``end`` are fractions of the sampler's steps (:func:`fdi.sampling.guided_step_range`);
    ``sigma_start``/``sigma_end`` are the same window in noise levels (ComfyUI's ``percent_to_sigma``),
    used when the sampler's schedule is not known (a sampler that calls the model directly).
    ``shared``: where the patches read the guidance's tensors (its one device copy); ``None`` reads
    ``guidance`` itself (the training step's use)."""

    guidance: FDIGuidance
    strength: float
    start: float = 0.0
    end: float = 1.0
    sigma_start: float = float("inf")
    sigma_end: float = 0.0
    shared: Optional[SharedGuidance] = None

    def residual(self, level: int) -> torch.Tensor:
        """``r_{level+1}`` wherever it is now (the shared copy when there is one)."""
        return self.shared.residuals.residual(level) if self.shared is not None else self.guidance.residuals[level]

    def modulation(self, point: int) -> Modulation:
        """The AdaIN targets of decoder point ``point`` wherever they are now."""
        return (
            self.shared.modulations.modulation(point) if self.shared is not None else self.guidance.modulations[point]
        )

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
