"""FDI guidance on a diffusers ``UNet2DConditionModel`` (DESIGN §3), without touching its weights.

:class:`DiffusersGuidance` attaches two kinds of hooks and removes them on exit:

* **Encoder residuals** ``r_1..r_4``: a forward *pre*-hook on the UNet (with kwargs) passes
  ``strength · Σ_k w_k · r_k,i`` (:func:`fdi.guidance.residual_delta`, fitted to the UNet's feature
  sizes and batch) as ``down_intrablock_additional_residuals``, added to any residuals the caller
  passed itself. diffusers adds them after the last resnet/attention pair of each down block:

  - ``CrossAttnDownBlock2D`` (levels 1–3): inside the block, *before* the pair's output is stored
    as a skip and before the downsampler — ComfyUI's ``input_block_patch`` after input blocks
    2, 5, 8 (before ``hs.append``);
  - ``DownBlock2D`` (level 4, no downsampler in SD 2.1): by the UNet after the block, in place
    (``sample += r``). Because that block returns its last resnet output both as ``sample`` and
    as the last element of its skip tuple (the same tensor object), the in-place add also
    changes the stored skip — again "residual added before the skip is stored", ComfyUI's patch
    after input block 11. A test checks this against independent hooks on
    ``attentions[-1]`` / ``resnets[-1]``. :func:`check_unet` refuses UNets where either
    property does not hold (a down block without attention that has a downsampler), because
    there diffusers would add the residual at another place than ComfyUI.

* **Decoder modulation**: forward hooks on ``up_blocks[0]``, ``[1]``, ``[2]`` replace their output
  ``D`` by :func:`fdi.guidance.apply_modulation`'s value (ComfyUI: ``h`` entering output blocks 3,
  6, 9), with its coefficients computed once and cached (same numbers).

The hooks are inert while :attr:`DiffusersGuidance.active` is ``False`` (the pipeline toggles it per
step: guidance window), and are removed on :meth:`DiffusersGuidance.remove` / context exit, after
which the UNet computes exactly what it computed before.
"""

from __future__ import annotations

from typing import List, Sequence, Union

from torch import nn

from .adapter import FDIAdapter, FDIGuidance
from .errors import FDIError
from .guidance import StepInvariantCache, WeightedGuidance, as_weighted, modulate

NUM_LEVELS = 4
NUM_POINTS = 3


def unet_level_sizes(height: int, width: int) -> List[tuple]:
    """Spatial sizes of the four encoder levels for a latent ``height × width`` (stride-2 convs: ceil)."""
    sizes = []
    h, w = height, width
    for _ in range(NUM_LEVELS):
        sizes.append((h, w))
        h, w = (h + 1) // 2, (w + 1) // 2
    return sizes


def check_unet(unet: nn.Module) -> None:
    """Raise :class:`FDIError` unless ``unet`` has the SD-like structure the guidance points assume."""
    downs = getattr(unet, "down_blocks", None)
    ups = getattr(unet, "up_blocks", None)
    if downs is None or ups is None or len(downs) != NUM_LEVELS or len(ups) < NUM_POINTS:
        raise FDIError("the UNet does not have the SD 2.1 layout (4 down blocks, 4 up blocks); FDI adapters work with SD 2.1-style UNets only")
    for i, block in enumerate(downs):
        has_attn = bool(getattr(block, "has_cross_attention", False))
        if not has_attn and getattr(block, "downsamplers", None) is not None:
            raise FDIError(
                f"UNet down block {i} has no attention but a downsampler, so diffusers would add the FDI residual after "
                "downsampling (not where ComfyUI adds it); FDI adapters support SD 2.1-style UNets only"
            )


def check_adapter_for_unet(adapter: FDIAdapter, unet: nn.Module) -> None:
    """Raise :class:`FDIError` when the adapter's channel layout does not match the UNet's."""
    want = tuple(int(c) for c in unet.config.block_out_channels)
    if tuple(adapter.config.channels) != want:
        raise FDIError(
            f"adapter {adapter.label or adapter.source or '(unnamed)'} has channels {tuple(adapter.config.channels)} but the UNet's "
            f"encoder widths are {want}; use an adapter trained for this model (e.g. SD 2.1 adapters have (320, 640, 1280, 1280))"
        )


class DiffusersGuidance:
    """Hooks that apply FDI guidance to a diffusers UNet; use as a context manager.

    Args:
        unet: a ``UNet2DConditionModel`` with the SD 2.1 layout (see :func:`check_unet`).
        guidances: ``FDIGuidance`` or ``[(FDIGuidance, weight), …]`` (composite of several adapters).
        strength: global factor on residuals and modulation deltas (0 = no guidance).
        active: whether the guidance applies from the start (the pipeline sets :attr:`active` per step).

    ``with DiffusersGuidance(unet, [(g, 1.0)]): unet(latents, t, text)`` — outside the block the
    UNet is untouched. :meth:`set_guidances` swaps the guidance without re-hooking.

    Without autograd, what the hooks add is computed on the first guided call and cached; assign
    :attr:`guidances` or :attr:`strength` (which clears the cache) rather than changing guidance
    tensors in place.
    """

    def __init__(self, unet: nn.Module, guidances: Union[FDIGuidance, Sequence[WeightedGuidance]], strength: float = 1.0, active: bool = True):
        check_unet(unet)
        self.unet = unet
        self._guidances = as_weighted(guidances)
        self._strength = float(strength)
        self.active = bool(active)
        self._handles: list = []
        self._cache = StepInvariantCache()

    @property
    def guidances(self) -> List[WeightedGuidance]:
        return self._guidances

    @guidances.setter
    def guidances(self, value) -> None:
        self._guidances = as_weighted(value)
        self._cache.clear()

    @property
    def strength(self) -> float:
        return self._strength

    @strength.setter
    def strength(self, value: float) -> None:
        self._strength = float(value)
        self._cache.clear()

    def set_guidances(self, guidances: Union[FDIGuidance, Sequence[WeightedGuidance]]) -> None:
        self.guidances = guidances

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
        ours = []
        for level, (h, w) in enumerate(unet_level_sizes(sample.shape[-2], sample.shape[-1])):
            probe = sample.new_empty((sample.shape[0], self.unet.config.block_out_channels[level], h, w))  # shape/dtype/device carrier
            ours.append(self._cache.residual(probe, level, self._guidances, self._strength))
        theirs = kwargs.get("down_intrablock_additional_residuals")
        if theirs is not None:
            theirs = list(theirs)
            if len(theirs) < NUM_LEVELS:
                raise FDIError(f"{len(theirs)} intrablock residuals were passed to the UNet together with FDI guidance, which needs {NUM_LEVELS}; pass one per down block")
            ours = [a + b for a, b in zip(ours, theirs[:NUM_LEVELS])] + theirs[NUM_LEVELS:]
        kwargs = dict(kwargs)
        kwargs["down_intrablock_additional_residuals"] = list(ours)  # a fresh list: diffusers pops from it
        return args, kwargs

    def _make_post_hook(self, point: int):
        def hook(module: nn.Module, args: tuple, output):
            if not self._enabled():
                return None
            return modulate(output, self._cache.coefficients(output, point, self._guidances, self._strength))
        return hook

    # ---- lifetime --------------------------------------------------------------------------------

    def attach(self) -> "DiffusersGuidance":
        if self._handles:
            return self
        self._handles.append(self.unet.register_forward_pre_hook(self._pre_hook, with_kwargs=True))
        for point in range(NUM_POINTS):
            self._handles.append(self.unet.up_blocks[point].register_forward_hook(self._make_post_hook(point)))
        return self

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def __enter__(self) -> "DiffusersGuidance":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.remove()


def guide_unet(unet: nn.Module, guidances: Union[FDIGuidance, Sequence[WeightedGuidance]], strength: float = 1.0, active: bool = True) -> DiffusersGuidance:
    """Shorthand: ``with guide_unet(unet, [(g1, 1.0), (g2, 0.5)], strength=1.0): …``."""
    return DiffusersGuidance(unet, guidances, strength=strength, active=active)
