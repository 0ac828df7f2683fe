"""Every example workflow: name -> (builder, one-line description), in the order the tests run them."""

from __future__ import annotations

from .auto import restore_auto_mixed
from .restore import (
    cross_task_fdi,
    mixed_composite,
    mixed_progressive,
    restore_large_photo,
    restore_one_node,
    restore_single,
)
from .sdxl import restore_sdxl, style_transfer_sdxl
from .style import build_fdi_from_pairs, style_fusion, style_transfer
from .train import train_from_clean_photos, train_from_dataset, train_style_adapter

#: name -> (builder, one-line description); the order is the one the tests run them in
WORKFLOWS = {
    "build_fdi_from_pairs": (build_fdi_from_pairs, "reference pairs in two folders → FDI → save → inspect plot"),
    "restore_single": (
        restore_single,
        "one image, one adapter, modular: decoupling → apply → DDIM inversion → KSamplerAdvanced → decode",
    ),
    "restore_one_node": (restore_one_node, "the same restoration with the one-node 'FDI Restore'"),
    "restore_large_photo": (restore_large_photo, "a large photo in tiles with 'FDI Restore', then 'FDI Color Fix'"),
    "cross_task_fdi": (cross_task_fdi, "two saved FDIs (denoise + desnow) combined, driving the desnowing adapter"),
    "mixed_composite": (mixed_composite, "two adapters chained with weights on one MODEL, one sampling"),
    "mixed_progressive": (mixed_progressive, "adapter 1's restoration fed into adapter 2"),
    "restore_auto_mixed": (
        restore_auto_mixed,
        "a degradation classifier picks and weighs the adapters: composite and progressive, automatically",
    ),
    "style_transfer": (style_transfer, "style pairs → FDI → style adapter → restore-style sampling"),
    "style_fusion": (style_fusion, "two style adapters combined with weights"),
    "train_style_adapter": (
        train_style_adapter,
        "style pairs → FDI → train an adapter → save → restore-style sampling",
    ),
    "train_from_clean_photos": (
        train_from_clean_photos,
        "a clean photo → synthetic haze pairs → FDI → train an adapter → save → restore the hazy images",
    ),
    "train_from_dataset": (
        train_from_dataset,
        "a downloaded data set (Rain100H) → its training pairs → FDI → train an adapter → save → restore a photo",
    ),
    "restore_sdxl": (restore_sdxl, "one image restored on SDXL base 1.0 with an SDXL adapter, 1024 px tiles"),
    "style_transfer_sdxl": (style_transfer_sdxl, "style pairs → FDI → SDXL style adapter → restore-style sampling"),
}
