"""What a restoration is given and the checks of it, shared by :mod:`fdi.pipeline` and ``python -m fdi restore``.

An :class:`AdapterUse` per adapter (adapter, FDI, weight) and the settings of :func:`check_settings`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Union

import torch

from .adapter import FDIAdapter
from .errors import FDIError
from .families import arch_of, family_for
from .instruction import FDI
from .sampling import GUIDANCE_END

#: the smallest image side restoration takes, in pixels (one latent pixel of the VAE)
MIN_SIDE = 8
MODES = ("composite", "progressive")


@dataclass
class AdapterUse:
    """One adapter in a restoration: the adapter, its FDI (``None`` = embedded) and its weight."""

    adapter: FDIAdapter
    fdi: Optional[Union[FDI, torch.Tensor]] = None
    weight: float = 1.0

    def resolved_fdi(self) -> Union[FDI, torch.Tensor]:
        fdi = self.fdi if self.fdi is not None else self.adapter.fdi
        if fdi is None:
            name = self.adapter.display_name
            raise FDIError(
                f"adapter {name} has no embedded FDI and none was given; pass an FDI file (--fdi F.fdi.safetensors)"
            )
        return fdi


def detect_base_family(unet_config, prediction_type: str) -> str:
    """The family (:mod:`fdi.families`) of a diffusers UNet config and prediction type: ``sd1.5``, ``sd2.1-base``,
    ``sd2.1-v``, ``sdxl`` (``sd1.5-v``, ``sdxl-v`` for v-prediction fine-tunes), else ``custom-base`` /
    ``custom-v`` (no known family: the suffix is ``v`` for v-prediction, ``base`` for epsilon)."""
    text_time = getattr(unet_config, "addition_embed_type", None) == "text_time"
    arch = arch_of(unet_config.block_out_channels, unet_config.cross_attention_dim, text_time)
    if arch == "sd2" and not unet_config.use_linear_projection:
        arch = None
    if arch is None:
        return "custom-v" if prediction_type == "v_prediction" else "custom-base"
    return family_for(arch, prediction_type)


def check_image_size(height: int, width: int, what: str = "the image") -> None:
    """Raise :class:`FDIError` for an image of ``height × width`` pixels with a side under :data:`MIN_SIDE`:
    the one size check of the pipeline, ``python -m fdi restore`` (before loading) and ``FDIRestore``."""
    if int(height) < MIN_SIDE or int(width) < MIN_SIDE:
        raise FDIError(
            f"{what} is {int(width)}x{int(height)} pixels; restoration needs at least {MIN_SIDE} pixels a side "
            "(upscale it first)"
        )


#: how :func:`check_settings` names the settings in its messages (the CLI passes its flags instead)
SETTING_NAMES = {
    "steps": "steps",
    "inversion_steps": "inversion steps",
    "guidance_end": "guidance end",
    "strength": "strength",
    "cfg": "CFG scale",
}
#: the same settings as ``python -m fdi restore`` names them
CLI_SETTING_NAMES = {
    "steps": "--steps",
    "inversion_steps": "--inversion-steps",
    "guidance_end": "--guidance-end",
    "strength": "--strength",
    "cfg": "--cfg",
}


def check_settings(
    steps: int,
    inversion_steps: int,
    guidance_end: float = GUIDANCE_END,
    strength: float = 1.0,
    cfg: float = 1.0,
    mode: str = "composite",
    names: Dict[str, str] = SETTING_NAMES,
) -> None:
    """Raise :class:`FDIError` for restoration settings no restoration can use: step counts below 1, a guided
    fraction outside 0..1, a non-finite strength, a negative or non-finite CFG scale, an unknown mode.
    ``names``: how the messages name the settings (:data:`SETTING_NAMES`, :data:`CLI_SETTING_NAMES`)."""
    if mode not in MODES:
        raise FDIError(f"unknown mode {mode!r}; use {' or '.join(MODES)}")
    if not (isinstance(steps, int) and steps >= 1) or not (isinstance(inversion_steps, int) and inversion_steps >= 1):
        raise FDIError(
            f"{names['steps']} ({steps}) and {names['inversion_steps']} ({inversion_steps}) must be whole numbers ≥ 1"
        )
    if not (math.isfinite(guidance_end) and 0.0 <= guidance_end <= 1.0):
        raise FDIError(
            f"{names['guidance_end']} {guidance_end} is outside 0..1; "
            f"it is the fraction of sampling steps that are guided (paper: {GUIDANCE_END})"
        )
    if not math.isfinite(strength):
        raise FDIError(f"{names['strength']} {strength} is not a finite number; use e.g. 1.0")
    if not math.isfinite(cfg) or cfg < 0:
        raise FDIError(f"{names['cfg']} {cfg} is invalid; use 1.0 (no CFG) or a larger finite number")
