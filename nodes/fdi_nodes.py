"""Nodes that make, store, combine and show FDIs (Feature Difference Instructions).

Each node translates ComfyUI values to the library's and makes one call into :mod:`fdi`.
"""

from __future__ import annotations

import comfy.model_management as mm
import torch
from comfy_api.latest import io, ui

from ..fdi.encoder import QFormerEncoder
from ..fdi.extract import check_pair_batches, extract_fdi, extract_fdi_from_folders
from ..fdi.images import pair_folders
from ..fdi.instruction import COMBINE_MODES, FDI, FDI_SUFFIX, combine
from .common import (
    CATEGORY,
    DTYPE_CHOICES,
    Blip2QFormer,
    FDIType,
    ModelHandle,
    blip2_choices,
    blip2_path,
    check_fdi_input,
    check_inside,
    fdi_files,
    image_to_batch,
    input_subfolder,
    make_patcher,
    model_file,
    pick_dtype,
    plot_to_image,
    progress_callback,
    save_target,
    saved,
)


class FDIQFormerLoader(io.ComfyNode):
    """Load the frozen BLIP-2 vision model + Q-Former that turns images into FDI tokens."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FDIQFormerLoader",
            display_name="Load BLIP-2 Q-Former (FDI)",
            category=f"{CATEGORY}/loaders",
            description=(
                "Loads the BLIP-2 vision model and Q-Former from models/blip2: a checkpoint folder "
                "(Hugging Face layout, e.g. Salesforce/blip2-opt-2.7b) or the one .safetensors file that "
                "'python -m fdi pack-blip2' makes of it. "
                "Only the vision model, query tokens and Q-Former are read (about 1.1 B parameters); "
                "the language model is never loaded. A folder and its packed file are the same encoder: "
                "their FDIs combine."
            ),
            inputs=[
                io.Combo.Input(
                    "folder",
                    options=blip2_choices(),
                    tooltip="BLIP-2 inside models/blip2: a checkpoint folder (config.json, "
                    "preprocessor_config.json, model*.safetensors) or a .safetensors file made from one by "
                    "'python -m fdi pack-blip2 DIR -o FILE.safetensors' (2.2 GB in fp16 instead of a 15 GB folder).",
                ),
                io.Combo.Input(
                    "dtype",
                    options=DTYPE_CHOICES,
                    default="auto",
                    tooltip="Precision of the ViT vision model; 'auto' uses fp16/bf16 where the device supports it. "
                    "The Q-Former always runs in fp32.",
                ),
            ],
            outputs=[
                Blip2QFormer.Output(
                    display_name="qformer",
                    tooltip="The Q-Former encoder, managed by ComfyUI (loaded to the GPU when used).",
                )
            ],
        )

    @classmethod
    def execute(cls, folder: str, dtype: str) -> io.NodeOutput:
        path = blip2_path(folder)
        vision_dtype = pick_dtype(dtype, mm.get_torch_device())
        encoder = QFormerEncoder.from_pretrained(path, device=mm.unet_offload_device(), vision_dtype=vision_dtype)
        return io.NodeOutput(ModelHandle(encoder, make_patcher(encoder), folder))


class FDIExtract(io.ComfyNode):
    """FDI of two equal-length image batches: mean of Q(degraded_j) − Q(clean_j)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FDIExtract",
            display_name="Extract FDI (images)",
            category=f"{CATEGORY}/instruction",
            description=(
                "Computes a Feature Difference Instruction from reference pairs: "
                "image j of 'degraded' pairs with image j of 'clean'; "
                "the FDI is the mean over pairs of Q-Former(degraded) − Q-Former(clean). "
                "Both batches must have the same length (the images may have any size)."
            ),
            inputs=[
                Blip2QFormer.Input("qformer", tooltip="The BLIP-2 Q-Former from 'Load BLIP-2 Q-Former (FDI)'."),
                io.Image.Input("degraded", tooltip="Degraded (or style A) reference images, one batch."),
                io.Image.Input(
                    "clean", tooltip="The matching clean (or style B) images, same number and order as 'degraded'."
                ),
                io.String.Input(
                    "label",
                    default="",
                    tooltip="A name for this FDI (e.g. 'derain'), stored in the file and shown in plots.",
                ),
                io.Int.Input(
                    "batch_size",
                    default=8,
                    min=1,
                    max=256,
                    tooltip="Pairs encoded per step; lower it if the GPU runs out of memory.",
                ),
                io.Boolean.Input(
                    "keep_pairs",
                    default=True,
                    tooltip="Keep the per-pair FDIs (for FDIInspect's 2-D map and to save them with the FDI).",
                ),
            ],
            outputs=[FDIType.Output(display_name="fdi", tooltip="The FDI (32x768 tokens for BLIP-2).")],
        )

    @classmethod
    def execute(
        cls,
        qformer: ModelHandle,
        degraded: torch.Tensor,
        clean: torch.Tensor,
        label: str,
        batch_size: int,
        keep_pairs: bool,
    ) -> io.NodeOutput:
        d, c = image_to_batch(degraded, "degraded images"), image_to_batch(clean, "clean images")
        check_pair_batches(d, c)  # before the Q-Former is loaded
        encoder = qformer.loaded()
        fdi = extract_fdi(
            encoder,
            d,
            c,
            label=label,
            batch_size=batch_size,
            keep_pairs=keep_pairs,
            progress=progress_callback(d.shape[0]),
        )
        return io.NodeOutput(fdi)


class FDIExtractFromFolders(io.ComfyNode):
    """FDI of a whole paired dataset in two folders inside ComfyUI's input folder, streamed."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FDIExtractFromFolders",
            display_name="Extract FDI (folders)",
            category=f"{CATEGORY}/instruction",
            description=(
                "Computes an FDI from every image pair of two folders inside ComfyUI's input folder, "
                "matched by file name without suffix (rain_001.png ↔ rain_001.jpg). "
                "Images are read a batch at a time, with a progress bar; Cancel stops it cleanly."
            ),
            inputs=[
                Blip2QFormer.Input("qformer", tooltip="The BLIP-2 Q-Former from 'Load BLIP-2 Q-Former (FDI)'."),
                io.String.Input(
                    "degraded_folder",
                    default="fdi/degraded",
                    tooltip="Folder of degraded (or style A) images, relative to ComfyUI's input folder. "
                    "'..' and absolute paths are refused.",
                ),
                io.String.Input(
                    "clean_folder",
                    default="fdi/clean",
                    tooltip="Folder of the matching clean (or style B) images, relative to ComfyUI's input folder.",
                ),
                io.String.Input(
                    "label",
                    default="",
                    tooltip="A name for this FDI (e.g. 'derain'), stored in the file and shown in plots.",
                ),
                io.Int.Input(
                    "batch_size",
                    default=8,
                    min=1,
                    max=256,
                    tooltip="Pairs read and encoded per step; memory stays bounded whatever the number of pairs.",
                ),
                io.Boolean.Input(
                    "keep_pairs", default=True, tooltip="Keep the per-pair FDIs (for FDIInspect's 2-D map)."
                ),
            ],
            outputs=[FDIType.Output(display_name="fdi", tooltip="The FDI of all pairs.")],
        )

    @classmethod
    def execute(
        cls,
        qformer: ModelHandle,
        degraded_folder: str,
        clean_folder: str,
        label: str,
        batch_size: int,
        keep_pairs: bool,
    ) -> io.NodeOutput:
        import folder_paths

        ddir = input_subfolder(degraded_folder, "degraded folder")
        cdir = input_subfolder(clean_folder, "clean folder")
        pairs = pair_folders(ddir, cdir)  # raises for empty folders and unmatched names
        base = folder_paths.get_input_directory()
        check_inside([p for _, p, _ in pairs], base, "degraded folder")
        check_inside([p for _, _, p in pairs], base, "clean folder")
        encoder = qformer.loaded()
        fdi = extract_fdi_from_folders(
            encoder,
            ddir,
            cdir,
            label=label,
            batch_size=batch_size,
            keep_pairs=keep_pairs,
            progress=progress_callback(len(pairs)),
        )
        return io.NodeOutput(fdi)


class FDISave(io.ComfyNode):
    """Write an FDI to models/fdi, where FDILoad lists it."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FDISave",
            display_name="Save FDI",
            category=f"{CATEGORY}/instruction",
            description=(
                "Saves the FDI as <name>.fdi.safetensors in ComfyUI's models/fdi folder (written atomically), "
                "so it appears in 'Load FDI' without moving files. "
                "Plain names only: path separators and '..' are refused."
            ),
            inputs=[
                FDIType.Input("fdi", tooltip="The FDI to save."),
                io.String.Input(
                    "name", default="my_task", tooltip="File name (without folder); '.fdi.safetensors' is added."
                ),
                io.Boolean.Input(
                    "keep_pairs",
                    default=True,
                    tooltip="Also store the per-pair FDIs (bigger file; needed for FDIInspect's 2-D map).",
                ),
                io.Boolean.Input(
                    "overwrite",
                    default=False,
                    tooltip="Replace an existing file of the same name; when off, an existing name is an error.",
                ),
            ],
            outputs=[
                io.String.Output(display_name="file_name", tooltip="The saved file's name, as 'Load FDI' lists it.")
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, fdi: FDI, name: str, keep_pairs: bool, overwrite: bool) -> io.NodeOutput:
        file_name, path = save_target("fdi", name, FDI_SUFFIX, "FDI", "derain", overwrite)
        fdi.save(path, keep_pairs=keep_pairs)
        saved("fdi")
        return io.NodeOutput(file_name, ui=ui.PreviewText(f"saved models/fdi/{file_name}: {fdi.describe()}"))


class FDILoad(io.ComfyNode):
    """Read an FDI file from models/fdi."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FDILoad",
            display_name="Load FDI",
            category=f"{CATEGORY}/instruction",
            description="Loads a *.fdi.safetensors file from ComfyUI's models/fdi folder "
            "(or any 'fdi' path of extra_model_paths.yaml).",
            inputs=[
                io.Combo.Input(
                    "fdi_name",
                    options=fdi_files(),
                    tooltip="FDI file in models/fdi (saved by 'Save FDI' or 'python -m fdi extract').",
                )
            ],
            outputs=[FDIType.Output(display_name="fdi", tooltip="The loaded FDI.")],
        )

    @classmethod
    def execute(cls, fdi_name: str) -> io.NodeOutput:
        return io.NodeOutput(FDI.load(model_file("fdi", fdi_name, "FDI file")))


class FDICombine(io.ComfyNode):
    """Weighted sum, mean or difference of two FDIs (chain for more)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FDICombine",
            display_name="Combine FDIs",
            category=f"{CATEGORY}/instruction",
            description=(
                "Combines two FDIs linearly: sum = a·A + b·B, mean = (a·A + b·B)/(a + b), difference = a·A − b·B. "
                "Chain several to combine more (e.g. a denoising FDI for desnowing). "
                "FDIs from different Q-Former checkpoints are refused."
            ),
            inputs=[
                FDIType.Input("fdi_a", tooltip="First FDI."),
                io.Float.Input(
                    "weight_a", default=1.0, min=-10.0, max=10.0, step=0.01, tooltip="Weight of the first FDI."
                ),
                FDIType.Input("fdi_b", tooltip="Second FDI (same Q-Former as the first)."),
                io.Float.Input(
                    "weight_b", default=1.0, min=-10.0, max=10.0, step=0.01, tooltip="Weight of the second FDI."
                ),
                io.Combo.Input(
                    "mode",
                    options=list(COMBINE_MODES),
                    default="sum",
                    tooltip="sum, mean (weights normalised to sum 1) or difference (first minus second).",
                ),
            ],
            outputs=[FDIType.Output(display_name="fdi", tooltip="The combined FDI.")],
        )

    @classmethod
    def execute(cls, fdi_a: FDI, weight_a: float, fdi_b: FDI, weight_b: float, mode: str) -> io.NodeOutput:
        return io.NodeOutput(combine([fdi_a, fdi_b], [weight_a, weight_b], mode=mode))


class FDIInspect(io.ComfyNode):
    """Cosine-similarity matrix and 2-D map of up to four FDIs, as an image in the graph."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FDIInspect",
            display_name="Inspect FDIs",
            category=f"{CATEGORY}/instruction",
            description=(
                "Shows how FDIs relate: the cosine-similarity matrix between them and, "
                "where per-pair FDIs are stored, a PCA 2-D map of the pairs coloured by FDI "
                "(tasks that cluster apart are separable)."
            ),
            inputs=[
                FDIType.Input("fdi", tooltip="First FDI."),
                FDIType.Input("fdi_2", optional=True, tooltip="Optional second FDI."),
                FDIType.Input("fdi_3", optional=True, tooltip="Optional third FDI."),
                FDIType.Input("fdi_4", optional=True, tooltip="Optional fourth FDI."),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The plot as an IMAGE.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, fdi: FDI, fdi_2: FDI = None, fdi_3: FDI = None, fdi_4: FDI = None) -> io.NodeOutput:
        from ..fdi.plots import render_inspection

        image = plot_to_image(render_inspection([f for f in (fdi, fdi_2, fdi_3, fdi_4) if f is not None]))
        return io.NodeOutput(image, ui=ui.PreviewImage(image, cls=cls))


class FDIPairStability(io.ComfyNode):
    """Stability curve of an FDI in the number of pairs (a sibling of FDIInspect)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FDIPairStability",
            display_name="FDI Pair Stability",
            category=f"{CATEGORY}/instruction",
            description=(
                "How many pairs are enough: for k = 1…N, the cosine similarity between the FDI of k random pairs "
                "and the FDI of all N pairs (mean and 10th–90th percentile over resamples). "
                "A curve near 1 well before N means the instruction is already stable. "
                "Needs an FDI extracted with 'keep pairs' on."
            ),
            inputs=[
                FDIType.Input("fdi", tooltip="An FDI with its per-pair FDIs (from 'Extract FDI' with keep_pairs on)."),
                io.Int.Input("resamples", default=50, min=1, max=1000, tooltip="Random draws of k pairs for each k."),
                io.Int.Input(
                    "seed", default=0, min=0, max=2**31 - 1, control_after_generate=True, tooltip="Seed of the draws."
                ),
            ],
            outputs=[io.Image.Output(display_name="plot", tooltip="The stability curve.")],
        )

    @classmethod
    def execute(cls, fdi: FDI, resamples: int, seed: int) -> io.NodeOutput:
        from ..fdi.extract import pair_stability
        from ..fdi.plots import render_stability

        curve = pair_stability(check_fdi_input(fdi).pairs, resamples=resamples, seed=seed)
        img = plot_to_image(render_stability(curve["k"], curve["mean"], curve["low"], curve["high"], fdi.label))
        k = next((k for k, lo in zip(curve["k"], curve["low"]) if lo >= 0.95), None)
        text = f"{len(curve['k'])} pairs; " + (
            f"k = {k} pairs already agree ≥ 0.95 (10th percentile)" if k else "no k below N reaches 0.95"
        )
        return io.NodeOutput(img, ui=ui.PreviewText(text))


NODES = [
    FDIQFormerLoader,
    FDIExtract,
    FDIExtractFromFolders,
    FDISave,
    FDILoad,
    FDICombine,
    FDIInspect,
    FDIPairStability,
]
