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
step, and with :attr:`DiffusersGuidance.selected` picks the adapters whose window holds the step); after
:meth:`DiffusersGuidance.remove` the UNet computes exactly what it computed before.
For ``torch.compile`` a UNet carries a :class:`fdi.guidance_slot.GuidanceSlot` instead, at the same points.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .adapter import FDIAdapter, FDIGuidance
from .errors import FDIError
from .guidance import (
    StepInvariantCache,
    WeightedGuidance,
    as_weighted,
    modulate,
    modulated,
)

if TYPE_CHECKING:
    from .guidance_slot import GuidanceSlot

#: attribute of a UNet that carries a :class:`fdi.guidance_slot.GuidanceSlot`
SLOT_ATTRIBUTE = "_fdi_guidance_slot"


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
    UNet is untouched. Assigning :attr:`guidances` swaps the guidance without re-hooking; :attr:`selected`
    applies only some of them (adapters of different windows). On a UNet with a :class:`GuidanceSlot`
    (compiled), the guidance goes into the slot and :attr:`active` sets its gate.

    Without autograd, what the hooks add is computed on the first guided call of each selection and cached
    under it; assign :attr:`guidances` or :attr:`strength` (which clears the cache) rather than changing
    guidance tensors in place.
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
        self._selected: Optional[Tuple[int, ...]] = None  # indices into the guidances; None: all
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
    def selected(self) -> Optional[Tuple[int, ...]]:
        """Which of :attr:`guidances` apply (indices, in order; ``None``: all). A composite restoration whose
        adapters guide different windows selects, per step, those whose window holds it; the guidance added is
        then the weighted sum over the selection, cached per selection (a selection of all is ``None``)."""
        return self._selected

    @selected.setter
    def selected(self, value: Optional[Sequence[int]]) -> None:
        chosen = None if value is None else tuple(sorted({int(i) for i in value}))
        if chosen == tuple(range(len(self._guidances))):
            chosen = None
        if chosen != self._selected:
            self._selected = chosen
            self._rebind()

    @property
    def strength(self) -> float:
        return self._strength

    @strength.setter
    def strength(self, value: float) -> None:
        self._strength = float(value)
        self._cache.clear()
        self._rebind()

    def _current(self) -> List[WeightedGuidance]:
        """The selected guidances (all of them when :attr:`selected` is ``None``)."""
        if self._selected is None:
            return self._guidances
        return [g for i, g in enumerate(self._guidances) if i in self._selected]

    def _rebind(self) -> None:
        if self._slot is not None:
            self._slot.bind(self._current(), self._strength)
            self._slot.set_gate(self._enabled())

    # ---- hooks -----------------------------------------------------------------------------------
    # Residuals and modulation coefficients come from a StepInvariantCache (fdi.guidance): computed
    # on the first guided step of each selection, kept under the selection, reused after (not under
    # autograd). Changing ``guidances`` or ``strength`` clears it.

    def _enabled(self) -> bool:
        return self.active and bool(self._current())

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
            r = self._cache.residual(probe, level, self._current(), self._strength, key=self._selected)
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
            if not self._enabled() or not modulated(self._current()):
                return None  # no adapter of the selection has a visual modulator: the decoder is left alone
            coefficients = self._cache.coefficients(output, point, self._current(), self._strength, key=self._selected)
            return modulate(output, coefficients)

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
