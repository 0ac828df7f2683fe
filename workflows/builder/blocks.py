"""Pieces several workflows share: the base model, image inputs, the modular sampling chain, one-node restore."""

from __future__ import annotations

from .graph import Workflow
from .names import ADAPTERS, BLIP2_FOLDER, CHECKPOINT, COLORS, SDXL_CHECKPOINT


def sd_base(
    wf: Workflow,
    x: int,
    y: int,
    prompt_title="Prompt (empty, as in the paper)",
    checkpoint: str = CHECKPOINT,
    base_title: str = "SD 2.1 base",
):
    """Checkpoint loader, empty prompt and zeroed negative; returns (ckpt, positive, negative) keys."""
    wf.node("ckpt", "CheckpointLoaderSimple", (x, y), f"Load {base_title}", ckpt_name=checkpoint)
    wf.node("positive", "CLIPTextEncode", (x, y + 160), prompt_title, size=[300, 130], text="")
    wf.node("negative", "ConditioningZeroOut", (x, y + 350), "Negative (unused at cfg 1)")
    wf.link("ckpt", "CLIP", "positive", "clip")
    wf.link("positive", "CONDITIONING", "negative", "conditioning")
    wf.group(f"{base_title} model", ["ckpt", "positive", "negative"], COLORS["model"])
    return "ckpt", "positive", "negative"


def sdxl_base(wf: Workflow, x: int, y: int):
    """:func:`sd_base` with the SDXL base 1.0 checkpoint (its CLIP Text Encode carries the pooled output SDXL
    needs)."""
    return sd_base(wf, x, y, checkpoint=SDXL_CHECKPOINT, base_title="SDXL base 1.0")


def image_in(wf: Workflow, key: str, x: int, y: int, name: str, title: str):
    wf.node(key, "LoadImage", (x, y), title, size=[300, 340], image=name)
    return key


def modular_sampling(wf: Workflow, x: int, y: int, guided_model: tuple, image: str, prefix: str, steps: int = 50):
    """VAE encode → FDI DDIM inversion (plain model) → KSamplerAdvanced (guided model) → decode → save."""
    wf.node("encode", "VAEEncode", (x, y), "VAE Encode (degraded image)")
    wf.node("invert", "FDIInvert", (x, y + 110), "FDI DDIM Inversion", steps=steps)
    wf.node(
        "sampler",
        "KSamplerAdvanced",
        (x + 340, y),
        "DDIM sampling (guided)",
        size=[320, 334],
        add_noise="disable",
        noise_seed=0,
        steps=steps,
        cfg=1.0,
        sampler_name="ddim",
        scheduler="ddim_uniform",
        start_at_step=0,
        end_at_step=10000,
        return_with_leftover_noise="disable",
    )
    wf.node("decode", "VAEDecode", (x + 340, y + 380), "VAE Decode")
    wf.node("save", "SaveImage", (x + 700, y), "Restored image", size=[340, 380], filename_prefix=prefix)
    wf.link(image[0], image[1], "encode", "pixels")
    wf.link("ckpt", "VAE", "encode", "vae")
    wf.link("ckpt", "MODEL", "invert", "model")
    wf.link("positive", "CONDITIONING", "invert", "positive")
    wf.link("encode", "LATENT", "invert", "latent")
    wf.link(guided_model[0], guided_model[1], "sampler", "model")
    wf.link("positive", "CONDITIONING", "sampler", "positive")
    wf.link("negative", "CONDITIONING", "sampler", "negative")
    wf.link("invert", "latent", "sampler", "latent_image")
    wf.link("sampler", "LATENT", "decode", "samples")
    wf.link("ckpt", "VAE", "decode", "vae")
    wf.link("decode", "IMAGE", "save", "images")
    wf.group("Inversion and guided DDIM sampling", ["encode", "invert", "sampler", "decode"], COLORS["sample"])
    wf.group("Output", ["save"], COLORS["output"])


def one_node_restore(wf: Workflow, y: int, image: tuple, adapter: tuple, restore: tuple, group: str, **tiles):
    """Load Image + adapter → 'FDI Restore' → save, below the note and the base at row ``y``.

    ``image``/``adapter``: (input image name or adapter file, node title); ``restore``: (title, node size)."""
    image_in(wf, "image", 400, y, image[0], image[1])
    wf.node("adapter", "FDIAdapterLoader", (400, y + 420), adapter[1], adapter_name=adapter[0])
    wf.group(group, ["image", "adapter"], COLORS["input"])
    wf.node(
        "restore",
        "FDIRestore",
        (760, y),
        restore[0],
        size=restore[1],
        steps=50,
        inversion_steps=50,
        strength=1.0,
        guidance_end=0.333,
        cfg=1.0,
        **tiles,
    )
    for src, output, input_ in (
        ("ckpt", "MODEL", "model"),
        ("ckpt", "VAE", "vae"),
        ("image", "IMAGE", "image"),
        ("adapter", "adapter", "adapter"),
        ("positive", "CONDITIONING", "positive"),
        ("adapter", "fdi", "fdi"),
        ("negative", "CONDITIONING", "negative"),
    ):
        wf.link(src, output, "restore", input_)


def save_output(wf: Workflow, x: int, y: int, title: str, prefix: str) -> None:
    wf.node("save", "SaveImage", (x, y), title, size=[340, 380], filename_prefix=prefix)
    wf.link("restore", "image", "save", "images")
    wf.group("Output", ["save"], COLORS["output"])


def two_adapter_guidance(wf: Workflow, names: tuple, titles: tuple, strengths: tuple, group_title: str):
    """Two adapters (embedded FDIs) → two decouplings → two chained Apply nodes on the checkpoint's MODEL."""
    for i, (name, title, strength) in enumerate(zip(names, titles, strengths), start=1):
        y = 400 + (i - 1) * 520
        wf.node(
            f"adapter{i}",
            "FDIAdapterLoader",
            (760, y),
            f"Load FDI Adapter {i} ({title})",
            size=[330, 102],
            adapter_name=ADAPTERS[name],
        )
        wf.node(f"decouple{i}", "FDINoiseDecoupling", (760, y + 160), f"FDI Noise Decoupling {i}", size=[330, 86])
        wf.node(
            f"apply{i}",
            "FDIApplyGuidance",
            (760, y + 300),
            f"Apply FDI Guidance {i} (weight {strength})",
            size=[330, 170],
            strength=strength,
            start_percent=0.0,
            end_percent=0.333,
        )
        wf.link(f"adapter{i}", "adapter", f"decouple{i}", "adapter")
        wf.link(f"adapter{i}", "fdi", f"decouple{i}", "fdi")
        wf.link("image", "IMAGE", f"decouple{i}", "image")
        wf.link(f"decouple{i}", "guidance", f"apply{i}", "guidance")
    wf.link("ckpt", "MODEL", "apply1", "model")
    wf.link("apply1", "model", "apply2", "model")
    wf.group(group_title, ["adapter1", "decouple1", "apply1", "adapter2", "decouple2", "apply2"], COLORS["guide"])


def style_transfer_graph(wf: Workflow, y: int, pairs: tuple, image: tuple, adapter: tuple, restore: tuple, **tiles):
    """Q-Former + 'Extract FDI' on style pairs, the content image and a style adapter → 'FDI Restore' → save, below
    the note and the base at row ``y``. ``pairs``: (style A folder, style B folder); ``image``/``adapter``: (name,
    title); ``restore``: (node title, node size, sampling group title, save prefix)."""
    wf.node("qformer", "FDIQFormerLoader", (0, y + 500), "Load BLIP-2 Q-Former", folder=BLIP2_FOLDER, dtype="auto")
    wf.group("BLIP-2 Q-Former", ["qformer"], COLORS["model"])
    wf.node(
        "extract",
        "FDIExtractFromFolders",
        (400, y),
        "Extract FDI (photo → painting pairs)",
        size=[340, 206],
        degraded_folder=pairs[0],
        clean_folder=pairs[1],
        label="photo2painting",
        batch_size=8,
        keep_pairs=True,
    )
    wf.group("Style FDI from reference pairs", ["extract"], COLORS["fdi"])
    image_in(wf, "image", 400, y + 320, image[0], image[1])
    wf.node("adapter", "FDIAdapterLoader", (400, y + 730), adapter[1], size=[300, 102], adapter_name=adapter[0])
    wf.group(adapter[2], ["image", "adapter"], COLORS["input"])
    wf.node(
        "restore",
        "FDIRestore",
        (800, y),
        restore[0],
        size=restore[1],
        steps=50,
        inversion_steps=50,
        strength=1.0,
        guidance_end=0.333,
        cfg=1.0,
        **tiles,
    )
    wf.link("qformer", "qformer", "extract", "qformer")
    for src, output, input_ in (
        ("ckpt", "MODEL", "model"),
        ("ckpt", "VAE", "vae"),
        ("image", "IMAGE", "image"),
        ("adapter", "adapter", "adapter"),
        ("positive", "CONDITIONING", "positive"),
        ("extract", "fdi", "fdi"),
    ):
        wf.link(src, output, "restore", input_)
    wf.group(restore[2], ["restore"], COLORS["sample"])
    save_output(wf, 1160, y, "Stylised image", restore[3])
