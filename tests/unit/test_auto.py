"""fdi.auto: matching classifier labels to adapters and the automatic decision (no model)."""

import json

import pytest

from fdi.auto import AutoDecision, decide, match_adapters, normalise_label
from fdi.errors import FDIError

PROBS = {"haze": 0.9, "noise": 0.3, "rainstreak": 0.7}
THRESH = {"haze": 0.5, "noise": 0.4, "rainstreak": 0.6}


def test_normalise_label():
    assert normalise_label("  Haze\t") == "haze"
    assert normalise_label("RainStreak") == "rainstreak"


def test_match_adapters_exact_after_normalising():
    assert match_adapters(["haze", "noise", "rainstreak"], [" Noise", "HAZE", "derain"]) == {"noise": 0, "haze": 1}
    assert match_adapters(("Haze",), ["haze "]) == {"haze": 0}


def test_match_adapters_no_prefix_or_substring_match():
    with pytest.raises(FDIError) as e:
        match_adapters(["rain", "haze"], ["derain", "dehaze", ""])
    msg = str(e.value)
    assert "\n" not in msg
    assert "classifier: rain, haze" in msg
    assert "adapters: 'derain', 'dehaze', ''" in msg


def test_match_adapters_two_adapters_one_label_refused():
    with pytest.raises(FDIError, match="adapters 1 and 3 both carry label 'haze'"):
        match_adapters(["haze", "noise"], ["haze", "noise", "Haze"])


def test_composite_weights_are_the_probabilities_most_probable_first():
    d = decide(PROBS, THRESH, ["noise", "rainstreak", "haze"], "composite")
    assert d.detected == ("haze", "rainstreak")
    assert d.uses == [(2, 0.9), (1, 0.7)]  # not renormalised: 0.9 and 0.7, not 0.5625 and 0.4375
    assert not d.unchanged
    assert d.reason == (
        "detected haze 0.90, rainstreak 0.70: composite restoration with haze, rainstreak (weighted by probability)"
    )


def test_progressive_order_most_probable_first_weight_one():
    d = decide({"haze": 0.55, "noise": 0.95, "rainstreak": 0.8}, THRESH, ["haze", "noise", "rainstreak"], "progressive")
    assert d.uses == [(1, 1.0), (2, 1.0), (0, 1.0)]
    assert d.detected == ("noise", "rainstreak", "haze")
    assert "in this order, most probable first" in d.reason


def test_threshold_is_inclusive_and_ties_break_by_label():
    d = decide({"b": 0.6, "a": 0.6, "c": 0.2}, {"a": 0.6, "b": 0.6, "c": 0.3}, ["b", "a", "c"], "progressive")
    assert d.detected == ("a", "b")
    assert d.uses == [(1, 1.0), (0, 1.0)]


def test_nothing_detected_writes_the_input_unchanged():
    d = decide({"haze": 0.2, "noise": 0.35}, {"haze": 0.5, "noise": 0.4}, ["haze", "noise"], "composite")
    assert d.uses == [] and d.unchanged and d.detected == ()
    assert d.reason == "no degradation detected (highest: noise 0.35, under its threshold): input written unchanged"


def test_detected_without_adapter_is_recorded():
    d = decide(PROBS, THRESH, ["noise", "rainstreak"], "composite")
    assert d.uses == [(1, 0.7)]
    assert d.missing == ("haze",)
    assert "no adapter for haze" in d.reason
    only_missing = decide({"haze": 0.9, "noise": 0.1}, {"haze": 0.5, "noise": 0.5}, ["noise"], "composite")
    assert only_missing.unchanged
    assert only_missing.reason == "detected haze 0.90; no adapter for haze: input written unchanged"


def test_adapters_without_classifier_label_never_picked_and_named():
    d = decide(PROBS, THRESH, ["Haze", "derain", ""], "composite")
    assert d.uses == [(0, 0.9)]
    assert d.not_picked == ("derain", "(no label)")
    assert d.reason.endswith("; never auto-picked (label not the classifier's): derain, (no label)")


def test_labels_normalised_in_probs_and_thresholds():
    d = decide({"Haze": 0.8}, {" haze": 0.5}, ["HAZE"], "composite")
    assert d.uses == [(0, 0.8)] and d.probabilities == {"haze": 0.8}


def test_bad_inputs_refused():
    with pytest.raises(FDIError, match="must name the same labels"):
        decide({"haze": 0.5}, {"noise": 0.5}, ["haze"], "composite")
    with pytest.raises(FDIError, match="probability of 'haze' is 1.5, outside 0..1"):
        decide({"haze": 1.5}, {"haze": 0.5}, ["haze"], "composite")
    with pytest.raises(FDIError, match="threshold of 'haze' is nan"):
        decide({"haze": 0.5}, {"haze": float("nan")}, ["haze"], "composite")
    with pytest.raises(FDIError, match="mode 'sequential' is not one of composite, progressive"):
        decide({"haze": 0.5}, {"haze": 0.5}, ["haze"], "sequential")
    with pytest.raises(FDIError, match="no adapter's label matches"):
        decide({"haze": 0.5}, {"haze": 0.5}, ["noise"], "composite")


def test_given_match_is_used():
    d = decide(PROBS, THRESH, ["x", "y"], "composite", matched={"haze": 1})
    assert d.uses == [(1, 0.9)]


def test_to_json_round_trips_and_names_everything():
    d = decide(PROBS, THRESH, ["rainstreak", "haze", "dehaze"], "progressive")
    j = json.loads(json.dumps(d.to_json()))
    assert j == {
        "mode": "progressive",
        "probabilities": {"haze": 0.9, "noise": 0.3, "rainstreak": 0.7},
        "thresholds": {"haze": 0.5, "noise": 0.4, "rainstreak": 0.6},
        "detected": ["haze", "rainstreak"],
        "adapters": [
            {"order": 1, "index": 1, "label": "haze", "weight": 1.0},
            {"order": 2, "index": 0, "label": "rainstreak", "weight": 1.0},
        ],
        "unchanged": False,
        "not_picked": ["dehaze"],
        "detected_without_adapter": [],
        "reason": d.reason,
    }
    assert "\n" not in d.reason


def test_key_groups_equal_decisions():
    a = decide(PROBS, THRESH, ["haze", "rainstreak"], "composite")
    b = decide(dict(PROBS, noise=0.1), THRESH, ["haze", "rainstreak"], "composite")
    c = decide(dict(PROBS, haze=0.8), THRESH, ["haze", "rainstreak"], "composite")
    assert a.key() == b.key() != c.key()
    assert isinstance(a, AutoDecision)


def test_save_image_writes_png_text_chunks_and_refuses_them_elsewhere(tmp_path):
    import torch
    from PIL import Image

    from fdi.images import save_image

    img = torch.rand(3, 8, 12, generator=torch.Generator().manual_seed(0))
    record = json.dumps(decide(PROBS, THRESH, ["haze"], "composite").to_json())
    save_image(img, tmp_path / "a.png", text={"fdi_decision": record})
    with Image.open(tmp_path / "a.png") as im:
        assert im.text == {"fdi_decision": record} and im.size == (12, 8)
    with pytest.raises(ValueError, match="text chunks need a .png file, got 'a.jpg'"):
        save_image(img, tmp_path / "a.jpg", text={"k": "v"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]
