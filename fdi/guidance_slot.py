"""Compile-friendly FDI guidance on a diffusers UNet (:func:`fdi.compile.compile_unet`): :class:`GuidanceSlot`
installs fixed hooks once, at the points of :class:`fdi.diffusers_backend.DiffusersGuidance`, that read a 0/1 gate
tensor and guidance buffers of fixed shape per latent shape (the :data:`SLOT_SHAPES` most recent shapes, none
once the guidance is removed).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from .diffusers_backend import (
    SLOT_ATTRIBUTE,
    _add_to_output,
    _list_entry,
    check_unet,
    hooked_levels,
    num_levels,
    unet_level_sizes,
    with_residuals,
)
from .guidance import (
    WeightedGuidance,
    modulate,
    modulation_coefficients,
    residual_delta,
)

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
