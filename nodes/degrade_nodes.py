"""Nodes that make training pairs from clean photos with synthetic degradations (:mod:`fdi.degrade`)."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..fdi.degrade import EFFECTS, _fmt_range, degrade, parse_spec
from .common import CATEGORY, batch_to_image, image_to_batch, progress_callback

_EFFECTS_HELP = "; ".join(
    f"{name} ({', '.join(f'{k}={_fmt_range(r)}' for k, r in e.ranges.items())})" for name, e in EFFECTS.items()
)


class FDIDegradePairs(io.ComfyNode):
    """Clean IMAGE batch → (degraded, clean) batches, for FDI extraction and adapter training from clean photos."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FDIDegradePairs",
            display_name="FDI Degrade Pairs",
            category=f"{CATEGORY}/training",
            description=(
                "Makes (degraded, clean) pairs from clean photos with synthetic degradations — haze "
                "(atmospheric scattering), rain streaks, Gaussian or Poisson noise, JPEG, low light, "
                "motion or defocus blur, or sums of them — so 'Extract FDI (images)' and 'Train FDI Adapter' "
                "work without a paired dataset. "
                "Seeded from the seed and the pixels of each photo: a photo gets the same pair wherever it sits "
                "in the batch, the same pair the fdi degrade command makes of its file."
            ),
            inputs=[
                io.Image.Input("images", tooltip="Clean photos (a batch; any size)."),
                io.String.Input(
                    "degradation",
                    default="haze",
                    tooltip="Effects, comma-separated, e.g. 'haze', 'haze,noise', 'noise:sigma=25', "
                    "'jpeg:quality=20..40' (a value fixes a parameter, lo..hi narrows its random range). "
                    f"Effects and default ranges: {_EFFECTS_HELP}. "
                    "Sums apply in physical order.",
                ),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=2**31 - 1,
                    control_after_generate=True,
                    tooltip="Seed of the random draws (parameters and noise) of every pair; the draws of a photo "
                    "come from this seed and its pixels.",
                ),
                io.Int.Input(
                    "copies",
                    default=1,
                    min=1,
                    max=64,
                    tooltip="Degraded versions of each photo (more pairs from few photos); "
                    "the clean output repeats each photo as many times.",
                ),
            ],
            outputs=[
                io.Image.Output(display_name="degraded", tooltip="The degraded images, same size as the input."),
                io.Image.Output(
                    display_name="clean", tooltip="The clean images, in the same order (each photo 'copies' times)."
                ),
            ],
        )

    @classmethod
    def execute(cls, images: torch.Tensor, degradation: str, seed: int, copies: int) -> io.NodeOutput:
        deg = parse_spec(degradation)
        batch = image_to_batch(images, "images")
        out = degrade(batch, deg, seed=seed, copies=copies, progress=progress_callback(len(batch) * copies))
        clean = batch.repeat_interleave(copies, dim=0)
        return io.NodeOutput(batch_to_image(out), batch_to_image(clean))


NODES = [FDIDegradePairs]
