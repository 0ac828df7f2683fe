"""Nodes that run FDI adapters and guide ComfyUI's own MODEL: loader, decoupling, apply, invert, restore.

The guidance itself (patch objects, block indices, window, DDIM-inversion step) lives in
:mod:`fdi.comfy_backend` (plain torch, unit-tested without ComfyUI); these nodes only translate
ComfyUI values and install those objects on a cloned ``ModelPatcher``.
"""

from __future__ import annotations

from functools import partial

import comfy.model_management as mm
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import torch
from comfy_api.latest import io

from ..fdi.adapter import FDIAdapter
from ..fdi.comfy_backend import (
    TILE_KEY,
    GuidanceEntry,
    add_guidance,
    check_unet_for_adapter,
    ddim_inversion_sampler,
    sigma_window,
)
from ..fdi.errors import FDIError
from ..fdi.instruction import FDI
from ..fdi.sampling import ddim_timesteps, inversion_sigmas, inversion_timesteps, pad_to_multiple, sampling_sigmas
from ..fdi.tiles import LATENT_SCALE, Tiling, check_tiling, optional_tiling
from .common import (
    CATEGORY,
    FDIAdapterType,
    FDIGuidanceType,
    FDIType,
    GuidanceHandle,
    ModelHandle,
    adapter_files,
    batch_to_image,
    image_to_batch,
    interrupt_check,
    make_patcher,
    model_file,
    progress_callback,
)

#: ComfyUI's DDIM sampler (Euler in sigma space, deterministic)
SAMPLER = "ddim"


class FDIAdapterLoader(io.ComfyNode):
    """Load an FDI adapter (and the FDI embedded in its file, if any)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FDIAdapterLoader",
            display_name="Load FDI Adapter",
            category=f"{CATEGORY}/loaders",
            description=(
                "Loads an FDI adapter (.safetensors) from models/fdi_adapters. Its file "
                "may embed the FDI it was trained with: "
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
                "Runs the FDI adapter once on the degraded image(s) and the FDI: noise "
                "decoupling keeps the part of the FDI "
                "that is relevant to this image, and the result (encoder residuals + decoder "
                "modulation targets) does not depend "
                "on the timestep, so it is reused at every sampling step. One guidance "
                "per image; a batch of 1 applies to any latent batch."
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


def run_adapter(handle: ModelHandle, fdi: FDI, images: torch.Tensor) -> GuidanceHandle:
    """The adapter's guidance for a library batch ``images`` ``[B, 3, H, W]`` and ``fdi``, kept on the intermediate
    device."""
    if fdi is None:
        raise FDIError(
            "no FDI connected and the adapter file embeds none; connect an FDI from 'Load FDI' or 'Extract FDI'"
        )
    if not isinstance(fdi, FDI):
        raise FDIError(f"the 'fdi' input is a {type(fdi).__name__}, not an FDI; connect an FDI output")
    handle.module.check_fdi(fdi)  # width, token count and encoder, before any work
    adapter = handle.loaded()
    with torch.no_grad():
        guidance = adapter(images.to(handle.patcher.load_device, torch.float32), fdi).detach()
    guidance = guidance.to(mm.intermediate_device(), torch.float32)
    return GuidanceHandle(
        guidance, tuple(adapter.config.channels), adapter.base_family, label=fdi.label or adapter.label
    )


class FDIApplyGuidance(io.ComfyNode):
    """Patch a MODEL (clone) so the UNet takes FDI guidance on a part of the sampling steps."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FDIApplyGuidance",
            display_name="Apply FDI Guidance",
            category=f"{CATEGORY}/guidance",
            description=(
                "Returns a copy of the MODEL whose UNet adds the FDI residuals after input "
                "blocks 2, 5, 8, 11 and modulates h entering "
                "output blocks 3, 6, 9 (AdaIN towards the refined FDI) on the sampling steps k (0-based) with "
                "start_percent x N <= k < end_percent x N of the sampler's N steps (0 to "
                "0.333 of 50 steps = steps 0..16, the paper's "
                "first third, as 'python -m fdi restore' guides). Works with the stock "
                "samplers and CFG (both halves guided) and with "
                "TorchCompileModel. Chain several to combine adapters (their contributions add up)."
            ),
            inputs=[
                io.Model.Input(
                    "model", tooltip="An SD 2.x MODEL (e.g. from 'Load Checkpoint'; LoRAs and other patches are kept)."
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
                io.Float.Input(
                    "start_percent",
                    default=0.0,
                    min=0.0,
                    max=1.0,
                    step=0.001,
                    tooltip="First guided step as a fraction of the sampler's steps (0 = from the first step).",
                ),
                io.Float.Input(
                    "end_percent",
                    default=0.333,
                    min=0.0,
                    max=1.0,
                    step=0.001,
                    tooltip="Steps k < end_percent x steps are guided (0.333 of 50 = steps 0..16, the "
                    "paper's first third). Must be >= start_percent.",
                ),
            ],
            outputs=[
                io.Model.Output(
                    display_name="model", tooltip="The guided MODEL (a clone; the input MODEL is unchanged)."
                )
            ],
        )

    @classmethod
    def execute(
        cls, model, guidance: GuidanceHandle, strength: float, start_percent: float, end_percent: float
    ) -> io.NodeOutput:
        return io.NodeOutput(apply_guidance(model, guidance, strength, start_percent, end_percent))


def prediction_type(model) -> str:
    """The MODEL's prediction as the library names it (``epsilon``, ``v_prediction``, or ComfyUI's type name).

    Read from the MODEL's own ``model_sampling`` (what its sampler uses, a ``ModelSamplingDiscrete`` patch
    included): the class nearest in its MRO that defines ``calculate_denoised`` (ComfyUI's ``EPS``,
    ``V_PREDICTION``, ``EDM``, ``X0``, ``CONST``…). Without one, the base model's ``model_type``."""
    kind = ""
    get = getattr(model, "get_model_object", None)
    sampling = get("model_sampling") if callable(get) else None
    for cls in type(sampling).__mro__ if sampling is not None else ():
        if "calculate_denoised" in cls.__dict__:  # e.g. LCM(EPS) in comfy_extras is LCM, not epsilon
            kind = cls.__name__ if cls.__module__ == "comfy.model_sampling" else cls.__qualname__ + " (custom)"
            break
    if not kind:
        kind = getattr(getattr(getattr(model, "model", None), "model_type", None), "name", "")
    return {"EPS": "epsilon", "V_PREDICTION": "v_prediction"}.get(kind, kind.lower() or "unknown")


def apply_guidance(model, guidance: GuidanceHandle, strength: float, start: float, end: float):
    """A clone of ``model`` (ModelPatcher) with ``guidance`` added to its FDI patch for steps
    ``start·N ≤ k < end·N``."""
    if not isinstance(guidance, GuidanceHandle):
        raise FDIError(f"the 'guidance' input is a {type(guidance).__name__}; connect 'FDI Noise Decoupling'")
    unet_config = getattr(getattr(model.model, "model_config", None), "unet_config", None)
    input_blocks, output_blocks = check_unet_for_adapter(
        unet_config, guidance.channels, guidance.base_family, prediction_type(model)
    )
    sigma_start, sigma_end = sigma_window(model.get_model_object("model_sampling").percent_to_sigma, start, end)
    m = model.clone()
    entry = GuidanceEntry(
        guidance.guidance, float(strength), float(start), float(end), sigma_start, sigma_end, guidance.shared()
    )
    add_guidance(m.model_options, entry, input_blocks, output_blocks)
    return m


def restore_schedule(model, steps: int, inversion_steps: int):
    """``(sampling sigmas, inversion sigmas)`` of the library's DDIM schedule (:mod:`fdi.sampling`) for a MODEL:
    the timesteps ``python -m fdi restore`` visits, for any step count."""
    ms = model.get_model_object("model_sampling")
    ts = ddim_timesteps(steps, int(getattr(ms, "num_timesteps", 1000)))
    # integer timesteps: read the MODEL's sigma table itself (what ddim_uniform does), not exp(log(σ)) interpolation
    table = getattr(ms, "sigmas", None)
    if isinstance(table, torch.Tensor) and table.numel() > int(ts.max()):

        def sigma_of(t: torch.Tensor) -> torch.Tensor:
            return table.cpu()[t.long()]
    else:
        sigma_of = ms.sigma
    sampling = sampling_sigmas(ts, sigma_of)
    return sampling, inversion_sigmas(sampling, inversion_timesteps(ts, inversion_steps), sigma_of)


class FDIInvert(io.ComfyNode):
    """DDIM inversion of a latent through ComfyUI's model, to continue with KSamplerAdvanced."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FDIInvert",
            display_name="FDI DDIM Inversion",
            category=f"{CATEGORY}/sampling",
            description=(
                "Inverts a latent (e.g. the VAE-encoded degraded image) with deterministic "
                "DDIM through the MODEL (no CFG) from the "
                "clean level to the first of the 'steps' DDIM timesteps that 'python -m "
                "fdi restore' samples. Continue with "
                "KSamplerAdvanced: sampler 'ddim', scheduler 'ddim_uniform', the same steps, "
                "add_noise 'disable', start_at_step 0 "
                "(ddim_uniform visits the same timesteps when steps divides 1000: 10, 20, "
                "25, 50, 100…; FDI Restore is exact for any count)."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The MODEL to invert with (plain, as the paper does)."),
                io.Conditioning.Input("positive", tooltip="The prompt conditioning (the paper uses an empty prompt)."),
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


def invert(model, positive, samples: torch.Tensor, sigmas: torch.Tensor, preview: bool = True) -> torch.Tensor:
    """Run :func:`fdi.comfy_backend.ddim_inversion_sampler` through ComfyUI's sampling machinery.

    ComfyUI scales the latent in (``process_latent_in``), evaluates the MODEL with all its patches
    at the requested sigmas (cfg 1: the conditional prediction only), and scales it back out.
    """
    if not isinstance(samples, torch.Tensor) or samples.ndim < 4:
        raise FDIError("the 'latent' input holds no latent samples; connect VAE Encode")
    samples = comfy.sample.fix_empty_latent_channels(model, samples)
    sampler = comfy.samplers.KSAMPLER(partial(ddim_inversion_sampler, interrupt=interrupt_check))
    return _sample(model, sampler, sigmas, 1.0, positive, positive, samples, preview)


def _sample(
    model, sampler, sigmas: torch.Tensor, cfg: float, positive, negative, samples: torch.Tensor, preview: bool = True
) -> torch.Tensor:
    """``comfy.sample.sample_custom`` from ``samples`` itself (zero noise) with ComfyUI's progress bar and preview
    (``preview=False``: neither, the caller reports progress)."""
    callback = latent_preview.prepare_callback(model, len(sigmas) - 1) if preview else None
    noise = torch.zeros_like(samples, device="cpu")
    return comfy.sample.sample_custom(
        model,
        noise,
        cfg,
        sampler,
        sigmas,
        positive,
        negative,
        samples,
        callback=callback,
        disable_pbar=not (preview and comfy.utils.PROGRESS_BAR_ENABLED),
        seed=0,
    )


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
                "(same pixels on the same files): "
                "pads the image to a multiple of 64 by mirroring, runs the adapter on it "
                "and the FDI, VAE-encodes it, DDIM-inverts "
                "it with the plain MODEL (cfg 1), samples it back with DDIM on the same "
                "timesteps while FDI guidance is active for "
                "the steps k < guidance_end x steps, decodes and crops back to the input size."
            ),
            inputs=[
                io.Model.Input("model", tooltip="An SD 2.x MODEL (e.g. SD 2.1 base from 'Load Checkpoint')."),
                io.Vae.Input("vae", tooltip="The VAE of that checkpoint."),
                io.Image.Input("image", tooltip="The degraded image(s) to restore."),
                FDIAdapterType.Input("adapter", tooltip="The FDI adapter for this task."),
                io.Conditioning.Input("positive", tooltip="Prompt conditioning (the paper uses an empty prompt)."),
                io.Int.Input("steps", default=50, min=1, max=1000, tooltip="DDIM sampling steps."),
                io.Int.Input(
                    "inversion_steps",
                    default=50,
                    min=1,
                    max=1000,
                    tooltip="DDIM inversion steps, ending at the sampling's first step (the sampling "
                    "steps in reverse when equal to steps).",
                ),
                io.Float.Input(
                    "strength",
                    default=1.0,
                    min=-10.0,
                    max=10.0,
                    step=0.01,
                    tooltip="Guidance strength (0 = plain inversion + sampling).",
                ),
                io.Float.Input(
                    "guidance_end",
                    default=0.333,
                    min=0.0,
                    max=1.0,
                    step=0.001,
                    tooltip="Fraction of the sampling steps that are guided, from the first (0.333 "
                    "of 50 = steps 0..16, the paper's first stage).",
                ),
                io.Float.Input(
                    "cfg",
                    default=1.0,
                    min=0.0,
                    max=30.0,
                    step=0.1,
                    tooltip="Classifier-free guidance scale for sampling (the paper uses 1).",
                ),
                FDIType.Input(
                    "fdi",
                    optional=True,
                    tooltip="The FDI; when not connected, the FDI embedded in the adapter file is used.",
                ),
                io.Conditioning.Input(
                    "negative",
                    optional=True,
                    tooltip="Negative conditioning for cfg > 1; when not connected, a zeroed copy of "
                    "'positive' is used.",
                ),
                io.Int.Input(
                    "tile_size",
                    default=0,
                    min=0,
                    max=8192,
                    step=64,
                    optional=True,
                    tooltip="0 = off. Otherwise restore in overlapping tiles of this many pixels (a multiple "
                    "of 64, from 128): VAE encode/decode and every UNet step run per tile and are "
                    "blended, so large images restore with the memory of one tile. A tile at least as "
                    "large as the image gives exactly the untiled result.",
                ),
                io.Int.Input(
                    "tile_overlap",
                    default=128,
                    min=0,
                    max=8192,
                    step=8,
                    optional=True,
                    tooltip="Overlap of neighbouring tiles in pixels (blended smoothly; less than tile_size, "
                    "at most tile_size - 64).",
                ),
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
        tile_overlap: int = 128,
    ) -> io.NodeOutput:
        check_tiling(tile_size, tile_overlap)
        images = image_to_batch(image, "image")
        h, w = images.shape[-2:]
        padded = pad_to_multiple(images)
        tiling = optional_tiling(
            padded.shape[-2] // LATENT_SCALE, padded.shape[-1] // LATENT_SCALE, tile_size, tile_overlap
        )
        guided = apply_guidance(
            model,
            run_adapter(adapter, fdi if fdi is not None else adapter.module.fdi, padded),
            strength,
            0.0,
            guidance_end,
        )
        sampling, inversion = restore_schedule(model, steps, inversion_steps)
        negative = negative if negative is not None else zeroed(positive)
        if tiling is None or tiling.single:
            latent = invert(model, positive, vae.encode(batch_to_image(padded)), inversion)
            latent = _sample(guided, comfy.samplers.sampler_object(SAMPLER), sampling, cfg, positive, negative, latent)
            decoded = _decode(vae, latent)
        else:
            # one tick per tile of the VAE encode, of each model call (len(sigmas) - 1 per pass) and of the decode
            total = len(tiling.tiles) * (len(inversion) + len(sampling))
            progress = progress_callback(total)
            calls = [0]

            def tick() -> None:  # raises on Cancel
                calls[0] += 1
                progress(min(calls[0], total), total)

            latent = tiling.blend(
                padded, lambda i, x: (tick(), vae.encode(batch_to_image(x)).float())[1], in_scale=LATENT_SCALE
            )
            latent = invert(tiled_model(model, tiling, tick), positive, latent, inversion, preview=False)
            latent = _sample(
                tiled_model(guided, tiling, tick),
                comfy.samplers.sampler_object(SAMPLER),
                sampling,
                cfg,
                positive,
                negative,
                latent,
                preview=False,
            )
            decoded = tiling.blend(
                latent, lambda i, z: (tick(), _decode(vae, z).permute(0, 3, 1, 2))[1], out_scale=LATENT_SCALE
            ).permute(0, 2, 3, 1)
        return io.NodeOutput(decoded[:, :h, :w, :].float().clamp(0, 1).to(mm.intermediate_device()))


def _decode(vae, latent: torch.Tensor) -> torch.Tensor:
    """``vae.decode`` as a ``[B, H, W, C]`` float IMAGE (video VAEs return ``[B, T, H, W, C]``)."""
    decoded = vae.decode(latent)
    if decoded.ndim == 5:
        decoded = decoded.reshape(-1, *decoded.shape[-3:])
    return decoded.float()


def tiled_model(model, tiling: Tiling, tick=None):
    """A clone of ``model`` whose every model call runs per tile of ``tiling`` and blends (:meth:`Tiling.blend`).

    Each tile's call carries its latent offset in ``transformer_options["fdi_tile"]``, so the FDI patches add
    that tile's crop of each residual (:func:`fdi.comfy_backend.tile_guidance`); ``tick()`` runs per tile."""
    inner = model.model_options.get("model_function_wrapper")

    def call(apply_model, args: dict) -> torch.Tensor:
        x, t, c = args["input"], args["timestep"], args["c"]

        def tile(i: int, xt: torch.Tensor) -> torch.Tensor:
            if tick is not None:
                tick()
            t_ = tiling.tiles[i]
            ct = dict(c)
            ct["transformer_options"] = {**c.get("transformer_options", {}), TILE_KEY: (t_.y, t_.x)}
            if inner is not None:
                return inner(apply_model, {**args, "input": xt, "c": ct})
            return apply_model(xt, t, **ct)

        return tiling.blend(x, tile).to(x.dtype)

    m = model.clone()
    m.set_model_unet_function_wrapper(call)
    return m


def zeroed(conditioning):
    """A copy of ComfyUI conditioning with the embeddings (and pooled output) zeroed: the default negative."""
    return [
        [
            torch.zeros_like(c[0]),
            {
                k: (torch.zeros_like(v) if k == "pooled_output" and isinstance(v, torch.Tensor) else v)
                for k, v in c[1].items()
            },
        ]
        for c in conditioning
    ]


NODES = [FDIAdapterLoader, FDINoiseDecoupling, FDIApplyGuidance, FDIInvert, FDIRestore]
