"""Reading and writing safetensors files safely.

Two rules hold for every file the pack touches:

* **Only safetensors are read.** Pickle-based formats (``.pt``, ``.pth``, ``.ckpt``, ``.bin``) can
  run code when loaded, so they are refused with an error that says how to convert them. Before
  ``safetensors`` is asked to read a file, its header is validated here (size, JSON, dtypes, shapes,
  offsets inside the file), so a truncated file, a header that lies about sizes or a huge claimed
  shape gives a clean :class:`~fdi.errors.FDIError` instead of a crash or a huge allocation.
* **Writes are atomic.** Files are written to a temporary file in the destination folder and
  renamed over the final name, so an interrupt or a crash never leaves a half-written file under
  the name a user (or ComfyUI's file list) would pick up.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, Mapping, Optional, Sequence, Tuple, Union

import torch

from .errors import FDIError

PathLike = Union[str, os.PathLike]

PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")

#: bytes per element of every dtype name safetensors writes
DTYPE_SIZES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}

#: a header larger than this is refused (safetensors itself caps headers at 100 MB)
MAX_HEADER_BYTES = 100 * 1024 * 1024


def check_output_path(path: PathLike, suffix: Optional[str] = None) -> Path:
    """Validate a path about to be written and return it as a :class:`~pathlib.Path`.

    Raises :class:`FDIError` when its folder does not exist or is not writable, when the path is an
    existing folder, or when ``suffix`` is given and the name does not end with it.
    """
    p = Path(path)
    if suffix is not None and not p.name.endswith(suffix):
        raise FDIError(f"output file name {p.name!r} must end with {suffix!r}; rename it, e.g. {p.stem}{suffix}")
    if p.is_dir():
        raise FDIError(f"output path {str(p)!r} is a folder; give a file name inside it")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise FDIError(f"output folder {str(parent)!r} does not exist; create it first (mkdir -p {parent})")
    if not os.access(parent, os.W_OK):
        raise FDIError(f"output folder {str(parent)!r} is not writable; choose another folder or fix its permissions")
    return p


@contextmanager
def atomic_write(path: PathLike, mode: str = "wb") -> Iterator:
    """Open a temporary file next to ``path``; rename it to ``path`` only if the block succeeds.

    On any exception (including ``KeyboardInterrupt``) the temporary file is removed and ``path`` is
    left exactly as it was.
    """
    p = check_output_path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=str(p.parent) or ".")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the final file the usual permissions
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


_TORCH_TO_ST = {
    torch.bool: "BOOL",
    torch.uint8: "U8",
    torch.int8: "I8",
    torch.int16: "I16",
    torch.int32: "I32",
    torch.int64: "I64",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float32: "F32",
    torch.float64: "F64",
}
#: safetensors dtype name -> torch dtype, for the dtypes torch has
TORCH_DTYPES = {v: k for k, v in _TORCH_TO_ST.items()}


def safetensors_header(entries: Sequence[Tuple[str, torch.dtype, Sequence[int]]], metadata: Mapping[str, str]) -> bytes:
    """The head of a safetensors file whose tensors ``(name, dtype, shape)`` follow in the order of ``entries``.

    8-byte little-endian header length, then the JSON header (sorted keys, metadata sorted, padded with spaces
    to a multiple of 8); the tensors' raw bytes (:func:`tensor_bytes`) are written after it in the same order.
    """
    header: Dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in sorted(metadata.items())}
    offset = 0
    for name, dtype, shape in entries:
        if dtype not in _TORCH_TO_ST:
            raise TypeError(f"tensor {name!r} has dtype {dtype}, which safetensors cannot store")
        numel = 1
        for d in shape:
            numel *= int(d)
        size = numel * DTYPE_SIZES[_TORCH_TO_ST[dtype]]
        header[name] = {
            "dtype": _TORCH_TO_ST[dtype],
            "shape": [int(d) for d in shape],
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of ``t`` as safetensors stores them (a view, no copy when ``t`` is contiguous
    on the CPU)."""
    import sys

    if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
        raise RuntimeError("safetensors files are little-endian; this writer needs a little-endian machine")
    t = t.detach().contiguous().cpu()
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


def serialize_safetensors(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    """The safetensors bytes of ``tensors`` and ``metadata``, **deterministically**.

    safetensors' own writer stores the metadata in hash-map order, which changes from call to call,
    so the same FDI saved twice would differ byte for byte. This writer emits the same format
    (:func:`safetensors_header`, then the tensors' raw bytes) with tensors in name order and sorted
    JSON keys, so equal inputs give equal files. Any safetensors reader reads it.
    """
    names = sorted(tensors)
    head = safetensors_header([(n, tensors[n].dtype, tuple(tensors[n].shape)) for n in names], metadata)
    return head + b"".join(bytes(tensor_bytes(tensors[n])) for n in names)


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: PathLike, metadata: Mapping[str, str]) -> None:
    """Write ``tensors`` and string ``metadata`` to ``path`` atomically and deterministically.

    See :func:`atomic_write` (temporary file + rename) and :func:`serialize_safetensors`.
    """
    data = serialize_safetensors(tensors, metadata)
    with atomic_write(path) as fh:
        fh.write(data)


def refuse_pickle(path: PathLike, what: str = "file") -> None:
    """Raise :class:`FDIError` if ``path`` names a pickle-based checkpoint format."""
    p = Path(path)
    if p.suffix.lower() in PICKLE_SUFFIXES:
        raise FDIError(
            f"{what} {p.name!r} is a pickle checkpoint ({p.suffix}); "
            "only .safetensors files are read (pickle can run code when loaded). "
            "Convert it with safetensors.torch.save_file and load that"
        )


def _refuse_checkpoint_bytes(head: bytes, size: int, bad: str) -> None:
    """Raise :class:`FDIError` when a file's first 9 bytes are too few or a pickle's or a zip's. A pickle starts
    with 0x80 (protocol 2+), a zip with PK; a safetensors header length ending in 0x80 starts with 0x80 too, but
    the header's '{' follows its 8 bytes."""
    if len(head) < 8:
        raise FDIError(f"{bad} (only {size} bytes; it is empty or truncated); re-export or re-download it")
    if head[:2] == b"PK" or (head[:1] == b"\x80" and head[8:9] != b"{"):
        raise FDIError(f"{bad}: it is a pickle/zip checkpoint; only .safetensors files are read, convert it first")


def read_header(path: PathLike, what: str = "file") -> Tuple[Dict[str, dict], Dict[str, str]]:
    """Validate a safetensors file's header and return ``(tensor_infos, metadata)``.

    ``tensor_infos`` maps each tensor name to ``{"dtype", "shape", "data_offsets"}``. Every claim
    of the header is checked against the file's real size, so reading the tensors afterwards
    cannot run past the end of the file or allocate more than the file holds.
    """
    p = Path(path)
    refuse_pickle(p, what)
    if not p.exists():
        raise FDIError(f"{what} {str(p)!r} does not exist; check the path")
    if p.is_dir():
        raise FDIError(f"{what} {str(p)!r} is a folder, not a .safetensors file")
    size = p.stat().st_size
    bad = f"{what} {p.name!r} is not a valid safetensors file"
    with open(p, "rb") as fh:
        head = fh.read(9)
        _refuse_checkpoint_bytes(head, size, bad)
        (n,) = struct.unpack("<Q", head[:8])
        fh.seek(8)
        if n == 0 or n > MAX_HEADER_BYTES or n > size - 8:
            raise FDIError(
                f"{bad} (its header claims {n} bytes, the file has {size}); "
                "the file is truncated or corrupt, re-export it"
            )
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise FDIError(f"{bad} (its header is not JSON); the file is corrupt, re-export it") from None
    if not isinstance(header, dict):
        raise FDIError(f"{bad} (its header is not a JSON object); the file is corrupt, re-export it")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise FDIError(f"{bad} (its metadata is not a string map); the file is corrupt, re-export it")
    data_size = size - 8 - n
    infos: Dict[str, dict] = {}
    spans = []
    for name, info in header.items():
        if not isinstance(info, dict):
            raise FDIError(f"{bad} (entry {name!r} is malformed); the file is corrupt, re-export it")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in DTYPE_SIZES:
            raise FDIError(f"{bad} (tensor {name!r} has unknown dtype {dtype!r}); the file is corrupt, re-export it")
        if (
            not isinstance(shape, list)
            or len(shape) > 8
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40 for d in shape)
        ):
            raise FDIError(f"{bad} (tensor {name!r} has an invalid shape {shape!r}); the file is corrupt, re-export it")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_size
        ):
            raise FDIError(
                f"{bad} (tensor {name!r} points outside the file); the file is truncated or corrupt, re-export it"
            )
        numel = 1
        for d in shape:
            numel *= d
        if numel * DTYPE_SIZES[dtype] != offsets[1] - offsets[0]:
            raise FDIError(
                f"{bad} (tensor {name!r}: shape {shape} does not match its {offsets[1] - offsets[0]} bytes); "
                "the file is corrupt, re-export it"
            )
        infos[name] = {"dtype": dtype, "shape": shape, "data_offsets": offsets}
        spans.append((offsets[0], offsets[1]))
    spans.sort()
    for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
        if b0 < a1:
            raise FDIError(f"{bad} (tensors overlap in the file); the file is corrupt, re-export it")
    return infos, {str(k): str(v) for k, v in metadata.items()}


def load_safetensors(
    path: PathLike, what: str = "file", keys: Optional[list] = None
) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """Read (some of) the tensors of a validated safetensors file, on the CPU.

    ``keys`` restricts reading to those tensors (the others are never read from disk).
    Returns ``(tensors, metadata)``.
    """
    from safetensors import safe_open

    infos, metadata = read_header(path, what)
    wanted = list(infos) if keys is None else [k for k in keys if k in infos]
    tensors: Dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            for k in wanted:
                tensors[k] = fh.get_tensor(k)
    except FDIError:
        raise
    except Exception as exc:  # safetensors' own errors on anything the header check let through
        raise FDIError(
            f"{what} {Path(path).name!r} could not be read ({exc}); the file is corrupt, re-export it"
        ) from None
    return tensors, metadata


class SafetensorsReader:
    """Read the tensors of a validated safetensors file one at a time with plain reads, no memory map.

    ``with SafetensorsReader(path) as r: t = r.get(name)``: each tensor is read into its own new CPU tensor,
    so a loop that converts or writes tensors one by one holds one at a time (a memory-mapped reader keeps
    every page it touched mapped into the process). The header is checked by :func:`read_header` first;
    ``infos`` and ``metadata`` are what it returns.
    """

    def __init__(self, path: PathLike, what: str = "file"):
        self.path, self.what = Path(path), what
        self.infos, self.metadata = read_header(self.path, what)
        self._fh = None

    def __enter__(self) -> "SafetensorsReader":
        self._fh = open(self.path, "rb")
        (n,) = struct.unpack("<Q", self._fh.read(8))
        self._data_start = 8 + n
        return self

    def __exit__(self, *exc) -> None:
        self._fh.close()

    def get(self, name: str) -> torch.Tensor:
        """The tensor ``name`` (its stored dtype and shape)."""
        info = self.infos[name]
        dtype = TORCH_DTYPES.get(info["dtype"])
        if dtype is None:
            raise FDIError(f"{self.what} {self.path.name!r}: tensor {name!r} has dtype {info['dtype']}, not read here")
        start, end = info["data_offsets"]
        buf = torch.empty(end - start, dtype=torch.uint8)
        self._fh.seek(self._data_start + start)
        if end > start and self._fh.readinto(memoryview(buf.numpy())) != end - start:
            raise FDIError(f"{self.what} {self.path.name!r} ended early; the file is truncated, re-export it")
        return buf.view(dtype).reshape(info["shape"])


def check_file_format(
    meta: Dict[str, str], fmt: str, version: int, source: str, kind: str, made_by: str, fix: str
) -> None:
    """Raise :class:`FDIError` unless ``meta`` says ``format=fmt`` and ``format_version=version``.

    ``kind`` names the file type for people ("FDI file", "FDI adapter file"), ``made_by`` says what
    writes such files, ``fix`` what to do about an unknown version.
    """
    found = meta.get("format")
    if found != fmt:
        raise FDIError(f"{source!r} is not an {kind} (format={found!r}); {kind}s are made by {made_by}")
    found_version = meta.get("format_version")
    if found_version != str(version):
        raise FDIError(
            f"{source!r} has {kind} format version {found_version!r}; "
            f"this version of the pack reads version {version}. {fix}"
        )
