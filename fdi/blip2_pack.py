"""``python -m fdi pack-blip2``: the part of a BLIP-2 folder that FDI uses, in one safetensors file.

A BLIP-2 checkpoint folder (``Salesforce/blip2-opt-2.7b``: 15 GB) holds the OPT language model beside the
vision model and Q-Former that FDI reads. :func:`pack_blip2` copies the vision model, the query tokens and the
Q-Former (1.1 B parameters: about 2.2 GB in fp16), with the configs, the image-processor settings and the
folder's encoder fingerprint, into one file that :meth:`fdi.encoder.QFormerEncoder.from_pretrained` loads
like the folder (the file format: :mod:`fdi.encoder`; why: docs/design.md, "One-file BLIP-2").

The folder's shards are read tensor by tensor with plain reads (no memory map) and each tensor is written
as soon as it is read, so memory holds one tensor at a time; the language model is never read. The file is
written under a temporary name in the target folder and renamed at the end: an error or Ctrl-C leaves no
partial file.
"""

from __future__ import annotations

import json
import shutil
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

import torch

from .blip2_source import PACK_FORMAT, PACK_FORMAT_VERSION, Blip2Source, open_blip2
from .errors import FDIError
from .files import PathLike, SafetensorsReader, atomic_write, check_output_path, safetensors_header, tensor_bytes
from .progress import ProgressCallback, report

#: the precisions a pack is written in (the query tokens stay fp32 in both)
PACK_DTYPES = {"fp16": torch.float16, "fp32": torch.float32}

#: tensors kept in fp32 whatever the pack's dtype: the fingerprint hashes their values (98 KB for blip2-opt-2.7b)
FP32_KEYS = ("query_tokens",)


@dataclass(frozen=True)
class PackedBlip2:
    """What :func:`pack_blip2` wrote: the file, its size in bytes, parameters, dtype and encoder fingerprint."""

    path: Path
    bytes: int
    parameters: int
    dtype: str
    fingerprint: str


def _pack_dtype(dtype: str) -> torch.dtype:
    if dtype not in PACK_DTYPES:
        raise FDIError(f"unknown dtype {dtype!r} for a packed BLIP-2; use {', '.join(PACK_DTYPES)}")
    return PACK_DTYPES[dtype]


def _check_target(output: PathLike, folder: Path, overwrite: bool) -> Path:
    """The output path, refused when it exists (unless ``overwrite``), is not ``.safetensors`` or lies inside the
    source folder (where it would shadow the checkpoint's own weight files)."""
    out = check_output_path(output, suffix=".safetensors")
    if folder.is_dir() and out.resolve().parent.is_relative_to(folder.resolve()):
        raise FDIError(
            f"{out} is inside the BLIP-2 folder {folder}; write the packed file beside it, e.g. "
            f"{folder.parent / (folder.name + '.safetensors')}"
        )
    if out.exists() and not overwrite:
        raise FDIError(f"{out} exists; choose another name, or replace it (--overwrite)")
    return out


def _output_dtypes(src: Blip2Source, dtype: torch.dtype) -> Dict[str, torch.dtype]:
    return {k: torch.float32 if k in FP32_KEYS else dtype for k in sorted(src.tensors)}


def _metadata(src: Blip2Source, dtype: str, fingerprint: str, parameters: int) -> Dict[str, str]:
    config = {k: v for k, v in src.raw_config.items() if k != "text_config"}
    return {
        "format": PACK_FORMAT,
        "format_version": str(PACK_FORMAT_VERSION),
        "config": json.dumps(config, sort_keys=True),
        "preprocessor": json.dumps(src.preprocessor, sort_keys=True),
        "dtype": dtype,
        "source": src.name,
        "encoder": fingerprint,
        "parameters": str(parameters),
    }


def _converted(name: str, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    out = t.to(dtype)
    if dtype != t.dtype and not torch.isfinite(out).all() and torch.isfinite(t).all():
        biggest = float(t.abs().max())
        raise FDIError(
            f"tensor {name} holds values up to {biggest:.3g}, beyond fp16's range (65504); pack in fp32 (--dtype fp32)"
        )
    return out


def pack_blip2(
    folder: PathLike,
    output: PathLike,
    dtype: str = "fp16",
    overwrite: bool = False,
    progress: Optional[ProgressCallback] = None,
) -> PackedBlip2:
    """Write the vision model, query tokens and Q-Former of the BLIP-2 folder ``folder`` to ``output``.

    ``dtype``: ``"fp16"`` (half the size; the FDI moves by fp16 rounding of the weights) or ``"fp32"`` (the
    FDI equals the folder's). ``progress(done, total)`` is called after each tensor and may raise to stop.
    Everything is checked from configs and headers before anything is written; raises :class:`FDIError` for a
    folder that is not a complete BLIP-2 (InstructBLIP, BLIP-1, no Q-Former…), an existing ``output``
    (unless ``overwrite``), an unknown ``dtype`` or too little disk space.
    """
    torch_dtype = _pack_dtype(dtype)
    path = Path(folder)
    out = _check_target(output, path, overwrite)
    src = open_blip2(path)
    if src.packed:
        raise FDIError(f"{path} is already a packed BLIP-2 file; pack-blip2 reads a BLIP-2 checkpoint folder")
    fingerprint = src.fingerprint(src.read(["query_tokens"])["query_tokens"])
    dtypes = _output_dtypes(src, torch_dtype)
    entries = [(k, dt, src.tensors[k][1]["shape"]) for k, dt in dtypes.items()]
    parameters = sum(int(torch.Size(shape).numel()) for _, _, shape in entries)
    head = safetensors_header(entries, _metadata(src, dtype, fingerprint, parameters))
    size = len(head) + sum(torch.Size(shape).numel() * dt.itemsize for _, dt, shape in entries)
    free = shutil.disk_usage(out.parent).free
    if free < size:
        raise FDIError(f"{out.parent} has {free / 1e9:.2f} GB free; the packed file needs {size / 1e9:.2f} GB")
    with ExitStack() as stack:
        fh = stack.enter_context(atomic_write(out))
        fh.write(head)
        readers: Dict[Path, SafetensorsReader] = {}
        for i, (name, dt, _) in enumerate(entries, start=1):
            file = src.tensors[name][0]
            if file not in readers:
                readers[file] = stack.enter_context(SafetensorsReader(file, "BLIP-2 weights"))
            fh.write(tensor_bytes(_converted(name, readers[file].get(name), dt)))
            report(progress, i, len(entries))
    return PackedBlip2(out, out.stat().st_size, parameters, dtype, fingerprint)
