"""Applying FDI guidance to UNet features: the math shared by every UNet backend (pure torch).

Imports neither diffusers nor ComfyUI; both backends call these functions at the same points, so
the same adapter on the same UNet weights gives the same numbers. ``guidances`` is a sequence of
``(FDIGuidance, weight)`` pairs, ``strength`` a global factor; encoder levels ``0..3`` (``r_1..r_4``),
decoder points ``0..2``. Features ``h``, ``D`` are ``[B, C, h, w]``.

* encoder residual at level ``i``: ``h ← h + strength · Σ_k w_k · fit(r_k,i)``;
* visual modulator at point ``j`` (statistics over the spatial dims, ``eps = 1e-5``)::

      AdaIN_k(D) = (D − μ_D) / σ_D · σ_k + μ_k
      D ← D + strength · Σ_k w_k g_k ⊙ (AdaIN_k(D) − D)  =  α ⊙ D + β

  with ``α = 1 − G + A/σ_D``, ``β = B − A·μ_D/σ_D``, ``A = s·Σ w_k g_k σ_k``, ``B = s·Σ w_k g_k μ_k``,
  ``G = s·Σ w_k g_k`` (statistics, coefficients and ``α ⊙ D + β`` in float32, rounded once to ``D``'s dtype).

Both are exact no-ops for zero residuals and gates, ``strength = 0`` or zero weights. A guidance without modulations
(an adapter built without the visual modulator) takes no part in the modulation sum; when no guidance has them the
decoder feature is returned as it is (:func:`modulated`). ``fit``
crops a residual larger than the feature by up to :data:`MAX_CROP` pixels and tiles its batch
(:func:`fit_spatial`, :func:`fit_batch`); a residual of any other size is refused, never resized.
"""

from __future__ import annotations

from typing import Callable, Dict, Hashable, Iterable, List, Sequence, Tuple, TypeVar, Union

import torch

from .adapter import FDIGuidance, Modulation
from .adapter_blocks import STAT_EPS
from .errors import FDIError

WeightedGuidance = Tuple[FDIGuidance, float]
T = TypeVar("T")

#: a residual larger than the feature by at most this many pixels a side is cropped (rounding of odd sizes)
MAX_CROP = 2


def as_weighted(guidances: Union[FDIGuidance, Iterable]) -> List[WeightedGuidance]:
    """Normalise ``FDIGuidance`` / ``[(FDIGuidance, w), …]`` / ``[FDIGuidance, …]`` to ``[(g, float(w))]``."""
    if isinstance(guidances, FDIGuidance):
        return [(guidances, 1.0)]
    out = []
    for item in guidances:
        if isinstance(item, FDIGuidance):
            out.append((item, 1.0))
        else:
            g, w = item
            if not isinstance(g, FDIGuidance):
                raise TypeError(f"expected FDIGuidance, got {type(g).__name__}")
            out.append((g, float(w)))
    return out


def fit_batch(t: torch.Tensor, batch: int) -> torch.Tensor:
    """Repeat a guidance tensor ``[Bg, …]`` to ``[batch, …]`` (tiled; see the module doc)."""
    bg = t.shape[0]
    if bg == batch:
        return t
    if bg >= 1 and batch % bg == 0:
        if bg == 1:
            return t.expand(batch, *t.shape[1:])
        return t.repeat(batch // bg, *([1] * (t.ndim - 1)))
    raise FDIError(
        f"guidance was computed for {bg} image(s) but the UNet runs a batch of {batch}; "
        "compute the guidance for 1 image or for the same number of images as the latent batch"
    )


def fit_spatial(r: torch.Tensor, size: Sequence[int], level: int = 0) -> torch.Tensor:
    """Bring a residual ``[B, C, h, w]`` (encoder level ``level``) to spatial ``size = (H, W)``: as is, or cropped
    bottom/right when it is larger by at most :data:`MAX_CROP` pixels a side. Any other size is an
    :class:`FDIError`: the UNet is then given a crop or a resized latent (area conditioning, a third-party tiled
    sampler), where a stretched residual would guide the wrong pixels."""
    rh, rw = r.shape[-2:]
    h, w = int(size[0]), int(size[1])
    if (rh, rw) == (h, w):
        return r
    if 0 <= rh - h <= MAX_CROP and 0 <= rw - w <= MAX_CROP:
        return r[..., :h, :w]
    s = 2 ** int(level)
    raise FDIError(
        f"FDI guidance residual r_{level + 1} is {rh}x{rw} but the UNet feature is {h}x{w}: "
        f"the guidance was computed for a {rh * s * 8}x{rw * s * 8} px image and the UNet is given "
        f"{h * s * 8}x{w * s * 8} px, another size or a crop of the latent (area conditioning, a tiled sampler); "
        "FDI guidance is never stretched. "
        "For large images use FDI Restore's tile_size/tile_overlap inputs "
        "(each tile gets its part of the guidance), otherwise run FDI Noise Decoupling on the image "
        "at the size you sample"
    )


def _check_channels(what: str, got: int, want: int) -> None:
    if got != want:
        raise FDIError(
            f"{what} has {got} channels but the UNet feature has {want}; "
            "the adapter was made for another UNet channel layout, use an adapter trained for this model"
        )


def fit_residual(r: torch.Tensor, h: torch.Tensor, level: int) -> torch.Tensor:
    """Residual ``r`` of encoder level ``level`` as an addend of the feature ``h`` ``[B, C, H, W]``: channels checked,
    cropped (:func:`fit_spatial`), in ``h``'s dtype/device, batch tiled (:func:`fit_batch`; views where possible)."""
    _check_channels(f"FDI residual r_{level + 1}", r.shape[1], h.shape[1])
    return fit_batch(fit_spatial(r, h.shape[-2:], level).to(device=h.device, dtype=h.dtype), h.shape[0])


def residual_delta(
    h: torch.Tensor, level: int, guidances: Sequence[WeightedGuidance], strength: float = 1.0
) -> torch.Tensor:
    """``strength · Σ_k w_k · fit(r_k,level)`` in ``h``'s dtype/device, shape of ``h`` (``[B, C, H, W]``)."""
    total = None
    for g, w in guidances:
        r = fit_residual(g.residuals[level], h, level)
        term = r * w
        total = term if total is None else total + term
    if total is None:
        return torch.zeros_like(h)
    return total * strength


def apply_residual(
    h: torch.Tensor, level: int, guidances: Sequence[WeightedGuidance], strength: float = 1.0
) -> torch.Tensor:
    """Encoder level ``level`` (0..3): ``h + strength · Σ_k w_k · fit(r_k,level)`` (a new tensor)."""
    if not guidances:
        return h
    return h + residual_delta(h, level, guidances, strength)


def adain_statistics(d: torch.Tensor, eps: float = STAT_EPS) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel spatial mean and std (``sqrt(var + eps)``) of ``[B, C, H, W]`` in float32."""
    var, mean = torch.var_mean(d.float(), dim=(2, 3), keepdim=True, unbiased=False)
    return mean, torch.sqrt(var + eps)


def modulated(guidances: Sequence[WeightedGuidance]) -> bool:
    """Whether any of ``guidances`` modulates the decoder (carries visual-modulator targets)."""
    return any(g.modulations for g, _ in guidances)


def modulation_coefficients(
    point: int, guidances: Sequence[WeightedGuidance], strength: float, batch: int, channels: int, device: torch.device
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The feature-independent part of the visual modulator at ``point``, float32 on ``device``:

    ``A = s·Σ_k w_k g_k σ_k`` ``[batch, C]``, ``B = s·Σ_k w_k g_k μ_k`` ``[batch, C]``, ``G = s·Σ_k w_k g_k`` ``[C]``.

    With them the modulation is ``D + s·Σ_k w_k g_k ⊙ (AdaIN_k(D) − D) = α ⊙ D + β`` where
    ``α = 1 − G + A/σ_D`` and ``β = B − A·μ_D/σ_D`` (:func:`modulate`): one pass over ``D`` instead of
    one per adapter, and the coefficients can be computed once per restoration. Guidances without modulations add
    nothing (zeros when none has them).
    """
    targets = [(g.modulation(point), w) for g, w in guidances]
    return targets_coefficients([(m, w) for m, w in targets if m is not None], strength, batch, channels, device, point)


def targets_coefficients(
    targets: Sequence[Tuple[Modulation, float]],
    strength: float,
    batch: int,
    channels: int,
    device: torch.device,
    point: int = 0,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`modulation_coefficients` of weighted AdaIN targets ``(Modulation, w)`` of one decoder point."""
    a_sum = b_sum = g_sum = None
    for m, w in targets:
        _check_channels(f"FDI modulation {point}", m.mean.shape[-1], channels)
        gw = m.gate.to(device=device, dtype=torch.float32) * w
        a = gw * fit_batch(m.std.to(device=device, dtype=torch.float32), batch)
        b = gw * fit_batch(m.mean.to(device=device, dtype=torch.float32), batch)
        a_sum = a if a_sum is None else a_sum + a
        b_sum = b if b_sum is None else b_sum + b
        g_sum = gw if g_sum is None else g_sum + gw
    if a_sum is None:
        zeros = torch.zeros(batch, channels, device=device)
        return zeros, zeros, torch.zeros(channels, device=device)
    return a_sum * strength, b_sum * strength, g_sum * strength


def modulate(d: torch.Tensor, coefficients: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``α ⊙ D + β`` with ``α = 1 − G + A/σ_D``, ``β = B − A·μ_D/σ_D``, all in float32 and rounded once to
    ``D``'s dtype. (In fp16, ``α ⊙ D`` and ``β`` nearly cancel when a channel's mean is large against its std:
    rounding them first would cost many times the output's own rounding.) Zero coefficients give exactly ``D``."""
    a_sum, b_sum, g_sum = coefficients
    d32 = d.float()
    mu, sigma = adain_statistics(d32)
    a = a_sum[:, :, None, None] / sigma
    alpha = (1 - g_sum[None, :, None, None]) + a
    beta = b_sum[:, :, None, None] - a * mu
    return torch.addcmul(beta, d32, alpha).to(d.dtype)


def apply_modulation(
    d: torch.Tensor, point: int, guidances: Sequence[WeightedGuidance], strength: float = 1.0
) -> torch.Tensor:
    """Decoder point ``point`` (0..2): ``D + strength · Σ_k w_k · g_k ⊙ (AdaIN_k(D) − D)`` (a new tensor).

    Computed as :func:`modulate` of :func:`modulation_coefficients` (the same numbers as precomputing
    the coefficients once and calling :func:`modulate` at every step). ``d`` itself when no guidance modulates.
    """
    if not modulated(guidances):
        return d
    return modulate(d, modulation_coefficients(point, guidances, strength, d.shape[0], d.shape[1], d.device))


class StepInvariantCache:
    """Memo for the parts of guidance that do not change from one sampling step to the next.

    The fitted, weighted residuals (:func:`residual_delta`) and the modulation coefficients
    (:func:`modulation_coefficients`) depend only on the guidance, the weights, the strength and the
    feature's shape/dtype/device — never on the features' values or the timestep. A backend computes
    them on the first guided step under a key naming those inputs and reuses them, so each step
    costs one add per encoder level and one multiply-add per decoder point.

    Under autograd (training) nothing is cached: every forward builds its own graph; under
    ``torch.compile`` neither (the compiled graph computes them, no Python state is traced). Whoever owns a
    cache must :meth:`clear` it when the guidances or the strength change.
    """

    def __init__(self) -> None:
        self._values: Dict[Hashable, object] = {}

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return compute()
        if key not in self._values:
            self._values[key] = compute()
        return self._values[key]  # type: ignore[return-value]

    def clear(self) -> None:
        self._values.clear()

    def residual(
        self, h: torch.Tensor, level: int, guidances: Sequence[WeightedGuidance], strength: float, key: Hashable = ()
    ) -> torch.Tensor:
        """:func:`residual_delta` for a feature shaped like ``h`` (cached; ``key`` names the guidance set)."""
        return self.get(
            ("r", key, level, tuple(h.shape), h.dtype, h.device), lambda: residual_delta(h, level, guidances, strength)
        )

    def coefficients(
        self, d: torch.Tensor, point: int, guidances: Sequence[WeightedGuidance], strength: float, key: Hashable = ()
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:func:`modulation_coefficients` for a feature shaped like ``d`` (cached; ``key`` names the guidance set)."""
        return self.get(
            ("m", key, point, d.shape[0], d.shape[1], d.device),
            lambda: modulation_coefficients(point, guidances, strength, d.shape[0], d.shape[1], d.device),
        )
