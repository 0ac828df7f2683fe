"""The SDXL workflows: one-node restoration and style transfer at 1024 px."""

from __future__ import annotations

from .blocks import one_node_restore, save_output, sdxl_base, style_transfer_graph
from .graph import Workflow
from .names import (
    ADAPTERS,
    BLIP2_NOTE,
    COLORS,
    INPUT_IMAGES,
    PAIR_FOLDERS,
    SDXL_ADAPTER_NOTE,
    SDXL_MODEL_NOTE,
    SDXL_SIZE_NOTE,
)


def restore_sdxl() -> Workflow:
    wf = Workflow("restore_sdxl")
    wf.note(
        "note",
        (0, 0),
        (700, 320),
        "Restore an image on SDXL with an FDI adapter trained for SDXL, in one node: 'FDI Restore' runs the "
        "adapter, VAE-encodes the image, DDIM-inverts it with SDXL's own schedule, samples it back with guidance "
        "in the first third of the steps and decodes (the same recipe as on SD 2.1).\n\n"
        + SDXL_MODEL_NOTE
        + SDXL_ADAPTER_NOTE.replace("<name>", "fdi_sdxl_derain")
        + SDXL_SIZE_NOTE
        + f"Input: put the image in ComfyUI/input ('{INPUT_IMAGES['restore_sdxl']}' "
        "here) or use Load Image's upload button.",
        title="Read me: model files",
    )
    sdxl_base(wf, 0, 420)
    one_node_restore(
        wf,
        420,
        (INPUT_IMAGES["restore_sdxl"], "Degraded image (about 1024 px)"),
        (ADAPTERS["sdxl_derain"], "Load FDI Adapter (SDXL derain, FDI embedded)"),
        ("FDI Restore (SDXL, 1024 px tiles)", [320, 380]),
        "Degraded image and SDXL adapter",
        tile_size=1024,
        tile_overlap=128,
    )
    wf.group("Restore on SDXL", ["restore"], COLORS["sample"])
    save_output(wf, 1120, 420, "Restored image", "fdi/restore_sdxl")
    return wf


def style_transfer_sdxl() -> Workflow:
    wf = Workflow("style_transfer_sdxl")
    a, b = PAIR_FOLDERS["style_transfer_sdxl"]
    wf.note(
        "note",
        (0, 0),
        (700, 340),
        "Style transfer on SDXL: (style A, style B) reference pairs give the FDI that drives a style adapter "
        "trained for SDXL, which turns style A into style B.\n\n"
        + SDXL_MODEL_NOTE
        + BLIP2_NOTE
        + SDXL_ADAPTER_NOTE.replace("<name>", "fdi_sdxl_style_painting")
        + SDXL_SIZE_NOTE
        + f"Pairs: photos in ComfyUI/input/{a}/, the same scenes as paintings in ComfyUI/input/{b}/ "
        "(matched by file name). "
        f"Input: the photo to stylise in ComfyUI/input ('{INPUT_IMAGES['style_transfer_sdxl']}' here).",
        title="Read me: model files",
    )
    sdxl_base(wf, 0, 440)
    style_transfer_graph(
        wf,
        440,
        (a, b),
        (INPUT_IMAGES["style_transfer_sdxl"], "Photo to stylise (about 1024 px)"),
        (ADAPTERS["sdxl_painting"], "Load FDI Adapter (SDXL style: painting)", "Content image and SDXL style adapter"),
        (
            "FDI Restore (SDXL style, 1024 px tiles)",
            [320, 380],
            "Restore-style sampling on SDXL",
            "fdi/style_transfer_sdxl",
        ),
        tile_size=1024,
        tile_overlap=128,
    )
    return wf
