"""The Stable Diffusion base families an FDI adapter is trained for, and what tells their UNets apart.

A family fixes the adapter's level widths (the UNet encoder's), the text conditioning width, the
prediction type and the shipped diffusers configs (``fdi/configs/<name>``). Four are shipped:
``sd1.5``, ``sd2.1-base``, ``sd2.1-v``, ``sdxl``; a v-prediction fine-tune of SD 1.5 or SDXL is
``sd1.5-v`` / ``sdxl-v`` (same architecture, no shipped configs). Injection points: docs/design.md.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, Optional, Sequence, Tuple

from .errors import FDIError


@dataclass(frozen=True)
class BaseFamily:
    """One base family.

    Attributes:
        name: ``sd1.5``, ``sd2.1-base``, ``sd2.1-v``, ``sdxl`` (or a ``-v`` variant).
        title: how messages name it (``SD 1.5``).
        arch: the UNet architecture: ``sd1``, ``sd2`` or ``sdxl``.
        channels: UNet encoder level widths (= the adapter's ``channels``).
        context_dim: cross-attention (text) width.
        prediction_type: ``epsilon`` or ``v_prediction``.
        resolution: native image side, pixels.
        configs: name of the shipped config folder under ``fdi/configs`` (``""``: none shipped).
    """

    name: str
    title: str
    arch: str
    channels: Tuple[int, ...]
    context_dim: int
    prediction_type: str
    resolution: int
    configs: str = ""

    @property
    def levels(self) -> int:
        return len(self.channels)


SD_CHANNELS = (320, 640, 1280, 1280)
SDXL_CHANNELS = (320, 640, 1280)

#: the shipped families, by name
FAMILIES: Dict[str, BaseFamily] = {
    f.name: f
    for f in (
        BaseFamily("sd1.5", "SD 1.5", "sd1", SD_CHANNELS, 768, "epsilon", 512, "sd1.5"),
        BaseFamily("sd2.1-base", "SD 2.1 base", "sd2", SD_CHANNELS, 1024, "epsilon", 512, "sd2.1-base"),
        BaseFamily("sd2.1-v", "SD 2.1 (768-v)", "sd2", SD_CHANNELS, 1024, "v_prediction", 768, "sd2.1-v"),
        BaseFamily("sdxl", "SDXL", "sdxl", SDXL_CHANNELS, 2048, "epsilon", 1024, "sdxl"),
    )
}
#: architecture → (epsilon family, v-prediction family)
_BY_ARCH = {"sd1": ("sd1.5", "sd1.5-v"), "sd2": ("sd2.1-base", "sd2.1-v"), "sdxl": ("sdxl", "sdxl-v")}
#: names earlier versions wrote into adapter files for these architectures
ALIASES = {"sd1.5-base": "sd1.5", "sdxl-base": "sdxl"}
#: the text conditioning widths of the architectures (for naming a MODEL in messages)
CONTEXT_ARCH = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
ARCH_TITLES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}


def canonical_name(name: str) -> str:
    """``name`` with an older spelling replaced (``sd1.5-base`` → ``sd1.5``)."""
    return ALIASES.get(name, name)


def get_family(name: str) -> Optional[BaseFamily]:
    """The family called ``name`` (shipped, an alias, or a ``-v`` variant of SD 1.5/SDXL); ``None`` for other
    names (``custom-base``: a UNet of no known family, such as the tests' tiny ones)."""
    name = canonical_name(name)
    if name in FAMILIES:
        return FAMILIES[name]
    for arch, (eps, v) in _BY_ARCH.items():
        if name == v and v not in FAMILIES:
            return replace(
                FAMILIES[eps],
                name=v,
                title=FAMILIES[eps].title + " (v-prediction)",
                configs="",
                prediction_type="v_prediction",
            )
    return None


def family_for(arch: str, prediction_type: str) -> str:
    """The family name of a UNet architecture (``sd1``/``sd2``/``sdxl``) and prediction type."""
    if arch not in _BY_ARCH:
        raise FDIError(f"unknown UNet architecture {arch!r}; FDI knows {', '.join(_BY_ARCH)}")
    return _BY_ARCH[arch][1 if prediction_type == "v_prediction" else 0]


def arch_of(channels: Sequence[int], context_dim: Optional[int], text_time: bool) -> Optional[str]:
    """``sd1``, ``sd2`` or ``sdxl`` for a UNet with these encoder widths, cross-attention width and size/pooled
    conditioning (``text_time``: diffusers' ``addition_embed_type == "text_time"``, ComfyUI's ``adm`` input);
    ``None`` for any other UNet."""
    channels = tuple(int(c) for c in channels)
    if text_time:
        return "sdxl" if channels == SDXL_CHANNELS and context_dim == 2048 else None
    if channels == SD_CHANNELS and context_dim in (768, 1024):
        return CONTEXT_ARCH[int(context_dim)]
    return None


def describe_unet(channels: Sequence[int], context_dim: Optional[int], text_time: bool) -> str:
    """How a message names a UNet: ``SD 1.x``, ``SD 2.x``, ``SDXL``, or its widths."""
    arch = arch_of(channels, context_dim, text_time)
    if arch is not None:
        return ARCH_TITLES[arch]
    if context_dim in CONTEXT_ARCH:
        return f"a {ARCH_TITLES[CONTEXT_ARCH[context_dim]]}-like UNet with widths {tuple(int(c) for c in channels)}"
    return f"a UNet with widths {tuple(int(c) for c in channels)} and cross-attention width {context_dim}"


def family_title(name: str) -> str:
    """``SD 1.5`` for ``sd1.5``; the name itself for a family the pack does not know."""
    family = get_family(name)
    return family.title if family is not None else (name or "an unknown model")
