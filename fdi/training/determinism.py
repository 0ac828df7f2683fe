"""Bit-reproducible training (``--deterministic``): the switches that make two runs on the same inputs equal.

On the CPU the run-to-run differences come from MKL: its threaded matrix products are not reproducible
unless its Conditional Numerical Reproducibility mode is on (``MKL_CBWR``), which MKL reads once, at its
first call in the process. docs/design.md ("Training", determinism) has the measurements and the cost.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch

#: MKL's CNR mode for ``--deterministic``: the code path MKL picks for this CPU, reductions in a fixed order
MKL_CBWR_MODE = "AUTO"
#: cuBLAS needs a fixed workspace for deterministic products (read when CUDA's cuBLAS starts)
CUBLAS_WORKSPACE = ":4096:8"


def request_reproducible_libraries() -> None:
    """Ask MKL (``MKL_CBWR``) and cuBLAS (``CUBLAS_WORKSPACE_CONFIG``) for reproducible results, unless the
    environment already chose. Acts only where the library has not run yet in this process: call it before
    the first matrix product (``python -m fdi train --deterministic`` does, at its start)."""
    os.environ.setdefault("MKL_CBWR", MKL_CBWR_MODE)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)


@contextmanager
def deterministic_algorithms(enabled: bool = True) -> Iterator[None]:
    """Within the block: :func:`request_reproducible_libraries`, ``torch.use_deterministic_algorithms(True)``
    and oneDNN's deterministic kernels; the previous settings (and environment) come back on exit. Nothing
    when ``enabled`` is false."""
    if not enabled:
        yield
        return
    env_before = {k: os.environ.get(k) for k in ("MKL_CBWR", "CUBLAS_WORKSPACE_CONFIG")}
    request_reproducible_libraries()
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    mkldnn_before = torch.backends.mkldnn.deterministic
    torch.use_deterministic_algorithms(True)
    torch.backends.mkldnn.deterministic = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.mkldnn.deterministic = mkldnn_before
        for k, v in env_before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
