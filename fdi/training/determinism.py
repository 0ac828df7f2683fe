"""Bit-reproducible training (``--deterministic``): the switches that make two runs on the same inputs equal.

docs/design.md ("Training", determinism) has what was measured and what it costs.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def deterministic_algorithms(enabled: bool = True) -> Iterator[None]:
    """Within the block: ``torch.use_deterministic_algorithms(True)`` and oneDNN's deterministic kernels;
    the previous settings come back on exit. Does nothing when ``enabled`` is false."""
    if not enabled:
        yield
        return
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    mkldnn_before = torch.backends.mkldnn.deterministic
    torch.use_deterministic_algorithms(True)
    torch.backends.mkldnn.deterministic = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.mkldnn.deterministic = mkldnn_before
