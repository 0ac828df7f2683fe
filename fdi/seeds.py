"""Derived seeds: every random stream of the package is seeded from ``(purpose, seed, indices…)``.

A stream depends on its coordinates only (the user's seed, an epoch, a step, a sample, a process), never
on what was drawn before, so a resumed or re-ordered run draws the same numbers (docs/design.md,
"Training").
"""

from __future__ import annotations

import hashlib
from typing import Union

import torch

__all__ = ["derive_seed", "seeded_generator"]


def derive_seed(*parts: Union[int, str]) -> int:
    """A seed in ``[0, 2^63)`` from ``parts`` (a stream's name, the user's seed, indices, a file stem): the
    first 8 bytes of the SHA-256 of their ``:``-joined text, so distinct coordinates give unrelated streams."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def seeded_generator(*parts: Union[int, str]) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`derive_seed` of the same arguments."""
    return torch.Generator().manual_seed(derive_seed(*parts))
