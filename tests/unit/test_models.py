"""fdi.models: the shipped SD 2.1 configs and tokenizer, single-file family checks, offline loading."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fdi.errors import FDIError
from fdi.models import (
    CONFIG_DIR,
    V_PRED_PROBE,
    clip_vocab_and_merges,
    family_config_dir,
    inspect_single_file,
    load_sd,
    sd2_tokenizer,
)
from tests.sd21_fixture import cache_dir

CROSS_K = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"


def test_vocab_is_clips_and_the_tokenizer_pads_like_sd2():
    vocab, merges = clip_vocab_and_merges()
    assert len(vocab) == 49408 and len(merges) == 48894
    assert (
        vocab["!"] == 0
        and vocab["a</w>"] == 320
        and vocab["<|startoftext|>"] == 49406
        and vocab["<|endoftext|>"] == 49407
    )
    comfy = os.environ.get("COMFYUI_DIR")
    ref = Path(comfy or "/nonexistent") / "comfy" / "sd1_tokenizer" / "vocab.json"
    if ref.is_file():  # the full table, against the copy ComfyUI ships
        assert vocab == json.loads(ref.read_text(encoding="utf-8"))
    tok = sd2_tokenizer()
    ids = tok("a photo of a cat", padding="max_length", max_length=77, truncation=True).input_ids
    assert ids[:7] == [49406, 320, 1125, 539, 320, 2368, 49407] and ids[7:] == [0] * 70
    assert tok.model_max_length == 77


@pytest.mark.parametrize("family, pred, size", [("sd2.1-base", "epsilon", 64), ("sd2.1-v", "v_prediction", 96)])
def test_shipped_configs(family, pred, size):
    d = family_config_dir(pred)
    assert d == CONFIG_DIR / family
    assert json.loads((d / "scheduler" / "scheduler_config.json").read_text())["prediction_type"] == pred
    unet = json.loads((d / "unet" / "config.json").read_text())
    assert unet["sample_size"] == size and unet["cross_attention_dim"] == 1024 and unet["use_linear_projection"]
    te = json.loads((d / "text_encoder" / "config.json").read_text())
    assert te["num_hidden_layers"] == 23 and te["hidden_size"] == 1024


def _header_file(path: Path, tensors: dict) -> Path:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def test_single_file_family_checks(tmp_path):
    sd15 = _header_file(tmp_path / "sd15.safetensors", {CROSS_K: torch.zeros(320, 768)})
    with pytest.raises(FDIError, match="SD 1.x checkpoint, not SD 2.x"):
        inspect_single_file(sd15)
    xl = _header_file(
        tmp_path / "xl.safetensors",
        {"conditioner.embedders.1.model.ln_final.weight": torch.zeros(4), CROSS_K: torch.zeros(640, 2048)},
    )
    with pytest.raises(FDIError, match="SDXL"):
        inspect_single_file(xl)
    other = _header_file(tmp_path / "other.safetensors", {"foo": torch.zeros(1)})
    with pytest.raises(FDIError, match="not a Stable Diffusion UNet checkpoint"):
        inspect_single_file(other)
    inpaint = _header_file(
        tmp_path / "inp.safetensors",
        {CROSS_K: torch.zeros(320, 1024), "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 9, 3, 3)},
    )
    with pytest.raises(FDIError, match="9 latent channels"):
        inspect_single_file(inpaint)
    # the v-prediction probe responds to the weights: std above 0.09 → v, below → epsilon, absent → unknown
    g = torch.Generator().manual_seed(0)
    wide = _header_file(
        tmp_path / "v.safetensors", {CROSS_K: torch.zeros(320, 1024), V_PRED_PROBE: torch.randn(320, generator=g) * 0.2}
    )
    narrow = _header_file(
        tmp_path / "e.safetensors",
        {CROSS_K: torch.zeros(320, 1024), V_PRED_PROBE: torch.randn(320, generator=g) * 0.02},
    )
    unknown = _header_file(tmp_path / "u.safetensors", {CROSS_K: torch.zeros(320, 1024)})
    assert inspect_single_file(wide)["v_prediction"] is True
    assert inspect_single_file(narrow)["v_prediction"] is False
    assert inspect_single_file(unknown)["v_prediction"] is None
    with pytest.raises(FDIError, match="pass --prediction-type epsilon"):
        load_sd(unknown)
    with pytest.raises(FDIError, match="SD 1.x"):  # before any loading
        load_sd(sd15, prediction_type="epsilon")
    with pytest.raises(FDIError, match="--prediction-type 'x0'"):
        load_sd(unknown, prediction_type="x0")


SINGLE = cache_dir() / "checkpoints" / "sd21_random_v1.safetensors"
FOLDER = cache_dir() / "diffusers" / "sd21_random"


@pytest.mark.slow
@pytest.mark.skipif(
    not (SINGLE.is_file() and FOLDER.is_dir()),
    reason="needs the cached full-size SD 2.1 fixture (tests/comfyui/test_e2e.py builds it)",
)
def test_single_file_without_configs_equals_the_diffusers_folder(monkeypatch):
    """ComfyUI's CheckpointSave output, loaded with the shipped configs and tokenizer, offline, holds
    exactly the weights of the diffusers folder it was made from."""
    import huggingface_hub

    def no_network(*a, **k):
        raise AssertionError("the hub was contacted")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    single = load_sd(SINGLE)
    folder = load_sd(FOLDER)
    assert single.scheduler.config.prediction_type == "epsilon" and single.source == SINGLE.name
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(single, name).state_dict(), getattr(folder, name).state_dict()
        assert set(a) == set(b)
        assert all(torch.equal(a[k].float(), b[k].float()) for k in a), name
    p = "a watercolour of a harbour"
    assert single.tokenizer(p).input_ids == folder.tokenizer(p).input_ids
    v = load_sd(SINGLE, prediction_type="v_prediction")
    assert v.scheduler.config.prediction_type == "v_prediction" and v.unet.config.sample_size == 96
