"""Text conditioning as a diffusers UNet takes it: the prompt embedding, and for SDXL the pooled embedding and the
size conditioning (``added_cond_kwargs``). The encoders that make a :class:`~fdi.models.TextConditioning` and
:func:`~fdi.models.sdxl_added_cond` live in :mod:`fdi.models`.

SDXL's six size numbers are ``(original h, original w, crop top, crop left, target h, target w)`` in pixels; the
rule (original = target = the padded image's size, no crop: what ComfyUI's sampler gives a plain text encode) is
in docs/design.md, "Model loading".
"""

from __future__ import annotations

from typing import Dict, Tuple, Union

import torch

from .models import TextConditioning, sdxl_added_cond

Conditioning = Union[TextConditioning, torch.Tensor]


def as_conditioning(cond: Conditioning) -> TextConditioning:
    """``cond`` as a :class:`TextConditioning` (a bare ``[1, L, D]`` tensor is an SD 1.x/2.x embedding)."""
    return cond if isinstance(cond, TextConditioning) else TextConditioning(cond)


def concat(first: Conditioning, second: Conditioning, batch: int) -> TextConditioning:
    """``first`` then ``second``, each repeated ``batch`` times (a CFG batch ``[uncond × B, cond × B]``)."""
    a, b = as_conditioning(first), as_conditioning(second)
    embeds = torch.cat([a.embeds.expand(batch, -1, -1), b.embeds.expand(batch, -1, -1)])
    pooled = None
    if a.pooled is not None and b.pooled is not None:
        pooled = torch.cat([a.pooled.expand(batch, -1), b.pooled.expand(batch, -1)])
    return TextConditioning(embeds, pooled)


def unet_kwargs(
    cond: Conditioning, batch: int, size_px: Tuple[int, int], dtype: torch.dtype, device=None
) -> Dict[str, object]:
    """Keyword arguments of ``UNet2DConditionModel.forward`` for ``batch`` latents of an image of ``size_px = (h, w)``
    pixels: ``encoder_hidden_states`` ``[batch, L, D]`` and, for SDXL, ``added_cond_kwargs`` (``text_embeds``
    ``[batch, 1280]``, ``time_ids`` ``[batch, 6]``). A conditioning of ``batch`` rows already (CFG) is used as is."""
    c = as_conditioning(cond)
    embeds = c.embeds.to(device=device, dtype=dtype)
    if embeds.shape[0] != batch:
        embeds = embeds.expand(batch, -1, -1)
    out: Dict[str, object] = {"encoder_hidden_states": embeds}
    if c.pooled is not None:
        out["added_cond_kwargs"] = sdxl_added_cond(c.pooled, int(size_px[0]), int(size_px[1]), batch, dtype, device)
    return out
