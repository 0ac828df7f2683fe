"""Which ComfyUI UNets take an adapter's guidance, and at which blocks (plain Python, no ComfyUI import).

Injection points for a UNet with ``L`` levels of ``n`` res-blocks each (SD 1.x/2.x: ``L = 4``, SDXL: ``L = 3``;
``n = 2``): the encoder residual ``r_i`` after input block ``(n+1)·i + n`` (2, 5, 8, 11; SDXL 2, 5, 8), the
decoder modulation on ``h`` entering output block ``(n+1)·j`` for ``j = 1..L-1`` (3, 6, 9; SDXL 3, 6).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

from .errors import FDIError
from .families import arch_of, describe_unet, family_title, get_family


def block_indices(num_res_blocks: int, levels: int = 4) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """``(input blocks after which r_1..r_L are added, output blocks whose input h is modulated)``.

    ``num_res_blocks = 2`` gives ``((2, 5, 8, 11), (3, 6, 9))`` for four levels (SD 1.x/2.x) and
    ``((2, 5, 8), (3, 6))`` for three (SDXL).
    """
    n, L = int(num_res_blocks), int(levels)
    return tuple((n + 1) * i + n for i in range(L)), tuple((n + 1) * j for j in range(1, L))


def comfy_arch(unet_config: Optional[dict]) -> Optional[str]:
    """``sd1``, ``sd2`` or ``sdxl`` for a ComfyUI ``unet_config`` (``None``: another UNet or not a UNet)."""
    if not isinstance(unet_config, dict) or "model_channels" not in unet_config or "channel_mult" not in unet_config:
        return None
    widths = tuple(int(unet_config["model_channels"]) * int(m) for m in unet_config["channel_mult"])
    return arch_of(widths, unet_config.get("context_dim"), unet_config.get("adm_in_channels") is not None)


def check_unet_for_adapter(
    unet_config: Optional[dict], channels: Sequence[int], base_family: str = "", prediction_type: Optional[str] = None
) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """Check that a ComfyUI UNet (its ``model_config.unet_config``) can take an adapter's guidance.

    Needs an ``openaimodel`` UNet with three or four levels of equal res-block count whose widths are the
    adapter's ``channels``; for an adapter of a known family (:mod:`fdi.families`: ``sd1.5``, ``sd2.1-base``,
    ``sd2.1-v``, ``sdxl``) the UNet must be of that family's architecture (SD 1.x and SD 2.x have the same widths
    but other text encoders). Returns :func:`block_indices` for it. Raises :class:`FDIError` naming both families
    otherwise. ``prediction_type`` (the MODEL's: ``epsilon``, ``v_prediction``, or another ComfyUI model type)
    must match the family's when both are known.
    """
    channels = tuple(int(c) for c in channels)
    if not isinstance(unet_config, dict) or "model_channels" not in unet_config or "channel_mult" not in unet_config:
        raise FDIError(
            "the MODEL is not a Stable Diffusion UNet (no model_channels/channel_mult: "
            "a DiT/flow model such as SD3 or Flux?); FDI adapters guide SD 1.5, SD 2.x and SDXL UNets"
        )
    ctx = unet_config.get("context_dim")
    mult = tuple(unet_config["channel_mult"])
    widths = tuple(int(unet_config["model_channels"]) * int(m) for m in mult)
    text_time = unet_config.get("adm_in_channels") is not None
    described = describe_unet(widths, ctx, text_time)
    wanted = get_family(base_family)
    trained_for = family_title(base_family) if base_family else "another model"
    if widths != channels:
        raise FDIError(
            f"the MODEL ({described}) has UNet level widths {widths}, the adapter needs {channels} "
            f"(it was trained for {trained_for}); load an {trained_for} checkpoint, or use an adapter trained "
            "for this model"
        )
    nrb = unet_config.get("num_res_blocks", 2)
    if isinstance(nrb, (list, tuple)):
        if len(set(int(x) for x in nrb)) != 1:
            raise FDIError(
                f"the MODEL's UNet levels have different block counts {list(nrb)}; "
                "FDI guidance needs an SD 1.5/2.x/SDXL-shaped UNet"
            )
        nrb = int(nrb[0])
    if wanted is not None and comfy_arch(unet_config) != wanted.arch:
        raise FDIError(
            f"the MODEL is {described} (cross-attention width {ctx}), but the adapter was trained for "
            f"{wanted.title} (width {wanted.context_dim}); load an {wanted.title} checkpoint, or use an adapter "
            f"trained for {described}"
        )
    if int(unet_config.get("in_channels", 4)) != 4:
        raise FDIError(
            f"the MODEL's UNet takes {unet_config.get('in_channels')} latent channels "
            "(an inpainting/depth variant?); FDI guidance needs a plain 4-channel UNet"
        )
    if prediction_type is not None and wanted is not None and prediction_type != wanted.prediction_type:
        kind = {"epsilon": "an epsilon", "v_prediction": "a v-prediction"}
        raise FDIError(
            f"the adapter was trained for {wanted.title} ({kind[wanted.prediction_type]} model) but the MODEL is "
            f"{kind.get(prediction_type, prediction_type)} model; "
            "load the matching checkpoint or use an adapter trained for it"
        )
    return block_indices(nrb, len(widths))


def comfy_family(unet_config: Optional[dict], prediction_type: str) -> str:
    """The :mod:`fdi.families` name of a ComfyUI UNet config and the MODEL's prediction type; raises
    :class:`FDIError` for a UNet of no known family (naming what it looks like)."""
    from .families import family_for

    arch = comfy_arch(unet_config)
    if arch is None:
        if not isinstance(unet_config, dict) or "model_channels" not in unet_config:
            raise FDIError(
                "the MODEL is not a Stable Diffusion UNet (a DiT/flow model such as SD3 or Flux?); "
                "FDI adapters guide SD 1.5, SD 2.x and SDXL UNets"
            )
        widths = tuple(int(unet_config["model_channels"]) * int(m) for m in unet_config["channel_mult"])
        described = describe_unet(
            widths, unet_config.get("context_dim"), unet_config.get("adm_in_channels") is not None
        )
        raise FDIError(
            f"the MODEL is {described}, not SD 1.5, SD 2.x or SDXL; FDI adapters guide those three UNet families"
        )
    return family_for(arch, prediction_type)
