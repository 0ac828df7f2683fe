"""Precision names → torch dtypes: the one map the CLI, training, the benchmarks and the nodes share."""

from __future__ import annotations

from typing import Union

import torch

from .errors import FDIError

#: the precision names users type (CLI ``--dtype``, node combos), in the order they are offered
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

#: other spellings accepted for the same dtypes (torch's names)
ALIASES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def parse_dtype(dtype: Union[str, torch.dtype, None]) -> torch.dtype:
    """``"fp32"``/``"fp16"``/``"bf16"`` (or torch's names, a torch dtype, or ``None`` = fp32) → torch dtype."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).lower()
    try:
        return DTYPES[ALIASES.get(name, name)]
    except KeyError:
        raise FDIError(f"unknown dtype {dtype!r}; use {', '.join(DTYPES)}") from None
