"""Nodes that post-process restored images: colour correction towards the input (:mod:`fdi.colorfix`)."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..fdi.colorfix import COLOR_FIXES, color_fix
from .common import CATEGORY, batch_to_image, image_to_batch


class FDIColorFix(io.ComfyNode):
    """Pull a restored image's colours back to a reference (wavelet or AdaIN), as StableSR/CCSR/SUPIR do."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FDIColorFix",
            display_name="FDI Color Fix",
            category=f"{CATEGORY}/postprocess",
            description=(
                "Corrects the colour drift of a diffusion restoration towards a reference "
                "(usually the degraded input): 'wavelet' keeps the restored image's fine detail and the reference's "
                "low frequencies (overall colour and shading); "
                "'adain' matches the reference's per-channel mean and standard deviation; "
                "'none' passes the image through. "
                "Do not use it for haze or low-light restorations, whose colour change is the restoration."
            ),
            inputs=[
                io.Image.Input("image", tooltip="The restored image(s) (e.g. from 'FDI Restore')."),
                io.Image.Input(
                    "reference",
                    tooltip="The image whose colours to keep: the degraded input (one for all, or one per image; "
                    "resized to the restored size if it differs).",
                ),
                io.Combo.Input(
                    "method",
                    options=list(COLOR_FIXES),
                    default="wavelet",
                    tooltip="wavelet: low frequencies from the reference, detail from the restoration; "
                    "adain: per-channel mean/std of the reference; none: no change.",
                ),
            ],
            outputs=[
                io.Image.Output(display_name="image", tooltip="The colour-corrected image(s), same size as 'image'.")
            ],
        )

    @classmethod
    def execute(cls, image: torch.Tensor, reference: torch.Tensor, method: str) -> io.NodeOutput:
        fixed = color_fix(image_to_batch(image, "image"), image_to_batch(reference, "reference"), method)
        return io.NodeOutput(batch_to_image(fixed))


NODES = [FDIColorFix]
