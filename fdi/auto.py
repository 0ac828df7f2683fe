"""Automatic restoration: from a degradation classifier's probabilities to the adapters a restoration uses.

Pure functions, no model: :func:`match_adapters` pairs the classifier's labels with the adapters' labels, and
:func:`decide` turns one image's probabilities into an :class:`AutoDecision` (which adapters, with which weights,
in which order). ``python -m fdi restore --auto`` and the ComfyUI nodes both go through :func:`decide`.
The rules (docs/design.md, "Automatic restoration (restore --auto)"):

* a label is detected when its probability is at least its threshold; detected labels are ordered most probable
  first (ties: by label, alphabetically);
* ``composite``: each detected label's adapter, weight = the label's probability as given (not renormalised);
* ``progressive``: the same adapters in that order (most probable first), each at weight 1;
* nothing detected (or no adapter for what is detected): no adapter; the input is written unchanged
  (:attr:`AutoDecision.unchanged`), the reason says so;
* an adapter whose label is not one of the classifier's is never picked automatically; the decision names it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .errors import FDIError
from .restoration import MODES


def normalise_label(label: str) -> str:
    """The form labels are compared in: stripped, lower-case (``" Haze "`` → ``"haze"``)."""
    return label.strip().lower()


def match_adapters(classifier_labels: Sequence[str], adapter_labels: Sequence[str]) -> Dict[str, int]:
    """``{classifier label: adapter index}`` for each classifier label an adapter carries (exact match after
    :func:`normalise_label`; keys in the normalised form). Adapters whose label is not a classifier label are left
    out: they are never picked automatically.

    Raises :class:`FDIError` naming both lists when no adapter matches any classifier label, and when two adapters
    carry the same label (which one to use would be a guess).
    """
    wanted = [normalise_label(c) for c in classifier_labels]
    matched: Dict[str, int] = {}
    for i, raw in enumerate(adapter_labels):
        label = normalise_label(raw)
        if label not in wanted:
            continue
        if label in matched:
            raise FDIError(
                f"adapters {matched[label] + 1} and {i + 1} both carry label {label!r}; "
                "give one adapter per degradation label"
            )
        matched[label] = i
    if not matched:
        shown = ", ".join(repr(normalise_label(a)) for a in adapter_labels) or "none"
        raise FDIError(
            f"no adapter's label matches a classifier label (classifier: {', '.join(wanted) or 'none'}; "
            f"adapters: {shown}); give adapters trained for the classifier's labels (their label is set when "
            "they are trained) or a classifier trained on the adapters' labels"
        )
    return matched


@dataclass(frozen=True)
class AutoDecision:
    """One image's automatic decision.

    Attributes:
        mode: ``composite`` or ``progressive``.
        probabilities: ``{label: probability in 0..1}``, the classifier's labels in its order.
        thresholds: ``{label: threshold}``, same labels.
        detected: labels with probability ≥ threshold, most probable first.
        adapter_labels: every adapter's label (normalised), in the order given.
        uses: ``[(adapter index, weight)]`` in application order; empty: the input is written unchanged.
        not_picked: adapter labels that no classifier label matches (never picked automatically).
        missing: detected labels no adapter carries.
        reason: one line saying why.
    """

    mode: str
    probabilities: Dict[str, float]
    thresholds: Dict[str, float]
    detected: Tuple[str, ...]
    adapter_labels: Tuple[str, ...]
    uses: List[Tuple[int, float]] = field(default_factory=list)
    not_picked: Tuple[str, ...] = ()
    missing: Tuple[str, ...] = ()
    reason: str = ""

    @property
    def unchanged(self) -> bool:
        """Whether no adapter is used: the output is the input, unchanged."""
        return not self.uses

    def key(self) -> Tuple[str, Tuple[Tuple[int, float], ...]]:
        """What restorations of one batch must share: mode and uses (images deciding differently restore apart)."""
        return self.mode, tuple(self.uses)

    def to_json(self) -> dict:
        """A JSON-ready dict: probabilities, thresholds, detected labels, the chosen adapters (label, index,
        weight, order), whether the input is written unchanged, what was not picked, and the reason."""
        return {
            "mode": self.mode,
            "probabilities": dict(self.probabilities),
            "thresholds": dict(self.thresholds),
            "detected": list(self.detected),
            "adapters": [
                {"order": k + 1, "index": i, "label": self.adapter_labels[i], "weight": w}
                for k, (i, w) in enumerate(self.uses)
            ],
            "unchanged": self.unchanged,
            "not_picked": list(self.not_picked),
            "detected_without_adapter": list(self.missing),
            "reason": self.reason,
        }


def detected_labels(probs: Mapping[str, float], thresholds: Mapping[str, float]) -> List[str]:
    """The labels whose probability reaches their threshold, most probable first, ties by label name (the one order
    of the detection node, ``classify predict`` and :func:`decide`)."""
    return sorted((k for k in probs if float(probs[k]) >= float(thresholds[k])), key=lambda k: (-float(probs[k]), k))


def _checked(probs: Mapping[str, float], thresholds: Mapping[str, float]) -> Tuple[Dict, Dict]:
    """Normalised copies of ``probs`` and ``thresholds``; :class:`FDIError` for different labels or values out of
    range."""
    p = {normalise_label(k): float(v) for k, v in probs.items()}
    t = {normalise_label(k): float(v) for k, v in thresholds.items()}
    if not p or set(p) != set(t):
        raise FDIError(
            f"probabilities ({', '.join(p) or 'none'}) and thresholds ({', '.join(t) or 'none'}) must name the same "
            "labels; use the thresholds of the classifier that made the probabilities"
        )
    for what, values in (("probability", p), ("threshold", t)):
        for k, v in values.items():
            if not (math.isfinite(v) and 0.0 <= v <= 1.0):
                raise FDIError(f"{what} of {k!r} is {v}, outside 0..1; the classifier's output is broken, retrain it")
    return p, t


def _reason(
    mode: str, detected: Sequence[str], p: Dict[str, float], chosen: Sequence[str], missing: Sequence[str]
) -> str:
    """The decision's one line (without what was not picked: :func:`decide` adds that)."""

    def listed(labels: Sequence[str]) -> str:
        return ", ".join(f"{k} {p[k]:.2f}" for k in labels)

    if not detected:
        best = max(p, key=lambda k: (p[k], k))
        return f"no degradation detected (highest: {best} {p[best]:.2f}, under its threshold): input written unchanged"
    gap = f"; no adapter for {', '.join(missing)}" if missing else ""
    if not chosen:
        return f"detected {listed(detected)}{gap}: input written unchanged"
    how = "weighted by probability" if mode == "composite" else "in this order, most probable first"
    return f"detected {listed(detected)}{gap}: {mode} restoration with {', '.join(chosen)} ({how})"


def decide(
    probs: Mapping[str, float],
    thresholds: Mapping[str, float],
    adapter_labels: Sequence[str],
    mode: str,
    matched: Optional[Dict[str, int]] = None,
) -> AutoDecision:
    """The adapters to restore one image with, from its ``probs`` (``{label: probability}``) and the classifier's
    ``thresholds``; ``adapter_labels`` are the adapters' labels in the order given (indices in ``uses`` point
    there); ``matched`` is :func:`match_adapters`' result when already computed. Rules: module doc."""
    if mode not in MODES:
        raise FDIError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    p, t = _checked(probs, thresholds)
    if matched is None:
        matched = match_adapters(list(p), adapter_labels)
    detected = detected_labels(p, t)
    chosen = [k for k in detected if k in matched]
    missing = tuple(k for k in detected if k not in matched)
    uses = [(matched[k], p[k] if mode == "composite" else 1.0) for k in chosen]
    labels = tuple(normalise_label(a) for a in adapter_labels)
    not_picked = tuple(a or "(no label)" for i, a in enumerate(labels) if i not in matched.values())
    reason = _reason(mode, detected, p, chosen, missing)
    if not_picked:
        reason += f"; never auto-picked (label not the classifier's): {', '.join(not_picked)}"
    return AutoDecision(
        mode=mode,
        probabilities=p,
        thresholds=t,
        detected=tuple(detected),
        adapter_labels=labels,
        uses=uses,
        not_picked=not_picked,
        missing=missing,
        reason=reason,
    )
