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

The encoder loads from a checkpoint folder or from the one file ``python -m fdi pack-blip2`` makes of it
(:mod:`fdi.blip2_pack`): tensors ``vision_model.*``, ``qformer.*`` (fp16 or fp32) and ``query_tokens``
(always fp32) under the folder's names; metadata ``format="fdi_blip2"``, ``format_version="1"``, ``config``
(the folder's ``config.json`` without ``text_config``, JSON), ``preprocessor`` (its
``preprocessor_config.json``, JSON), ``dtype``, ``source`` (the folder's name), ``encoder`` (the folder's
fingerprint), ``parameters``. :func:`open_blip2` tells the two apart and checks either before any weight is read.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .dtypes import parse_dtype
from .errors import FDIError
from .files import (
    PICKLE_SUFFIXES,
    TORCH_DTYPES,
    SafetensorsReader,
    check_file_format,
    load_safetensors,
    read_header,
)
from .instruction import encoder_hash

PathLike = Union[str, os.PathLike]

WANTED_PREFIXES = ("vision_model.", "qformer.")
WANTED_KEYS = ("query_tokens",)

#: safetensors dtype names of floating point weights
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


def _wanted(key: str) -> bool:
    return key in WANTED_KEYS or key.startswith(WANTED_PREFIXES)


#: the ``format`` (and ``format_version``) in the metadata of a file written by ``python -m fdi pack-blip2``
PACK_FORMAT = "fdi_blip2"
PACK_FORMAT_VERSION = 1

#: the tensors whose presence tells a BLIP-2 checkpoint that holds a Q-Former
_MARKERS = ("query_tokens", "qformer.layernorm.weight", "vision_model.post_layernorm.weight")


def _config_from_dict(raw: object, where: str):
    """``Blip2Config`` of a ``config.json``-like dict, or :class:`FDIError` naming what is wrong (``where``: its
    source, for the message)."""
    from transformers import Blip2Config

    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    if model_type != "blip-2":
        raise FDIError(
            f"{where} is a checkpoint of model type {model_type!r}, not BLIP-2 ('blip-2'; InstructBLIP and BLIP-1 "
            "are other models); use a BLIP-2 checkpoint such as Salesforce/blip2-opt-2.7b"
        )
    try:
        return Blip2Config.from_dict(raw)
    except Exception as exc:
        raise FDIError(f"{where} could not be read as a BLIP-2 config ({exc}); re-download the checkpoint") from None


def _read_json(file: Path, what: str) -> object:
    try:
        return json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise FDIError(f"{file} is not valid JSON; {what}") from None


def _read_config(path: Path) -> Tuple[object, dict]:
    """``(Blip2Config, raw dict)`` of a checkpoint folder (its ``config.json``), or :class:`FDIError`."""
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
    raw = _read_json(cfg_file, "re-download the checkpoint")
    return _config_from_dict(raw, str(path)), raw


def _preprocessor_values(p: object, where: str) -> Tuple[List[float], List[float]]:
    """``(mean, std)`` of a ``preprocessor_config.json`` dict (identity when it says ``do_normalize: false``)."""
    fix = "copy it from the same BLIP-2 checkpoint"
    try:
        mean, std = [float(x) for x in p["image_mean"]], [float(x) for x in p["image_std"]]
    except (KeyError, TypeError, ValueError):
        raise FDIError(f"{where} lacks a valid image_mean/image_std; {fix}") from None
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise FDIError(f"{where} must give 3 image_mean values and 3 positive image_std values; {fix}")
    if p.get("do_normalize", True) is False:
        mean, std = [0.0] * 3, [1.0] * 3
    return mean, std


def _read_preprocessor(path: Path) -> dict:
    pre = path / "preprocessor_config.json"
    if not pre.is_file():
        raise FDIError(
            f"{path} has no preprocessor_config.json (the image mean/std); copy it from the same BLIP-2 checkpoint"
        )
    raw = _read_json(pre, "copy it from the same BLIP-2 checkpoint")
    _preprocessor_values(raw, str(pre))
    return raw


def _checkpoint_tensor_files(folder: Path) -> Dict[str, Tuple[Path, dict]]:
    """Map each wanted tensor name to the safetensors file that holds it and its header entry (reading only
    headers; shards without a wanted tensor are not opened)."""
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
        headers = {path: read_header(path, "BLIP-2 weights")[0] for path in set(files.values())}
        absent = sorted(k for k, path in files.items() if k not in headers[path])
        if absent:
            raise FDIError(
                f"{index.name} lists {absent[0]} in {files[absent[0]].name}, which does not hold it; "
                "re-download the checkpoint"
            )
        return {k: (path, headers[path][k]) for k, path in files.items()}
    if single.is_file():
        infos, _ = read_header(single, "BLIP-2 weights")
        return {k: (single, info) for k, info in infos.items() if _wanted(k)}
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


def _expected_shapes(config) -> Dict[str, Tuple[int, ...]]:
    """Every tensor the encoder of ``config`` loads and its shape (built on the meta device: nothing allocated)."""
    with torch.device("meta"):
        enc = QFormerEncoder(config, int(config.vision_config.image_size), [0.0] * 3, [1.0] * 3)
    return {k: tuple(v.shape) for k, v in enc.state_dict().items()}


def _check_layout(config, tensors: Dict[str, Tuple[Path, dict]], where: str) -> Dict[str, Tuple[Path, dict]]:
    """The tensors the encoder of ``config`` needs, checked by name, shape and dtype against the header entries."""
    missing = [k for k in _MARKERS if k not in tensors]
    if missing:
        raise FDIError(
            f"{where} lacks Q-Former tensors ({', '.join(missing)}); it is not a complete BLIP-2 checkpoint, "
            "re-download it"
        )
    expected = _expected_shapes(config)
    absent = sorted(set(expected) - set(tensors))
    if absent:
        raise FDIError(
            f"{where} lacks {len(absent)} Q-Former/vision tensors "
            f"(e.g. {', '.join(absent[:3])}); the checkpoint is incomplete or of another architecture"
        )
    for k, shape in expected.items():
        info = tensors[k][1]
        if tuple(info["shape"]) != shape:
            raise FDIError(
                f"{where}: tensor {k} has shape {tuple(info['shape'])} but config.json implies {shape}; "
                "config and weights do not belong together"
            )
        if info["dtype"] not in FLOAT_DTYPES:
            raise FDIError(f"{where}: tensor {k} has dtype {info['dtype']}; expected floating point weights")
    return {k: tensors[k] for k in expected}


@dataclass
class Blip2Source:
    """A BLIP-2 encoder checked from its configs and file headers alone (no weights read yet): a checkpoint folder
    in Hugging Face layout, or one file written by ``python -m fdi pack-blip2`` (``packed``).

    ``tensors`` maps each tensor the encoder loads to ``(file, header entry)``; ``recorded`` is the fingerprint a
    packed file records (its source folder's), ``""`` for a folder. Open one with :func:`open_blip2`.
    """

    path: Path
    packed: bool
    config: object
    raw_config: dict
    preprocessor: dict
    mean: List[float]
    std: List[float]
    tensors: Dict[str, Tuple[Path, dict]]
    recorded: str = ""

    @property
    def image_size(self) -> int:
        return int(self.config.vision_config.image_size)

    @property
    def name(self) -> str:
        """The folder's name, or the file's without ``.safetensors``."""
        return self.path.stem if self.packed else self.path.name

    def read(
        self, keys: Optional[Sequence[str]] = None, dtype_for: Optional[Callable[[str], torch.dtype]] = None
    ) -> Dict[str, torch.Tensor]:
        """The tensors ``keys`` (default: all) on the CPU in ``dtype_for(name)`` (default: as stored).

        A tensor kept as stored comes from safetensors' memory map (read when first used); one that changes
        dtype is read with plain reads and converted at once, so memory holds the result and one tensor more.
        """
        by_file: Dict[Path, List[str]] = {}
        for k in self.tensors if keys is None else keys:
            by_file.setdefault(self.tensors[k][0], []).append(k)
        state: Dict[str, torch.Tensor] = {}
        for f, names in sorted(by_file.items()):
            stored = {k: TORCH_DTYPES.get(self.tensors[k][1]["dtype"]) for k in names}
            target = {k: stored[k] if dtype_for is None else dtype_for(k) for k in names}
            kept = [k for k in names if target[k] == stored[k]]
            converted = [k for k in names if target[k] != stored[k]]
            if kept:
                state.update(load_safetensors(f, what="BLIP-2 weights", keys=kept)[0])
            if converted:
                with SafetensorsReader(f, "BLIP-2 weights") as reader:
                    for k in converted:
                        state[k] = reader.get(k).to(target[k])
        return state

    def fingerprint(self, query_tokens: torch.Tensor) -> str:
        """``"<name>:<hash>"`` of this encoder; a packed file's recorded one, after checking that it hashes the same."""
        h = _config_fingerprint(self.config, self.image_size, self.mean, self.std, query_tokens)
        if not self.packed:
            return f"{self.name}:{h}"
        if encoder_hash(self.recorded) != h:
            raise FDIError(
                f"{self.path.name!r} records encoder {self.recorded} but its configs and query tokens hash to {h}: "
                "the file was altered after packing; pack it again from the BLIP-2 folder"
            )
        return self.recorded


def open_blip2(source: PathLike) -> Blip2Source:
    """Check a BLIP-2 folder or packed file from its configs and headers (cheap: no weights are read).

    Raises :class:`FDIError` naming the problem: no such path, not BLIP-2 (InstructBLIP, BLIP-1…), no Q-Former,
    shapes that do not match the config, a file that is not a packed BLIP-2.
    """
    path = Path(source)
    if path.is_dir():
        config, raw = _read_config(path)
        pre = _read_preprocessor(path)
        mean, std = _preprocessor_values(pre, str(path / "preprocessor_config.json"))
        tensors = _check_layout(config, _checkpoint_tensor_files(path), str(path))
        return Blip2Source(path, False, config, raw, pre, mean, std, tensors)
    if path.is_file():
        return _open_packed(path)
    raise FDIError(
        f"BLIP-2 {str(path)!r} does not exist; give a BLIP-2 checkpoint folder (e.g. the files of "
        "Salesforce/blip2-opt-2.7b) or a file made from one by python -m fdi pack-blip2"
    )


def _json_metadata(meta: Dict[str, str], key: str, where: str) -> dict:
    try:
        value = json.loads(meta[key])
    except (KeyError, json.JSONDecodeError):
        value = None
    if not isinstance(value, dict):
        raise FDIError(f"{where} has no valid {key!r} in its metadata; pack the BLIP-2 folder again")
    return value


def _open_packed(path: Path) -> Blip2Source:
    infos, meta = read_header(path, "BLIP-2 file")
    where = repr(path.name)
    if meta.get("format") != PACK_FORMAT and any(k.startswith(("language_model.", "qformer.")) for k in infos):
        raise FDIError(
            f"{where} holds the weights of a BLIP-2 folder, not a packed BLIP-2 file: give its folder "
            f"({path.parent}), or pack it into one file with python -m fdi pack-blip2 {path.parent} -o FILE.safetensors"
        )
    check_file_format(
        meta,
        PACK_FORMAT,
        PACK_FORMAT_VERSION,
        path.name,
        "FDI BLIP-2 pack",
        "python -m fdi pack-blip2 DIR -o FILE.safetensors from a BLIP-2 folder",
        "Update the pack, or pack the BLIP-2 folder again with this version",
    )
    raw = _json_metadata(meta, "config", where)
    config = _config_from_dict(raw, f"the BLIP-2 file {where}")
    pre = _json_metadata(meta, "preprocessor", where)
    mean, std = _preprocessor_values(pre, f"the BLIP-2 file {where}")
    if not meta.get("encoder"):
        raise FDIError(f"{where} does not record its encoder fingerprint; pack the BLIP-2 folder again")
    tensors = _check_layout(config, {k: (path, info) for k, info in infos.items()}, where)
    return Blip2Source(path, True, config, raw, pre, mean, std, tensors, meta["encoder"])


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
