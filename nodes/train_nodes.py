"""Nodes that train and save FDI adapters inside ComfyUI: pairs from folders, training, saving, pair stability.

The training step is the library's (:func:`fdi.training.step.training_step` with
:func:`fdi.training.step.comfy_predictor`, the loop :func:`fdi.training.memory.train_on_pairs`);
these nodes translate ComfyUI's ``MODEL``/``VAE``/``IMAGE`` and drive model management, progress
and Cancel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import comfy.model_management as mm
import torch
from comfy_api.latest import io, ui

from ..fdi.comfy_backend import check_unet_for_adapter, comfy_family
from ..fdi.dtypes import parse_dtype
from ..fdi.errors import FDIError
from ..fdi.families import get_family
from ..fdi.instruction import FDI
from ..fdi.sampling import DEFAULT_TIMESTEP_SAMPLING, GUIDANCE_END, sigma_to_alpha
from ..fdi.training.comfy_unet import autograd_safe, cast_weights_to_compute
from ..fdi.training.memory import TrainSettings, adapter_for_training, check_pairs, train_on_pairs
from ..fdi.training.precision import compute_dtype
from ..fdi.training.preview import LivePreview
from ..fdi.training.step import comfy_predictor, unet_checkpointing
from .common import (
    CATEGORY,
    FDIAdapterType,
    FDIPairsType,
    FDIType,
    ModelHandle,
    check_fdi_input,
    check_inside,
    image_to_batch,
    input_subfolder,
    is_dynamic,
    make_patcher,
    plot_to_image,
    prediction_type,
    save_target,
    saved,
)
from .train_inputs import added_inputs, compute_inputs, pair_inputs
from .train_preview import preview_strip, progress_with_preview


@dataclass
class PairList:
    """The ``FDI_PAIRS`` value: ``degraded``/``clean`` lists of ``[3, H, W]`` float32 images (sizes may differ)."""

    degraded: List[torch.Tensor]
    clean: List[torch.Tensor]
    names: List[str]


def _model_facts(model) -> tuple:
    """``(unet_config, prediction_type, family)`` of a ComfyUI MODEL, refusing what is not SD 1.5, SD 2.x or SDXL.

    The family is :func:`fdi.comfy_backend.comfy_family` of the UNet and the MODEL's own prediction
    (:func:`prediction_type`: its ``model_sampling``, so a ``ModelSamplingDiscrete`` v-prediction patch on an
    SD 2.x base makes it ``sd2.1-v``)."""
    base = model.model
    cfg = getattr(getattr(base, "model_config", None), "unet_config", None)
    pred = prediction_type(model)
    if pred not in ("epsilon", "v_prediction"):
        raise FDIError(
            f"the MODEL predicts {pred if pred != 'unknown' else 'something unknown'}; "
            "FDI adapters train on SD 1.5, SD 2.x and SDXL epsilon or v-prediction models"
        )
    family = comfy_family(cfg, pred)  # DiT/flow models and other UNets: a clear error
    check_unet_for_adapter(cfg, get_family(family).channels, family, pred)  # inpainting, uneven levels
    return cfg, pred, family


def _compute_dtype(training_dtype: str, device: torch.device) -> torch.dtype:
    """The dtype the frozen UNet computes in (:func:`fdi.training.precision.compute_dtype` with the device's
    support as ComfyUI's model management sees it)."""
    return compute_dtype(training_dtype, device, bool(mm.should_use_bf16(device)), bool(mm.should_use_fp16(device)))


class FDILoadPairs(io.ComfyNode):
    """Pairs of images of any sizes from two folders inside ComfyUI's input folder."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FDILoadPairs",
            display_name="Load FDI Training Pairs",
            category=f"{CATEGORY}/training",
            description=(
                "Reads image pairs from two folders inside ComfyUI's input folder, matched by file name "
                "(degraded/clean, or style A/style B). Images may have different sizes; training crops them."
            ),
            inputs=[
                io.String.Input(
                    "degraded_folder",
                    default="pairs/degraded",
                    tooltip="Folder inside input/ with the degraded (style A) images.",
                ),
                io.String.Input(
                    "clean_folder",
                    default="pairs/clean",
                    tooltip="Folder inside input/ with the clean (style B) images, same file names.",
                ),
            ],
            outputs=[FDIPairsType.Output(display_name="pairs", tooltip="The pairs, for 'Train FDI Adapter'.")],
        )

    @classmethod
    def execute(cls, degraded_folder: str, clean_folder: str) -> io.NodeOutput:
        from ..fdi.data import collect_pairs
        from ..fdi.images import load_image

        ddir = input_subfolder(degraded_folder, "degraded folder")
        cdir = input_subfolder(clean_folder, "clean folder")
        pairs = collect_pairs(ddir, cdir, None)
        check_inside([p.degraded for p in pairs], ddir, "degraded")
        check_inside([p.clean for p in pairs], cdir, "clean")
        deg = [load_image(p.degraded) for p in pairs]
        cln = [load_image(p.clean) for p in pairs]
        check_pairs(deg, cln)
        return io.NodeOutput(PairList(deg, cln, [p.name for p in pairs]))


class FDITrainAdapter(io.ComfyNode):
    """Train (or continue) an FDI adapter on the graph's MODEL and VAE."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FDITrainAdapter",
            display_name="Train FDI Adapter",
            category=f"{CATEGORY}/training",
            description=(
                "Trains an FDI adapter on image pairs with the graph's SD 1.5, SD 2.x or SDXL MODEL and VAE (both "
                "stay frozen; the adapter is made for the MODEL's family, three levels on SDXL): "
                "L = MSE(UNet output, target) + λ·|ẑ0 − z0|1 with AdamW (β 0.9, 0.99), the step "
                "'python -m fdi train' uses, t drawn for the guidance window the adapter is trained for (recorded in "
                "its file: FDI Restore guides that window by default). Give the pairs as two IMAGE batches of equal "
                "size or from "
                "'Load FDI Training Pairs'. Cancel ends training early and passes on the adapter of the last "
                "finished step (the rest of the graph runs; press Cancel again to stop it)."
            ),
            inputs=[
                io.Model.Input(
                    "model",
                    tooltip="An SD 1.5, SD 2.x or SDXL MODEL (e.g. from 'Load Checkpoint'); "
                    "its UNet and prediction type set the adapter's family.",
                ),
                io.Clip.Input(
                    "clip",
                    tooltip="The checkpoint's CLIP: it encodes the empty training prompt (as restoration uses; "
                    "on SDXL also its pooled output, with the crop size as size conditioning).",
                ),
                io.Vae.Input(
                    "vae", tooltip="The VAE of that checkpoint; clean images are encoded to the posterior mode."
                ),
                FDIType.Input("fdi", tooltip="The task FDI, from 'Extract FDI' on the same pairs (or 'Load FDI')."),
                *pair_inputs(),
                io.Int.Input("steps", default=200, min=1, max=100000, tooltip="Optimizer steps."),
                io.Float.Input(
                    "learning_rate", default=1e-4, min=1e-7, max=1e-1, step=1e-6, tooltip="AdamW learning rate."
                ),
                io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="Pairs per step."),
                io.Int.Input(
                    "resolution",
                    default=512,
                    min=64,
                    max=2048,
                    step=64,
                    tooltip="Side of the square random crops, px (images are resized so the shorter side is this; "
                    "SD 1.5/2.1 base work at 512, SDXL at 1024).",
                ),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=2**31 - 1,
                    control_after_generate=True,
                    tooltip="Seed of the new adapter's weights, pair order, crops, noise and timesteps.",
                ),
                *compute_inputs(),
                *added_inputs(),
            ],
            outputs=[
                FDIAdapterType.Output(
                    display_name="adapter", tooltip="The trained adapter (the FDI is embedded when saved)."
                ),
                io.Image.Output(display_name="loss_curve", tooltip="Loss per step."),
                io.Int.Output(
                    display_name="steps_done",
                    tooltip="Steps finished (fewer than asked when cancelled or stopped by a non-finite loss).",
                ),
            ],
        )

    @classmethod
    def execute(
        cls,
        model,
        clip,
        vae,
        fdi: FDI,
        steps: int,
        learning_rate: float,
        batch_size: int,
        resolution: int,
        seed: int,
        gradient_checkpointing: bool,
        training_dtype: str,
        recon_weight: float,
        degraded=None,
        clean=None,
        pairs: PairList = None,
        adapter: ModelHandle = None,
        preview_every: int = 0,
        timestep_sampling: str = DEFAULT_TIMESTEP_SAMPLING,
        guidance_start: float = 0.0,
        guidance_end: float = GUIDANCE_END,
    ) -> io.NodeOutput:
        check_fdi_input(fdi)
        deg, cln, names = _training_pairs(degraded, clean, pairs)
        settings = TrainSettings(
            steps=steps,
            lr=learning_rate,
            batch_size=batch_size,
            resolution=resolution,
            seed=seed,
            recon_weight=recon_weight,
            timestep_sampling=timestep_sampling,
            guidance_start=guidance_start,
            guidance_end=guidance_end,
        )
        settings.check()
        parse_dtype(training_dtype)  # an unknown name: a clear error before any work
        with torch.inference_mode(False):
            previous = adapter.module if adapter is not None else None
            new, result = _train(
                model,
                clip,
                vae,
                fdi,
                previous,
                (deg, cln, names),
                settings,
                training_dtype,
                gradient_checkpointing,
                preview_every,
            )
            if result.cancelled:
                mm.interrupt_current_processing(False)  # the cancel ended training; the graph goes on with this adapter
            new = new.to(mm.unet_offload_device()).eval().requires_grad_(False)
            new.fdi = fdi
        from ..fdi.plots import render_loss_curve

        curve = plot_to_image(render_loss_curve(result.losses, title=f"FDI adapter training ({result.steps} steps)"))
        text = f"trained {result.steps} of {steps} steps" + (f"; {result.stopped}" if result.stopped else "")
        handle = ModelHandle(new, make_patcher(new), f"trained:{fdi.label or 'fdi'}")
        return io.NodeOutput(handle, curve, result.steps, ui=ui.PreviewText(text))


def _training_pairs(degraded, clean, pairs: PairList) -> tuple:
    """``(degraded, clean, names)``: lists of ``[3, H, W]`` images from the two IMAGE inputs or an ``FDI_PAIRS``,
    and a name per pair (the files' stems, or ``pair 1``, ``pair 2``…)."""
    if pairs is not None and (degraded is not None or clean is not None):
        raise FDIError("connect either 'pairs' or the 'degraded' and 'clean' images, not both")
    if pairs is not None:
        deg, cln, names = pairs.degraded, pairs.clean, list(pairs.names)
    elif degraded is not None and clean is not None:
        deg, cln = list(image_to_batch(degraded, "degraded")), list(image_to_batch(clean, "clean"))
        names = [f"pair {i + 1}" for i in range(len(deg))]
    else:
        raise FDIError(
            "no training pairs: connect 'degraded' and 'clean' images, or 'pairs' from 'Load FDI Training Pairs'"
        )
    check_pairs(deg, cln)
    return deg, cln, names


def _train(
    model,
    clip,
    vae,
    fdi: FDI,
    previous,
    pairs: tuple,
    settings: TrainSettings,
    training_dtype: str,
    checkpointing,
    preview_every: int = 0,
):
    """A new adapter (or a copy of ``previous``) trained on the MODEL's UNet (:func:`training_model`: a fresh copy
    under dynamic VRAM; loaded by model management, weights made autograd-safe, computing in the training dtype)
    with the VAE's latents: ``(adapter, result)``. ``pairs``: ``(degraded, clean, names)``; ``preview_every``: steps
    between preview strips (0: the loss curve only)."""
    unet_config, prediction_type, family = _model_facts(model)
    adapter = adapter_for_training(fdi, family, settings.seed, previous)
    blocks = check_unet_for_adapter(unet_config, adapter.config.channels, family, prediction_type)
    model = training_model(model)
    mm.load_models_gpu([model], force_full_load=True)
    device = model.load_device
    adapter.to(device, torch.float32)
    base = model.model
    unet = base.diffusion_model
    autograd_safe(unet)
    context, adm = _prompt_conditioning(base, clip, settings.resolution, device)
    # compute dtype, never the storage one (fp8): ComfyUI's _apply_model casts to manual_cast_dtype
    dtype = _compute_dtype(training_dtype, device)
    storage = getattr(base, "manual_cast_dtype", None) or base.get_dtype()
    predict = comfy_predictor(unet, context, *blocks, dtype, y=adm)
    # the MODEL's own schedule: a ModelSamplingDiscrete patch (v-prediction, zsnr) included
    alphas = sigma_to_alpha(model.get_model_object("model_sampling").sigmas.float().cpu())

    def encode(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            z = vae.encode(images.permute(0, 2, 3, 1).to(mm.intermediate_device()))
            z = base.latent_format.process_in(z.float()).clone()
        mm.load_models_gpu([model], force_full_load=True)
        return z.to(device)

    strip = preview_strip(model, clip, vae, adapter, fdi, pairs, settings) if preview_every else None
    with cast_weights_to_compute(unet, storage, dtype), unet_checkpointing(unet, checkpointing):
        result = train_on_pairs(
            adapter,
            predict,
            encode,
            [d.clone() for d in pairs[0]],
            [c.clone() for c in pairs[1]],
            fdi.tokens.clone(),
            alphas,
            prediction_type,
            settings,
            device,
            compute_dtype=dtype,
            should_stop=mm.processing_interrupted,
            on_step=progress_with_preview(settings.steps, LivePreview(settings.steps, preview_every, strip)),
        )
    return adapter, result


def training_model(model):
    """The MODEL whose UNet the training backpropagates through (called outside inference mode).

    Under dynamic VRAM (ComfyUI's ``ModelPatcherDynamic``) a fresh copy, as ComfyUI's own LoRA trainer makes one
    (``clone(force_deepcopy=True)``: the loader runs again, so the weights are normal tensors on the offload
    device, streamed per use like the MODEL's): the MODEL itself keeps device views of its weights cast during
    earlier (inference-mode) sampling, which autograd cannot save. Elsewhere, and for a MODEL whose loader cannot
    run again, the MODEL itself (:func:`fdi.training.comfy_unet.autograd_safe` re-creates its inference tensors)."""
    if is_dynamic(model) and getattr(model, "cached_patcher_init", None) is not None:
        return model.clone(force_deepcopy=True)
    return model


def _prompt_conditioning(base, clip, resolution: int, device: torch.device) -> tuple:
    """``(context [1, 77, D], y)`` of the empty training prompt for a ComfyUI base model.

    ``y`` is the model's own ``encode_adm`` vector (SDXL: the CLIP's pooled output and the size conditioning,
    ``[1, 2816]``; ``None`` for SD 1.x/2.x), for a square crop of ``resolution`` px: original size = target size
    = the crop, crop offset 0 (what ComfyUI's sampler builds for a latent of that size and the diffusers door's
    rule)."""
    context, pooled = clip.encode_from_tokens(clip.tokenize(""), return_pooled=True)
    size = int(resolution)
    adm = base.encode_adm(
        pooled_output=pooled,
        width=size,
        height=size,
        crop_w=0,
        crop_h=0,
        target_width=size,
        target_height=size,
        device=device,
    )
    return context.clone().to(device), (None if adm is None else adm.clone().to(device))


class FDISaveAdapter(io.ComfyNode):
    """Write an adapter to models/fdi_adapters with its FDI embedded."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FDISaveAdapter",
            display_name="Save FDI Adapter",
            category=f"{CATEGORY}/training",
            description=(
                "Saves the adapter as <name>.safetensors in models/fdi_adapters (written atomically) with the FDI "
                "embedded, so 'Load FDI Adapter' lists it at once. Plain names only."
            ),
            inputs=[
                FDIAdapterType.Input("adapter", tooltip="The adapter to save (from 'Train FDI Adapter')."),
                FDIType.Input("fdi", optional=True, tooltip="The FDI to embed (default: the adapter's own)."),
                io.String.Input(
                    "name", default="my_style", tooltip="File name without folder; '.safetensors' is added."
                ),
                io.Boolean.Input(
                    "overwrite",
                    default=False,
                    tooltip="Replace an existing file of that name; when off, an existing name is an error.",
                ),
            ],
            outputs=[
                io.String.Output(display_name="file_name", tooltip="The saved file, as 'Load FDI Adapter' lists it.")
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, adapter: ModelHandle, name: str, overwrite: bool, fdi: FDI = None) -> io.NodeOutput:
        file_name, path = save_target("fdi_adapters", name, ".safetensors", "adapter", "watercolour", overwrite)
        fdi = fdi if fdi is not None else adapter.module.fdi
        if fdi is None:
            raise FDIError("the adapter carries no FDI and none is connected; connect the FDI it was trained with")
        adapter.module.check_fdi(fdi)
        adapter.module.save(path, fdi=fdi)
        saved("fdi_adapters")
        return io.NodeOutput(file_name, ui=ui.PreviewText(f"saved models/fdi_adapters/{file_name}"))


NODES = [FDILoadPairs, FDITrainAdapter, FDISaveAdapter]
