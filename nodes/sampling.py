"""The ComfyUI side of guidance and restoration: run an adapter, patch a MODEL, invert, sample, tile.

The guidance itself (patch objects, block indices, window, DDIM-inversion step) lives in
:mod:`fdi.comfy_backend`; these functions translate ComfyUI values and install those objects on a
cloned ``ModelPatcher``. The nodes of :mod:`.guidance_nodes` call them.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Callable, Optional, Tuple

import comfy.model_management as mm
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import torch

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
from ..fdi.restoration import check_image_size, guidance_windows
from ..fdi.sampling import ddim_timesteps, inversion_sigmas, inversion_timesteps, pad_to_multiple, sampling_sigmas
from ..fdi.tiles import LATENT_SCALE, Tiling, optional_tiling
from .common import (
    GuidanceHandle,
    ModelHandle,
    batch_to_image,
    check_fdi_input,
    interrupt_check,
    prediction_type,
    progress_callback,
)

#: ComfyUI's DDIM sampler (Euler in sigma space, deterministic)
SAMPLER = "ddim"
#: the ``guidance_window`` combo of FDIRestore and FDIApplyGuidance (:func:`node_window`); the first is the default
WINDOW_MODES = ["from adapter", "custom"]


def run_adapter(handle: ModelHandle, fdi: FDI, images: torch.Tensor) -> GuidanceHandle:
    """The adapter's guidance for a library batch ``images`` ``[B, 3, H, W]`` and ``fdi``, on the intermediate
    device."""
    if fdi is None:
        raise FDIError(
            "no FDI connected and the adapter file embeds none; connect an FDI from 'Load FDI' or 'Extract FDI'"
        )
    handle.module.check_fdi(check_fdi_input(fdi))  # width, token count and encoder, before any work
    return adapter_guidance(handle.loaded(), fdi, images, handle.patcher.load_device)


def adapter_guidance(adapter, fdi: FDI, images: torch.Tensor, device: torch.device) -> GuidanceHandle:
    """An adapter module's guidance (run on ``device``) for ``images`` ``[B, 3, H, W]``, on the intermediate device."""
    with torch.no_grad():
        guidance = adapter(images.to(device, torch.float32), fdi).detach()
    guidance = guidance.to(mm.intermediate_device(), torch.float32)
    return GuidanceHandle(
        guidance,
        tuple(adapter.config.channels),
        adapter.base_family,
        label=fdi.label or adapter.label,
        guidance_window=adapter.guidance_window,
        display_name=adapter.display_name,
    )


def node_window(
    what, mode: str, start: float, end: float, node: str, names: Tuple[str, str] = ("start_percent", "end_percent")
) -> Tuple[float, float]:
    """The window a node guides with ``what`` (an adapter, or a :class:`GuidanceHandle`): :data:`WINDOW_MODES`'s
    ``from adapter`` its recorded window (a file that records none: the node's ``start``..``end``, what the node did
    before windows were recorded), ``custom`` ``start``..``end`` (:func:`fdi.restoration.guidance_windows`; a console
    warning, naming the inputs ``names``, when that leaves the adapter's trained window)."""
    if mode not in WINDOW_MODES:
        raise FDIError(f"guidance_window must be one of {', '.join(WINDOW_MODES)}, got {mode!r}")
    given = (start, end) if mode == "custom" else (None, None)
    labels = {"guidance_start": names[0], "guidance_end": names[1]}
    windows, notes = guidance_windows([what], *given, unrecorded=(float(start), float(end)), names=labels)
    for note in notes:
        logging.warning("%s: %s", node, note)
    return windows[0]


def check_guidance_input(guidance) -> None:
    """Refuse a 'guidance' input that is not FDI Noise Decoupling's output."""
    if not isinstance(guidance, GuidanceHandle):
        raise FDIError(f"the 'guidance' input is a {type(guidance).__name__}; connect 'FDI Noise Decoupling'")


def apply_guidance(model, guidance: GuidanceHandle, strength: float, start: float, end: float):
    """A clone of ``model`` (ModelPatcher) with ``guidance`` added to its FDI patch for steps
    ``start·N ≤ k < end·N``."""
    check_guidance_input(guidance)
    unet_config = getattr(getattr(model.model, "model_config", None), "unet_config", None)
    input_blocks, output_blocks = check_unet_for_adapter(
        unet_config, guidance.channels, guidance.base_family, prediction_type(model)
    )
    sigma_start, sigma_end = sigma_window(model.get_model_object("model_sampling").percent_to_sigma, start, end)
    m = model.clone()
    entry = GuidanceEntry(guidance.guidance, float(strength), float(start), float(end), sigma_start, sigma_end)
    add_guidance(m.model_options, entry, input_blocks, output_blocks)
    return m


def restore_schedule(model, steps: int, inversion_steps: int):
    """``(sampling sigmas, inversion sigmas)`` of the library's DDIM schedule (:mod:`fdi.sampling`) for a MODEL:
    the timesteps ``python -m fdi restore`` visits, for any step count up to the schedule's bound
    (:func:`fdi.sampling.max_ddim_steps`: 999 of 1000; beyond it, the library's FDIError)."""
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


def check_conditioning(model, conditioning, name: str = "positive") -> None:
    """Refuse CONDITIONING an SDXL-like MODEL cannot sample with: its UNet takes a class/size vector ``y`` that
    ComfyUI builds from each entry's pooled text output (``encode_adm``), so each needs a ``pooled_output``."""
    if not isinstance(conditioning, (list, tuple)) or not conditioning:
        raise FDIError(f"the {name!r} input holds no conditioning; connect CLIP Text Encode")
    unet_config = getattr(getattr(model.model, "model_config", None), "unet_config", None) or {}
    if unet_config.get("adm_in_channels") is None:
        return
    for c in conditioning:
        extra = c[1] if len(c) > 1 and isinstance(c[1], dict) else {}
        if extra.get("pooled_output") is None and "unclip_conditioning" not in extra:
            raise FDIError(
                f"the {name!r} conditioning has no pooled output, which an SDXL MODEL needs (its size and pooled-text "
                "input); encode the prompt with CLIP Text Encode and the checkpoint's own CLIP"
            )


def invert(model, positive, samples: torch.Tensor, sigmas: torch.Tensor, preview: bool = True) -> torch.Tensor:
    """Run :func:`fdi.comfy_backend.ddim_inversion_sampler` through ComfyUI's sampling machinery.

    ComfyUI scales the latent in (``process_latent_in``), evaluates the MODEL with all its patches
    at the requested sigmas (cfg 1: the conditional prediction only), and scales it back out.
    """
    if not isinstance(samples, torch.Tensor) or samples.ndim < 4:
        raise FDIError("the 'latent' input holds no latent samples; connect VAE Encode")
    check_conditioning(model, positive)
    samples = comfy.sample.fix_empty_latent_channels(model, samples)
    sampler = comfy.samplers.KSAMPLER(partial(ddim_inversion_sampler, interrupt=interrupt_check))
    return sample(model, sampler, sigmas, 1.0, positive, positive, samples, preview)


def sample(
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


def decode(vae, latent: torch.Tensor) -> torch.Tensor:
    """``vae.decode`` as a ``[B, H, W, C]`` float IMAGE (video VAEs return ``[B, T, H, W, C]``)."""
    decoded = vae.decode(latent)
    if decoded.ndim == 5:
        decoded = decoded.reshape(-1, *decoded.shape[-3:])
    return decoded.float()


def tiled_model(model, tiling: Tiling, tick: Optional[Callable[[], None]] = None):
    """A clone of ``model`` whose every model call runs per tile of ``tiling`` and blends (:meth:`Tiling.blend`).

    Each tile's call carries its latent offset in ``transformer_options["fdi_tile"]``, so the FDI patches add
    that tile's crop of each residual (:func:`fdi.tiles.crop_residual`); ``tick()`` runs per tile."""
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


class TileProgress:
    """ComfyUI's progress bar for a tiled restoration: one tick per tile of the VAE encode, of each model call and
    of the decode. Calling it counts a tick (and raises on Cancel)."""

    def __init__(self, tiling: Tiling, inversion: torch.Tensor, sampling: torch.Tensor):
        # len(sigmas) - 1 model calls per pass, plus one encode and one decode: len(inversion) + len(sampling)
        self.total = len(tiling.tiles) * (len(inversion) + len(sampling))
        self.done = 0
        self._progress = progress_callback(self.total)

    def __call__(self) -> None:
        self.done += 1
        self._progress(min(self.done, self.total), self.total)


def restore(
    model,
    vae,
    images: torch.Tensor,
    guide,
    positive,
    negative,
    steps: int,
    inversion_steps: int,
    cfg: float,
    tile_size: int,
    tile_overlap: int,
    preview: bool = True,
) -> torch.Tensor:
    """FDI Restore's recipe on a library batch ``images`` ``[B, 3, H, W]`` → IMAGE ``[B, H, W, 3]`` of the same size.

    ``guide(padded)`` returns the guided MODEL for the padded batch; the rest is ``python -m fdi restore``'s:
    pad to a multiple of 64, VAE-encode, DDIM-invert with the plain MODEL, sample back with DDIM on the same
    timesteps, decode, crop (with ``tile_size``: per tile, blended, :mod:`fdi.tiles`). ``preview=False``: no
    progress bar or latent preview of its own (a node that shows its own progress, e.g. training)."""
    h, w = images.shape[-2:]
    check_image_size(h, w, "the 'image' input")
    sampling, inversion = restore_schedule(model, steps, inversion_steps)  # the step bound, before any work
    check_conditioning(model, positive)
    check_conditioning(model, negative, "negative")
    padded = pad_to_multiple(images)
    tiling = optional_tiling(
        padded.shape[-2] // LATENT_SCALE, padded.shape[-1] // LATENT_SCALE, tile_size, tile_overlap
    )
    guided = guide(padded)
    ddim = comfy.samplers.sampler_object(SAMPLER)
    if tiling is None or tiling.single:
        latent = invert(model, positive, vae.encode(batch_to_image(padded)), inversion, preview)
        decoded = decode(vae, sample(guided, ddim, sampling, cfg, positive, negative, latent, preview))
    else:
        tick = TileProgress(tiling, inversion, sampling)

        def encode_tile(_: int, x: torch.Tensor) -> torch.Tensor:
            tick()
            return vae.encode(batch_to_image(x)).float()

        def decode_tile(_: int, z: torch.Tensor) -> torch.Tensor:
            tick()
            return decode(vae, z).permute(0, 3, 1, 2)

        latent = tiling.blend(padded, encode_tile, in_scale=LATENT_SCALE)
        latent = invert(tiled_model(model, tiling, tick), positive, latent, inversion, preview=False)
        latent = sample(tiled_model(guided, tiling, tick), ddim, sampling, cfg, positive, negative, latent, False)
        decoded = tiling.blend(latent, decode_tile, out_scale=LATENT_SCALE).permute(0, 2, 3, 1)
    return decoded[:, :h, :w, :].float().clamp(0, 1).to(mm.intermediate_device())
