"""Nodes of the degradation classifier: load one, and detect which degradations an image has.

``FDIDetectDegradations`` gives the per-label probabilities as ``FDI_DEGRADATIONS`` (read by 'FDI Restore (auto)',
:mod:`.auto_nodes`) and as JSON text, and shows them on the node. The classifier itself is a small MLP that the
library runs on the CPU (:meth:`fdi.classifier.DegradationClassifier.probabilities`): it is not handed to ComfyUI's
model management (docs/design.md, "Automatic restoration (restore --auto)", "In ComfyUI"); the Q-Former that makes its
input tokens is, as everywhere in the pack.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch
from comfy_api.latest import io, ui

from ..fdi.classifier import DegradationClassifier
from ..fdi.errors import FDIError
from .common import (
    CATEGORY,
    Blip2QFormer,
    FDIClassifierType,
    FDIDegradationsType,
    ModelHandle,
    classifier_files,
    image_to_batch,
    model_file,
    progress_callback,
)


@dataclass(frozen=True)
class Degradations:
    """The ``FDI_DEGRADATIONS`` value: what a classifier found in each image of a batch.

    ``probabilities``: one ``{label: probability in 0..1}`` per image, in batch order (the classifier's labels, in its
    order); ``thresholds``: ``{label: threshold}`` of that classifier; ``detected``: per image, the labels at or over
    their threshold, most probable first (:meth:`fdi.classifier.DegradationClassifier.detected`)."""

    probabilities: Tuple[Dict[str, float], ...]
    thresholds: Dict[str, float]
    detected: Tuple[Tuple[str, ...], ...]

    @property
    def labels(self) -> Tuple[str, ...]:
        """The classifier's labels, in its order."""
        return tuple(self.thresholds)

    @classmethod
    def of(cls, clf: DegradationClassifier, probabilities: List[Dict[str, float]]) -> "Degradations":
        return cls(tuple(probabilities), clf.threshold_map(), tuple(tuple(clf.detected(p)) for p in probabilities))

    def to_json(self) -> list:
        """Per image: ``{"image": i, "probabilities": …, "thresholds": …, "detected": […]}`` (``i`` from 0)."""
        return [
            {"image": i, "probabilities": dict(p), "thresholds": dict(self.thresholds), "detected": list(d)}
            for i, (p, d) in enumerate(zip(self.probabilities, self.detected))
        ]

    def summary(self) -> str:
        """The text the node shows: one line per image, each label's probability against its threshold."""
        lines = []
        for i, (p, found) in enumerate(zip(self.probabilities, self.detected)):
            t = self.thresholds
            scores = ", ".join(f"{k} {p[k]:.2f} {'≥' if k in found else '<'} {t[k]:.2f}" for k in p)
            lines.append(f"image {i + 1}: {scores} → detected: {', '.join(found) or 'nothing'}")
        return "\n".join(lines)


def check_classifier(classifier: object) -> DegradationClassifier:
    """``classifier`` if it is a :class:`DegradationClassifier`, else :class:`FDIError` naming what is connected."""
    if not isinstance(classifier, DegradationClassifier):
        raise FDIError(
            f"the 'classifier' input is a {type(classifier).__name__}; connect 'Load Degradation Classifier (FDI)'"
        )
    return classifier


class FDIClassifierLoader(io.ComfyNode):
    """Load a degradation classifier (``python -m fdi classify train``) from models/fdi_classifiers."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FDIClassifierLoader",
            display_name="Load Degradation Classifier (FDI)",
            category=f"{CATEGORY}/loaders",
            description=(
                "Loads a degradation classifier (*.clf.safetensors, made by 'python -m fdi classify train') from "
                "models/fdi_classifiers: a small MLP over the Q-Former tokens of a photo that says, per label "
                "(haze, rainstreak, noise…), how likely the photo has it, with a threshold per label chosen when it "
                "was trained. It reads the tokens of the BLIP-2 it was trained with, and no other."
            ),
            inputs=[
                io.Combo.Input(
                    "classifier_name",
                    options=classifier_files(),
                    tooltip="Classifier file in models/fdi_classifiers (or an 'fdi_classifiers' path of "
                    "extra_model_paths.yaml).",
                ),
            ],
            outputs=[
                FDIClassifierType.Output(
                    display_name="classifier", tooltip="The classifier (labels, thresholds, encoder it was trained on)."
                )
            ],
        )

    @classmethod
    def execute(cls, classifier_name: str) -> io.NodeOutput:
        path = model_file("fdi_classifiers", classifier_name, "degradation classifier")
        return io.NodeOutput(DegradationClassifier.load(path))


class FDIDetectDegradations(io.ComfyNode):
    """Per image of a batch: each label's probability and whether it reaches its threshold."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FDIDetectDegradations",
            display_name="Detect Degradations (FDI)",
            category=f"{CATEGORY}/classifier",
            description=(
                "Encodes each image with the Q-Former and runs the degradation classifier on its tokens: per image, "
                "the probability of every label and whether it reaches the label's threshold (detected). The node "
                "shows them; 'degradations' feeds 'FDI Restore (auto)', which picks and weighs the adapters from "
                "them; 'scores' is the same as JSON text. The same numbers as 'python -m fdi classify predict' on the "
                "same image file."
            ),
            inputs=[
                Blip2QFormer.Input(
                    "qformer", tooltip="The BLIP-2 Q-Former the classifier was trained with (another is refused)."
                ),
                FDIClassifierType.Input("classifier", tooltip="From 'Load Degradation Classifier (FDI)'."),
                io.Image.Input("image", tooltip="The photo(s) to examine; each image of a batch is examined alone."),
            ],
            outputs=[
                FDIDegradationsType.Output(
                    display_name="degradations",
                    tooltip="Per image, each label's probability, with the classifier's thresholds: for "
                    "'FDI Restore (auto)'.",
                ),
                io.String.Output(
                    display_name="scores",
                    tooltip="The same as JSON: per image, probabilities, thresholds and the detected labels.",
                ),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, qformer: ModelHandle, classifier: DegradationClassifier, image: torch.Tensor) -> io.NodeOutput:
        clf = check_classifier(classifier)
        clf.check_encoder(qformer.module.fingerprint)  # before the Q-Former is loaded
        images = image_to_batch(image, "image")
        progress = progress_callback(images.shape[0])
        progress(0, images.shape[0])
        encoder = qformer.loaded()
        probabilities = []
        for i in range(images.shape[0]):  # one at a time, as 'classify predict' and 'restore --auto' do
            probabilities += clf.predict(encoder, images[i : i + 1])
            progress(i + 1, images.shape[0])
        found = Degradations.of(clf, probabilities)
        return io.NodeOutput(found, json.dumps(found.to_json()), ui=ui.PreviewText(found.summary()))


NODES = [FDIClassifierLoader, FDIDetectDegradations]
