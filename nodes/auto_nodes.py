"""'FDI Restore (auto)': FDIRestore's recipe with the adapters a degradation classifier picks, per image.

The decision is :func:`fdi.auto.decide`'s, the one rule ``python -m fdi restore --auto`` follows: composite guides one
sampling with every chosen adapter, each at strength × its label's probability (chained guidance entries add up, as
chained 'Apply FDI Guidance' nodes do); progressive restores with one chosen adapter after the other, most probable
first, each at strength; an image with nothing chosen passes through unchanged. Images of a batch that decide
differently are restored apart (:meth:`fdi.auto.AutoDecision.key`). Each adapter guides its recorded window, as
``restore`` does without ``--guidance-start``/``--guidance-end``.
"""

from __future__ import annotations

import json
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from comfy_api.latest import io, ui

from ..fdi.auto import AutoDecision, decide, match_adapters
from ..fdi.errors import FDIError
from ..fdi.restoration import MODES
from ..fdi.sampling import GUIDANCE_END
from ..fdi.tiles import DEFAULT_TILE_OVERLAP, check_tiling
from .classifier_nodes import Degradations
from .common import (
    CATEGORY,
    FDIAdapterType,
    FDIDegradationsType,
    ModelHandle,
    batch_to_image,
    image_to_batch,
    interrupt_check,
)
from .sampling import WINDOW_MODES, apply_guidance, node_window, restore, run_adapter, zeroed

#: how many adapters the node takes (the first required)
MAX_ADAPTERS = 4
NODE_NAME = "FDI Restore (auto)"


def check_degradations(degradations: object, count: int) -> Degradations:
    """``degradations`` if it is 'Detect Degradations (FDI)''s output for ``count`` images, else :class:`FDIError`."""
    if not isinstance(degradations, Degradations):
        raise FDIError(
            f"the 'degradations' input is a {type(degradations).__name__}; connect 'Detect Degradations (FDI)'"
        )
    if len(degradations.probabilities) != count:
        raise FDIError(
            f"'degradations' holds {len(degradations.probabilities)} image(s) but 'image' has {count}; detect the "
            "degradations of the same images you restore"
        )
    return degradations


def decisions_for(found: Degradations, adapters: Sequence[ModelHandle], mode: str) -> List[AutoDecision]:
    """One :func:`fdi.auto.decide` per image; :class:`FDIError` (before any work) when no adapter's label is a
    classifier label, two adapters share one, or a chosen adapter has no FDI to guide with."""
    labels = [a.module.label for a in adapters]
    matched = match_adapters(found.labels, labels)
    decisions = [decide(p, found.thresholds, labels, mode, matched) for p in found.probabilities]
    for i in sorted({i for d in decisions for i, _ in d.uses}):
        if adapters[i].module.fdi is None:
            raise FDIError(
                f"adapter {adapters[i].name!r} embeds no FDI, which '{NODE_NAME}' guides with; save the adapter with "
                "its FDI ('Save FDI Adapter' or python -m fdi train)"
            )
    return decisions


def groups(decisions: Sequence[AutoDecision]) -> Dict[tuple, List[int]]:
    """``{decision key: [image index, …]}`` in order of first appearance: images restored together."""
    out: Dict[tuple, List[int]] = {}
    for i, d in enumerate(decisions):
        out.setdefault(d.key(), []).append(i)
    return out


def _auto_options() -> list:
    """The optional inputs, after the required ones: adapters 2..4, then FDIRestore's negative and tiles."""
    adapters = [
        FDIAdapterType.Input(
            f"adapter_{k}", optional=True, tooltip=f"Adapter {k}, for another label of the classifier."
        )
        for k in range(2, MAX_ADAPTERS + 1)
    ]
    return [
        *adapters,
        io.Conditioning.Input(
            "negative",
            optional=True,
            tooltip="Negative conditioning for cfg > 1; when not connected, a zeroed copy of 'positive'.",
        ),
        io.Int.Input(
            "tile_size",
            default=0,
            min=0,
            max=8192,
            step=64,
            optional=True,
            tooltip="0 = off; otherwise restore in overlapping tiles of this many pixels, as FDI Restore.",
        ),
        io.Int.Input(
            "tile_overlap",
            default=DEFAULT_TILE_OVERLAP,
            min=0,
            max=8192,
            step=8,
            optional=True,
            tooltip="Overlap of neighbouring tiles in pixels.",
        ),
    ]


class FDIRestoreAuto(io.ComfyNode):
    """FDIRestore with the adapters 'Detect Degradations (FDI)' finds in each image, weighted or in order."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FDIRestoreAuto",
            display_name=NODE_NAME,
            category=f"{CATEGORY}/sampling",
            description=(
                "FDI Restore with the adapters the degradation classifier picks, image by image, as 'python -m fdi "
                "restore --auto' does: an adapter is used when its label (set when it was trained) is a detected "
                "label. mode 'composite': one restoration guided by all of them, each weighted by its label's "
                "probability; 'progressive': one restoration per adapter, most probable first, each restoring the "
                "previous one's output. An image where nothing is detected passes through unchanged. Each adapter "
                "guides the part of sampling its file records, with the FDI embedded in it. 'decision' says, per "
                "image, what was detected and which adapters restored it, with which weights, and why."
            ),
            inputs=[
                io.Model.Input("model", tooltip="An SD 1.5, SD 2.x or SDXL MODEL, of the adapters' family."),
                io.Vae.Input("vae", tooltip="The VAE of that checkpoint."),
                io.Image.Input("image", tooltip="The degraded image(s) to restore."),
                FDIDegradationsType.Input(
                    "degradations", tooltip="From 'Detect Degradations (FDI)' on the same image(s)."
                ),
                FDIAdapterType.Input(
                    "adapter",
                    tooltip="An adapter whose label is one of the classifier's (e.g. trained on hazy photos, label "
                    "'haze'). Adapters whose label the classifier does not know are never picked.",
                ),
                io.Conditioning.Input(
                    "positive",
                    tooltip="Prompt conditioning from CLIP Text Encode (the paper uses an empty prompt).",
                ),
                io.Combo.Input(
                    "mode",
                    options=list(MODES),
                    default=MODES[0],
                    tooltip="composite: the detected adapters guide one restoration, weighted by probability; "
                    "progressive: one restoration per detected adapter, most probable first.",
                ),
                io.Int.Input("steps", default=50, min=1, max=1000, tooltip="DDIM sampling steps (per restoration)."),
                io.Int.Input(
                    "inversion_steps", default=50, min=1, max=1000, tooltip="DDIM inversion steps (per restoration)."
                ),
                io.Float.Input(
                    "strength",
                    default=1.0,
                    min=-10.0,
                    max=10.0,
                    step=0.01,
                    tooltip="Guidance strength, times each adapter's weight (composite: its probability).",
                ),
                io.Float.Input(
                    "cfg", default=1.0, min=0.0, max=30.0, step=0.1, tooltip="Classifier-free guidance scale."
                ),
                *_auto_options(),
            ],
            outputs=[
                io.Image.Output(display_name="image", tooltip="The restored image(s), same size as the input."),
                io.String.Output(
                    display_name="decision",
                    tooltip="Per image, as JSON: probabilities, thresholds, detected labels, the adapters used "
                    "(order, weight) and the reason; the same record 'restore --auto' writes beside each output.",
                ),
            ],
        )

    @classmethod
    def execute(
        cls,
        model,
        vae,
        image: torch.Tensor,
        degradations: Degradations,
        adapter: ModelHandle,
        positive,
        mode: str,
        steps: int,
        inversion_steps: int,
        strength: float,
        cfg: float,
        adapter_2: Optional[ModelHandle] = None,
        adapter_3: Optional[ModelHandle] = None,
        adapter_4: Optional[ModelHandle] = None,
        negative=None,
        tile_size: int = 0,
        tile_overlap: int = DEFAULT_TILE_OVERLAP,
    ) -> io.NodeOutput:
        check_tiling(tile_size, tile_overlap)
        images = image_to_batch(image, "image")
        found = check_degradations(degradations, images.shape[0])
        adapters = [a for a in (adapter, adapter_2, adapter_3, adapter_4) if a is not None]
        decisions = decisions_for(found, adapters, mode)
        negative = negative if negative is not None else zeroed(positive)
        settings = (positive, negative, steps, inversion_steps, cfg, tile_size, tile_overlap)
        out: List[Optional[torch.Tensor]] = [None] * images.shape[0]
        for indices in groups(decisions).values():
            interrupt_check()
            restored = restore_decided(model, vae, images[indices], adapters, decisions[indices[0]], strength, settings)
            for k, i in enumerate(indices):
                out[i] = restored[k]
        records = [dict(d.to_json(), image=i) for i, d in enumerate(decisions)]
        text = "\n".join(f"image {i + 1}: {d.reason}" for i, d in enumerate(decisions))
        return io.NodeOutput(torch.stack(out), json.dumps(records), ui=ui.PreviewText(text))


def restore_decided(
    model, vae, images: torch.Tensor, adapters: Sequence[ModelHandle], decision: AutoDecision, strength: float, settings
) -> torch.Tensor:
    """Images ``[B, 3, H, W]`` that share ``decision`` → IMAGE ``[B, H, W, 3]``: unchanged, one composite restoration,
    or one restoration per adapter in order. ``settings``: :func:`.sampling.restore`'s arguments after ``guide``."""
    if decision.unchanged:
        return batch_to_image(images)
    windows = {i: window_of(adapters[i]) for i, _ in decision.uses}

    def guide_with(uses: Sequence[Tuple[int, float]]):
        def guide(padded: torch.Tensor):
            guided = model
            for i, weight in uses:
                guidance = run_adapter(adapters[i], adapters[i].module.fdi, padded)
                guided = apply_guidance(guided, guidance, strength * weight, *windows[i])
            return guided

        return guide

    if decision.mode == "composite":
        return restore(model, vae, images, guide_with(decision.uses), *settings)
    x = images
    for use in decision.uses:
        interrupt_check()
        restored = restore(model, vae, x, guide_with([use]), *settings)
        x = image_to_batch(restored, "image")
    return restored


def window_of(adapter: ModelHandle) -> Tuple[float, float]:
    """The window ``adapter`` guides: the one its file records (a file that records none: the paper's first third)."""
    return node_window(adapter.module, WINDOW_MODES[0], 0.0, GUIDANCE_END, NODE_NAME)


NODES = [FDIRestoreAuto]
