"""Nodes that run FDI adapters and guide ComfyUI's own MODEL: loader, decoupling, apply, invert, restore.

Each node translates its inputs and calls :mod:`.sampling` (the ComfyUI side of guidance) and :mod:`fdi`.
"""

from __future__ import annotations

import comfy.model_management as mm
import torch
from comfy_api.latest import io

from ..fdi.adapter import FDIAdapter
from ..fdi.instruction import FDI
from ..fdi.sampling import GUIDANCE_END, guided_step_count
from ..fdi.tiles import DEFAULT_TILE_OVERLAP, check_tiling
from .common import (
    CATEGORY,
    FDIAdapterType,
    FDIGuidanceType,
    FDIType,
    GuidanceHandle,
    ModelHandle,
    adapter_files,
    fraction_input,
    image_to_batch,
    make_patcher,
    model_file,
)
from .sampling import (
    WINDOW_MODES,
    apply_guidance,
    check_guidance_input,
    invert,
    node_window,
    restore,
    restore_schedule,
    run_adapter,
    zeroed,
)

#: the last guided step of 50 at the default window, as the tooltips quote it
_LAST_GUIDED = guided_step_count(50, GUIDANCE_END) - 1


def window_combo(start: str, end: str) -> io.Combo.Input:
    """The ``guidance_window`` input of a node whose window widgets are ``start`` and ``end`` (:func:`node_window`):
    optional and last, so workflows saved before it keep their widget positions."""
    return io.Combo.Input(
        "guidance_window",
        options=WINDOW_MODES,
        default=WINDOW_MODES[0],
        optional=True,
        tooltip="'from adapter' (default): guide the steps the adapter was trained to guide, the window its file "
        "records (python -m fdi adapter-info shows it); an adapter file that records none (trained before 2026-12) "
        f"guides {start}..{end}, as this node did before. 'custom': guide {start}..{end} with any adapter (a console "
        "warning says when that leaves the adapter's trained window).",
    )


class FDIAdapterLoader(io.ComfyNode):
    """Load an FDI adapter (and the FDI embedded in its file, if any)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FDIAdapterLoader",
            display_name="Load FDI Adapter",
            category=f"{CATEGORY}/loaders",
            description=(
                "Loads an FDI adapter (.safetensors) from models/fdi_adapters. "
                "Its file may embed the FDI it was trained with: "
                "that FDI is the second output (empty when the file has none; connect an FDI from 'Load FDI' then). "
                "The adapter runs once per image, in float32, as 'python -m fdi restore' runs it."
            ),
            inputs=[
                io.Combo.Input(
                    "adapter_name",
                    options=adapter_files(),
                    tooltip="Adapter file in models/fdi_adapters (or an 'fdi_adapters' path of "
                    "extra_model_paths.yaml).",
                ),
            ],
            outputs=[
                FDIAdapterType.Output(display_name="adapter", tooltip="The adapter, managed by ComfyUI."),
                FDIType.Output(
                    display_name="fdi", tooltip="The FDI embedded in the adapter file (None when the file has none)."
                ),
            ],
        )

    @classmethod
    def execute(cls, adapter_name: str) -> io.NodeOutput:
        path = model_file("fdi_adapters", adapter_name, "FDI adapter")
        adapter = FDIAdapter.from_file(path, device=mm.unet_offload_device(), dtype=torch.float32)
        return io.NodeOutput(ModelHandle(adapter, make_patcher(adapter), adapter_name), adapter.fdi)


class FDINoiseDecoupling(io.ComfyNode):
    """Run the adapter once on an image and an FDI: refined FDI + guidance for this image."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FDINoiseDecoupling",
            display_name="FDI Noise Decoupling",
            category=f"{CATEGORY}/guidance",
            description=(
                "Runs the FDI adapter once on the degraded image(s) and the FDI: "
                "noise decoupling keeps the part of the FDI that is relevant to this image, "
                "and the result (encoder residuals + decoder modulation targets) does not depend on the timestep, "
                "so it is reused at every sampling step. "
                "One guidance per image; a batch of 1 applies to any latent batch."
            ),
            inputs=[
                FDIAdapterType.Input("adapter", tooltip="The FDI adapter from 'Load FDI Adapter'."),
                FDIType.Input("fdi", tooltip="The FDI (its width and Q-Former must match the adapter's)."),
                io.Image.Input(
                    "image",
                    tooltip="The degraded image(s) to restore, at the size you will sample (the latent is 1/8 of it).",
                ),
            ],
            outputs=[FDIGuidanceType.Output(display_name="guidance", tooltip="Guidance for 'Apply FDI Guidance'.")],
        )

    @classmethod
    def execute(cls, adapter: ModelHandle, fdi: FDI, image: torch.Tensor) -> io.NodeOutput:
        return io.NodeOutput(run_adapter(adapter, fdi, image_to_batch(image, "image")))


class FDIApplyGuidance(io.ComfyNode):
    """Patch a MODEL (clone) so the UNet takes FDI guidance on a part of the sampling steps."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FDIApplyGuidance",
            display_name="Apply FDI Guidance",
            category=f"{CATEGORY}/guidance",
            description=(
                "Returns a copy of the MODEL whose UNet adds the FDI residuals after input blocks 2, 5, 8, 11 and "
                "modulates h entering output blocks 3, 6, 9 (SDXL: input blocks 2, 5, 8, output blocks 3, 6; "
                "AdaIN towards the refined FDI) on the sampling steps k "
                "(0-based) with start x N <= k < end x N of the sampler's N steps, where start..end is the "
                "adapter's guidance window (recorded in its file: the part of sampling it was trained for) or, "
                "with guidance_window 'custom', start_percent..end_percent "
                f"(0 to {GUIDANCE_END} of 50 steps = steps 0..{_LAST_GUIDED}, the paper's first third; "
                "'python -m fdi restore' guides the same steps). "
                "Works with the stock samplers and CFG (both halves guided) and with TorchCompileModel. "
                "Chain several to combine adapters (their contributions add up)."
            ),
            inputs=[
                io.Model.Input(
                    "model",
                    tooltip="An SD 1.5, SD 2.x or SDXL MODEL (e.g. from 'Load Checkpoint'; LoRAs and other patches are "
                    "kept), of the family the adapter was trained for.",
                ),
                FDIGuidanceType.Input("guidance", tooltip="Guidance from 'FDI Noise Decoupling'."),
                io.Float.Input(
                    "strength",
                    default=1.0,
                    min=-10.0,
                    max=10.0,
                    step=0.01,
                    tooltip="Scale of residuals and modulation gates (0 = no effect, 1 = as trained).",
                ),
                fraction_input(
                    "start_percent",
                    0.0,
                    tooltip="First guided step as a fraction of the sampler's steps (0 = from the first step). Used "
                    "with guidance_window 'custom', and for an adapter file that records no window.",
                ),
                fraction_input(
                    "end_percent",
                    GUIDANCE_END,
                    tooltip="Steps k < end_percent x steps are guided "
                    f"({GUIDANCE_END} of 50 = steps 0..{_LAST_GUIDED}, the paper's first third). "
                    "Must be >= start_percent. Used with guidance_window 'custom', and for an adapter file that "
                    "records no window.",
                ),
                window_combo("start_percent", "end_percent"),
            ],
            outputs=[
                io.Model.Output(
                    display_name="model", tooltip="The guided MODEL (a clone; the input MODEL is unchanged)."
                )
            ],
        )

    @classmethod
    def execute(
        cls,
        model,
        guidance: GuidanceHandle,
        strength: float,
        start_percent: float,
        end_percent: float,
        guidance_window: str = WINDOW_MODES[0],
    ) -> io.NodeOutput:
        check_guidance_input(guidance)
        start, end = node_window(guidance, guidance_window, start_percent, end_percent, "Apply FDI Guidance")
        return io.NodeOutput(apply_guidance(model, guidance, strength, start, end))


class FDIInvert(io.ComfyNode):
    """DDIM inversion of a latent through ComfyUI's model, to continue with KSamplerAdvanced."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FDIInvert",
            display_name="FDI DDIM Inversion",
            category=f"{CATEGORY}/sampling",
            description=(
                "Inverts a latent (e.g. the VAE-encoded degraded image) with deterministic DDIM through the MODEL "
                "(no CFG) from the clean level to the first of the 'steps' DDIM timesteps that "
                "'python -m fdi restore' samples. "
                "Continue with KSamplerAdvanced: sampler 'ddim', scheduler 'ddim_uniform', the same steps, "
                "add_noise 'disable', start_at_step 0 (ddim_uniform visits the same timesteps when steps divides "
                "1000: 10, 20, 25, 50, 100…; FDI Restore is exact for any count)."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The MODEL to invert with (plain, as the paper does)."),
                io.Conditioning.Input(
                    "positive",
                    tooltip="The prompt conditioning from CLIP Text Encode (the paper uses an empty prompt; on SDXL it "
                    "carries the pooled output the UNet needs).",
                ),
                io.Latent.Input("latent", tooltip="The latent to invert (from VAE Encode)."),
                io.Int.Input(
                    "steps", default=50, min=1, max=1000, tooltip="DDIM steps; use the same number in KSamplerAdvanced."
                ),
            ],
            outputs=[
                io.Latent.Output(
                    display_name="latent",
                    tooltip="The inverted (noisy) latent, to sample from with add_noise disabled.",
                )
            ],
        )

    @classmethod
    def execute(cls, model, positive, latent: dict, steps: int) -> io.NodeOutput:
        _, inv = restore_schedule(model, steps, steps)
        out = latent.copy()
        out["samples"] = invert(model, positive, latent["samples"], inv)
        return io.NodeOutput(out)


def _restore_options() -> list:
    """FDIRestore's optional inputs, after its required ones (their order is the saved widgets' order)."""
    return [
        FDIType.Input(
            "fdi",
            optional=True,
            tooltip="The FDI; when not connected, the FDI embedded in the adapter file is used.",
        ),
        io.Conditioning.Input(
            "negative",
            optional=True,
            tooltip="Negative conditioning for cfg > 1; when not connected, a zeroed copy of 'positive' is used.",
        ),
        io.Int.Input(
            "tile_size",
            default=0,
            min=0,
            max=8192,
            step=64,
            optional=True,
            tooltip="0 = off. "
            "Otherwise restore in overlapping tiles of this many pixels (a multiple of 64, "
            "from 128): VAE encode/decode and every UNet step run per tile and are blended, "
            "so large images restore with the memory of one tile. "
            "A tile at least as large as the image gives exactly the untiled result.",
        ),
        io.Int.Input(
            "tile_overlap",
            default=DEFAULT_TILE_OVERLAP,
            min=0,
            max=8192,
            step=8,
            optional=True,
            tooltip="Overlap of neighbouring tiles in pixels (blended smoothly; "
            "less than tile_size, at most tile_size - 64).",
        ),
        window_combo("guidance_start", "guidance_end"),
        fraction_input(
            "guidance_start",
            0.0,
            optional=True,
            tooltip="First guided step as a fraction of the sampling steps (steps k >= guidance_start x "
            "steps; 0 = from the first step). Used with guidance_window 'custom', and for an adapter file "
            "that records no window.",
        ),
    ]


class FDIRestore(io.ComfyNode):
    """The whole FDI restoration in one node: adapter → guidance → VAE encode → inversion → guided DDIM → decode."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FDIRestore",
            display_name="FDI Restore",
            category=f"{CATEGORY}/sampling",
            description=(
                "The paper's pipeline in one node, the same recipe as 'python -m fdi restore' "
                "(same pixels on the same files): pads the image to a multiple of 64 by mirroring, "
                "runs the adapter on it and the FDI, VAE-encodes it, DDIM-inverts it with the plain MODEL (cfg 1), "
                "samples it back with DDIM on the same timesteps while FDI guidance is active for the steps k with "
                "start x steps <= k < end x steps, where start..end is the adapter's guidance window (recorded in "
                "its file: the part of sampling it was trained for) or, with guidance_window 'custom', "
                "guidance_start..guidance_end; decodes and crops back to the input size."
            ),
            inputs=[
                io.Model.Input(
                    "model",
                    tooltip="An SD 1.5, SD 2.x or SDXL MODEL (e.g. from 'Load Checkpoint'), of the family the adapter "
                    "was trained for.",
                ),
                io.Vae.Input("vae", tooltip="The VAE of that checkpoint."),
                io.Image.Input("image", tooltip="The degraded image(s) to restore."),
                FDIAdapterType.Input("adapter", tooltip="The FDI adapter for this task."),
                io.Conditioning.Input(
                    "positive",
                    tooltip="Prompt conditioning from CLIP Text Encode (the paper uses an empty prompt; on SDXL "
                    "it carries the pooled output the UNet needs).",
                ),
                io.Int.Input("steps", default=50, min=1, max=1000, tooltip="DDIM sampling steps."),
                io.Int.Input(
                    "inversion_steps",
                    default=50,
                    min=1,
                    max=1000,
                    tooltip="DDIM inversion steps, ending at the sampling's first step "
                    "(the sampling steps in reverse when equal to steps).",
                ),
                io.Float.Input(
                    "strength",
                    default=1.0,
                    min=-10.0,
                    max=10.0,
                    step=0.01,
                    tooltip="Guidance strength (0 = plain inversion + sampling).",
                ),
                fraction_input(
                    "guidance_end",
                    GUIDANCE_END,
                    tooltip="End of the guided steps as a fraction of the sampling steps: steps k < guidance_end x "
                    f"steps are guided ({GUIDANCE_END} of 50 = steps 0..{_LAST_GUIDED}, the paper's first stage). "
                    "Used with guidance_window 'custom', and for an adapter file that records no window.",
                ),
                io.Float.Input(
                    "cfg",
                    default=1.0,
                    min=0.0,
                    max=30.0,
                    step=0.1,
                    tooltip="Classifier-free guidance scale for sampling (the paper uses 1).",
                ),
                *_restore_options(),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The restored image(s), same size as the input.")],
        )

    @classmethod
    def execute(
        cls,
        model,
        vae,
        image: torch.Tensor,
        adapter: ModelHandle,
        positive,
        steps: int,
        inversion_steps: int,
        strength: float,
        guidance_end: float,
        cfg: float,
        fdi: FDI = None,
        negative=None,
        tile_size: int = 0,
        tile_overlap: int = DEFAULT_TILE_OVERLAP,
        guidance_window: str = WINDOW_MODES[0],
        guidance_start: float = 0.0,
    ) -> io.NodeOutput:
        check_tiling(tile_size, tile_overlap)
        names = ("guidance_start", "guidance_end")
        start, end = node_window(adapter.module, guidance_window, guidance_start, guidance_end, "FDI Restore", names)
        images = image_to_batch(image, "image")
        use_fdi = fdi if fdi is not None else adapter.module.fdi

        def guide(padded: torch.Tensor):
            return apply_guidance(model, run_adapter(adapter, use_fdi, padded), strength, start, end)

        negative = negative if negative is not None else zeroed(positive)
        restored = restore(
            model, vae, images, guide, positive, negative, steps, inversion_steps, cfg, tile_size, tile_overlap
        )
        return io.NodeOutput(restored)


NODES = [FDIAdapterLoader, FDINoiseDecoupling, FDIApplyGuidance, FDIInvert, FDIRestore]
