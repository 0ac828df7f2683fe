"""What a restoration is given and the checks of it, shared by :mod:`fdi.pipeline` and ``python -m fdi restore``.

An :class:`AdapterUse` per adapter (adapter, FDI, weight), the settings of :func:`check_settings`, and the rule of
which part of sampling each adapter guides (:func:`guidance_windows`, also the ComfyUI nodes').
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Protocol, Sequence, Tuple, Union

import torch

from .adapter import FDIAdapter
from .errors import FDIError
from .families import arch_of, family_for
from .images import check_image_batch
from .instruction import FDI
from .sampling import DEFAULT_GUIDANCE_WINDOW, GUIDANCE_END

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
    "guidance_start": "guidance start",
    "guidance_end": "guidance end",
    "strength": "strength",
    "cfg": "CFG scale",
}
#: the same settings as ``python -m fdi restore`` names them
CLI_SETTING_NAMES = {
    "steps": "--steps",
    "inversion_steps": "--inversion-steps",
    "guidance_start": "--guidance-start",
    "guidance_end": "--guidance-end",
    "strength": "--strength",
    "cfg": "--cfg",
}


def check_settings(
    steps: int,
    inversion_steps: int,
    guidance_start: Optional[float] = None,
    guidance_end: Optional[float] = None,
    strength: float = 1.0,
    cfg: float = 1.0,
    mode: str = "composite",
    names: Dict[str, str] = SETTING_NAMES,
) -> None:
    """Raise :class:`FDIError` for restoration settings no restoration can use: step counts below 1, a guidance
    start or end outside 0..1 or an end before the start (:func:`check_guidance_fractions`; ``None``: each adapter's
    own), a non-finite strength, a negative or non-finite CFG scale, an unknown mode.
    ``names``: how the messages name the settings (:data:`SETTING_NAMES`, :data:`CLI_SETTING_NAMES`)."""
    if mode not in MODES:
        raise FDIError(f"unknown mode {mode!r}; use {' or '.join(MODES)}")
    if not (isinstance(steps, int) and steps >= 1) or not (isinstance(inversion_steps, int) and inversion_steps >= 1):
        raise FDIError(
            f"{names['steps']} ({steps}) and {names['inversion_steps']} ({inversion_steps}) must be whole numbers ≥ 1"
        )
    check_guidance_fractions(guidance_start, guidance_end, names)
    if not math.isfinite(strength):
        raise FDIError(f"{names['strength']} {strength} is not a finite number; use e.g. 1.0")
    if not math.isfinite(cfg) or cfg < 0:
        raise FDIError(f"{names['cfg']} {cfg} is invalid; use 1.0 (no CFG) or a larger finite number")


def check_guidance_fractions(
    start: Optional[float], end: Optional[float], names: Dict[str, str] = SETTING_NAMES
) -> None:
    """Raise :class:`FDIError` unless each given fraction of the sampling steps is in 0..1 and ``start ≤ end``
    (``start == end``: no step guided). ``None``: not given (the adapter's own)."""
    for key, value in (("guidance_start", start), ("guidance_end", end)):
        if value is not None and not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise FDIError(
                f"{names[key]} {value} is outside 0..1; the guidance window is a fraction of the sampling steps "
                f"(the paper's: {DEFAULT_GUIDANCE_WINDOW[0]:g} to {GUIDANCE_END}, the first third)"
            )
    if start is not None and end is not None and end < start:
        raise FDIError(
            f"{names['guidance_end']} {end} is before {names['guidance_start']} {start}: no step would be guided; "
            f"give an end at or after the start"
        )


class GuidanceWindowNote(UserWarning):
    """An adapter is made to guide outside the window it was trained for (:func:`guidance_windows`)."""


#: ``(start, end)``: the part of sampling an adapter guides, as fractions of the steps (``start·N ≤ k < end·N``)
Window = Tuple[float, float]


class Windowed(Protocol):
    """What :func:`guidance_windows` reads of an adapter (an :class:`FDIAdapter`, or the ComfyUI nodes' guidance)."""

    guidance_window: Optional[Window]
    display_name: str


def guidance_windows(
    adapters: Sequence[Windowed],
    start: Optional[float] = None,
    end: Optional[float] = None,
    unrecorded: Window = DEFAULT_GUIDANCE_WINDOW,
    names: Dict[str, str] = SETTING_NAMES,
) -> Tuple[List[Window], List[str]]:
    """The window each adapter guides, and a note for each adapter made to guide outside the window it was trained
    for: ``(windows, notes)``, one window per adapter.

    An adapter guides its recorded window (:attr:`FDIAdapter.guidance_window`; ``unrecorded`` for a file that
    records none, trained before 2026-12: the paper's first third). A ``start`` or ``end`` given replaces that end
    of every adapter's window; a non-empty window that then reaches outside the recorded one gets a note naming the
    adapter, its trained window and the given one (a file that records none gets none: it was trained on every
    timestep). Raises :class:`FDIError` for a window that would end before it starts."""
    check_guidance_fractions(start, end, names)
    settings = (("guidance_start", start), ("guidance_end", end))
    given = " ".join(f"{names[k]} {v:g}" for k, v in settings if v is not None)
    windows, notes = [], []
    for adapter in adapters:
        trained = adapter.guidance_window
        own_start, own_end = trained if trained is not None else unrecorded
        s = own_start if start is None else float(start)
        e = own_end if end is None else float(end)
        if e < s:
            how = f"{given} with its own {own_start:g}..{own_end:g}" if given else "its own"
            raise FDIError(
                f"adapter {adapter.display_name} would guide steps {s:g}..{e:g} of sampling ({how}), a window that "
                f"ends before it starts; give both {names['guidance_start']} and {names['guidance_end']}"
            )
        if trained is not None and s < e and (s < trained[0] or e > trained[1]):
            notes.append(
                f"adapter {adapter.display_name} was trained to guide steps {trained[0]:g}..{trained[1]:g} of "
                f"sampling; {given} makes it guide {s:g}..{e:g}, outside the window it learned"
            )
        windows.append((s, e))
    return windows, notes


def check_restore_inputs(
    pipe,
    images: torch.Tensor,
    adapters: Sequence[AdapterUse],
    steps: int,
    inversion_steps: int,
    guidance_start: Optional[float],
    guidance_end: Optional[float],
    strength: float,
    mode: str,
    cfg: float,
) -> Tuple[List[Window], List[str]]:
    """Raise :class:`FDIError` for any argument :meth:`fdi.pipeline.FDIRestorationPipeline.restore` of ``pipe``
    cannot use (before any work); return each adapter's guidance window and the notes of :func:`guidance_windows`."""
    check_settings(steps, inversion_steps, guidance_start, guidance_end, strength, cfg, mode)
    pipe.check_steps(steps)
    if not adapters:
        raise FDIError("no adapter given; restoration needs at least one FDI adapter")
    for u in adapters:
        if not math.isfinite(u.weight):
            raise FDIError(f"adapter weight {u.weight} is not a finite number; use e.g. 1.0")
        pipe.check_adapter(u.adapter)
        u.adapter.tokens_for(u.resolved_fdi(), 1)  # width, token count, encoder
    check_image_size(*check_image_batch(images, "images", min_side=0).shape[-2:], "each image")
    return guidance_windows([u.adapter for u in adapters], guidance_start, guidance_end)
