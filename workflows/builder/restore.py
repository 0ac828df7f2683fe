"""The restoration workflows on SD 2.1 base: modular and one-node, large photos in tiles, FDIs combined."""

from __future__ import annotations

from .blocks import image_in, modular_sampling, one_node_restore, save_output, sd_base, two_adapter_guidance
from .graph import Workflow
from .names import ADAPTER_NOTE, ADAPTERS, COLORS, FDI_FILES, FDI_NOTE, INPUT_IMAGES, MODEL_NOTE, SAMPLING_NOTE


def restore_single() -> Workflow:
    wf = Workflow("restore_single")
    wf.note(
        "note",
        (0, 0),
        (700, 300),
        "Restore one image with an FDI adapter, step by step (the same as the one-node 'FDI Restore').\n\n"
        + MODEL_NOTE
        + ADAPTER_NOTE.replace("<name>", "fdi_derain")
        + f"Input: put the image in ComfyUI/input ('{INPUT_IMAGES['restore_single']}' "
        "here) or use Load Image's upload button.\n\n" + SAMPLING_NOTE,
        title="Read me: model files",
    )
    sd_base(wf, 0, 400)
    image_in(wf, "image", 400, 400, INPUT_IMAGES["restore_single"], "Degraded image")
    wf.group("Degraded image", ["image"], COLORS["input"])
    wf.node(
        "adapter",
        "FDIAdapterLoader",
        (760, 400),
        "Load FDI Adapter (derain, FDI embedded)",
        size=[330, 102],
        adapter_name=ADAPTERS["derain"],
    )
    wf.node("decouple", "FDINoiseDecoupling", (760, 560), "FDI Noise Decoupling", size=[330, 86])
    wf.node(
        "apply",
        "FDIApplyGuidance",
        (760, 700),
        "Apply FDI Guidance (first third)",
        size=[330, 170],
        strength=1.0,
        start_percent=0.0,
        end_percent=0.333,
    )
    wf.link("adapter", "adapter", "decouple", "adapter")
    wf.link("adapter", "fdi", "decouple", "fdi")
    wf.link("image", "IMAGE", "decouple", "image")
    wf.link("ckpt", "MODEL", "apply", "model")
    wf.link("decouple", "guidance", "apply", "guidance")
    wf.group("FDI guidance", ["adapter", "decouple", "apply"], COLORS["guide"])
    modular_sampling(wf, 1150, 400, ("apply", "model"), ("image", "IMAGE"), "fdi/restore_single")
    return wf


def restore_one_node() -> Workflow:
    wf = Workflow("restore_one_node")
    wf.note(
        "note",
        (0, 0),
        (700, 300),
        "Restore one image with an FDI adapter in one node: 'FDI Restore' runs the adapter, VAE-encodes the image, "
        "DDIM-inverts it, samples it back with guidance in the first third of the steps, and decodes — the same "
        "recipe, and the same pixels, as 'python -m fdi restore' on the same files.\n\n"
        + MODEL_NOTE
        + ADAPTER_NOTE.replace("<name>", "fdi_derain")
        + f"Input: put the image in ComfyUI/input ('{INPUT_IMAGES['restore_one_node']}' "
        "here) or use Load Image's upload button.\n"
        "The FDI input is optional: left empty, the FDI embedded in the adapter file is used.",
        title="Read me: model files",
    )
    sd_base(wf, 0, 400)
    one_node_restore(
        wf,
        400,
        (INPUT_IMAGES["restore_one_node"], "Degraded image"),
        (ADAPTERS["derain"], "Load FDI Adapter (derain, FDI embedded)"),
        ("FDI Restore", [320, 378]),
        "Degraded image and adapter",
    )
    wf.group("Restore (the paper's pipeline in one node)", ["restore"], COLORS["sample"])
    save_output(wf, 1120, 400, "Restored image", "fdi/restore_one_node")
    return wf


def restore_large_photo() -> Workflow:
    wf = Workflow("restore_large_photo")
    wf.note(
        "note",
        (0, 0),
        (700, 300),
        "Restore a large photo with bounded memory: 'FDI Restore' with tile_size "
        "512 runs the VAE and every UNet step "
        "on overlapping 512 px tiles (128 px overlap, blended smoothly), each guided by its crop of the adapter's "
        "residuals; tile_size 0 turns tiles off, a tile at least as large as the image gives the untiled result. "
        "'FDI Color Fix' (wavelet) then pulls the colours back to the input's while keeping the restored detail "
        "(leave it out for dehazing and low-light adapters, whose colour change is the restoration).\n\n"
        + MODEL_NOTE
        + ADAPTER_NOTE.replace("<name>", "fdi_derain")
        + f"Input: put the photo in ComfyUI/input ('{INPUT_IMAGES['restore_large_photo']}' "
        "here) or use Load Image's "
        "upload button.",
        title="Read me: model files",
    )
    sd_base(wf, 0, 400)
    image_in(wf, "image", 400, 400, INPUT_IMAGES["restore_large_photo"], "Large degraded photo")
    wf.node(
        "adapter",
        "FDIAdapterLoader",
        (400, 820),
        "Load FDI Adapter (derain, FDI embedded)",
        adapter_name=ADAPTERS["derain"],
    )
    wf.group("Degraded photo and adapter", ["image", "adapter"], COLORS["input"])
    wf.node(
        "restore",
        "FDIRestore",
        (760, 400),
        "FDI Restore (512 px tiles)",
        size=[320, 380],
        steps=50,
        inversion_steps=50,
        strength=1.0,
        guidance_end=0.333,
        cfg=1.0,
        tile_size=512,
        tile_overlap=128,
    )
    wf.link("ckpt", "MODEL", "restore", "model")
    wf.link("ckpt", "VAE", "restore", "vae")
    wf.link("image", "IMAGE", "restore", "image")
    wf.link("adapter", "adapter", "restore", "adapter")
    wf.link("positive", "CONDITIONING", "restore", "positive")
    wf.link("adapter", "fdi", "restore", "fdi")
    wf.link("negative", "CONDITIONING", "restore", "negative")
    wf.node("colorfix", "FDIColorFix", (760, 820), "FDI Color Fix (wavelet, towards the input)", method="wavelet")
    wf.link("restore", "image", "colorfix", "image")
    wf.link("image", "IMAGE", "colorfix", "reference")
    wf.group("Tiled restore and colour fix", ["restore", "colorfix"], COLORS["sample"])
    wf.node(
        "save", "SaveImage", (1120, 400), "Restored photo", size=[340, 380], filename_prefix="fdi/restore_large_photo"
    )
    wf.link("colorfix", "image", "save", "images")
    wf.group("Output", ["save"], COLORS["output"])
    return wf


def cross_task_fdi() -> Workflow:
    wf = Workflow("cross_task_fdi")
    wf.note(
        "note",
        (0, 0),
        (700, 300),
        "Cross-task reuse: combine FDIs (here denoise + desnow, weighted sum) and "
        "restore with the desnowing adapter "
        "guided by the combined FDI.\n\n"
        + MODEL_NOTE
        + ADAPTER_NOTE.replace("<name>", "fdi_desnow")
        + FDI_NOTE.replace("<name>.fdi.safetensors", "denoise.fdi.safetensors and desnow.fdi.safetensors")
        + f"Input: put the image in ComfyUI/input ('{INPUT_IMAGES['cross_task_fdi']}' here).\n\n"
        + SAMPLING_NOTE,
        title="Read me: model files",
    )
    sd_base(wf, 0, 400)
    image_in(wf, "image", 0, 900, INPUT_IMAGES["cross_task_fdi"], "Snowy image")
    wf.group("Degraded image", ["image"], COLORS["input"])
    wf.node("fdi_a", "FDILoad", (400, 400), "Load FDI (denoise)", fdi_name=FDI_FILES["denoise"])
    wf.node("fdi_b", "FDILoad", (400, 530), "Load FDI (desnow)", fdi_name=FDI_FILES["desnow"])
    wf.node("combine", "FDICombine", (400, 660), "Combine FDIs (weighted sum)", weight_a=0.5, weight_b=0.5, mode="sum")
    wf.node("inspect", "FDIInspect", (400, 860), "Inspect FDIs (denoise, desnow, combined)", size=[300, 300])
    wf.link("fdi_a", "fdi", "combine", "fdi_a")
    wf.link("fdi_b", "fdi", "combine", "fdi_b")
    wf.link("fdi_a", "fdi", "inspect", "fdi")
    wf.link("fdi_b", "fdi", "inspect", "fdi_2")
    wf.link("combine", "fdi", "inspect", "fdi_3")
    wf.group("Combine FDIs", ["fdi_a", "fdi_b", "combine", "inspect"], COLORS["fdi"])
    wf.node(
        "adapter",
        "FDIAdapterLoader",
        (760, 400),
        "Load FDI Adapter (desnow)",
        size=[330, 102],
        adapter_name=ADAPTERS["desnow"],
    )
    wf.node("decouple", "FDINoiseDecoupling", (760, 560), "FDI Noise Decoupling (combined FDI)", size=[330, 86])
    wf.node(
        "apply",
        "FDIApplyGuidance",
        (760, 700),
        "Apply FDI Guidance",
        size=[330, 170],
        strength=1.0,
        start_percent=0.0,
        end_percent=0.333,
    )
    wf.link("adapter", "adapter", "decouple", "adapter")
    wf.link("combine", "fdi", "decouple", "fdi")
    wf.link("image", "IMAGE", "decouple", "image")
    wf.link("ckpt", "MODEL", "apply", "model")
    wf.link("decouple", "guidance", "apply", "guidance")
    wf.group("FDI guidance", ["adapter", "decouple", "apply"], COLORS["guide"])
    modular_sampling(wf, 1150, 400, ("apply", "model"), ("image", "IMAGE"), "fdi/cross_task_fdi")
    return wf


def mixed_composite() -> Workflow:
    wf = Workflow("mixed_composite")
    wf.note(
        "note",
        (0, 0),
        (700, 300),
        "Mixed degradations, composite: two adapters guide ONE sampling. Their Apply nodes are chained on the same "
        "MODEL, so their residuals and modulations add up, each scaled by its strength (the weights).\n\n"
        + MODEL_NOTE
        + ADAPTER_NOTE.replace("<name>", "fdi_derain and fdi_dehaze")
        + f"Input: put the image in ComfyUI/input ('{INPUT_IMAGES['mixed_composite']}' here).\n\n"
        + SAMPLING_NOTE,
        title="Read me: model files",
    )
    sd_base(wf, 0, 400)
    image_in(wf, "image", 400, 400, INPUT_IMAGES["mixed_composite"], "Rainy and hazy image")
    wf.group("Degraded image", ["image"], COLORS["input"])
    two_adapter_guidance(
        wf, ("derain", "dehaze"), ("derain", "dehaze"), (0.6, 0.4), "Two adapters, weighted, on one MODEL"
    )
    modular_sampling(wf, 1150, 400, ("apply2", "model"), ("image", "IMAGE"), "fdi/mixed_composite")
    return wf


def mixed_progressive() -> Workflow:
    wf = Workflow("mixed_progressive")
    wf.note(
        "note",
        (0, 0),
        (700, 300),
        "Mixed degradations, progressive: restore with adapter 1 (derain), then "
        "feed the result to adapter 2 (dehaze).\n\n"
        + MODEL_NOTE
        + ADAPTER_NOTE.replace("<name>", "fdi_derain and fdi_dehaze")
        + f"Input: put the image in ComfyUI/input ('{INPUT_IMAGES['mixed_progressive']}' here).\n"
        "Each 'FDI Restore' uses the FDI embedded in its adapter file (connect "
        "'Load FDI' to its fdi input to use another).",
        title="Read me: model files",
    )
    sd_base(wf, 0, 400)
    image_in(wf, "image", 400, 400, INPUT_IMAGES["mixed_progressive"], "Rainy and hazy image")
    wf.node("adapter1", "FDIAdapterLoader", (400, 820), "Load FDI Adapter 1 (derain)", adapter_name=ADAPTERS["derain"])
    wf.node("adapter2", "FDIAdapterLoader", (400, 980), "Load FDI Adapter 2 (dehaze)", adapter_name=ADAPTERS["dehaze"])
    wf.group("Degraded image and adapters", ["image", "adapter1", "adapter2"], COLORS["input"])
    for i, x in ((1, 760), (2, 1500)):
        wf.node(
            f"restore{i}",
            "FDIRestore",
            (x, 400),
            f"FDI Restore, stage {i} ({'derain' if i == 1 else 'dehaze'})",
            size=[320, 378],
            steps=50,
            inversion_steps=50,
            strength=1.0,
            guidance_end=0.333,
            cfg=1.0,
        )
        wf.link("ckpt", "MODEL", f"restore{i}", "model")
        wf.link("ckpt", "VAE", f"restore{i}", "vae")
        wf.link(f"adapter{i}", "adapter", f"restore{i}", "adapter")
        wf.link("positive", "CONDITIONING", f"restore{i}", "positive")
        wf.link(f"adapter{i}", "fdi", f"restore{i}", "fdi")
    wf.link("image", "IMAGE", "restore1", "image")
    wf.node("preview1", "PreviewImage", (1110, 400), "After stage 1 (derained)", size=[320, 380])
    wf.link("restore1", "image", "preview1", "images")
    wf.link("restore1", "image", "restore2", "image")
    wf.group("Stage 1: derain", ["restore1", "preview1"], COLORS["sample"])
    wf.group("Stage 2: dehaze", ["restore2"], COLORS["sample"])
    wf.node(
        "save",
        "SaveImage",
        (1900, 400),
        "Restored image (both stages)",
        size=[340, 380],
        filename_prefix="fdi/mixed_progressive",
    )
    wf.link("restore2", "image", "save", "images")
    wf.group("Output", ["save"], COLORS["output"])
    return wf
