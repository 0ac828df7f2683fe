"""Where the BLIP-2 encoder's weights come from: a checkpoint folder in Hugging Face layout or the one file
``python -m fdi pack-blip2`` makes of it (:mod:`fdi.blip2_pack`), told apart and checked from configs and file
headers before any weight is read (:func:`open_blip2`).

A packed file holds tensors ``vision_model.*``, ``qformer.*`` (fp16 or fp32) and ``query_tokens`` (always fp32)
under the folder's names; metadata ``format="fdi_blip2"``, ``format_version="1"``, ``config`` (the folder's
``config.json`` without ``text_config``, JSON), ``preprocessor`` (its ``preprocessor_config.json``, JSON),
``dtype``, ``source`` (the folder's name), ``encoder`` (the folder's fingerprint), ``parameters``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

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
    from .encoder import QFormerEncoder

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


def encoder_fingerprint(source: PathLike) -> str:
    """The encoder fingerprint of a BLIP-2 folder or packed file (as :class:`fdi.encoder.QFormerEncoder` would
    report it), from its configs and query tokens only: no model is built."""
    src = open_blip2(source)
    return src.fingerprint(src.read(["query_tokens"])["query_tokens"])
