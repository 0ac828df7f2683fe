"""ComfyUI UNet backend: FDI guidance as ``ModelPatcher`` patches, and DDIM inversion — plain torch.

This module never imports ComfyUI. It implements the *protocols* ComfyUI calls (the
``transformer_options`` patches of its ``openaimodel`` UNet, the k-diffusion sampler signature, the
``unet_config`` dict), so everything here is unit-tested without ComfyUI; the nodes in ``nodes/``
only install these objects on a cloned ``ModelPatcher``. The math is :mod:`fdi.guidance`'s, called
unchanged, so the ComfyUI and diffusers backends agree (DESIGN §3).

Injection points (DESIGN §3), for a UNet whose four levels have ``n`` res-blocks each (SD 2.x:
``n = 2``):

* encoder residual ``r_i`` (``i = 0..3``): ``input_block_patch`` after input block
  ``(n+1)·i + n`` — blocks 2, 5, 8, 11 for SD 2.x, i.e. after the last resnet/attention pair of
  each level and before its skip is stored (``hs.append``), like diffusers'
  ``down_intrablock_additional_residuals``;
* decoder modulation ``j`` (``j = 0..2``): ``output_block_patch`` on ``h`` entering output block
  ``(n+1)·(j+1)`` — blocks 3, 6, 9 for SD 2.x, i.e. the outputs of diffusers' ``up_blocks[j]``.

Decisions:

* **One patch per MODEL, entries add up.** Each ``FDIApplyGuidance`` adds an entry
  ``(guidance, strength, sigma window)`` to the MODEL's FDI patch (a new patch object replaces the
  old one on the clone). At a step, the entries whose window contains the current sigma are passed
  together to :func:`fdi.guidance.apply_residual` / :func:`~fdi.guidance.apply_modulation` with
  their strengths as weights, so chaining Apply nodes is exactly the "composite" formula, not a
  sequence of AdaINs. A single active entry is passed as weight 1 with its strength as the global
  factor, the call the diffusers backend makes, so one adapter gives bit-identical guidance deltas
  in both backends.
* **Sigma window**: an entry is active when ``sigma_end <= sigma <= sigma_start`` where the bounds
  come from ``model_sampling.percent_to_sigma(start/end_percent)`` (ComfyUI's own convention, as
  in its ControlNet and Deep-Shrink code); ``sigma`` is ``transformer_options["sigmas"][0]``.
  ``FDIRestore`` instead guides the sampling steps ``k < guidance_end · steps``, the rule of
  :mod:`fdi.pipeline`, through :func:`step_window` (a sigma window that contains exactly those
  steps), and inverts on :func:`restore_inversion_sigmas`, the pipeline's inversion timesteps; so
  the node and ``python -m fdi restore`` guide the same steps.
* **Batches**: ComfyUI runs cond and uncond (CFG) as whole latent batches one after the other,
  so the UNet batch is ``chunks × B``; :func:`fdi.guidance.fit_batch` tiles the guidance over it,
  so both halves are guided, and a guidance of batch 1 broadcasts.
* **Patch objects** are immutable views on the guidance tensors: ``copy.deepcopy`` (ComfyUI
  deep-copies ``model_options`` on every ``clone()``) returns the same object, so cloning a MODEL
  never copies tensors. ``to(device)`` returns a patch whose tensors live on ``device`` (moved once,
  not per step); ``to(dtype)`` returns the patch unchanged — the math casts to the feature's dtype
  and keeps AdaIN statistics in float32. Each patch memoises the step-invariant part of the math
  (fitted residuals, modulation coefficients; :class:`fdi.guidance.StepInvariantCache`) per set of
  active entries and feature shape, so a sampling step only adds and multiply-adds. ``models()`` is empty: the guidance was computed
  before sampling, the adapter is not needed while sampling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .adapter import FDIGuidance, Modulation
from .errors import FDIError
from .guidance import StepInvariantCache, guided_step_count, inversion_timestep_grid, modulate

#: name of the patch lists in ``transformer_options["patches"]``
INPUT_PATCH_KEY = "input_block_patch"
OUTPUT_PATCH_KEY = "output_block_patch"

#: UNet context widths of the Stable Diffusion families, for error messages
CONTEXT_FAMILIES = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}


# ------------------------------------------------------------------------------------------------
# which blocks


def block_indices(num_res_blocks: int) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """``(input blocks after which r_1..r_4 are added, output blocks whose input h is modulated)``.

    ``num_res_blocks = 2`` (SD 1.x/2.x) gives ``((2, 5, 8, 11), (3, 6, 9))``.
    """
    n = int(num_res_blocks)
    return tuple((n + 1) * i + n for i in range(4)), tuple((n + 1) * j for j in (1, 2, 3))


def check_unet_for_adapter(unet_config: Optional[dict], channels: Sequence[int], base_family: str = "") -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """Check that a ComfyUI UNet (its ``model_config.unet_config``) can take an adapter's guidance.

    Needs an ``openaimodel`` UNet with four levels of equal res-block count whose widths are the
    adapter's ``channels``; for an adapter of an SD 2.x family (``sd2.1-base``, ``sd2.1-v``) the
    cross-attention width must also be 1024 (an SD 1.x UNet has the same widths but another text
    encoder). Returns :func:`block_indices` for it. Raises :class:`FDIError` naming what the MODEL
    looks like (SDXL, SD 1.x, not a UNet…) otherwise.
    """
    channels = tuple(int(c) for c in channels)
    if not isinstance(unet_config, dict) or "model_channels" not in unet_config or "channel_mult" not in unet_config:
        raise FDIError(
            "the MODEL is not a Stable Diffusion UNet (no model_channels/channel_mult: a DiT/flow model such as SD3 or Flux?); "
            f"FDI adapters guide SD 2.x UNets, load an SD 2.1 checkpoint"
        )
    ctx = unet_config.get("context_dim")
    family = CONTEXT_FAMILIES.get(ctx, f"a UNet with cross-attention width {ctx}")
    mult = tuple(unet_config["channel_mult"])
    widths = tuple(int(unet_config["model_channels"]) * int(m) for m in mult)
    if widths != channels:
        raise FDIError(
            f"the MODEL ({family}) has UNet level widths {widths}, the adapter needs {channels} "
            f"(it was trained for {base_family or 'another model'}); load an SD 2.1 checkpoint, or use an adapter trained for this model"
        )
    nrb = unet_config.get("num_res_blocks", 2)
    if isinstance(nrb, (list, tuple)):
        if len(set(int(x) for x in nrb)) != 1:
            raise FDIError(f"the MODEL's UNet levels have different block counts {list(nrb)}; FDI guidance needs an SD 2.x-shaped UNet")
        nrb = int(nrb[0])
    if base_family.startswith("sd2") and ctx != 1024:
        raise FDIError(
            f"the MODEL is {family} (cross-attention width {ctx}), not SD 2.x (1024), but the adapter was trained for {base_family}; "
            "load an SD 2.1 checkpoint"
        )
    if int(unet_config.get("in_channels", 4)) != 4:
        raise FDIError(f"the MODEL's UNet takes {unet_config.get('in_channels')} latent channels (an inpainting/depth variant?); FDI guidance needs a 4-channel SD 2.x UNet")
    return block_indices(nrb)


# ------------------------------------------------------------------------------------------------
# the patch


@dataclass(frozen=True)
class GuidanceEntry:
    """One Apply node's contribution: guidance, its strength and its sigma window."""

    guidance: FDIGuidance
    strength: float
    sigma_start: float
    sigma_end: float

    def active(self, sigma: float) -> bool:
        return self.sigma_end <= sigma <= self.sigma_start


def sigma_window(percent_to_sigma: Callable[[float], float], start_percent: float, end_percent: float) -> Tuple[float, float]:
    """``(sigma_start, sigma_end)`` of a ``[start, end]`` percent window (refuses ``end < start``)."""
    start, end = float(start_percent), float(end_percent)
    if not (0.0 <= start <= 1.0 and 0.0 <= end <= 1.0):
        raise FDIError(f"start_percent and end_percent must be between 0 and 1, got {start} and {end}")
    if end < start:
        raise FDIError(f"end_percent ({end}) is smaller than start_percent ({start}); guidance would never be active, set end_percent >= start_percent")
    return float(percent_to_sigma(start)), float(percent_to_sigma(end))


def _current_sigma(transformer_options: dict) -> Optional[float]:
    sigmas = transformer_options.get("sigmas")
    if sigmas is None:
        return None
    if isinstance(sigmas, torch.Tensor):
        return float(sigmas.reshape(-1)[0])
    return float(sigmas[0] if isinstance(sigmas, (list, tuple)) else sigmas)


class _FDIPatchBase:
    """Shared state and ComfyUI patch protocol (``to``, ``models``, ``__deepcopy__``)."""

    def __init__(self, entries: Sequence[GuidanceEntry], input_blocks: Sequence[int] = (2, 5, 8, 11),
                 output_blocks: Sequence[int] = (3, 6, 9)):
        self.entries: Tuple[GuidanceEntry, ...] = tuple(entries)
        self.input_blocks = tuple(int(b) for b in input_blocks)
        self.output_blocks = tuple(int(b) for b in output_blocks)
        self._cache = StepInvariantCache()

    def active(self, transformer_options: dict) -> List[int]:
        """Indices of the entries active at the current sigma (all if unknown)."""
        sigma = _current_sigma(transformer_options)
        return [i for i, e in enumerate(self.entries) if sigma is None or e.active(sigma)]

    def math_arguments(self, transformer_options: dict) -> Tuple[List[Tuple[FDIGuidance, float]], float, tuple]:
        """``(guidances, strength, key)`` to pass to :mod:`fdi.guidance` at this step.

        One active entry is passed as ``[(g, 1.0)]`` with its strength as the global ``strength`` —
        exactly the call the diffusers backend makes, so both give bit-identical deltas; several
        are passed with their strengths as weights and ``strength = 1`` (the composite formula).
        ``key`` (the active entries' indices) names this guidance set in the patch's cache.
        """
        idx = self.active(transformer_options)
        if len(idx) == 1:
            e = self.entries[idx[0]]
            return [(e.guidance, 1.0)], e.strength, tuple(idx)
        return [(self.entries[i].guidance, self.entries[i].strength) for i in idx], 1.0, tuple(idx)

    def with_entry(self, entry: GuidanceEntry) -> "_FDIPatchBase":
        """A new patch with one more entry (this one is left unchanged)."""
        return type(self)(self.entries + (entry,), self.input_blocks, self.output_blocks)

    def __deepcopy__(self, memo: dict) -> "_FDIPatchBase":
        # ComfyUI deep-copies model_options on every clone; the patch is immutable, share it.
        return self

    def __copy__(self) -> "_FDIPatchBase":
        return self

    def to(self, device_or_dtype) -> "_FDIPatchBase":
        """Move the guidance tensors to a device (a dtype is ignored, see the module doc)."""
        if isinstance(device_or_dtype, torch.dtype):
            return self
        device = torch.device(device_or_dtype)
        if all(_on_device(e.guidance, device) for e in self.entries):
            return self
        entries = [GuidanceEntry(_move(e.guidance, device), e.strength, e.sigma_start, e.sigma_end) for e in self.entries]
        return type(self)(entries, self.input_blocks, self.output_blocks)

    def models(self) -> list:
        """No model to load while sampling: the adapter ran before."""
        return []

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.entries)} guidance entr{'y' if len(self.entries) == 1 else 'ies'})"


def _tensors(g: FDIGuidance):
    yield from g.residuals
    for m in g.modulations:
        yield from m


def _on_device(g: FDIGuidance, device: torch.device) -> bool:
    return all(t.device.type == device.type and (device.index is None or t.device.index == device.index) for t in _tensors(g))


def _move(g: FDIGuidance, device: torch.device) -> FDIGuidance:
    return FDIGuidance(residuals=[r.to(device) for r in g.residuals],
                       modulations=[Modulation(m.mean.to(device), m.std.to(device), m.gate.to(device)) for m in g.modulations],
                       refined=list(g.refined))


class FDIInputPatch(_FDIPatchBase):
    """``input_block_patch``: ``h ← h + Σ strength_k · fit(r_k,i)`` after input block ``input_blocks[i]``."""

    def __call__(self, h: torch.Tensor, transformer_options: dict) -> torch.Tensor:
        block = transformer_options.get("block")
        if not block or block[0] != "input" or block[1] not in self.input_blocks:
            return h
        guidances, strength, key = self.math_arguments(transformer_options)
        if not guidances:
            return h
        return h + self._cache.residual(h, self.input_blocks.index(block[1]), guidances, strength, key)


class FDIOutputPatch(_FDIPatchBase):
    """``output_block_patch``: AdaIN modulation of ``h`` entering output block ``output_blocks[j]``."""

    def __call__(self, h: torch.Tensor, hsp: torch.Tensor, transformer_options: dict):
        block = transformer_options.get("block")
        if not block or block[0] != "output" or block[1] not in self.output_blocks:
            return h, hsp
        guidances, strength, key = self.math_arguments(transformer_options)
        if not guidances:
            return h, hsp
        return modulate(h, self._cache.coefficients(h, self.output_blocks.index(block[1]), guidances, strength, key)), hsp


def add_guidance(model_options: dict, entry: GuidanceEntry, input_blocks: Sequence[int], output_blocks: Sequence[int]) -> None:
    """Install or extend the FDI patches in (a clone's) ``model_options``, in place.

    An existing FDI patch pair is replaced by one with the extra entry (its block layout must be
    the same); other patches are kept in their order.
    """
    to = model_options.setdefault("transformer_options", {})
    patches = to.setdefault("patches", {})
    for key, cls in ((INPUT_PATCH_KEY, FDIInputPatch), (OUTPUT_PATCH_KEY, FDIOutputPatch)):
        current = list(patches.get(key, []))
        existing = [p for p in current if isinstance(p, cls)]
        if existing:
            old = existing[0]
            new = cls(old.entries + (entry,), old.input_blocks, old.output_blocks)
            current = [new if p is old else p for p in current if not (isinstance(p, cls) and p is not old)]
        else:
            current.append(cls([entry], input_blocks, output_blocks))
        patches[key] = current


def fdi_patches(model_options: dict) -> Dict[str, Optional[_FDIPatchBase]]:
    """The FDI patches installed in ``model_options`` (``None`` where absent)."""
    patches = model_options.get("transformer_options", {}).get("patches", {})
    out: Dict[str, Optional[_FDIPatchBase]] = {}
    for key, cls in ((INPUT_PATCH_KEY, FDIInputPatch), (OUTPUT_PATCH_KEY, FDIOutputPatch)):
        found = [p for p in patches.get(key, []) if isinstance(p, cls)]
        out[key] = found[0] if found else None
    return out


# ------------------------------------------------------------------------------------------------
# DDIM inversion as a k-diffusion sampler


@torch.no_grad()
def ddim_inversion_sampler(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: Optional[dict] = None,
                           callback: Optional[Callable[[dict], None]] = None, disable=None,
                           interrupt: Optional[Callable[[], None]] = None) -> torch.Tensor:
    """Deterministic DDIM inversion in k-diffusion form (the signature ComfyUI's ``KSAMPLER`` calls).

    ``sigmas`` ascend from the clean level (``0``) to the start level of sampling; ``model(x, sigma)``
    returns the denoised prediction. Each step goes from ``s_cur`` to the higher ``s_next`` along
    the probability-flow ODE with the derivative evaluated at the *target* level::

        d = (x − model(x, s_next)) / s_next          x ← x + d · (s_next − s_cur)

    This is the usual DDIM inversion (the noise predicted at ``t_{i+1}`` for the latent at ``t_i``;
    it avoids evaluating the model at sigma 0) and exactly reverses, up to that approximation,
    ComfyUI's ``ddim`` sampler (Euler in sigma space) on the same ``ddim_uniform`` sigmas: so
    ``KSamplerAdvanced`` with ``add_noise`` disabled continues from the result. ``interrupt`` is
    called before every step (ComfyUI's cancel).
    """
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        if interrupt is not None:
            interrupt()
        s_cur, s_next = sigmas[i], sigmas[i + 1]
        if s_next <= 0:
            continue
        denoised = model(x, s_next * s_in, **extra_args)
        d = (x - denoised) / s_next
        if callback is not None:
            callback({"x": x, "i": i, "sigma": s_next, "sigma_hat": s_next, "denoised": denoised})
        x = x + d * (s_next - s_cur)
    return x


def step_window(sampling_sigmas: torch.Tensor, guidance_end: float) -> Tuple[float, float]:
    """``(sigma_start, sigma_end)`` guiding sampling steps ``k < guidance_end · steps`` of a schedule.

    This is the step-count rule of :mod:`fdi.pipeline` (the diffusers backend), expressed as a sigma
    window for the ComfyUI patch: the lower bound lies halfway between the last guided step's sigma
    and the next one's, so float noise cannot move a step in or out. ``FDIRestore`` uses it, so it
    guides the same steps as ``python -m fdi restore``; ``FDIApplyGuidance`` uses ComfyUI's
    ``percent_to_sigma`` instead (see the module doc).
    """
    s = [float(x) for x in torch.as_tensor(sampling_sigmas).flatten()]
    steps = len(s) - 1
    if steps < 1:
        raise FDIError("the schedule has no steps; use at least 1 step")
    if not 0.0 <= float(guidance_end) <= 1.0:
        raise FDIError(f"guidance_end must be between 0 and 1, got {guidance_end}")
    guided = guided_step_count(steps, guidance_end)
    if guided == 0:
        return float("inf"), float("inf")  # never active
    return float("inf"), (s[guided - 1] + s[guided]) / 2


def restore_inversion_sigmas(sampling_sigmas: torch.Tensor, inversion_steps: int, timestep: Callable, sigma: Callable) -> torch.Tensor:
    """Ascending inversion sigmas ending at the first sampling sigma, as :mod:`fdi.pipeline` inverts.

    The inversion visits the timesteps ``round(linspace(t_{N−1}, t_0, inversion_steps))`` between
    the last non-zero and the first sampling timestep (``timestep``/``sigma`` convert with the
    model's schedule), starting from the clean latent (sigma 0): exactly the sampling sigmas in
    reverse when ``inversion_steps`` equals the sampling steps.
    """
    s = torch.as_tensor(sampling_sigmas, dtype=torch.float32).flatten()
    positive = s[s > 0]
    if positive.numel() == 0 or int(inversion_steps) < 1:
        raise FDIError(f"need at least one sampling and one inversion step, got {positive.numel()} and {inversion_steps}")
    if int(inversion_steps) == positive.numel():
        return inversion_sigmas(s)
    t_top, t_low = float(timestep(positive[:1])[0]), float(timestep(positive[-1:])[0])
    ts = inversion_timestep_grid(t_low, t_top, int(inversion_steps))
    out = torch.cat([torch.zeros(1), sigma(ts.float()).float().flatten()])
    out[-1] = positive[0]  # land exactly where sampling starts
    return out


def inversion_sigmas(sampling_sigmas: torch.Tensor) -> torch.Tensor:
    """Ascending sigmas for :func:`ddim_inversion_sampler` from a descending sampling schedule.

    ``[σ_0 > … > σ_{N−1} > 0]`` (what ``KSamplerAdvanced`` will use) becomes ``[0, σ_{N−1}, …, σ_0]``;
    a schedule that does not end at 0 gets a 0 first.
    """
    s = torch.as_tensor(sampling_sigmas, dtype=torch.float32).flatten()
    if s.numel() == 0:
        raise FDIError("the schedule has no steps; use at least 1 step")
    s = torch.flip(s, [0])
    if float(s[0]) != 0.0:
        s = torch.cat([s.new_zeros(1), s])
    return s
