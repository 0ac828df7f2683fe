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
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Dict, List, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .dtypes import parse_dtype
from .errors import FDIError
from .files import PICKLE_SUFFIXES, load_safetensors, read_header

PathLike = Union[str, os.PathLike]

WANTED_PREFIXES = ("vision_model.", "qformer.")
WANTED_KEYS = ("query_tokens",)


def _wanted(key: str) -> bool:
    return key in WANTED_KEYS or key.startswith(WANTED_PREFIXES)


def _read_config(path: Path):
    """The ``Blip2Config`` of a checkpoint folder (its ``config.json``), or :class:`FDIError` naming what is wrong."""
    from transformers import Blip2Config

    if not path.is_dir():
        raise FDIError(
            f"BLIP-2 folder {str(path)!r} does not exist; download a BLIP-2 checkpoint "
            "(e.g. Salesforce/blip2-opt-2.7b) into it"
        )
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise FDIError(
            f"{path} is not a BLIP-2 checkpoint: it has no config.json; "
            "point to the folder that holds the checkpoint's config.json"
        )
    try:
        raw = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise FDIError(f"{cfg_file} is not valid JSON; re-download the checkpoint") from None
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    if model_type != "blip-2":
        raise FDIError(
            f"{path} is a {model_type!r} checkpoint, not BLIP-2 (model_type 'blip-2'); "
            "use a BLIP-2 checkpoint such as Salesforce/blip2-opt-2.7b"
        )
    try:
        config = Blip2Config.from_dict(raw)
    except Exception as exc:
        raise FDIError(f"{cfg_file} could not be read as a BLIP-2 config ({exc}); re-download the checkpoint") from None
    return config


def _read_weights(path: Path) -> Dict[str, torch.Tensor]:
    """The vision model, query-token and Q-Former tensors of a checkpoint folder (the language model is not read)."""
    files = _checkpoint_tensor_files(path)
    missing = [
        k for k in ("query_tokens", "qformer.layernorm.weight", "vision_model.post_layernorm.weight") if k not in files
    ]
    if missing:
        raise FDIError(
            f"{path} lacks Q-Former tensors ({', '.join(missing)}); it is not a complete BLIP-2 "
            "checkpoint, re-download it"
        )
    state: Dict[str, torch.Tensor] = {}
    by_file: Dict[Path, List[str]] = {}
    for key, f in files.items():
        by_file.setdefault(f, []).append(key)
    for f, keys in sorted(by_file.items()):
        tensors, _ = load_safetensors(f, what="BLIP-2 weights", keys=keys)
        state.update(tensors)
    return state


def _checkpoint_tensor_files(folder: Path) -> Dict[str, Path]:
    """Map each wanted tensor name to the safetensors file that holds it (reading only headers)."""
    index = folder / "model.safetensors.index.json"
    single = folder / "model.safetensors"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
            raise FDIError(
                f"{index} is not a valid safetensors index (no weight_map); re-download the checkpoint"
            ) from None
        files = {}
        for key, shard in weight_map.items():
            if _wanted(key):
                path = folder / shard
                if Path(shard).name != shard:
                    raise FDIError(
                        f"{index.name} points outside the checkpoint folder ({shard!r}); re-download the checkpoint"
                    )
                files[key] = path
        for path in set(files.values()):
            if not path.is_file():
                raise FDIError(
                    f"shard {path.name} listed in {index.name} is missing from {folder}; re-download the checkpoint"
                )
        return files
    if single.is_file():
        infos, _ = read_header(single, "BLIP-2 weights")
        return {k: single for k in infos if _wanted(k)}
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise FDIError(
            f"{folder} holds only pickle weights ({', '.join(pickles[:3])}); only safetensors are read. Download the "
            "checkpoint's model.safetensors files, or convert with transformers: "
            "Blip2ForConditionalGeneration.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)"
        )
    raise FDIError(
        f"{folder} has no model.safetensors or model.safetensors.index.json; "
        "put the BLIP-2 checkpoint's weight files there"
    )


def _config_fingerprint(
    config, image_size: int, mean: Sequence[float], std: Sequence[float], query_tokens: torch.Tensor
) -> str:
    vision = config.vision_config.to_dict()
    qformer = config.qformer_config.to_dict()
    vkeys = (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "image_size",
        "patch_size",
        "layer_norm_eps",
        "hidden_act",
        "qkv_bias",
    )
    qkeys = (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "cross_attention_frequency",
        "encoder_hidden_size",
        "layer_norm_eps",
        "hidden_act",
    )
    spec = {
        "vision": {k: vision.get(k) for k in vkeys},
        "qformer": {k: qformer.get(k) for k in qkeys},
        "num_query_tokens": config.num_query_tokens,
        "image_size": image_size,
        "mean": [round(float(m), 6) for m in mean],
        "std": [round(float(s), 6) for s in std],
    }
    h = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    h.update(query_tokens.detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class QFormerEncoder(nn.Module):
    """BLIP-2 vision model + Q-Former: images ``[B, 3, H, W]`` in 0..1 → tokens ``[B, T, D]`` float32.

    Build it with :meth:`from_pretrained`. ``fingerprint`` (``"<folder name>:<hash>"``) identifies the
    encoder; the hash covers the architecture, the preprocessing and the learned query tokens, so the
    same checkpoint in two folders gives the same hash and two different checkpoints do not.

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
        folder: PathLike,
        device: Union[str, torch.device] = "cpu",
        vision_dtype: Union[str, torch.dtype, None] = None,
    ) -> "QFormerEncoder":
        """Load the encoder from a BLIP-2 checkpoint folder in Hugging Face layout.

        The folder needs ``config.json`` (``model_type`` ``blip-2``), ``preprocessor_config.json`` and
        ``model.safetensors`` or sharded ``model-0000X-of-0000N.safetensors`` with
        ``model.safetensors.index.json``. Only the vision model, query tokens and Q-Former tensors are
        read. Raises :class:`FDIError` naming the problem for anything else.
        """
        path = Path(folder)
        config = _read_config(path)
        image_size, mean, std = cls._read_preprocessor(path, config)
        state = _read_weights(path)

        with torch.device("meta"):
            enc = cls(config, image_size, mean, std, name=path.name)
        # meta init + assign: no random initialisation, no second copy of the weights
        enc.mean = torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1)
        enc.std = torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1)
        expected = set(enc.state_dict().keys())
        absent = sorted(expected - set(state))
        if absent:
            raise FDIError(
                f"{path} lacks {len(absent)} Q-Former/vision tensors "
                f"(e.g. {', '.join(absent[:3])}); the checkpoint is incomplete or of another architecture"
            )
        for k in list(state):
            if k not in expected:
                state.pop(k)
            elif tuple(state[k].shape) != tuple(enc.state_dict()[k].shape):
                raise FDIError(
                    f"{path}: tensor {k} has shape {tuple(state[k].shape)} but config.json implies "
                    f"{tuple(enc.state_dict()[k].shape)}; config and weights do not belong together"
                )
            elif not state[k].dtype.is_floating_point:
                raise FDIError(f"{path}: tensor {k} has dtype {state[k].dtype}; expected floating point weights")
        state = {k: v.to(torch.float32) for k, v in state.items()}
        enc.load_state_dict(state, strict=True, assign=True)
        enc.requires_grad_(False)
        enc.fingerprint = f"{path.name}:{_config_fingerprint(config, image_size, mean, std, enc.query_tokens)}"
        vd = parse_dtype(vision_dtype)
        enc.vision_model.to(vd)
        return enc.to(device)

    @staticmethod
    def _read_preprocessor(path: Path, config) -> tuple:
        pre = path / "preprocessor_config.json"
        if not pre.is_file():
            raise FDIError(
                f"{path} has no preprocessor_config.json (the image mean/std); copy it from the same BLIP-2 checkpoint"
            )
        try:
            p = json.loads(pre.read_text())
            mean, std = [float(x) for x in p["image_mean"]], [float(x) for x in p["image_std"]]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, UnicodeDecodeError):
            raise FDIError(
                f"{pre} lacks a valid image_mean/image_std; copy it from the same BLIP-2 checkpoint"
            ) from None
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise FDIError(f"{pre} must give 3 image_mean values and 3 positive image_std values")
        if p.get("do_normalize", True) is False:
            mean, std = [0.0] * 3, [1.0] * 3
        return int(config.vision_config.image_size), mean, std

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
