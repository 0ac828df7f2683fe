"""What a single-file checkpoint is, from its safetensors header (original SD / ComfyUI key layout), before loading.

:func:`inspect_single_file` tells SD 1.x, SD 2.x and SDXL apart and refuses the files FDI cannot guide.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import torch

from .errors import FDIError
from .files import PathLike, read_header

# single-file keys that tell the families apart (original SD / ComfyUI key layout)
_UNET = "model.diffusion_model."
_CROSS_K = _UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
#: SDXL's first cross-attention (its level 0 has none)
_SDXL_CROSS_K = _UNET + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"
_CONV_IN = _UNET + "input_blocks.0.0.weight"
_SDXL_HINT = "conditioner.embedders.1."
_SDXL_CLIP_G = "conditioner.embedders.1.model."
_REFINER_CLIP_G = "conditioner.embedders.0.model."
_SDXL_LABEL = _UNET + "label_emb.0.0.weight"
#: SDXL base's pooled-text + size conditioning width (1280 + 6 × 256); the refiner's is 2560
SDXL_ADM_WIDTH = 2816
#: ComfyUI's v-prediction test (comfy/supported_models.py, SD20.model_type): the population std of this
#: LayerNorm bias is > 0.09 in the v-prediction SD 2.x releases and smaller in the epsilon ones
V_PRED_PROBE = _UNET + "output_blocks.11.1.transformer_blocks.0.norm1.bias"
V_PRED_STD = 0.09
#: ComfyUI's single-file markers (empty tensors): ``v_pred`` = the UNet predicts v; ``ztsnr`` (read only beside
#: ``v_pred``) = it was trained on the zero-terminal-SNR schedule. ComfyUI's CheckpointSave writes both
#: (comfy_extras/nodes_model_merging.py); its loader reads them for SDXL (comfy/supported_models.py, SDXL.model_type)
V_PRED_KEY = "v_pred"
ZTSNR_KEY = "ztsnr"

_NEED = "FDI adapters need an SD 1.5, SD 2.x or SDXL base model"


def _shape(infos: Dict[str, Any], key: str) -> Optional[List[int]]:
    return list(infos[key]["shape"]) if key in infos else None


def schedule_markers(keys: Iterable[str]) -> Dict[str, bool]:
    """What a single file's keys declare: ``{"v_prediction", "zero_snr"}``: a ``v_pred`` key, and a ``ztsnr`` key
    beside it (alone it declares nothing, as ComfyUI reads it). The one reading of the markers, for every family."""
    keys = set(keys)
    v = V_PRED_KEY in keys
    return {"v_prediction": v, "zero_snr": v and ZTSNR_KEY in keys}


def inspect_single_file(path: PathLike) -> Dict[str, Any]:
    """Family facts of a single-file checkpoint from its header: ``{"arch", "v_prediction", "zero_snr"}``.

    ``arch`` is ``sd1`` (cross-attention width 768), ``sd2`` (1024) or ``sdxl`` (two text encoders,
    ``label_emb`` of width 2816, cross-attention 2048), always with 4 latent channels; anything else
    (the SDXL refiner, inpainting/depth models, other widths, not a UNet) raises :class:`FDIError` naming
    what the file looks like. ``v_prediction``: ``True`` for a ``v_pred`` key (:func:`schedule_markers`, for every
    family); else for SD 2.x ComfyUI's weight probe, ``None`` when it is absent; else ``False`` (SD 1.x and SDXL
    releases predict epsilon). ``zero_snr``: a ``ztsnr`` key beside ``v_pred``."""
    p = Path(path)
    infos, _ = read_header(p, "model checkpoint")
    conv_in = _shape(infos, _CONV_IN)
    if conv_in is not None and conv_in[1] != 4:
        raise FDIError(
            f"{p.name!r} takes {conv_in[1]} latent channels (an inpainting/depth model); "
            "FDI adapters need a plain 4-channel SD 1.5, SD 2.x or SDXL model"
        )
    if "edm_mean" in infos or "edm_vpred.sigma_max" in infos:
        raise FDIError(
            f"{p.name!r} is an EDM-schedule SDXL model (Playground v2.5 or an EDM v-prediction fine-tune); "
            "FDI samples with the DDIM schedule of SDXL base 1.0 and its fine-tunes: give one of those"
        )
    label = _shape(infos, _SDXL_LABEL)
    clip_g = any(k.startswith(_SDXL_CLIP_G) for k in infos)
    refiner_clip = any(k.startswith(_REFINER_CLIP_G) for k in infos)
    if clip_g or (label is not None and _CROSS_K not in infos):  # SDXL layout (its level 0 has no attention)
        if (
            (conv_in is not None and conv_in[0] != 320)
            or (label is not None and label[1] != SDXL_ADM_WIDTH)
            or (refiner_clip and not clip_g)
        ):
            raise FDIError(
                f"{p.name!r} is the SDXL refiner (OpenCLIP-G only, UNet width 384) or a model like it; "
                "FDI adapters need the SDXL base (e.g. sd_xl_base_1.0.safetensors) or a fine-tune of it"
            )
        cross = _shape(infos, _SDXL_CROSS_K)
        if cross is not None and cross[-1] != 2048:
            raise FDIError(
                f"{p.name!r} looks like SDXL but its cross-attention width is {cross[-1]}, not 2048; {_NEED}"
            )
        return {"arch": "sdxl", **schedule_markers(infos)}
    if _CROSS_K not in infos:
        raise FDIError(
            f"{p.name!r} is not a Stable Diffusion UNet checkpoint (no {_CROSS_K}); "
            "give an SD 1.5, SD 2.x or SDXL single-file checkpoint or a diffusers folder of one"
        )
    if label is not None:
        raise FDIError(
            f"{p.name!r} has a class/image-conditioned UNet (label_emb: an unCLIP or upscaler model); {_NEED}"
        )
    width = infos[_CROSS_K]["shape"][-1]
    markers = schedule_markers(infos)
    if width == 768:
        return {"arch": "sd1", **markers}
    if width != 1024:
        raise FDIError(
            f"{p.name!r} is a UNet with cross-attention width {width}, not SD 1.x (768) or SD 2.x (1024); {_NEED}"
        )
    v = True if markers["v_prediction"] else None
    if v is None and V_PRED_PROBE in infos:
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as fh:
            bias = fh.get_tensor(V_PRED_PROBE).float()
        v = bool(torch.std(bias, unbiased=False) > V_PRED_STD)
    return {"arch": "sd2", "v_prediction": v, "zero_snr": markers["zero_snr"]}
