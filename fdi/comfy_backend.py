"""ComfyUI UNet backend: FDI guidance as ``ModelPatcher`` patches, and DDIM inversion — plain torch.

This module never imports ComfyUI: it implements the protocols ComfyUI calls (the
``transformer_options`` patches of its ``openaimodel`` UNet, the k-diffusion sampler signature, the
``unet_config`` dict), so it is unit-tested without ComfyUI; ``nodes/`` installs these objects on a
cloned ``ModelPatcher``. The guidance math is :mod:`fdi.guidance`'s and the step rules are
:mod:`fdi.sampling`'s, so this backend and the diffusers one give the same numbers.

Injection points for a UNet with ``n`` res-blocks per level (SD 2.x: ``n = 2``): the encoder
residual ``r_i`` after input block ``(n+1)·i + n`` (2, 5, 8, 11), the decoder modulation on ``h``
entering output block ``(n+1)·(j+1)`` (3, 6, 9).

Which steps are guided is decided with tensor arithmetic only (a 0/1 gate per entry, from the current
sigma and the sampler's ``sample_sigmas``): no host sync, no Python branch on a tensor. ``add_guidance``
also installs an ``apply_model`` wrapper (:func:`decide_scales`) that computes each entry's
``strength · gate`` *outside* the UNet's forward and hands the patches one tensor: a forward compiled by
ComfyUI's ``TorchCompileModel`` (which drops guards on ``transformer_options``) then reads the strength,
the window and the schedule as tensor values, so a new strength or step count is never served by a
stale graph, and it traces without graph breaks or recompiles.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from .adapter import FDIGuidance, Modulation
from .errors import FDIError
from .guidance import StepInvariantCache, fit_residual, modulate, targets_coefficients
from .sampling import guided_step_range, inversion_input_scale
from .tiles import crop_residual

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


def check_unet_for_adapter(
    unet_config: Optional[dict], channels: Sequence[int], base_family: str = "", prediction_type: Optional[str] = None
) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """Check that a ComfyUI UNet (its ``model_config.unet_config``) can take an adapter's guidance.

    Needs an ``openaimodel`` UNet with four levels of equal res-block count whose widths are the
    adapter's ``channels``; for an adapter of an SD 2.x family (``sd2.1-base``, ``sd2.1-v``) the
    cross-attention width must also be 1024 (an SD 1.x UNet has the same widths but another text
    encoder). Returns :func:`block_indices` for it. Raises :class:`FDIError` naming what the MODEL
    looks like (SDXL, SD 1.x, not a UNet…) otherwise. ``prediction_type`` (the MODEL's: ``epsilon``,
    ``v_prediction``, or another ComfyUI model type) must match the family's suffix (``-base``: epsilon,
    ``-v``: v-prediction) when both are known.
    """
    channels = tuple(int(c) for c in channels)
    if not isinstance(unet_config, dict) or "model_channels" not in unet_config or "channel_mult" not in unet_config:
        raise FDIError(
            "the MODEL is not a Stable Diffusion UNet (no model_channels/channel_mult: "
            "a DiT/flow model such as SD3 or Flux?); "
            "FDI adapters guide SD 2.x UNets, load an SD 2.1 checkpoint"
        )
    ctx = unet_config.get("context_dim")
    family = CONTEXT_FAMILIES.get(ctx, f"a UNet with cross-attention width {ctx}")
    mult = tuple(unet_config["channel_mult"])
    widths = tuple(int(unet_config["model_channels"]) * int(m) for m in mult)
    if widths != channels:
        raise FDIError(
            f"the MODEL ({family}) has UNet level widths {widths}, the adapter needs {channels} "
            f"(it was trained for {base_family or 'another model'}); load an SD 2.1 "
            "checkpoint, or use an adapter trained for this model"
        )
    nrb = unet_config.get("num_res_blocks", 2)
    if isinstance(nrb, (list, tuple)):
        if len(set(int(x) for x in nrb)) != 1:
            raise FDIError(
                f"the MODEL's UNet levels have different block counts {list(nrb)}; FDI guidance "
                "needs an SD 2.x-shaped UNet"
            )
        nrb = int(nrb[0])
    if base_family.startswith("sd2") and ctx != 1024:
        raise FDIError(
            f"the MODEL is {family} (cross-attention width {ctx}), not SD 2.x (1024), "
            f"but the adapter was trained for {base_family}; "
            "load an SD 2.1 checkpoint"
        )
    if int(unet_config.get("in_channels", 4)) != 4:
        raise FDIError(
            f"the MODEL's UNet takes {unet_config.get('in_channels')} latent channels "
            "(an inpainting/depth variant?); FDI guidance needs a 4-channel SD 2.x "
            "UNet"
        )
    if prediction_type is not None and base_family:
        wanted = "v_prediction" if base_family.endswith("-v") else "epsilon" if base_family.endswith("-base") else None
        if wanted is not None and prediction_type != wanted:
            kind = {"epsilon": "an epsilon (SD 2.1 base, 512 px)", "v_prediction": "a v-prediction (SD 2.1, 768 px)"}
            raise FDIError(
                f"the adapter was trained for {base_family} ({kind[wanted]} model) but the "
                f"MODEL is {kind.get(prediction_type, prediction_type)} "
                f"model; load the matching checkpoint or use an adapter trained for it"
            )
    return block_indices(nrb)


# ------------------------------------------------------------------------------------------------
# the patch

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
            f"end_percent ({end}) is smaller than start_percent ({start}); guidance "
            "would never be active, set end_percent >= start_percent"
        )
    return float(percent_to_sigma(start)), float(percent_to_sigma(end))


class _FDIPatchBase:
    """Shared state and ComfyUI patch protocol (``to``, ``models``, ``__deepcopy__``).

    Immutable: ComfyUI deep-copies ``model_options`` on every ``clone()``, and ``__deepcopy__``
    returns the patch itself, so cloning a MODEL never copies guidance tensors. Entries with a
    :class:`SharedGuidance` are read where ComfyUI put its one copy (``models()`` hands ComfyUI what
    this patch reads: the input patch the residuals, the output patch the modulation targets)."""

    #: which part of a guidance the patch reads (:class:`GuidanceTensors` part)
    part = ""

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
        self._moves: tuple = ()

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

    def _refresh_cache(self) -> None:
        """Drop cached values derived from shared tensors that ComfyUI has moved since (they would pin the old copy)."""
        if torch.compiler.is_compiling():
            return
        moves = tuple(getattr(e.shared, self.part).moves if e.shared is not None else -1 for e in self.entries)
        if moves != self._moves:
            self._cache.clear()
            self._moves = moves

    def __deepcopy__(self, memo: dict) -> "_FDIPatchBase":
        return self

    def __copy__(self) -> "_FDIPatchBase":
        return self

    def to(self, device_or_dtype) -> "_FDIPatchBase":
        """ComfyUI's ``model_patches_to``. Shared entries are left where they are (ComfyUI moves their one copy
        through ``models()``); an entry without one gets only the part this patch reads moved (once). A dtype is
        ignored: the math casts per feature."""
        if isinstance(device_or_dtype, torch.dtype) or device_or_dtype is None:
            return self
        device = torch.device(device_or_dtype)

        def there(t: torch.Tensor) -> bool:
            return t.device == device or (device.index is None and t.device.type == device.type)

        entries, moved = [], False
        for e in self.entries:
            g = e.guidance
            if e.shared is None and self.part == "residuals" and not all(there(t) for t in g.residuals):
                g = FDIGuidance([t.to(device) for t in g.residuals], g.modulations, g.refined)
            elif e.shared is None and self.part == "modulations" and not all(there(m.mean) for m in g.modulations):
                mods = [Modulation(m.mean.to(device), m.std.to(device), m.gate.to(device)) for m in g.modulations]
                g = FDIGuidance(g.residuals, mods, g.refined)
            moved = moved or g is not e.guidance
            entries.append(e if g is e.guidance else replace(e, guidance=g))
        return type(self)(entries, self.input_blocks, self.output_blocks) if moved else self

    def models(self) -> list:
        """What ComfyUI must load with the UNet for this patch: the models of the shared part it reads (each once)."""
        out: list = []
        for e in self.entries:
            if e.shared is not None:
                for m in getattr(e.shared, "residual_models" if self.part == "residuals" else "modulation_models"):
                    if not any(m is o for o in out):
                        out.append(m)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.entries)} guidance entr{'y' if len(self.entries) == 1 else 'ies'})"


class FDIInputPatch(_FDIPatchBase):
    """``input_block_patch``: ``h ← h + Σ_k strength_k · gate_k · fit(r_k,i)`` after input block ``input_blocks[i]``.

    In a tiled model call (``transformer_options["fdi_tile"]``, the tile's latent offset) each residual is first cut
    to that tile (:func:`fdi.tiles.crop_residual`); otherwise a residual of another size than the feature is an
    error (:func:`fdi.guidance.fit_spatial`). Residuals are not cached: the crop is a view, so a call costs a cast
    and a multiply-add per entry and holds no memory after it."""

    part = "residuals"

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
    (each entry's coefficients times its scale, summed: the composite formula; the coefficients are cached
    per step-invariant key and dropped when ComfyUI moves the shared targets)."""

    part = "modulations"

    def __call__(self, h: torch.Tensor, hsp: torch.Tensor, transformer_options: dict):
        block = transformer_options.get("block")
        if not block or block[0] != "output" or block[1] not in self.output_blocks:
            return h, hsp
        point = self.output_blocks.index(block[1])
        self._refresh_cache()
        total = None
        batch, channels = h.shape[0], h.shape[1]
        for i, entry, scale in self.scales(transformer_options):
            m = entry.modulation(point)
            cached = self._cache.get(
                ("m", i, point, batch, channels, h.device),
                lambda m=m: targets_coefficients([(m, 1.0)], 1.0, batch, channels, h.device, point),
            )
            coeffs = tuple(c * _as(scale, c) for c in cached)
            total = coeffs if total is None else tuple(a + b for a, b in zip(total, coeffs))
        return (h if total is None else modulate(h, total)), hsp


def tile_guidance(guidance: FDIGuidance, level: int, offset: Tuple[int, int], size) -> FDIGuidance:
    """``guidance`` with residual ``level`` cropped to the tile at latent ``offset``
    (:func:`fdi.tiles.crop_residual`)."""
    residuals = list(guidance.residuals)
    residuals[level] = crop_residual(residuals[level], level, offset, size)
    return FDIGuidance(residuals, guidance.modulations, guidance.refined)


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
