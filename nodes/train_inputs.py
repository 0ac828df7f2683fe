"""FDITrainAdapter's input declarations beyond its models and FDI (in the order saved workflows hold them)."""

from __future__ import annotations

from comfy_api.latest import io

from ..fdi.sampling import DEFAULT_TIMESTEP_SAMPLING, GUIDANCE_END, TIMESTEP_SAMPLINGS
from ..fdi.training.preview import PREVIEW_IMAGES, PREVIEW_STEPS
from .common import FDIAdapterType, FDIPairsType, fraction_input

TRAIN_DTYPES = ["fp32", "bf16", "fp16"]


def pair_inputs() -> list:
    """FDITrainAdapter's optional pair and adapter inputs (between its FDI and its steps, in saved order)."""
    return [
        io.Image.Input(
            "degraded", optional=True, tooltip="Degraded (style A) images, one per pair; all the same size."
        ),
        io.Image.Input("clean", optional=True, tooltip="Clean (style B) images, in the same order as 'degraded'."),
        FDIPairsType.Input(
            "pairs",
            optional=True,
            tooltip="Pairs of mixed sizes from 'Load FDI Training Pairs' (instead of the two IMAGE inputs).",
        ),
        FDIAdapterType.Input(
            "adapter",
            optional=True,
            tooltip="An adapter to continue training (its FDI's Q-Former must be this FDI's).",
        ),
    ]


def compute_inputs() -> list:
    """FDITrainAdapter's memory, precision and loss inputs (after its seed, in saved order)."""
    return [
        io.Boolean.Input(
            "gradient_checkpointing",
            default=True,
            tooltip="Recompute UNet activations in the backward pass: much less memory, about 30% slower.",
        ),
        io.Combo.Input(
            "training_dtype",
            options=TRAIN_DTYPES,
            default="bf16",
            tooltip="Compute dtype of the frozen UNet (bf16 falls back to fp16 with loss scaling where the GPU "
            "lacks bf16); the adapter's weights stay fp32. fp32 on CPU.",
        ),
        io.Float.Input(
            "recon_weight",
            default=0.1,
            min=0.0,
            max=10.0,
            step=0.01,
            tooltip="λ of the latent L1 term (the paper's 0.1).",
        ),
    ]


def added_inputs() -> list:
    """FDITrainAdapter's inputs added after the first release (last, optional: old saved widgets keep their places)."""
    return [
        io.Int.Input(
            "preview_every",
            default=0,
            min=0,
            max=100000,
            optional=True,
            tooltip="0 = off. Otherwise every this many steps, and at the last, restore the first "
            f"{PREVIEW_IMAGES} pairs (centre crops at the resolution) with the adapter as it is, as 'FDI "
            f"Restore' does ({PREVIEW_STEPS} DDIM steps, the adapter's guidance window), and show the strip "
            "(input / restored / clean) above the loss curve as the node's preview. Each strip costs about "
            f"{2 * PREVIEW_STEPS} UNet evaluations per image.",
        ),
        *window_inputs(),
    ]


def window_inputs() -> list:
    """FDITrainAdapter's timestep sampling and guidance window (:class:`fdi.training.memory.TrainSettings`):
    optional and last, so workflows saved before them keep their widget positions."""
    return [
        io.Combo.Input(
            "timestep_sampling",
            options=list(TIMESTEP_SAMPLINGS),
            default=DEFAULT_TIMESTEP_SAMPLING,
            optional=True,
            tooltip="How each step draws its noise level t: 'window' uniformly inside the guidance window "
            "below (where restoration uses the adapter), 'cubic' T2I-Adapter's t = (1 - u^3) x T weighted to "
            "the noisy steps (windows that start at 0 only), 'uniform' over all t (the pack before 2026-12).",
        ),
        fraction_input(
            "guidance_start",
            0.0,
            optional=True,
            tooltip="Start of the guidance window the adapter is trained for, as a fraction of the sampling "
            "steps (0 = the first, noisiest step). Recorded in the adapter: FDI Restore and Apply FDI "
            "Guidance guide this window by default.",
        ),
        fraction_input(
            "guidance_end",
            GUIDANCE_END,
            optional=True,
            tooltip=f"End of the guidance window the adapter is trained for (the paper's first third: "
            f"{GUIDANCE_END}); must be above guidance_start.",
        ),
    ]
