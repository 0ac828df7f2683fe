"""The sampling rules of FDI restoration: one home for every door (diffusers pipeline, training, ComfyUI).

Timesteps, noise levels, the inversion grid, the guided-step rule, the model-output conversions and
the padding rule are defined here once; :mod:`fdi.pipeline` (VP space, ᾱ) and
:mod:`fdi.comfy_backend` (ComfyUI's sigma space, ``σ = sqrt((1 − ᾱ)/ᾱ)``) both call them, so the
two restorations visit the same timesteps and guide the same steps. ``docs/design.md`` says why
each rule is what it is.

Conventions: timesteps are integers in ``0 … T−1`` (``T = 1000`` for SD 1.5, 2.x and SDXL); ᾱ (``alpha_bar``) is
the cumulative product of the noise schedule; both ends of a restoration are the clean level
(ᾱ = 1, σ = 0).
"""

from __future__ import annotations

import math
from typing import Callable, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .errors import FDIError

#: images are padded to a multiple of this (the VAE's 8 × the UNet's three downsamplings)
PAD_MULTIPLE = 64
#: ᾱ at both ends of a restoration: the inversion starts from, and sampling ends on, the clean latent
CLEAN_ALPHA = 1.0
#: SD 2.x's DDIM timestep layout (diffusers' scheduler config of stable-diffusion-2-1 and -base)
SD2_TIMESTEP_SPACING = "leading"
SD2_STEPS_OFFSET = 1
SPACINGS = ("leading", "trailing", "linspace")
#: what FDI restores and trains with; the conversions below also take ``sample`` (x0) outputs
PREDICTION_TYPES = ("epsilon", "v_prediction")
#: the guided fraction of the sampling steps by default: the paper's first of three stages (17 of 50 steps)
GUIDANCE_END = 0.333


# ---- padding ------------------------------------------------------------------------------------


def padded_size(h: int, w: int, multiple: int = PAD_MULTIPLE) -> Tuple[int, int]:
    """``(H, W)`` rounded up to multiples of ``multiple``."""
    return -(-int(h) // multiple) * multiple, -(-int(w) // multiple) * multiple


def pad_to_multiple(images: torch.Tensor, multiple: int = PAD_MULTIPLE) -> torch.Tensor:
    """Mirror-pad ``[B, C, H, W]`` on the bottom/right to multiples of ``multiple``; crop back with ``[..., :H, :W]``.

    Reflection needs the pad to be smaller than the side, so a small image is mirrored repeatedly (each
    pass at least doubles a side of 2 or more); a 1-pixel side has nothing to mirror and repeats its one row
    or column (what mirroring it would give).
    """
    h, w = images.shape[-2], images.shape[-1]
    th, tw = padded_size(h, w, multiple)
    x = images
    if (h == 1 and th > 1) or (w == 1 and tw > 1):
        x = F.pad(x, (0, tw - 1 if w == 1 else 0, 0, th - 1 if h == 1 else 0), mode="replicate")
    while x.shape[-2] < th or x.shape[-1] < tw:
        ph = min(th - x.shape[-2], x.shape[-2] - 1)
        pw = min(tw - x.shape[-1], x.shape[-1] - 1)
        x = F.pad(x, (0, pw, 0, ph), mode="reflect")
    return x


# ---- timesteps and noise levels -----------------------------------------------------------------


def max_ddim_steps(
    num_train_timesteps: int = 1000, spacing: str = SD2_TIMESTEP_SPACING, offset: int = SD2_STEPS_OFFSET
) -> int:
    """The most DDIM steps a schedule can take: every count from 1 to it keeps all timesteps in ``0 … T−1``.

    ``trailing`` and ``linspace``: ``T``. ``leading``: its top timestep is ``(N−1)·⌊T/N⌋ + offset``, so SD's
    offset 1 allows 999 of 1000 (1000 steps would reach ``t = T``, past the schedule's table).
    """
    t, off = int(num_train_timesteps), int(offset)
    if spacing not in SPACINGS:
        raise FDIError(f"unknown timestep spacing {spacing!r}; use one of {', '.join(SPACINGS)}")
    if spacing != "leading":
        return t
    n = 0
    while n < t and 0 <= off and n * (t // (n + 1)) + off <= t - 1:
        n += 1
    return n


def check_steps(
    steps: int, num_train_timesteps: int = 1000, spacing: str = SD2_TIMESTEP_SPACING, offset: int = SD2_STEPS_OFFSET
) -> None:
    """Raise :class:`FDIError` unless ``1 ≤ steps ≤`` :func:`max_ddim_steps` (the message names the bound)."""
    n, t = int(steps), int(num_train_timesteps)
    if n < 1:
        raise FDIError(f"steps must be at least 1, got {steps}")
    bound = max_ddim_steps(t, spacing, offset)
    if bound < 1:
        raise FDIError(
            f"the schedule's steps offset {offset} puts every {spacing} timestep outside 0..{t - 1}; "
            "fix steps_offset in the scheduler config"
        )
    if n > bound:
        raise FDIError(
            f"{n} steps is more than this model's schedule allows: use at most {bound} "
            f"({t} training timesteps, {spacing} spacing, steps offset {int(offset)})"
        )


def ddim_timesteps(
    steps: int, num_train_timesteps: int = 1000, spacing: str = SD2_TIMESTEP_SPACING, offset: int = SD2_STEPS_OFFSET
) -> torch.Tensor:
    """The ``steps`` DDIM sampling timesteps ``t_0 > … > t_{N−1}`` (int64): diffusers' ``DDIMScheduler.set_timesteps``.

    ``spacing`` and ``offset`` are the scheduler config's ``timestep_spacing`` and ``steps_offset``
    (SD 2.x: ``leading``, 1 → 50 steps are 981, 961, …, 1; ``trailing`` and ``linspace`` ignore the
    offset, as diffusers does). Computed with numpy in float64 as diffusers computes them, so the
    rounding at ``x.5`` is the same. Refused beyond :func:`max_ddim_steps` (:func:`check_steps`).
    ``trailing``'s float ``arange`` overshoots for some counts (61, 103, …) and diffusers then returns one
    more timestep, −1; only the first ``steps`` are returned.
    """
    check_steps(steps, num_train_timesteps, spacing, offset)
    n, t = int(steps), int(num_train_timesteps)
    if spacing == "linspace":
        ts = np.linspace(0, t - 1, n).round()[::-1]
    elif spacing == "leading":
        ts = (np.arange(0, n) * (t // n)).round()[::-1] + int(offset)
    else:  # trailing
        ts = np.round(np.arange(t, 0, -t / n))[:n] - 1
    return torch.from_numpy(np.ascontiguousarray(ts).astype(np.int64))


def inversion_timesteps(sampling_timesteps: torch.Tensor, inversion_steps: int) -> torch.Tensor:
    """DDIM-inversion timesteps, ascending: ``round(linspace(t_{N−1}, t_0, n))`` (int64).

    The inversion ends where sampling starts (``t_0``) and equals the sampling timesteps reversed
    when ``n`` is the number of sampling steps of a uniform schedule; one step inverts straight to ``t_0``.
    """
    ts = torch.as_tensor(sampling_timesteps).flatten()
    n = int(inversion_steps)
    if n < 1 or ts.numel() < 1:
        raise FDIError(f"need at least one sampling and one inversion step, got {ts.numel()} and {inversion_steps}")
    t_first, t_last = float(ts[0]), float(ts[-1])
    if n == 1:
        return torch.tensor([round(t_first)], dtype=torch.long)
    return torch.linspace(t_last, t_first, n, dtype=torch.float64).round().long()


def sigma_to_alpha(sigma: torch.Tensor) -> torch.Tensor:
    """ᾱ = ``1 / (1 + σ²)``."""
    s = torch.as_tensor(sigma, dtype=torch.float64)
    return 1 / (1 + s * s)


def sampling_sigmas(timesteps: torch.Tensor, sigma_of: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Descending sigmas of a sampler visiting ``timesteps`` and landing on the clean level:
    ``[σ(t_0) … σ(t_{N−1}), 0]``.

    ``sigma_of`` maps float timesteps to sigmas with the model's schedule (ComfyUI: ``model_sampling.sigma``).
    """
    s = sigma_of(torch.as_tensor(timesteps).float()).float().flatten().cpu()
    return torch.cat([s, s.new_zeros(1)])


def inversion_sigmas(
    sampling_sigmas_: torch.Tensor, inversion_ts: torch.Tensor, sigma_of: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Ascending inversion sigmas ``[0, σ(τ_1) … σ(τ_n)]`` ending exactly on the first sampling sigma."""
    s = sigma_of(torch.as_tensor(inversion_ts).float()).float().flatten().cpu()
    out = torch.cat([s.new_zeros(1), s])
    out[-1] = torch.as_tensor(sampling_sigmas_).flatten()[0]
    return out


# ---- which steps are guided ---------------------------------------------------------------------


def guided_step_range(steps: int, start: float, end: float) -> Tuple[int, int]:
    """Sampling steps ``k`` (0-based) with ``start·N ≤ k < end·N`` are guided: returns ``(first, stop)``.

    ``(0, 0.333)`` of 50 steps is ``(0, 17)``: steps 0…16, the paper's first of three stages.
    """
    n, s, e = int(steps), float(start), float(end)
    if not (0.0 <= s <= 1.0 and 0.0 <= e <= 1.0):
        raise FDIError(f"guidance start and end must be between 0 and 1, got {start} and {end}")
    first = sum(1 for k in range(n) if k < s * n)
    stop = sum(1 for k in range(n) if k < e * n)
    return first, max(first, stop)


#: how training draws its timesteps (:class:`fdi.training.step.TimestepSampling`): inside the guidance window,
#: T2I-Adapter's cubic rule (early steps weighted), or uniformly over all timesteps (the pack before 2026-12)
TIMESTEP_SAMPLINGS = ("window", "cubic", "uniform")
DEFAULT_TIMESTEP_SAMPLING = "window"
#: the guidance window of adapter files that record none (trained before the window was recorded)
DEFAULT_GUIDANCE_WINDOW = (0.0, GUIDANCE_END)


def check_window(start: float, end: float, names: Tuple[str, str] = ("guidance start", "guidance end")) -> None:
    """Raise :class:`FDIError` unless ``0 ≤ start < end ≤ 1`` (fractions of the sampling steps)."""
    s, e = float(start), float(end)
    if not (math.isfinite(s) and math.isfinite(e) and 0.0 <= s <= 1.0 and 0.0 <= e <= 1.0):
        raise FDIError(f"{names[0]} {start} and {names[1]} {end} must be fractions of the sampling steps, in 0..1")
    if not s < e:
        raise FDIError(
            f"{names[0]} {start} is not below {names[1]} {end}: the guidance window would be empty; "
            f"the paper's is {names[0]} 0, {names[1]} {GUIDANCE_END} (the first third)"
        )


def window_timesteps(start: float, end: float, num_train_timesteps: int) -> Tuple[int, int]:
    """The training timesteps ``[lo, hi)`` of the sampling window ``[start, end]`` (fractions of the sampling
    steps, step 0 the noisiest): ``lo = round(T·(1 − end))``, ``hi = round(T·(1 − start))``.

    ``(0, 0.333)`` of ``T = 1000`` is ``[667, 1000)``; ``(0.667, 1)`` is ``[0, 333)``."""
    check_window(start, end)
    n = int(num_train_timesteps)
    lo, hi = round(n * (1.0 - float(end))), round(n * (1.0 - float(start)))
    if hi <= lo:
        raise FDIError(f"the guidance window {start}..{end} holds no timestep of {n}; widen it")
    return lo, hi


def step_selections(steps: int, windows: Sequence[Tuple[float, float]]) -> List[List[int]]:
    """For each sampling step ``k`` of ``steps``, the indices of the ``windows`` (``(start, end)`` fractions)
    that guide it (:func:`guided_step_range`); ``[[0, 1], [0, 1], …, [1], []]``."""
    ranges = [guided_step_range(steps, start, end) for start, end in windows]
    return [[i for i, (first, stop) in enumerate(ranges) if first <= k < stop] for k in range(int(steps))]


def guided_step_count(steps: int, guidance_end: float) -> int:
    """How many leading sampling steps are guided (``k < guidance_end · steps``; 17 of 50 at 0.333)."""
    return guided_step_range(steps, 0.0, guidance_end)[1]


# ---- model outputs ------------------------------------------------------------------------------


def _alpha(alpha_bar, like: torch.Tensor) -> torch.Tensor:
    a = torch.as_tensor(alpha_bar, dtype=torch.float32, device=like.device)
    return a.view(-1, *([1] * (like.ndim - 1))) if a.ndim == 1 else a


def predict_x0_eps(
    x: torch.Tensor, out: torch.Tensor, alpha_bar, prediction_type: str
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(x̂_0, ε̂)`` from the model output ``out`` at latent ``x`` of level ᾱ (a scalar or ``[B]``)."""
    a = _alpha(alpha_bar, x)
    sa, s1 = a.sqrt(), (1 - a).sqrt()
    if prediction_type == "epsilon":
        return (x - s1 * out) / sa, out
    if prediction_type == "v_prediction":
        return sa * x - s1 * out, sa * out + s1 * x
    if prediction_type == "sample":
        return out, (x - sa * out) / s1
    raise FDIError(f"prediction type {prediction_type!r} is not supported; use 'epsilon' or 'v_prediction'")


def predict_x0(x: torch.Tensor, out: torch.Tensor, alpha_bar, prediction_type: str) -> torch.Tensor:
    """``x̂_0`` from the model output (see :func:`predict_x0_eps`)."""
    if prediction_type == "sample":
        return out
    return predict_x0_eps(x, out, alpha_bar, prediction_type)[0]


def diffusion_target(x0: torch.Tensor, noise: torch.Tensor, alpha_bar, prediction_type: str) -> torch.Tensor:
    """The regression target of the UNet at ``x_t = sqrt(ᾱ)x_0 + sqrt(1−ᾱ)ε``: ``ε``,
    ``v = sqrt(ᾱ)ε − sqrt(1−ᾱ)x_0`` or ``x_0``."""
    if prediction_type == "epsilon":
        return noise
    a = _alpha(alpha_bar, x0)
    if prediction_type == "v_prediction":
        return a.sqrt() * noise - (1 - a).sqrt() * x0
    if prediction_type == "sample":
        return x0
    raise FDIError(f"prediction type {prediction_type!r} is not supported; use 'epsilon' or 'v_prediction'")


def ddim_step(
    x: torch.Tensor, out: torch.Tensor, alpha_from, alpha_to, prediction_type: str, alpha_eval=None
) -> torch.Tensor:
    """One deterministic DDIM move (η = 0) of ``x`` from level ``alpha_from`` to ``alpha_to``, given the
    model output ``out`` at ``x`` evaluated at level ``alpha_eval``.

    ``alpha_eval`` defaults to ``alpha_from`` (sampling). DDIM inversion evaluates the model at the
    target level (``alpha_eval = alpha_to``): ε̂ is then read off the output with ᾱ of that level, as
    the model defines it, and ``x̂_0 = (x − sqrt(1 − ᾱ_from)·ε̂) / sqrt(ᾱ_from)``, which is what ComfyUI's
    denoiser gives at that level (for ε models both readings are the same)."""
    if alpha_eval is None:
        x0, eps = predict_x0_eps(x, out, alpha_from, prediction_type)
    else:
        eps = predict_x0_eps(x, out, alpha_eval, prediction_type)[1]
        a_from = _alpha(alpha_from, x)
        x0 = (x - (1 - a_from).sqrt() * eps) / a_from.sqrt()
    a = _alpha(alpha_to, x)
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


def inversion_input_scale(sigma_from: float, sigma_to: float) -> float:
    """Factor bringing a sigma-space latent at ``sigma_from`` to the one a model at ``sigma_to`` must see.

    ComfyUI feeds its UNet ``x / sqrt(1 + σ²)`` at level σ; DDIM inversion evaluates the UNet at the
    *next* timestep on the *current* VP latent ``x / sqrt(1 + σ_from²)``, so the sigma-space input is
    rescaled by ``sqrt((1 + σ_to²) / (1 + σ_from²))`` first.
    """
    return math.sqrt((1.0 + float(sigma_to) ** 2) / (1.0 + float(sigma_from) ** 2))
