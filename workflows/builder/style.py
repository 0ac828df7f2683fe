"""Making an FDI from reference pairs, and the style workflows on SD 2.1 base."""

from __future__ import annotations

from .blocks import image_in, modular_sampling, sd_base, style_transfer_graph, two_adapter_guidance
from .graph import Workflow
from .names import (
    ADAPTER_NOTE,
    ADAPTERS,
    BLIP2_FOLDER,
    BLIP2_NOTE,
    COLORS,
    INPUT_IMAGES,
    MODEL_NOTE,
    ONE_PAIR_IMAGES,
    PAIR_FOLDERS,
    SAMPLING_NOTE,
)


def build_fdi_from_pairs() -> Workflow:
    wf = Workflow("build_fdi_from_pairs")
    deg, clean = PAIR_FOLDERS["build_fdi_from_pairs"]
    wf.note(
        "note",
        (0, 0),
        (700, 300),
        "Make an FDI (Feature Difference Instruction) from your own reference pairs, save it, and look at it.\n\n"
        "Model files (ComfyUI/models/…):\n"
        + BLIP2_NOTE
        + f"Pairs: put degraded images in ComfyUI/input/{deg}/ and the matching clean "
        f"images in ComfyUI/input/{clean}/; "
        "pairs are matched by file name without suffix (rain_001.png ↔ rain_001.jpg).\n"
        "The FDI is written to ComfyUI/models/fdi/derain.fdi.safetensors (switch "
        "'overwrite' on to replace it) and then "
        "appears in 'Load FDI'. 'Inspect FDIs' plots the cosine similarities and a 2-D map of the per-pair FDIs.\n"
        f"Below: 'Extract FDI (images)' makes an FDI from loaded image batches instead ('{ONE_PAIR_IMAGES[0]}' / "
        f"'{ONE_PAIR_IMAGES[1]}' in ComfyUI/input here), compared with the folder FDI in the plot.",
        title="Read me: model files",
    )
    wf.node("qformer", "FDIQFormerLoader", (0, 400), "Load BLIP-2 Q-Former", folder=BLIP2_FOLDER, dtype="auto")
    wf.group("BLIP-2 Q-Former", ["qformer"], COLORS["model"])
    wf.node(
        "extract",
        "FDIExtractFromFolders",
        (380, 400),
        "Extract FDI (rainy → clean pairs)",
        size=[340, 206],
        degraded_folder=deg,
        clean_folder=clean,
        label="derain",
        batch_size=8,
        keep_pairs=True,
    )
    wf.group("FDI from reference pairs", ["extract"], COLORS["fdi"])
    wf.node("save", "FDISave", (780, 400), "Save FDI (models/fdi)", name="derain", keep_pairs=True, overwrite=False)
    wf.node("inspect", "FDIInspect", (780, 620), "Inspect FDIs")
    wf.node("preview", "PreviewImage", (1140, 400), "Similarity matrix and 2-D map", size=[420, 420])
    wf.link("qformer", "qformer", "extract", "qformer")
    wf.link("extract", "fdi", "save", "fdi")
    wf.link("extract", "fdi", "inspect", "fdi")
    wf.link("inspect", "image", "preview", "images")
    wf.group("Save and inspect", ["save", "inspect", "preview"], COLORS["output"])
    image_in(wf, "pair_degraded", 0, 720, ONE_PAIR_IMAGES[0], "Reference pair: rainy image")
    image_in(wf, "pair_clean", 0, 1130, ONE_PAIR_IMAGES[1], "Reference pair: clean image")
    wf.node(
        "extract_one",
        "FDIExtract",
        (380, 720),
        "Extract FDI (one loaded pair)",
        size=[340, 206],
        label="one pair",
        batch_size=8,
        keep_pairs=True,
    )
    wf.link("qformer", "qformer", "extract_one", "qformer")
    wf.link("pair_degraded", "IMAGE", "extract_one", "degraded")
    wf.link("pair_clean", "IMAGE", "extract_one", "clean")
    wf.link("extract_one", "fdi", "inspect", "fdi_2")
    wf.group(
        "Or: an FDI from loaded images (batches of equal length)",
        ["pair_degraded", "pair_clean", "extract_one"],
        COLORS["fdi"],
    )
    return wf


def style_transfer() -> Workflow:
    wf = Workflow("style_transfer")
    a, b = PAIR_FOLDERS["style_transfer"]
    wf.note(
        "note",
        (0, 0),
        (700, 300),
        "Style transfer: the same machinery as restoration, with (style A, style B) reference pairs instead of "
        "(degraded, clean). The FDI of the pairs drives a style adapter that turns style A into style B.\n\n"
        + MODEL_NOTE
        + BLIP2_NOTE
        + ADAPTER_NOTE.replace("<name>", "fdi_style_painting")
        + f"Pairs: photos in ComfyUI/input/{a}/, the same scenes as paintings in ComfyUI/input/{b}/ "
        "(matched by file name). "
        f"Input: the photo to stylise in ComfyUI/input ('{INPUT_IMAGES['style_transfer']}' here).",
        title="Read me: model files",
    )
    sd_base(wf, 0, 400)
    style_transfer_graph(
        wf,
        400,
        (a, b),
        (INPUT_IMAGES["style_transfer"], "Photo to stylise"),
        (ADAPTERS["painting"], "Load FDI Adapter (style: painting)", "Content image and style adapter"),
        ("FDI Restore (style)", [320, 378], "Restore-style sampling", "fdi/style_transfer"),
    )
    return wf


def style_fusion() -> Workflow:
    wf = Workflow("style_fusion")
    wf.note(
        "note",
        (0, 0),
        (700, 300),
        "Style fusion: two style adapters, each with its embedded style FDI, guide one sampling with weights "
        "(the strengths of the chained Apply nodes).\n\n"
        + MODEL_NOTE
        + ADAPTER_NOTE.replace("<name>", "fdi_style_vangogh and fdi_style_ukiyoe")
        + f"Input: the photo to stylise in ComfyUI/input ('{INPUT_IMAGES['style_fusion']}' "
        "here).\n\n" + SAMPLING_NOTE,
        title="Read me: model files",
    )
    sd_base(wf, 0, 400)
    image_in(wf, "image", 400, 400, INPUT_IMAGES["style_fusion"], "Photo to stylise")
    wf.group("Content image", ["image"], COLORS["input"])
    two_adapter_guidance(
        wf,
        ("vangogh", "ukiyoe"),
        ("style: Van Gogh", "style: ukiyo-e"),
        (0.5, 0.5),
        "Two style adapters, weighted, on one MODEL",
    )
    modular_sampling(wf, 1150, 400, ("apply2", "model"), ("image", "IMAGE"), "fdi/style_fusion")
    return wf
