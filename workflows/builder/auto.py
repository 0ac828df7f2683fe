"""The automatic restoration: a degradation classifier picks and weighs the adapters (issue 34)."""

from __future__ import annotations

from .blocks import image_in, sd_base
from .graph import Workflow
from .names import (
    ADAPTER_NOTE,
    ADAPTERS,
    BLIP2_FOLDER,
    BLIP2_NOTE,
    CLASSIFIER_NOTE,
    CLASSIFIERS,
    COLORS,
    INPUT_IMAGES,
    MODEL_NOTE,
)


def restore_auto_mixed() -> Workflow:
    wf = Workflow("restore_auto_mixed")
    wf.note(
        "note",
        (0, 0),
        (700, 300),
        "Mixed degradations, automatic: 'Detect Degradations (FDI)' scores the photo with a degradation classifier "
        "(the node shows each label's probability and threshold), and 'FDI Restore (auto)' uses the adapters whose "
        "label it detects — composite (one sampling, each adapter weighted by its probability) and progressive "
        "(one restoration per adapter, most probable first) side by side. A photo where nothing is detected comes "
        "out unchanged; 'decision' says why, as 'python -m fdi restore --auto' records it.\n\n"
        + MODEL_NOTE
        + BLIP2_NOTE
        + CLASSIFIER_NOTE
        + ADAPTER_NOTE.replace("<name>", "fdi_derain and fdi_dehaze")
        + f"Input: put the image in ComfyUI/input ('{INPUT_IMAGES['restore_auto_mixed']}' here).",
        title="Read me: model files",
    )
    sd_base(wf, 0, 400)
    wf.node("qformer", "FDIQFormerLoader", (0, 900), "Load BLIP-2 Q-Former", folder=BLIP2_FOLDER, dtype="auto")
    wf.node(
        "classifier",
        "FDIClassifierLoader",
        (0, 1040),
        "Load Degradation Classifier",
        classifier_name=CLASSIFIERS["mixed"],
    )
    wf.group("BLIP-2 and the degradation classifier", ["qformer", "classifier"], COLORS["model"])
    image_in(wf, "image", 400, 400, INPUT_IMAGES["restore_auto_mixed"], "Rainy and hazy image")
    wf.node("adapter1", "FDIAdapterLoader", (400, 820), "Load FDI Adapter (derain)", adapter_name=ADAPTERS["derain"])
    wf.node("adapter2", "FDIAdapterLoader", (400, 980), "Load FDI Adapter (dehaze)", adapter_name=ADAPTERS["dehaze"])
    wf.group("Degraded image and the adapters to choose from", ["image", "adapter1", "adapter2"], COLORS["input"])
    wf.node("detect", "FDIDetectDegradations", (760, 400), "Detect Degradations", size=[340, 220])
    wf.link("qformer", "qformer", "detect", "qformer")
    wf.link("classifier", "classifier", "detect", "classifier")
    wf.link("image", "IMAGE", "detect", "image")
    wf.group("What is wrong with the photo", ["detect"], COLORS["fdi"])
    for i, mode in enumerate(("composite", "progressive")):
        y = 400 + i * 560
        wf.node(
            f"restore_{mode}",
            "FDIRestoreAuto",
            (1140, y),
            f"FDI Restore (auto, {mode})",
            size=[330, 500],
            mode=mode,
            steps=50,
            inversion_steps=50,
            strength=1.0,
            cfg=1.0,
        )
        for src, output, input_ in (
            ("ckpt", "MODEL", "model"),
            ("ckpt", "VAE", "vae"),
            ("image", "IMAGE", "image"),
            ("detect", "degradations", "degradations"),
            ("adapter1", "adapter", "adapter"),
            ("adapter2", "adapter", "adapter_2"),
            ("positive", "CONDITIONING", "positive"),
        ):
            wf.link(src, output, f"restore_{mode}", input_)
        wf.node(
            f"save_{mode}",
            "SaveImage",
            (1510, y),
            f"Restored ({mode})",
            size=[340, 380],
            filename_prefix=f"fdi/restore_auto_{mode}",
        )
        wf.link(f"restore_{mode}", "image", f"save_{mode}", "images")
    wf.group("Restore with the detected adapters", ["restore_composite", "restore_progressive"], COLORS["sample"])
    wf.group("Output", ["save_composite", "save_progressive"], COLORS["output"])
    return wf
