"""FDI guidance on a diffusers ``UNet2DConditionModel`` (injection points: docs/design.md), weights untouched.

:class:`DiffusersGuidance` attaches two kinds of hooks and removes them on exit:

* **Encoder residuals** ``r_1..r_L`` (``L`` = 4 for SD 1.5/2.1, 3 for SDXL): a forward *pre*-hook on the UNet
  passes ``strength · Σ_k w_k · r_k,i`` (:func:`fdi.guidance.residual_delta`, fitted to the UNet's feature
  sizes and batch) as ``down_intrablock_additional_residuals`` (:func:`with_residuals`); diffusers adds
  them where ComfyUI's ``input_block_patch`` adds them after input blocks 2, 5, 8(, 11). A down block without
  attention that downsamples (SDXL's first) would get its residual after the downsampler, so for it the list
  carries zeros and a forward hook on its last resnet adds the residual instead (:func:`hooked_levels`).
* **Decoder modulation**: forward hooks on ``up_blocks[0..L-2]`` replace their output ``D`` by
  :func:`fdi.guidance.apply_modulation`'s value (ComfyUI: ``h`` entering output blocks 3, 6(, 9)), with its
  coefficients computed once and cached.

The hooks are inert while :attr:`DiffusersGuidance.active` is ``False`` (the pipeline toggles it per
step); after :meth:`DiffusersGuidance.remove` the UNet computes exactly what it computed before.
For ``torch.compile`` a UNet carries a :class:`GuidanceSlot` instead (:func:`fdi.compile.compile_unet`):
fixed hooks reading a 0/1 gate tensor and guidance buffers of fixed shape per latent shape (the
:data:`SLOT_SHAPES` most recent shapes, none once the guidance is removed).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .adapter import FDIAdapter, FDIGuidance
from .errors import FDIError
from .guidance import (
    StepInvariantCache,
    WeightedGuidance,
    as_weighted,
    modulate,
    modulation_coefficients,
    residual_delta,
)


def unet_level_sizes(height: int, width: int, levels: int = 4) -> List[tuple]:
    """Spatial sizes of the encoder levels for a latent ``height × width`` (stride-2 convs: ceil)."""
    sizes = []
    h, w = height, width
    for _ in range(levels):
        sizes.append((h, w))
        h, w = (h + 1) // 2, (w + 1) // 2
    return sizes


def num_levels(unet: nn.Module) -> int:
    """The UNet's encoder levels ``L`` (its down blocks: 4 for SD 1.5/2.1, 3 for SDXL)."""
    return len(unet.down_blocks)


def hooked_levels(unet: nn.Module) -> Tuple[bool, ...]:
    """Per level, whether its residual goes through a hook on the down block's last resnet (a block without
    attention that downsamples: diffusers would add an intrablock residual after its downsampler)."""
    return tuple(
        not bool(getattr(b, "has_cross_attention", False)) and getattr(b, "downsamplers", None) is not None
        for b in unet.down_blocks
    )


def check_unet(unet: nn.Module) -> None:
    """Raise :class:`FDIError` unless ``unet`` has the SD-like structure the guidance points assume: three or four
    down blocks, at least ``L - 1`` up blocks, resnets in every down block that needs a hook."""
    downs = getattr(unet, "down_blocks", None)
    ups = getattr(unet, "up_blocks", None)
    if downs is None or ups is None or len(downs) not in (3, 4) or len(ups) < len(downs) - 1:
        raise FDIError(
            "the UNet does not have an SD 1.5/2.1 (4 down blocks, 4 up blocks) or SDXL (3 and 3) layout; "
            "FDI adapters work with those UNets only"
        )
    for i, (block, hooked) in enumerate(zip(downs, hooked_levels(unet))):
        if hooked and not len(getattr(block, "resnets", ())):
            raise FDIError(
                f"UNet down block {i} has no attention and no resnets but a downsampler; "
                "FDI adapters support SD 1.5/2.1/SDXL-style UNets only"
            )


def check_adapter_for_unet(adapter: FDIAdapter, unet: nn.Module) -> None:
    """Raise :class:`FDIError` when the adapter's channel layout does not match the UNet's."""
    want = tuple(int(c) for c in unet.config.block_out_channels)
    if tuple(adapter.config.channels) != want:
        raise FDIError(
            f"adapter {adapter.display_name} has channels {tuple(adapter.config.channels)} but the UNet's encoder "
            f"widths are {want}; use an adapter trained for this model (SD 1.5 and SD 2.1 adapters have "
            "(320, 640, 1280, 1280), SDXL adapters (320, 640, 1280))"
        )


def with_residuals(kwargs: dict, ours: List[torch.Tensor]) -> dict:
    """The UNet's keyword arguments with the FDI residuals ``r_1..r_L`` added to its
    ``down_intrablock_additional_residuals`` (summed with any the caller passed, e.g. a T2I-Adapter's)."""
    theirs = kwargs.get("down_intrablock_additional_residuals")
    n = len(ours)
    if theirs is not None:
        theirs = list(theirs)
        if len(theirs) < n:
            raise FDIError(
                f"{len(theirs)} intrablock residuals were passed to the UNet together with FDI guidance, "
                f"which needs {n}; pass one per down block"
            )
        ours = [a + b for a, b in zip(ours, theirs[:n])] + theirs[n:]
    kwargs = dict(kwargs)
    kwargs["down_intrablock_additional_residuals"] = list(ours)  # a fresh list: diffusers pops from it
    return kwargs


def _list_entry(residual: torch.Tensor, hooked: bool, next_size: tuple) -> torch.Tensor:
    """What the intrablock list carries for a level: the residual, or (hooked level) zeros of the downsampled size."""
    if not hooked:
        return residual
    return residual.new_zeros((*residual.shape[:2], *next_size))


def _add_to_output(output, delta: torch.Tensor):
    """A resnet's output plus ``delta`` (resnets return a tensor)."""
    return output + delta


class DiffusersGuidance:
    """Hooks that apply FDI guidance to a diffusers UNet; use as a context manager.

    Args:
        unet: a ``UNet2DConditionModel`` with the SD 2.1 layout (see :func:`check_unet`).
        guidances: ``FDIGuidance`` or ``[(FDIGuidance, weight), …]`` (composite of several adapters).
        strength: global factor on residuals and modulation deltas (0 = no guidance).
        active: whether the guidance applies from the start (the pipeline sets :attr:`active` per step).

    ``with DiffusersGuidance(unet, [(g, 1.0)]): unet(latents, t, text)`` — outside the block the
    UNet is untouched. Assigning :attr:`guidances` swaps the guidance without re-hooking. On a UNet with a
    :class:`GuidanceSlot` (compiled), the guidance goes into the slot and :attr:`active` sets its gate.

    Without autograd, what the hooks add is computed on the first guided call and cached; assign
    :attr:`guidances` or :attr:`strength` (which clears the cache) rather than changing guidance
    tensors in place.
    """

    def __init__(
        self,
        unet: nn.Module,
        guidances: Union[FDIGuidance, Sequence[WeightedGuidance]],
        strength: float = 1.0,
        active: bool = True,
    ):
        check_unet(unet)
        self.unet = unet
        self._guidances = as_weighted(guidances)
        self._strength = float(strength)
        self._active = bool(active)
        self._handles: list = []
        self._cache = StepInvariantCache()
        self._slot: Optional[GuidanceSlot] = None
        #: the residuals of the current call, for the levels whose residual a resnet hook adds
        self._level_residuals: List[torch.Tensor] = []
        self._hooked = hooked_levels(unet)  # per level: residual through a resnet hook (fixed by the UNet's layout)

    @property
    def active(self) -> bool:
        return self._active

    @active.setter
    def active(self, value: bool) -> None:
        self._active = bool(value)
        if self._slot is not None:
            self._slot.set_gate(self._enabled())

    @property
    def guidances(self) -> List[WeightedGuidance]:
        return self._guidances

    @guidances.setter
    def guidances(self, value) -> None:
        self._guidances = as_weighted(value)
        self._cache.clear()
        self._rebind()

    @property
    def strength(self) -> float:
        return self._strength

    @strength.setter
    def strength(self, value: float) -> None:
        self._strength = float(value)
        self._cache.clear()
        self._rebind()

    def _rebind(self) -> None:
        if self._slot is not None:
            self._slot.bind(self._guidances, self._strength)
            self._slot.set_gate(self._enabled())

    # ---- hooks -----------------------------------------------------------------------------------
    # Residuals and modulation coefficients come from a StepInvariantCache (fdi.guidance): computed
    # on the first guided step, reused after (not under autograd). Changing ``guidances`` or
    # ``strength`` clears it.

    def _enabled(self) -> bool:
        return self.active and bool(self._guidances)

    def _pre_hook(self, module: nn.Module, args: tuple, kwargs: dict):
        if not self._enabled():
            return None
        sample = args[0] if args else kwargs["sample"]
        sizes = unet_level_sizes(sample.shape[-2], sample.shape[-1], len(self._hooked) + 1)
        ours = []
        self._level_residuals = []
        for level, hooked in enumerate(self._hooked):
            h, w = sizes[level]
            # shape/dtype/device carrier
            probe = sample.new_empty((sample.shape[0], self.unet.config.block_out_channels[level], h, w))
            r = self._cache.residual(probe, level, self._guidances, self._strength)
            self._level_residuals.append(r)
            ours.append(_list_entry(r, hooked, sizes[level + 1]))
        return args, with_residuals(kwargs, ours)

    def _make_level_hook(self, level: int):
        def hook(module: nn.Module, args: tuple, output):
            if not self._enabled() or not self._level_residuals:
                return None
            return _add_to_output(output, self._level_residuals[level])

        return hook

    def _make_post_hook(self, point: int):
        def hook(module: nn.Module, args: tuple, output):
            if not self._enabled():
                return None
            return modulate(output, self._cache.coefficients(output, point, self._guidances, self._strength))

        return hook

    # ---- lifetime --------------------------------------------------------------------------------

    def attach(self) -> "DiffusersGuidance":
        if self._handles or self._slot is not None:
            return self
        slot = getattr(self.unet, SLOT_ATTRIBUTE, None)
        if slot is not None:
            if slot.bound:
                raise FDIError(
                    "two FDI guidances were attached to one compiled UNet at once; "
                    "remove the first before attaching another"
                )
            self._slot = slot
            self._rebind()
            return self
        self._handles.append(self.unet.register_forward_pre_hook(self._pre_hook, with_kwargs=True))
        for level, hooked in enumerate(self._hooked):
            if hooked:
                resnet = self.unet.down_blocks[level].resnets[-1]
                self._handles.append(resnet.register_forward_hook(self._make_level_hook(level)))
        for point in range(num_levels(self.unet) - 1):
            self._handles.append(self.unet.up_blocks[point].register_forward_hook(self._make_post_hook(point)))
        return self

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._level_residuals = []
        if self._slot is not None:
            self._slot.unbind()
            self._slot = None

    @property
    def attached(self) -> bool:
        return bool(self._handles) or self._slot is not None

    def __enter__(self) -> "DiffusersGuidance":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.remove()


def guide_unet(
    unet: nn.Module,
    guidances: Union[FDIGuidance, Sequence[WeightedGuidance]],
    strength: float = 1.0,
    active: bool = True,
) -> DiffusersGuidance:
    """Shorthand: ``with guide_unet(unet, [(g1, 1.0), (g2, 0.5)], strength=1.0): …``."""
    return DiffusersGuidance(unet, guidances, strength=strength, active=active)


#: attribute of a UNet that carries a :class:`GuidanceSlot`
SLOT_ATTRIBUTE = "_fdi_guidance_slot"
#: latent shapes a :class:`GuidanceSlot` keeps buffers for, least recently used dropped first (a restoration
#: uses one, two with CFG; a folder of mixed sizes would otherwise keep one set per size it ever saw)
SLOT_SHAPES = 4


class _SlotBuffers:
    """Guidance for one latent shape: residuals ``[B, C_i, h_i, w_i]`` (UNet dtype) and per decoder point the
    modulation coefficients ``(A [B, C], B [B, C], G [C])`` (float32)."""

    def __init__(
        self, residuals: List[torch.Tensor], coefficients: List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    ):
        self.residuals = residuals
        self.coefficients = coefficients

    def tensors(self) -> List[torch.Tensor]:
        return list(self.residuals) + [c for cs in self.coefficients for c in cs]


class GuidanceSlot:
    """Compile-friendly FDI guidance on a diffusers UNet: hooks installed once that read only tensors.

    The encoder residuals and the decoder modulation are those of :class:`DiffusersGuidance`, each
    multiplied by :attr:`gate` (a float32 0-d tensor, 0 or 1): at 0 they are exact no-ops (``h + 0·r``,
    ``α = 1``, ``β = 0``). Per latent shape ``[B, 4, h, w]`` and dtype the slot keeps one set of
    buffers, for the :data:`SLOT_SHAPES` most recently used shapes; :meth:`prepare` (eager, before each
    UNet call) picks or allocates them and fills them once per bound guidance; :meth:`unbind` frees them
    all. A traced forward thus sees tensors of the same shapes for every image and every step: one graph
    per shape, the window and new images change values only. The gate keeps its address (static for CUDA
    graphs); the buffers are ordinary graph inputs, copied in by CUDA graphs like the latent, since a new
    set after :meth:`unbind` may sit at another address.
    """

    def __init__(self, unet: nn.Module):
        check_unet(unet)
        self.unet = unet
        p = next(unet.parameters())
        self.gate = torch.zeros((), dtype=torch.float32, device=p.device)
        self._levels = num_levels(unet)
        self._hooked = hooked_levels(unet)
        self._out_channels = [int(c) for c in reversed(unet.config.block_out_channels)][: self._levels - 1]
        self._buffers: "OrderedDict[tuple, _SlotBuffers]" = OrderedDict()  # least recently used first
        self._filled: set = set()
        self._source: Optional[Tuple[List[WeightedGuidance], float]] = None
        self._current: Optional[_SlotBuffers] = None
        self._handles = [unet.register_forward_pre_hook(self._pre_hook, with_kwargs=True)]
        for level, hooked in enumerate(self._hooked):
            if hooked:
                self._handles.append(
                    unet.down_blocks[level].resnets[-1].register_forward_hook(self._make_level_hook(level))
                )
        for point in range(self._levels - 1):
            self._handles.append(unet.up_blocks[point].register_forward_hook(self._make_post_hook(point)))
        _static(self.gate)
        setattr(unet, SLOT_ATTRIBUTE, self)

    @property
    def bound(self) -> bool:
        return self._source is not None

    def bind(self, guidances: Sequence[WeightedGuidance], strength: float) -> None:
        """Use this guidance from the next call on (buffers are refilled lazily, per shape)."""
        self._source = (list(guidances), float(strength))
        self._filled.clear()

    @property
    def buffered_shapes(self) -> List[tuple]:
        """The ``(shape, dtype, device)`` keys of the buffer sets held, least recently used first."""
        return list(self._buffers)

    def unbind(self) -> None:
        """Gate 0 and every buffer freed: the UNet computes what it computes without guidance (a later call
        allocates zero buffers for its shape)."""
        self.set_gate(False)
        self._source = None
        self.release()

    def release(self) -> None:
        """Free every buffer set (the next call allocates its shape's again)."""
        self._filled.clear()
        self._buffers.clear()
        self._current = None

    def set_gate(self, on: bool) -> None:
        """Guidance on or off for the next calls (an in-place fill: no host sync, no new tensor)."""
        self.gate.fill_(1.0 if on else 0.0)

    def prepare(self, sample: torch.Tensor) -> None:
        """Select (and, for a newly bound guidance, fill) the buffers for ``sample``'s shape; eager only."""
        key = (tuple(sample.shape), sample.dtype, sample.device)
        buffers = self._buffers.get(key)
        if buffers is None:
            while len(self._buffers) >= SLOT_SHAPES:  # drop the least recently used before allocating
                self._filled.discard(self._buffers.popitem(last=False)[0])
            buffers = self._allocate(sample)
            self._buffers[key] = buffers
        else:
            self._buffers.move_to_end(key)
        if self._source is not None and key not in self._filled:
            guidances, strength = self._source
            with torch.no_grad():
                for level, r in enumerate(buffers.residuals):
                    r.copy_(residual_delta(r, level, guidances, strength))
                for point, cs in enumerate(buffers.coefficients):
                    new = modulation_coefficients(
                        point, guidances, strength, sample.shape[0], cs[0].shape[1], sample.device
                    )
                    for c, v in zip(cs, new):
                        c.copy_(v)
            self._filled.add(key)
        self._current = buffers

    def _allocate(self, sample: torch.Tensor) -> _SlotBuffers:
        b, dev = sample.shape[0], sample.device
        widths = self.unet.config.block_out_channels
        residuals = [
            torch.zeros((b, int(widths[level]), h, w), dtype=sample.dtype, device=dev)
            for level, (h, w) in enumerate(unet_level_sizes(sample.shape[-2], sample.shape[-1], self._levels))
        ]
        coefficients = [
            (torch.zeros(b, c, device=dev), torch.zeros(b, c, device=dev), torch.zeros(c, device=dev))
            for c in self._out_channels
        ]
        return _SlotBuffers(residuals, coefficients)

    def _pre_hook(self, module: nn.Module, args: tuple, kwargs: dict):
        sample = args[0] if args else kwargs["sample"]
        if not torch.compiler.is_compiling():
            self.prepare(sample)
        gate = self.gate.to(sample.dtype)
        sizes = unet_level_sizes(sample.shape[-2], sample.shape[-1], self._levels + 1)
        ours = [
            _list_entry(r * gate, hooked, sizes[level + 1])
            for level, (r, hooked) in enumerate(zip(self._current.residuals, self._hooked))
        ]
        return args, with_residuals(kwargs, ours)

    def _make_level_hook(self, level: int):
        def hook(module: nn.Module, args: tuple, output):
            return _add_to_output(output, self._current.residuals[level] * self.gate.to(output.dtype))

        return hook

    def _make_post_hook(self, point: int):
        def hook(module: nn.Module, args: tuple, output):
            return modulate(output, tuple(c * self.gate for c in self._current.coefficients[point]))

        return hook

    def remove(self) -> None:
        """Take the hooks off the UNet (it computes exactly what it computed before)."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self.release()
        if getattr(self.unet, SLOT_ATTRIBUTE, None) is self:
            delattr(self.unet, SLOT_ATTRIBUTE)


def _static(t: torch.Tensor) -> None:
    """Tell ``torch.compile`` that ``t`` keeps its address (CUDA graphs read it in place instead of copying it)."""
    mark = getattr(getattr(torch, "_dynamo", None), "mark_static_address", None)
    if mark is not None:
        mark(t)
