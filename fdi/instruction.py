"""The Feature Difference Instruction (FDI): the object, its file, and its algebra.

An FDI is a ``(T, D)`` float32 tensor of Q-Former tokens — ``(32, 768)`` for BLIP-2 — equal to the
mean over reference pairs of ``Q(degraded_j) - Q(clean_j)``. It is tied to the encoder that made it
by a fingerprint (:attr:`FDI.encoder`); FDIs of different encoders are never combined.

File format (``*.fdi.safetensors``; why: docs/design.md, "Adapter and FDI"):

* tensor ``fdi`` ``(T, D)`` float32; optional tensor ``pairs`` ``(N, T, D)`` float32 (the per-pair
  differences, kept for inspection);
* metadata ``format="fdi"``, ``format_version="1"``, ``encoder`` (fingerprint), ``n_pairs``,
  ``label``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from .errors import FDIError
from .files import PathLike, check_file_format, load_safetensors, save_safetensors

FDI_FORMAT = "fdi"
FDI_FORMAT_VERSION = 1
FDI_SUFFIX = ".fdi.safetensors"


def encoder_hash(fingerprint: str) -> str:
    """The part of an encoder fingerprint that identifies the encoder (the name is informational).

    Fingerprints look like ``"blip2-opt-2.7b:0123456789abcdef"``; two encoders are the same when
    their hashes agree, whatever folder name they were loaded from.
    """
    return fingerprint.rsplit(":", 1)[-1]


def same_encoder(a: str, b: str) -> bool:
    """Whether two encoder fingerprints denote the same encoder."""
    return encoder_hash(a) == encoder_hash(b)


@dataclass
class FDI:
    """A Feature Difference Instruction.

    Attributes:
        tokens: ``(T, D)`` float32 — the task's FDI (mean of per-pair differences, or a combination).
        encoder: fingerprint of the Q-Former checkpoint that produced it (``name:hash``).
        n_pairs: number of reference pairs it was averaged over (0 for a pure combination of
            FDIs that did not record theirs).
        label: free text for people (``"derain"``, ``"monet"``…).
        pairs: optional ``(N, T, D)`` float32 per-pair differences, for inspection.
    """

    tokens: torch.Tensor
    encoder: str
    n_pairs: int = 0
    label: str = ""
    pairs: Optional[torch.Tensor] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.tokens, torch.Tensor) or self.tokens.ndim != 2 or self.tokens.numel() == 0:
            raise FDIError(
                "an FDI must be a (tokens, width) tensor such as (32, 768), "
                f"got {getattr(self.tokens, 'shape', type(self.tokens))}"
            )
        self.tokens = self.tokens.detach().to(torch.float32)
        if not torch.isfinite(self.tokens).all():
            raise FDIError(
                f"FDI {self.label or '(unlabelled)'} holds NaN or infinite values; re-extract it from its image pairs"
            )
        if self.pairs is not None:
            self.pairs = self.pairs.detach().to(torch.float32)
            if self.pairs.ndim != 3 or tuple(self.pairs.shape[1:]) != tuple(self.tokens.shape):
                t, d = self.tokens.shape
                raise FDIError(f"per-pair FDIs have shape {tuple(self.pairs.shape)}, expected (N, {t}, {d})")

    @property
    def shape(self) -> tuple:
        """``(T, D)``: number of tokens and token width."""
        return tuple(self.tokens.shape)

    def describe(self) -> str:
        """One line for logs and UIs."""
        return (
            f"FDI {self.label or '(unlabelled)'}: {self.shape[0]}x{self.shape[1]} tokens, {self.n_pairs} pairs, "
            f"encoder {self.encoder}, norm {self.tokens.norm():.4g}"
        )

    def to_file_tensors(self) -> Dict[str, torch.Tensor]:
        """The tensors of this FDI under the file's names (``fdi``, ``pairs``)."""
        out = {"fdi": self.tokens.contiguous()}
        if self.pairs is not None:
            out["pairs"] = self.pairs.contiguous()
        return out

    def to_embedded(self) -> tuple:
        """``(tensors, metadata)`` to embed this FDI in another file (an adapter file).

        Tensors: ``fdi`` (and ``fdi_pairs``); metadata: ``fdi_encoder``, ``fdi_n_pairs``,
        ``fdi_label``. :meth:`from_embedded` reads them back.
        """
        tensors = {"fdi": self.tokens.contiguous()}
        if self.pairs is not None:
            tensors["fdi_pairs"] = self.pairs.contiguous()
        meta = {"fdi_encoder": self.encoder, "fdi_n_pairs": str(int(self.n_pairs)), "fdi_label": self.label}
        return tensors, meta

    @classmethod
    def from_embedded(cls, tensors: Dict[str, torch.Tensor], meta: Dict[str, str], source: str) -> Optional["FDI"]:
        """The FDI embedded in another file by :meth:`to_embedded`, or ``None`` if there is none."""
        if "fdi" not in tensors:
            return None
        return cls._checked(
            tensors["fdi"],
            tensors.get("fdi_pairs"),
            meta.get("fdi_encoder", ""),
            meta.get("fdi_n_pairs", "0"),
            meta.get("fdi_label", ""),
            source,
        )

    def file_metadata(self) -> Dict[str, str]:
        """The file's metadata (all strings, as safetensors requires)."""
        return {
            "format": FDI_FORMAT,
            "format_version": str(FDI_FORMAT_VERSION),
            "encoder": self.encoder,
            "n_pairs": str(int(self.n_pairs)),
            "label": self.label,
            "tokens": str(self.shape[0]),
            "width": str(self.shape[1]),
        }

    def save(self, path: PathLike, keep_pairs: bool = True) -> Path:
        """Write ``*.fdi.safetensors`` atomically; ``keep_pairs=False`` drops the per-pair tensors."""
        p = Path(path)
        if not p.name.endswith(FDI_SUFFIX):
            raise FDIError(
                f"FDI file name {p.name!r} must end with {FDI_SUFFIX!r}; e.g. {p.name.split('.')[0]}{FDI_SUFFIX}"
            )
        fdi = self if keep_pairs else replace(self, pairs=None)
        save_safetensors(fdi.to_file_tensors(), p, fdi.file_metadata())
        return p

    @classmethod
    def load(cls, path: PathLike) -> "FDI":
        """Read an FDI file, checking its format, version, shapes and values."""
        p = Path(path)
        tensors, meta = load_safetensors(p, what="FDI file")
        return cls.from_file_parts(tensors, meta, source=p.name)

    @classmethod
    def from_file_parts(cls, tensors: Dict[str, torch.Tensor], meta: Dict[str, str], source: str) -> "FDI":
        """Build an FDI from an FDI file's tensors and metadata, checking format and version."""
        check_file_format(
            meta,
            FDI_FORMAT,
            FDI_FORMAT_VERSION,
            source,
            "FDI file",
            "'python -m fdi extract' or the FDISave node",
            "Re-extract the FDI or update the pack",
        )
        if "fdi" not in tensors:
            raise FDIError(f"{source!r} has no 'fdi' tensor; the file is incomplete, re-extract it")
        return cls._checked(
            tensors["fdi"],
            tensors.get("pairs"),
            meta.get("encoder", ""),
            meta.get("n_pairs", "0"),
            meta.get("label", ""),
            source,
        )

    @classmethod
    def _checked(
        cls, tokens: torch.Tensor, pairs: Optional[torch.Tensor], encoder: str, n_pairs: str, label: str, source: str
    ) -> "FDI":
        if not tokens.dtype.is_floating_point:
            raise FDIError(f"{source!r}: the FDI tensor has dtype {tokens.dtype}, expected float32; re-extract it")
        if tokens.ndim != 2 or tokens.numel() == 0:
            raise FDIError(
                f"{source!r}: the FDI tensor has shape {tuple(tokens.shape)}, expected (tokens, "
                "width) such as (32, 768); re-extract it"
            )
        if pairs is not None and not pairs.dtype.is_floating_point:
            raise FDIError(f"{source!r}: the per-pair tensor has dtype {pairs.dtype}, expected float32; re-extract it")
        if not encoder:
            raise FDIError(f"{source!r} does not record the encoder that made its FDI; re-extract it with this pack")
        try:
            n = int(n_pairs)
        except ValueError:
            raise FDIError(f"{source!r} has a malformed pair count {n_pairs!r}; re-extract it") from None
        if not torch.isfinite(tokens).all():
            raise FDIError(f"{source!r}: the FDI holds NaN or infinite values; the file is corrupt, re-extract it")
        return cls(tokens=tokens, encoder=encoder, n_pairs=n, label=label, pairs=pairs)


COMBINE_MODES = ("sum", "mean", "difference")


def combine(
    fdis: Sequence[FDI], weights: Optional[Sequence[float]] = None, mode: str = "sum", label: Optional[str] = None
) -> FDI:
    """Combine FDIs linearly.

    * ``sum``: ``Σ w_k F_k`` (weights default to 1) — e.g. a denoising FDI plus a desnowing FDI;
    * ``mean``: ``Σ w_k F_k / Σ w_k`` (weights default to 1, so a plain average);
    * ``difference``: ``w_1 F_1 − w_2 F_2`` for exactly two FDIs (weights default to 1).

    The result is exactly linear in the inputs (no normalisation of the tokens). Per-pair tensors
    are not carried over (they belong to their own FDI); ``n_pairs`` is the total.

    Raises :class:`FDIError` for no FDIs, a weight count that does not match, non-finite
    weights, a zero weight sum in ``mean`` mode, or FDIs of different encoders or shapes (the
    error names both).
    """
    fdis = list(fdis)
    if mode not in COMBINE_MODES:
        raise FDIError(f"unknown combine mode {mode!r}; use one of {', '.join(COMBINE_MODES)}")
    if not fdis:
        raise FDIError("no FDIs to combine; give at least one")
    if mode == "difference" and len(fdis) != 2:
        raise FDIError(f"'difference' combines exactly two FDIs (first minus second), got {len(fdis)}")
    w: List[float] = [1.0] * len(fdis) if weights is None else [float(x) for x in weights]
    if len(w) != len(fdis):
        raise FDIError(f"{len(w)} weights for {len(fdis)} FDIs; give one weight per FDI")
    if not all(math.isfinite(x) for x in w):
        raise FDIError(f"weights must be finite numbers, got {w}")
    first = fdis[0]
    for other in fdis[1:]:
        if not same_encoder(first.encoder, other.encoder):
            raise FDIError(
                f"cannot combine FDI {first.label or '#1'!r} (encoder {first.encoder}) with FDI "
                f"{other.label or '?'!r} (encoder {other.encoder}): they come from different Q-Former checkpoints; "
                "re-extract both with the same one"
            )
        if other.shape != first.shape:
            raise FDIError(
                f"cannot combine FDI {first.label or '#1'!r} of shape {first.shape} with FDI {other.label or '?'!r} "
                f"of shape {other.shape}; FDIs must come from the same encoder"
            )
    if mode == "difference":
        w = [w[0], -w[1]]
    if mode == "mean":
        total = sum(w)
        if total == 0:
            raise FDIError("weights sum to zero, so 'mean' is undefined; use 'sum' or change the weights")
        w = [x / total for x in w]
    tokens = torch.zeros_like(first.tokens, dtype=torch.float64)
    for wk, f in zip(w, fdis):
        tokens += wk * f.tokens.to(torch.float64)
    if label is None:
        sep = {"sum": " + ", "mean": " & ", "difference": " - "}[mode]
        label = sep.join(
            f"{wk:g}*{f.label or '?'}" for wk, f in zip(w if mode != "difference" else [w[0], -w[1]], fdis)
        )
    return FDI(
        tokens=tokens.to(torch.float32), encoder=first.encoder, n_pairs=sum(f.n_pairs for f in fdis), label=label
    )


def cosine_similarity_matrix(fdis: Sequence[FDI]) -> torch.Tensor:
    """``(K, K)`` cosine similarities between flattened FDIs (float64)."""
    x = torch.stack([f.tokens.flatten().to(torch.float64) for f in fdis])
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return x @ x.T
