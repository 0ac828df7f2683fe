"""Text conditioning of every family: encoding a prompt (SD 1.x/2.x: one CLIP; SDXL: both encoders and the pooled
embedding), and the keyword arguments a diffusers UNet takes for it (SDXL: ``added_cond_kwargs``).

SDXL's six size numbers are ``(original h, original w, crop top, crop left, target h, target w)`` in pixels; the
rule (original = target = the padded image's size, no crop: what ComfyUI's sampler gives a plain text encode) is
in docs/design.md, "Model loading".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence, Tuple, Union

import torch

from .errors import FDIError

if TYPE_CHECKING:
    from .models import SDParts


@dataclass
class TextConditioning:
    """What the UNet is conditioned on for a prompt: ``embeds`` ``[1, L, D]`` (the cross-attention context;
    L = 77 for the released models, D = 768 / 1024 / 2048 for SD 1.x / 2.x / SDXL) and, for SDXL, ``pooled``
    ``[1, 1280]`` (OpenCLIP-G's projected text embedding; ``None`` for SD 1.x/2.x)."""

    embeds: torch.Tensor
    pooled: Optional[torch.Tensor] = None


def _tokens(tokenizer, text_encoder, prompt: str) -> torch.Tensor:
    """Padded token ids ``[1, L]``; ``L`` = the tokenizer's length, or the encoder's where that is shorter (a
    tokenizer saved without ``model_max_length`` reports a huge sentinel)."""
    length = min(int(tokenizer.model_max_length), int(text_encoder.config.max_position_embeddings))
    return tokenizer(prompt, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids


def _where(text_encoder, run_on: Optional[torch.device]) -> torch.device:
    return run_on if run_on is not None else next(text_encoder.parameters()).device


@torch.no_grad()
def encode_prompt(
    text_encoder,
    tokenizer,
    prompt: str,
    device: Optional[torch.device] = None,
    dtype: Optional[torch.dtype] = None,
    run_on: Optional[torch.device] = None,
) -> torch.Tensor:
    """Text conditioning ``[1, L, D]`` of ``prompt`` for SD 1.x/2.x: ``last_hidden_state`` of the padded tokens,
    moved to ``device``/``dtype`` when given. The encoder runs where it is (it is not moved): on ``run_on`` when
    given (an offloaded encoder's parameters are on "meta"), else on its parameters' device.

    ``L`` is the encoder's context length (77 for the released models): a tokenizer saved without a
    ``model_max_length`` reports a huge sentinel, so the length comes from the encoder's config whenever the
    tokenizer's is larger. SDXL: :func:`encode_text`."""
    ids = _tokens(tokenizer, text_encoder, prompt)
    return text_encoder(ids.to(_where(text_encoder, run_on)))[0].to(device=device, dtype=dtype)


def _text_modules(text) -> Tuple[Any, Any, Any, Any]:
    if isinstance(text, (tuple, list)):
        if len(text) not in (2, 4):
            raise FDIError(
                "encode_text takes (text_encoder, tokenizer) or (text_encoder, tokenizer, text_encoder_2, tokenizer_2)"
            )
        return tuple(text) + (None, None) if len(text) == 2 else tuple(text)  # type: ignore[return-value]
    return (
        text.text_encoder,
        text.tokenizer,
        getattr(text, "text_encoder_2", None),
        getattr(text, "tokenizer_2", None),
    )


@torch.no_grad()
def encode_text(
    text: Union["SDParts", Sequence[Any]],
    prompt: str,
    device: Optional[torch.device] = None,
    dtype: Optional[torch.dtype] = None,
    run_on: Optional[torch.device] = None,
) -> TextConditioning:
    """The text conditioning of ``prompt`` for any family, moved to ``device``/``dtype`` when given.

    ``text``: :class:`SDParts` (or anything with ``text_encoder``, ``tokenizer`` and, for SDXL,
    ``text_encoder_2``, ``tokenizer_2`` attributes, such as a diffusers pipeline), or the modules as a tuple
    ``(text_encoder, tokenizer[, text_encoder_2, tokenizer_2])``. SD 1.x/2.x (no second encoder):
    :func:`encode_prompt`, ``pooled=None``. SDXL: diffusers' ``StableDiffusionXLPipeline.encode_prompt`` for one
    positive prompt without clip skip — both encoders' penultimate hidden states concatenated (``[1, 77, 2048]``)
    and ``pooled`` = the second encoder's projected ``text_embeds`` ``[1, 1280]``. Encoders run as in
    :func:`encode_prompt` (on ``run_on``, else where their parameters are)."""
    te, tok, te2, tok2 = _text_modules(text)
    if te2 is None:
        return TextConditioning(encode_prompt(te, tok, prompt, device, dtype, run_on))
    if tok2 is None or te is None or tok is None:
        raise FDIError("an SDXL text conditioning needs both text encoders and both tokenizers")
    hidden = []
    pooled = None
    for encoder, tokenizer in ((te, tok), (te2, tok2)):
        out = encoder(_tokens(tokenizer, encoder, prompt).to(_where(encoder, run_on)), output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        pooled = getattr(out, "text_embeds", None)
    if pooled is None:
        raise FDIError(
            "SDXL's second text encoder gave no projected text_embeds; load it as CLIPTextModelWithProjection"
        )
    embeds = torch.cat([h.to(hidden[-1].device) for h in hidden], dim=-1)
    return TextConditioning(embeds.to(device=device, dtype=dtype), pooled.to(device=device, dtype=dtype))


def sdxl_added_cond(
    pooled: torch.Tensor,
    height: int,
    width: int,
    batch: int,
    dtype: Optional[torch.dtype] = None,
    device: Optional[torch.device] = None,
) -> Dict[str, torch.Tensor]:
    """SDXL's ``added_cond_kwargs`` for a diffusers UNet, built as ``StableDiffusionXLPipeline`` builds them:
    ``text_embeds`` ``[batch, 1280]`` (``pooled`` ``[1, 1280]`` repeated, or already ``[batch, 1280]``) and
    ``time_ids`` ``[batch, 6]`` = (original height, original width, crop top 0, crop left 0, target height,
    target width) in pixels, with original = target = ``height`` × ``width`` (the image's padded size)."""
    if pooled.ndim != 2 or pooled.shape[0] not in (1, batch):
        raise FDIError(f"pooled text embedding of shape {tuple(pooled.shape)}; expected [1, D] or [{batch}, D]")
    dtype = dtype or pooled.dtype
    device = device or pooled.device
    text_embeds = pooled.to(device=device, dtype=dtype).expand(batch, -1).contiguous()
    time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=dtype, device=device).repeat(batch, 1)
    return {"text_embeds": text_embeds, "time_ids": time_ids}


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
