"""ComfyUI UNet backend: FDI guidance as ``ModelPatcher`` patches, and DDIM inversion — plain torch.

This module never imports ComfyUI: it implements the protocols ComfyUI calls (the
``transformer_options`` patches of its ``openaimodel`` UNet, the k-diffusion sampler signature, the
``unet_config`` dict); ``nodes/`` installs these objects on a
cloned ``ModelPatcher``. The guidance math is :mod:`fdi.guidance`'s and the step rules are
:mod:`fdi.sampling`'s, so this backend and the diffusers one give the same numbers.

The public names of the backend are these (:data:`__all__`); the UNet checks live in :mod:`fdi.comfy_unet`,
the entries and their step gates in :mod:`fdi.comfy_guidance`. ``add_guidance`` also installs an
``apply_model`` wrapper (:func:`decide_scales`) that computes each entry's ``strength · gate`` *outside* the
UNet's forward and hands the patches one tensor, so a forward compiled by ComfyUI's ``TorchCompileModel``
reads strength, window and schedule as tensor values (docs/design.md, "Compilation").
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .comfy_guidance import Gate, GuidanceEntry, sigma_window
from .comfy_unet import block_indices, check_unet_for_adapter, comfy_family
from .guidance import StepInvariantCache, fit_residual, modulate, targets_coefficients
from .sampling import inversion_input_scale
from .tiles import crop_residual

__all__ = [
    "APPLY_MODEL_WRAPPERS",
    "INPUT_PATCH_KEY",
    "OUTPUT_PATCH_KEY",
    "SCALES_KEY",
    "TILE_KEY",
    "WRAPPER_KEY",
    "FDIInputPatch",
    "FDIOutputPatch",
    "Gate",
    "GuidanceEntry",
    "add_guidance",
    "block_indices",
    "check_unet_for_adapter",
    "comfy_family",
    "ddim_inversion_sampler",
    "decide_scales",
    "fdi_patches",
    "sigma_window",
]

#: name of the patch lists in ``transformer_options["patches"]``
INPUT_PATCH_KEY = "input_block_patch"
OUTPUT_PATCH_KEY = "output_block_patch"

#: ``transformer_options`` key of the per-entry scales decided outside the forward (:func:`decide_scales`)
SCALES_KEY = "fdi_scales"
#: ComfyUI's ``WrappersMP.APPLY_MODEL`` and the key our wrapper is registered under
APPLY_MODEL_WRAPPERS = "apply_model"
WRAPPER_KEY = "fdi.decide_scales"
#: ``transformer_options`` key of a tiled model call: the tile's latent offset ``(y, x)`` (:mod:`fdi.tiles`)
TILE_KEY = "fdi_tile"

# ------------------------------------------------------------------------------------------------
# the patch


class _FDIPatchBase:
    """Shared state and ComfyUI patch protocol (``to``, ``__deepcopy__``).

    Immutable: ComfyUI deep-copies ``model_options`` on every ``clone()``, and ``__deepcopy__``
    returns the patch itself, so cloning a MODEL never copies guidance tensors. The guidance tensors stay where
    they were made; each call copies what it reads to the feature's device (moved per use, as ComfyUI's weight
    patches are), so the patch hands ComfyUI no model to load and keeps nothing on a device between samplings."""

    def __init__(
        self,
        entries: Sequence[GuidanceEntry],
        input_blocks: Sequence[int] = (2, 5, 8, 11),
        output_blocks: Sequence[int] = (3, 6, 9),
    ):
        self.entries: Tuple[GuidanceEntry, ...] = tuple(entries)
        self.input_blocks = tuple(int(b) for b in input_blocks)
        self.output_blocks = tuple(int(b) for b in output_blocks)
        self._cache = StepInvariantCache()

    def with_entry(self, entry: GuidanceEntry) -> "_FDIPatchBase":
        """A new patch with one more entry (this one is left unchanged)."""
        return type(self)(self.entries + (entry,), self.input_blocks, self.output_blocks)

    def scales(self, transformer_options: dict) -> List[Tuple[int, GuidanceEntry, Gate]]:
        """``(index, entry, strength · gate)`` per entry for the current model call.

        A call multiplies each entry's (weight-1) contribution by this scale and sums over entries. One entry at
        scale ``s`` is bit-identical to the diffusers backend's call; several give the composite formula with
        their strengths as weights."""
        decided = transformer_options.get(SCALES_KEY)
        if isinstance(decided, torch.Tensor) and decided.shape == (len(self.entries),):
            return [(i, e, decided[i]) for i, e in enumerate(self.entries)]
        out = []
        for i, e in enumerate(self.entries):
            gate = e.gate(transformer_options)
            out.append((i, e, e.strength * gate if isinstance(gate, torch.Tensor) else e.strength * float(gate)))
        return out

    def decide(self, transformer_options: dict, device: torch.device) -> torch.Tensor:
        """``strength · gate`` of every entry for the current model call, float32 ``[n_entries]`` on ``device``
        (tensor math only, no host sync)."""
        options = {k: v for k, v in transformer_options.items() if k != SCALES_KEY}
        return torch.stack(
            [torch.as_tensor(scale, dtype=torch.float32).to(device).reshape(()) for _, _, scale in self.scales(options)]
        )

    def __deepcopy__(self, memo: dict) -> "_FDIPatchBase":
        return self

    def __copy__(self) -> "_FDIPatchBase":
        return self

    def to(self, device_or_dtype) -> "_FDIPatchBase":
        """ComfyUI's ``model_patches_to`` (on every load of the MODEL, and to the offload device when it is unloaded):
        nothing moves (the guidance is read where it is, per use). A device drops the cached modulation coefficients,
        so no copy derived for a device outlives the MODEL's stay there."""
        if isinstance(device_or_dtype, (str, torch.device)):
            self._cache.clear()
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.entries)} guidance entr{'y' if len(self.entries) == 1 else 'ies'})"


class FDIInputPatch(_FDIPatchBase):
    """``input_block_patch``: ``h ← h + Σ_k strength_k · gate_k · fit(r_k,i)`` after input block ``input_blocks[i]``.

    In a tiled model call (``transformer_options["fdi_tile"]``, the tile's latent offset) each residual is first cut
    to that tile (:func:`fdi.tiles.crop_residual`); otherwise a residual of another size than the feature is an
    error (:func:`fdi.guidance.fit_spatial`). Residuals are not cached: the crop is a view, and a call copies only
    that crop to the feature's device and dtype (:func:`fdi.guidance.fit_residual`), a multiply-add per entry, and
    holds no memory after it."""

    def __call__(self, h: torch.Tensor, transformer_options: dict) -> torch.Tensor:
        block = transformer_options.get("block")
        if not block or block[0] != "input" or block[1] not in self.input_blocks:
            return h
        level = self.input_blocks.index(block[1])
        tile = transformer_options.get(TILE_KEY)  # a tile's latent offset (y, x): its crop of each residual
        delta = None
        for _, entry, scale in self.scales(transformer_options):
            r = entry.residual(level)
            if tile is not None:
                r = crop_residual(r, level, tile, h.shape[-2:])
            d = fit_residual(r, h, level) * _as(scale, h)
            delta = d if delta is None else delta + d
        return h if delta is None else h + delta


class FDIOutputPatch(_FDIPatchBase):
    """``output_block_patch``: AdaIN modulation of ``h`` entering output block ``output_blocks[j]``
    (each entry's coefficients times its scale, summed: the composite formula; an entry without the visual
    modulator takes no part, and ``h`` is returned as it is when no entry has one). The coefficients (``[B, C]``
    vectors, computed on the feature's device from the targets where they are) are cached per step-invariant key
    and dropped whenever ComfyUI moves the MODEL (:meth:`to`)."""

    def __call__(self, h: torch.Tensor, hsp: torch.Tensor, transformer_options: dict):
        block = transformer_options.get("block")
        if not block or block[0] != "output" or block[1] not in self.output_blocks:
            return h, hsp
        point = self.output_blocks.index(block[1])
        total = None
        batch, channels = h.shape[0], h.shape[1]
        for i, entry, scale in self.scales(transformer_options):
            m = entry.modulation(point)
            if m is None:
                continue
            cached = self._cache.get(
                ("m", i, point, batch, channels, h.device),
                lambda m=m: targets_coefficients([(m, 1.0)], 1.0, batch, channels, h.device, point),
            )
            coeffs = tuple(c * _as(scale, c) for c in cached)
            total = coeffs if total is None else tuple(a + b for a, b in zip(total, coeffs))
        return (h if total is None else modulate(h, total)), hsp


def _as(scale: Gate, like: torch.Tensor) -> Gate:
    """A per-call scale as a multiplier of ``like``: a 0-d float32 tensor on its device (a 0-d tensor does not
    change the product's dtype and multiplies like a Python float), or the float itself."""
    return scale.to(device=like.device, dtype=torch.float32) if isinstance(scale, torch.Tensor) else scale


def decide_scales(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None, **kwargs):
    """ComfyUI ``apply_model`` wrapper: the FDI entries' ``strength · gate`` computed before the UNet's forward and
    passed to the patches as ``transformer_options["fdi_scales"]`` (so a compiled forward reads them as a tensor)."""
    transformer_options = {} if transformer_options is None else transformer_options
    patch = fdi_patches({"transformer_options": transformer_options})[INPUT_PATCH_KEY]
    if patch is not None:
        transformer_options = {**transformer_options, SCALES_KEY: patch.decide(transformer_options, x.device)}
    return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)


def add_guidance(
    model_options: dict, entry: GuidanceEntry, input_blocks: Sequence[int], output_blocks: Sequence[int]
) -> None:
    """Install or extend the FDI patches in (a clone's) ``model_options``, in place, and the :func:`decide_scales`
    wrapper (once).

    An existing FDI patch pair is replaced by one with the extra entry (:meth:`_FDIPatchBase.with_entry`);
    other patches are kept in their order."""
    to = model_options.setdefault("transformer_options", {})
    to.setdefault("wrappers", {}).setdefault(APPLY_MODEL_WRAPPERS, {})[WRAPPER_KEY] = [decide_scales]
    patches = to.setdefault("patches", {})
    for key, cls in ((INPUT_PATCH_KEY, FDIInputPatch), (OUTPUT_PATCH_KEY, FDIOutputPatch)):
        current = list(patches.get(key, []))
        existing = [p for p in current if isinstance(p, cls)]
        if existing:
            old = existing[0]
            new = old.with_entry(entry)
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
def ddim_inversion_sampler(
    model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: Optional[dict] = None,
    callback: Optional[Callable[[dict], None]] = None,
    disable=None,
    interrupt: Optional[Callable[[], None]] = None,
) -> torch.Tensor:
    """Deterministic DDIM inversion in k-diffusion form (the signature ComfyUI's ``KSAMPLER`` calls).

    ``sigmas`` ascend from the clean level (0) to the start level of sampling; ``model(x, σ)``
    returns the denoised prediction of ComfyUI's wrapped model, which feeds its UNet ``x/sqrt(1+σ²)``.
    DDIM inversion evaluates the UNet at the *next* level on the *current* latent, so the input is
    rescaled first (:func:`fdi.sampling.inversion_input_scale`)::

        x' = x · sqrt((1+σ_n²)/(1+σ_c²))     ε = (x' − model(x', σ_n)) / σ_n     x ← x + ε · (σ_n − σ_c)

    which is diffusers' ``DDIMInverseScheduler`` step in sigma space; ComfyUI's ``ddim`` sampler
    (Euler in sigma space) on the reversed sigmas undoes it up to that approximation.
    ``interrupt`` is called before every step (ComfyUI's Cancel).
    """
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        if interrupt is not None:
            interrupt()
        s_cur, s_next = float(sigmas[i]), float(sigmas[i + 1])
        if s_next <= 0:
            continue
        x_in = x * inversion_input_scale(s_cur, s_next)
        denoised = model(x_in, sigmas[i + 1] * s_in, **extra_args)
        eps = (x_in - denoised) / s_next
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i + 1], "sigma_hat": sigmas[i + 1], "denoised": denoised})
        x = x + eps * (s_next - s_cur)
    return x
