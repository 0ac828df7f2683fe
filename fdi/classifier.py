"""The degradation classifier: which degradations an input photo has, from its Q-Former tokens alone.

A small MLP over the pooled Q-Former tokens of the input image (no clean reference), one sigmoid per
label (multi-label: a photo may be hazy *and* noisy), with one decision threshold per label chosen on a
validation split when it was trained (:mod:`fdi.classifier_train`). Why this shape: docs/design.md,
"Degradation classifier"; how to train one and what it measured: docs/classifier.md.

File format (``*.clf.safetensors``):

* tensors ``mlp.*`` (the layers), ``feature_mean`` / ``feature_std`` ``[F]`` (the standardisation of the pooled
  features, from the training split), ``thresholds`` ``[L]`` float32 in (0, 1);
* metadata ``format="fdi-classifier"``, ``format_version="1"``, ``labels`` (JSON list, the output columns),
  ``encoder`` (fingerprint), ``config`` (JSON: pooling, hidden width, token shape, training settings) and
  ``validation`` (JSON: per-label validation AUC and sizes; informational).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .errors import FDIError
from .files import PathLike, check_file_format, check_output_path, load_safetensors, save_safetensors
from .instruction import same_encoder

CLASSIFIER_FORMAT = "fdi-classifier"
CLASSIFIER_FORMAT_VERSION = 1
CLASSIFIER_SUFFIX = ".clf.safetensors"

#: ``fdi degrade`` effect -> classifier label: the data sets' task names (:data:`fdi.datasets.core.TASKS`), so a
#: classifier trained on a degrade folder and one trained on a data set speak of the same things. Poisson
#: (shot) noise is noise to a restorer; lowlight's own sensor noise stays part of lowlight.
DEGRADE_LABELS: Dict[str, str] = {
    "haze": "haze",
    "rain": "rainstreak",
    "noise": "noise",
    "poisson": "noise",
    "jpeg": "jpeg",
    "lowlight": "lowlight",
    "motion_blur": "motion-blur",
    "defocus": "defocus-blur",
}

#: how the tokens ``[B, T, D]`` become one vector: ``mean`` over tokens ``[B, D]``, ``flat`` ``[B, T·D]``,
#: ``mean+flat`` both (docs/design.md, "Degradation classifier")
POOLINGS = ("mean", "flat", "mean+flat")

_LABEL_RE = re.compile(r"[a-z0-9][a-z0-9_.-]*")


def normalize_label(label: str) -> str:
    """A label as the classifier stores it: stripped, lower-case; :class:`FDIError` unless it is a plain name."""
    name = str(label).strip().lower()
    if not _LABEL_RE.fullmatch(name):
        raise FDIError(
            f"label {label!r} is not a plain name; use letters, digits, '-', '_' or '.' (e.g. haze, rainstreak, "
            "motion-blur); join several labels of one folder with '+' (haze+noise=DIR)"
        )
    return name


def pool_tokens(tokens: torch.Tensor, pooling: str) -> torch.Tensor:
    """Q-Former tokens ``[B, T, D]`` → pooled features ``[B, F]`` float32 (``F`` = D, T·D or D + T·D)."""
    if tokens.ndim != 3:
        raise FDIError(f"the classifier reads Q-Former tokens [B, T, D], got {tuple(tokens.shape)}")
    t = tokens.float()
    parts = {"mean": [t.mean(1)], "flat": [t.flatten(1)], "mean+flat": [t.mean(1), t.flatten(1)]}.get(pooling)
    if parts is None:
        raise FDIError(f"unknown pooling {pooling!r}; choose from: {', '.join(POOLINGS)}")
    return torch.cat(parts, dim=1)


def pooled_width(num_tokens: int, width: int, pooling: str) -> int:
    """``F``: the width of :func:`pool_tokens`'s output for tokens ``[B, num_tokens, width]``."""
    return {"mean": width, "flat": num_tokens * width, "mean+flat": width + num_tokens * width}[pooling]


def build_mlp(in_features: int, hidden: int, outputs: int, dropout: float = 0.0) -> nn.Sequential:
    """Linear → GELU → dropout → linear (``hidden`` > 0), or one linear layer (``hidden`` = 0: logistic regression)."""
    if hidden <= 0:
        return nn.Sequential(nn.Linear(in_features, outputs))
    return nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, outputs))


class DegradationClassifier(nn.Module):
    """Multi-label degradation classifier over Q-Former tokens.

    ``labels`` name the output columns; ``thresholds`` ``[L]`` the per-label decision thresholds; ``encoder``
    the fingerprint of the Q-Former its features came from; ``config`` its pooling, hidden width, token shape
    ``num_tokens``/``width`` and how it was trained. ``feature_mean``/``feature_std`` standardise the pooled features.
    """

    def __init__(
        self,
        labels: Sequence[str],
        encoder: str,
        config: Dict[str, object],
        thresholds: Optional[torch.Tensor] = None,
        validation: Optional[Dict[str, object]] = None,
    ):
        super().__init__()
        self.labels: Tuple[str, ...] = tuple(normalize_label(x) for x in labels)
        if not self.labels or len(set(self.labels)) != len(self.labels):
            raise FDIError(f"a classifier needs one or more distinct labels, got {list(labels)}")
        self.encoder = str(encoder)
        self.config = dict(config)
        self.validation = dict(validation or {})
        n_in = pooled_width(int(config["num_tokens"]), int(config["width"]), str(config["pooling"]))
        self.mlp = build_mlp(n_in, int(config["hidden"]), len(self.labels), float(config.get("dropout", 0.0)))
        self.register_buffer("feature_mean", torch.zeros(n_in))
        self.register_buffer("feature_std", torch.ones(n_in))
        th = torch.full((len(self.labels),), 0.5) if thresholds is None else thresholds.detach().float().cpu()
        self.register_buffer("thresholds", th.clone())
        self.requires_grad_(False)
        self.eval()

    # ------------------------------------------------------------------ inference
    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Pooled features ``[B, F]`` → logits ``[B, L]`` (standardised with the training split's statistics)."""
        return self.mlp((features - self.feature_mean) / self.feature_std)

    def check_encoder(self, fingerprint: str) -> None:
        """:class:`FDIError` naming both encoders unless ``fingerprint`` is the encoder it was trained on."""
        if not same_encoder(self.encoder, fingerprint):
            raise FDIError(
                f"the classifier was trained on encoder {self.encoder} but the BLIP-2 given is {fingerprint}; "
                "use the BLIP-2 it was trained with, or train a classifier on this one (fdi classify train)"
            )

    @torch.no_grad()
    def probabilities(self, tokens: torch.Tensor) -> torch.Tensor:
        """Q-Former tokens ``[B, T, D]`` → per-label probabilities ``[B, L]`` in 0..1 (float32, on the CPU)."""
        t, d = int(self.config["num_tokens"]), int(self.config["width"])
        if tokens.ndim != 3 or tuple(tokens.shape[1:]) != (t, d):
            raise FDIError(
                f"the classifier reads Q-Former tokens [B, {t}, {d}], got {tuple(tokens.shape)}; "
                "use the BLIP-2 it was trained with"
            )
        return torch.sigmoid(self.logits(pool_tokens(tokens.detach().cpu(), str(self.config["pooling"]))))

    def predict(self, encoder, images: Union[torch.Tensor, Sequence[torch.Tensor]]) -> List[Dict[str, float]]:
        """One ``{label: probability}`` per image; ``images`` a list of ``[3, H, W]`` in 0..1 or a ``[B, 3, H, W]``
        batch; ``encoder`` a :class:`~fdi.encoder.QFormerEncoder`, checked against this classifier first."""
        self.check_encoder(encoder.fingerprint)
        probs = self.probabilities(encoder.encode(images))
        return [{lab: float(p[i]) for i, lab in enumerate(self.labels)} for p in probs]

    def detected(self, probs: Dict[str, float]) -> List[str]:
        """The labels whose probability reaches their threshold, most probable first, ties by label name
        (:func:`fdi.auto.detected_labels`, the order ``restore --auto`` uses)."""
        from .auto import detected_labels

        return detected_labels({lab: float(probs[lab]) for lab in self.labels}, self.threshold_map())

    def threshold_map(self) -> Dict[str, float]:
        """``{label: threshold}``."""
        return {lab: float(self.thresholds[i]) for i, lab in enumerate(self.labels)}

    def describe(self) -> str:
        """One line for logs and UIs."""
        return (
            f"degradation classifier ({', '.join(self.labels)}): {self.config['pooling']} pooling, "
            f"hidden {self.config['hidden']}, encoder {self.encoder}"
        )

    # ------------------------------------------------------------------ file
    def save(self, path: PathLike) -> None:
        """Write the classifier (safetensors + metadata) atomically; the name must end with ``.clf.safetensors``."""
        p = check_output_path(path, suffix=CLASSIFIER_SUFFIX)
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in self.state_dict().items()}
        meta = {
            "format": CLASSIFIER_FORMAT,
            "format_version": str(CLASSIFIER_FORMAT_VERSION),
            "labels": json.dumps(list(self.labels)),
            "encoder": self.encoder,
            "config": json.dumps(self.config, sort_keys=True),
            "validation": json.dumps(self.validation, sort_keys=True),
        }
        save_safetensors(tensors, p, meta)

    @classmethod
    def load(cls, path: PathLike) -> "DegradationClassifier":
        """Read a classifier file; :class:`FDIError` for a missing, corrupt or other kind of file."""
        p = Path(path)
        if not p.exists():
            raise FDIError(
                f"classifier {str(p)!r} does not exist; check the path or train one (python -m fdi classify train)"
            )
        tensors, meta = load_safetensors(p, what="classifier")
        check_file_format(
            meta,
            CLASSIFIER_FORMAT,
            CLASSIFIER_FORMAT_VERSION,
            p.name,
            "FDI degradation classifier",
            "python -m fdi classify train",
            "Train it again with this version (python -m fdi classify train).",
        )
        bad = f"classifier {p.name!r} is corrupt"
        try:
            labels = json.loads(meta["labels"])
            config = json.loads(meta["config"])
            validation = json.loads(meta.get("validation", "{}"))
            clf = cls(labels, meta["encoder"], config)
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
            raise FDIError(f"{bad} ({type(exc).__name__}: {exc}); train it again") from None
        clf.validation = validation if isinstance(validation, dict) else {}
        expected = {k: tuple(v.shape) for k, v in clf.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in tensors.items()}
        if expected != found:
            raise FDIError(f"{bad} (its tensors {sorted(found)} do not match its config); train it again")
        clf.load_state_dict(tensors, strict=True)
        th = clf.thresholds
        if not (torch.isfinite(th).all() and ((th > 0) & (th < 1)).all()):
            raise FDIError(f"{bad} (thresholds {th.tolist()} are not in (0, 1)); train it again")
        return clf


__all__ = [
    "CLASSIFIER_FORMAT",
    "CLASSIFIER_SUFFIX",
    "DEGRADE_LABELS",
    "POOLINGS",
    "DegradationClassifier",
    "build_mlp",
    "normalize_label",
    "pool_tokens",
    "pooled_width",
]
