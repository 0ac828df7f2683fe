"""Which ComfyUI UNets take an adapter's guidance, and at which blocks (plain Python, no ComfyUI import).

Injection points for a UNet with ``n`` res-blocks per level (SD 2.x: ``n = 2``): the encoder residual ``r_i``
after input block ``(n+1)·i + n`` (2, 5, 8, 11), the decoder modulation on ``h`` entering output block
``(n+1)·(j+1)`` (3, 6, 9).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

from .errors import FDIError

#: UNet context widths of the Stable Diffusion families, for error messages
CONTEXT_FAMILIES = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}


def block_indices(num_res_blocks: int) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """``(input blocks after which r_1..r_4 are added, output blocks whose input h is modulated)``.

    ``num_res_blocks = 2`` (SD 1.x/2.x) gives ``((2, 5, 8, 11), (3, 6, 9))``.
    """
    n = int(num_res_blocks)
    return tuple((n + 1) * i + n for i in range(4)), tuple((n + 1) * j for j in (1, 2, 3))


def check_unet_for_adapter(
    unet_config: Optional[dict], channels: Sequence[int], base_family: str = "", prediction_type: Optional[str] = None
) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """Check that a ComfyUI UNet (its ``model_config.unet_config``) can take an adapter's guidance.

    Needs an ``openaimodel`` UNet with four levels of equal res-block count whose widths are the
    adapter's ``channels``; for an adapter of an SD 2.x family (``sd2.1-base``, ``sd2.1-v``) the
    cross-attention width must also be 1024 (an SD 1.x UNet has the same widths but another text
    encoder). Returns :func:`block_indices` for it. Raises :class:`FDIError` naming what the MODEL
    looks like (SDXL, SD 1.x, not a UNet…) otherwise. ``prediction_type`` (the MODEL's: ``epsilon``,
    ``v_prediction``, or another ComfyUI model type) must match the family's suffix (``-base``: epsilon,
    ``-v``: v-prediction) when both are known.
    """
    channels = tuple(int(c) for c in channels)
    if not isinstance(unet_config, dict) or "model_channels" not in unet_config or "channel_mult" not in unet_config:
        raise FDIError(
            "the MODEL is not a Stable Diffusion UNet (no model_channels/channel_mult: "
            "a DiT/flow model such as SD3 or Flux?); FDI adapters guide SD 2.x UNets, load an SD 2.1 checkpoint"
        )
    ctx = unet_config.get("context_dim")
    family = CONTEXT_FAMILIES.get(ctx, f"a UNet with cross-attention width {ctx}")
    mult = tuple(unet_config["channel_mult"])
    widths = tuple(int(unet_config["model_channels"]) * int(m) for m in mult)
    if widths != channels:
        raise FDIError(
            f"the MODEL ({family}) has UNet level widths {widths}, "
            f"the adapter needs {channels} (it was trained for {base_family or 'another model'}); "
            "load an SD 2.1 checkpoint, or use an adapter trained for this model"
        )
    nrb = unet_config.get("num_res_blocks", 2)
    if isinstance(nrb, (list, tuple)):
        if len(set(int(x) for x in nrb)) != 1:
            raise FDIError(
                f"the MODEL's UNet levels have different block counts {list(nrb)}; "
                "FDI guidance needs an SD 2.x-shaped UNet"
            )
        nrb = int(nrb[0])
    if base_family.startswith("sd2") and ctx != 1024:
        raise FDIError(
            f"the MODEL is {family} (cross-attention width {ctx}), not SD 2.x (1024), "
            f"but the adapter was trained for {base_family}; load an SD 2.1 checkpoint"
        )
    if int(unet_config.get("in_channels", 4)) != 4:
        raise FDIError(
            f"the MODEL's UNet takes {unet_config.get('in_channels')} latent channels "
            "(an inpainting/depth variant?); FDI guidance needs a 4-channel SD 2.x UNet"
        )
    if prediction_type is not None and base_family:
        wanted = "v_prediction" if base_family.endswith("-v") else "epsilon" if base_family.endswith("-base") else None
        if wanted is not None and prediction_type != wanted:
            kind = {"epsilon": "an epsilon (SD 2.1 base, 512 px)", "v_prediction": "a v-prediction (SD 2.1, 768 px)"}
            raise FDIError(
                f"the adapter was trained for {base_family} ({kind[wanted]} model) but the MODEL is "
                f"{kind.get(prediction_type, prediction_type)} model; "
                "load the matching checkpoint or use an adapter trained for it"
            )
    return block_indices(nrb)
