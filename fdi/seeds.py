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


def derive_seed(purpose: str, *parts: Union[int, str]) -> int:
    """A seed in ``[0, 2^63)`` for the stream ``purpose`` at coordinates ``parts`` (e.g. the user's seed,
    an epoch, an index): SHA-256 of their text, so distinct coordinates give unrelated streams."""
    text = "\x1f".join([purpose, *(str(int(p)) if not isinstance(p, str) else p for p in parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def seeded_generator(purpose: str, *parts: Union[int, str]) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`derive_seed` of the same arguments."""
    return torch.Generator().manual_seed(derive_seed(purpose, *parts))
