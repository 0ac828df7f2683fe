"""The frozen BLIP-2 image encoder used to compute FDIs: ViT-g vision model + Q-Former.

Only the ``vision_model.*``, ``query_tokens`` and ``qformer.*`` tensors of a BLIP-2 checkpoint are
read (about 1.1 B parameters for ``Salesforce/blip2-opt-2.7b``); the language model (OPT-2.7B) and
``language_projection`` are never materialised nor read from disk: with safetensors each tensor is
read on its own, and shards that hold none of the wanted tensors are never opened.

The computation is exactly transformers' ``Blip2Model.get_qformer_features``: vision model →
``last_hidden_state`` → Q-Former with the learned query tokens as queries and the image embeddings
as cross-attention keys/values → ``last_hidden_state`` ``[B, num_query_tokens, hidden]``. Images are
resized (bicubic, antialiased) to the vision model's square input size and normalised with the
folder's ``preprocessor_config.json`` mean/std; why: docs/design.md, "Adapter and FDI".

The encoder loads from a checkpoint folder or from the one file ``python -m fdi pack-blip2`` makes of it;
:mod:`fdi.blip2_source` tells the two apart and checks either before any weight is read.
"""

from __future__ import annotations

import os
from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .blip2_source import open_blip2
from .dtypes import parse_dtype
from .errors import FDIError

PathLike = Union[str, os.PathLike]


class QFormerEncoder(nn.Module):
    """BLIP-2 vision model + Q-Former: images ``[B, 3, H, W]`` in 0..1 → tokens ``[B, T, D]`` float32.

    Build it with :meth:`from_pretrained`. ``fingerprint`` (``"<folder name>:<hash>"``) identifies the
    encoder; the hash covers the architecture, the preprocessing and the learned query tokens, so the
    same checkpoint in two folders gives the same hash and two different checkpoints do not. Loaded
    from a packed file, it is the fingerprint of the folder the file was made from.

    The vision model may run in fp16/bf16 (``vision_dtype``); the query tokens and the Q-Former always
    run in float32, as transformers keeps them.
    """

    def __init__(self, config, image_size: int, mean: Sequence[float], std: Sequence[float], name: str = "blip2"):
        super().__init__()
        from transformers.models.blip_2.modeling_blip_2 import Blip2QFormerModel, Blip2VisionModel

        self.config = config
        self.image_size = int(image_size)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.vision_model = Blip2VisionModel(config.vision_config)
        self.qformer = Blip2QFormerModel(config.qformer_config)
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, config.qformer_config.hidden_size))
        self.name = name
        self.fingerprint = ""
        self.requires_grad_(False)
        self.eval()

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        source: PathLike,
        device: Union[str, torch.device] = "cpu",
        vision_dtype: Union[str, torch.dtype, None] = None,
    ) -> "QFormerEncoder":
        """Load the encoder from a BLIP-2 checkpoint folder in Hugging Face layout, or from the one file
        ``python -m fdi pack-blip2`` makes of such a folder (which of the two is told by the path).

        A folder needs ``config.json`` (``model_type`` ``blip-2``), ``preprocessor_config.json`` and
        ``model.safetensors`` or sharded ``model-0000X-of-0000N.safetensors`` with
        ``model.safetensors.index.json``. Only the vision model, query tokens and Q-Former tensors are
        read. A packed file gives the fingerprint of the folder it was made from. Raises
        :class:`FDIError` naming the problem for anything else (see :func:`open_blip2`).
        """
        src = open_blip2(source)
        vd = parse_dtype(vision_dtype)
        state = src.read(dtype_for=lambda k: vd if k.startswith("vision_model.") else torch.float32)
        with torch.device("meta"):
            enc = cls(src.config, src.image_size, src.mean, src.std, name=src.name)
        # meta init + assign: no random initialisation, no second copy of the weights
        enc.mean = torch.tensor(list(src.mean), dtype=torch.float32).view(1, 3, 1, 1)
        enc.std = torch.tensor(list(src.std), dtype=torch.float32).view(1, 3, 1, 1)
        enc.load_state_dict(state, strict=True, assign=True)
        enc.requires_grad_(False)
        enc.fingerprint = src.fingerprint(enc.query_tokens)
        enc.vision_model.to(vd)  # already vd; also the vision model's buffers, if a config gives it any
        return enc.to(device)

    # ------------------------------------------------------------------ encoding
    @property
    def num_tokens(self) -> int:
        return int(self.query_tokens.shape[1])

    @property
    def width(self) -> int:
        return int(self.query_tokens.shape[2])

    @property
    def device(self) -> torch.device:
        return self.query_tokens.device

    @property
    def vision_dtype(self) -> torch.dtype:
        return self.vision_model.post_layernorm.weight.dtype

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` in 0..1 → normalised ``[B, 3, S, S]`` float32 pixel values (S = image size)."""
        x = images.to(device=self.device, dtype=torch.float32)
        s = self.image_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def encode_pixel_values(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalised pixel values ``[B, 3, S, S]`` → Q-Former ``last_hidden_state`` ``[B, T, D]`` float32."""
        vision = self.vision_model(pixel_values=pixel_values.to(self.vision_dtype), return_dict=True)
        embeds = vision.last_hidden_state.to(torch.float32)
        mask = torch.ones(embeds.shape[:-1], dtype=torch.long, device=embeds.device)
        queries = self.query_tokens.to(torch.float32).expand(embeds.shape[0], -1, -1)
        out = self.qformer(
            query_embeds=queries, encoder_hidden_states=embeds, encoder_attention_mask=mask, return_dict=True
        )
        return out.last_hidden_state.to(torch.float32)

    @torch.no_grad()
    def encode(self, images: Union[torch.Tensor, Sequence[torch.Tensor]]) -> torch.Tensor:
        """Encode images in 0..1: a batch ``[B, 3, H, W]`` or a list of ``[3, H_i, W_i]`` of any sizes.

        Returns the Q-Former tokens ``[B, T, D]`` (``[B, 32, 768]`` for BLIP-2) in float32 on the
        encoder's device.
        """
        from .images import check_image_batch

        if isinstance(images, torch.Tensor):
            batch = self.preprocess(check_image_batch(images))
        else:
            if len(images) == 0:
                raise FDIError("no images to encode; give at least one")
            batch = torch.cat([self.preprocess(check_image_batch(im.unsqueeze(0))) for im in images])
        return self.encode_pixel_values(batch)

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # noqa: D102 - same as encode
        return self.encode(images)
