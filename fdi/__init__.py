"""Feature Difference Instruction (FDI) for reference-guided restoration and style transfer.

A plain library (no ComfyUI imports). Public names are imported lazily so that ``import fdi`` stays
cheap and never imports diffusers: only the diffusers pipeline and training modules need it.

Main entry points:

* :class:`FDI`, :func:`combine` — the instruction, its file and its algebra (``fdi.instruction``);
* :class:`QFormerEncoder` — the frozen BLIP-2 vision model + Q-Former (``fdi.encoder``);
* :func:`extract_fdi`, :func:`extract_fdi_from_folders` — FDI from reference pairs (``fdi.extract``);
* :class:`FDIAdapterConfig`, :class:`FDIAdapter` — the adapter network (``fdi.adapter``);
* :class:`FDIError` — the one error type for problems a user can fix.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "FDIError": "errors",
    "FDIInterrupted": "errors",
    "FDI": "instruction",
    "combine": "instruction",
    "cosine_similarity_matrix": "instruction",
    "QFormerEncoder": "encoder",
    "extract_fdi": "extract",
    "extract_fdi_from_folders": "extract",
    "load_image": "images",
    "pair_folders": "images",
    "FDIAdapterConfig": "adapter",
    "FDIAdapter": "adapter",
    "FDIGuidance": "adapter",
    "Modulation": "adapter",
    "FDIRestorationPipeline": "pipeline",
    "AdapterUse": "pipeline",
    "DiffusersGuidance": "diffusers_backend",
    "guide_unet": "diffusers_backend",
    "TrainConfig": "train",
    "PairedImageDataset": "data",
    "collect_pairs": "data",
    "image_metrics": "metrics",
    "evaluate_folders": "metrics",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fdi' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return __all__
