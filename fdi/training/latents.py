"""The clean latents of training crops that recur exactly, encoded once (both doors' training loops).

A pair whose images are square is resized to exactly the training resolution, so its crop is the whole image
and only the flip varies (:func:`fdi.data.crop_pair`): its clean latent is one of two tensors for the whole run,
and the VAE need not encode it again. Each such crop is encoded *alone* (a batch of one), cached or not, so a
cached latent is bit for bit what encoding it again gives, whatever the micro-batch and whatever the budget
(``budget_mib = 0``: nothing kept, the same numbers). Crops that are not whole images (random windows of larger
images) are encoded together, as a batch, as before. docs/design.md ("Training") has the decision.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Sequence

import torch

#: the default budget of cached clean latents, MiB of CPU memory (SD at 512 px: 64 KiB a crop, 16 384 crops)
LATENT_CACHE_MIB = 1024


class LatentCache:
    """``encode(clean, keys)`` → the clean latents ``[b, 4, h, w]`` of a micro-batch, from the cache where it can.

    ``encoder(images [n, 3, R, R] on the device) → latents [n, 4, R/8, R/8]`` is the door's VAE encode. ``keys``:
    one :func:`fdi.data.crop_key` per sample (``-1``: not a whole-image crop, never cached). Entries are kept on
    the CPU until ``budget_mib`` MiB are used; ``hits``/``misses`` count the cacheable samples."""

    def __init__(self, encoder: Callable[[torch.Tensor], torch.Tensor], budget_mib: int = LATENT_CACHE_MIB):
        self.encoder = encoder
        self.budget = int(budget_mib) * 2**20
        self.used = 0
        self.entries: Dict[int, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    def encode(self, clean: torch.Tensor, keys: Sequence[int]) -> torch.Tensor:
        keys = [int(k) for k in keys]
        if len(keys) != clean.shape[0]:
            raise ValueError(f"{len(keys)} crop keys for a batch of {clean.shape[0]}")
        if all(k < 0 for k in keys):
            return self.encoder(clean)
        rows: List[torch.Tensor] = [None] * len(keys)  # type: ignore[list-item]
        batch = [i for i, k in enumerate(keys) if k < 0]
        if batch:
            for i, z in zip(batch, self.encoder(clean[batch])):
                rows[i] = z
        for i, k in enumerate(keys):
            if k < 0:
                continue
            z = self.entries.get(k)
            if z is not None:
                self.hits += 1
                rows[i] = z.to(clean.device)
                continue
            self.misses += 1
            rows[i] = self.encoder(clean[i : i + 1])[0]
            self.keep(k, rows[i])
        return torch.stack(rows)

    def keep(self, key: int, latent: torch.Tensor) -> None:
        """Store ``latent`` (a CPU copy) under ``key`` if the budget allows."""
        size = latent.numel() * latent.element_size()
        if self.used + size <= self.budget:
            self.entries[key] = latent.detach().to("cpu", copy=True)
            self.used += size
