"""Q-Former encoder: parity with transformers, partial loading, fingerprints, bad checkpoints."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_blip2 import TINY_IMAGE_SIZE, TINY_TOKENS, TINY_WIDTH, build_tiny_blip2

from fdi.encoder import QFormerEncoder
from fdi.errors import FDIError


@pytest.fixture(scope="module")
def blip2_dir(tiny_blip2_folder):
    return tiny_blip2_folder


@pytest.fixture(scope="module")
def encoder(blip2_dir):
    return QFormerEncoder.from_pretrained(blip2_dir)


def test_matches_transformers_blip2model(blip2_dir, encoder):
    from transformers import Blip2Model

    ref = Blip2Model.from_pretrained(blip2_dir).eval()
    torch.manual_seed(1)
    images = torch.rand(3, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    pixel_values = encoder.preprocess(images)
    with torch.no_grad():
        expected = ref.get_qformer_features(pixel_values=pixel_values)
        # the same normalisation as the checkpoint's own image processor
        from transformers import AutoImageProcessor

        proc = AutoImageProcessor.from_pretrained(blip2_dir)
        torch.testing.assert_close(
            pixel_values,
            (images - torch.tensor(proc.image_mean).view(1, 3, 1, 1)) / torch.tensor(proc.image_std).view(1, 3, 1, 1),
        )
    got = encoder.encode(images)
    assert got.shape == (3, TINY_TOKENS, TINY_WIDTH) and got.dtype == torch.float32
    # the fixture responds to its input (images differ by ~40 % relative), so a bound relative to that effect means
    # something
    effect = float((expected[0] - expected[1]).norm() / expected[0].norm())
    assert effect > 0.1, f"the tiny Q-Former barely depends on its image (relative change {effect:.1e})"
    assert float((got - expected).norm() / expected.norm()) <= 1e-5 * effect / 0.1


def test_parity_would_catch_wrong_preprocessing(blip2_dir, encoder):
    """A resize, normalisation or channel-order mistake moves the features far beyond the parity bound above."""
    torch.manual_seed(2)
    images = torch.rand(2, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    ref = encoder.encode(images)
    for wrong in (images.flip(1), images * 2 - 1, torch.nn.functional.interpolate(images, scale_factor=0.5)):
        wrong_feat = encoder.encode(wrong)
        assert float((wrong_feat - ref).norm() / ref.norm()) > 1e-2


def test_language_model_is_never_read(blip2_dir, encoder, tmp_path):
    """Delete every language-model tensor from the file: the encoder still loads, identically."""
    stripped = tmp_path / "stripped"
    shutil.copytree(blip2_dir, stripped)
    tensors = load_file(stripped / "model.safetensors")
    lm = [k for k in tensors if k.startswith(("language_model.", "language_projection."))]
    assert lm, "the fixture should contain a language model"
    save_file(
        {k: v for k, v in tensors.items() if k not in lm}, stripped / "model.safetensors", metadata={"format": "pt"}
    )
    enc2 = QFormerEncoder.from_pretrained(stripped)
    x = torch.rand(2, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    assert torch.equal(enc2.encode(x), encoder.encode(x))
    assert enc2.fingerprint.split(":")[1] == encoder.fingerprint.split(":")[1]
    loaded = {k for k, _ in enc2.state_dict().items()}
    assert not any(k.startswith("language") for k in loaded)


def test_sharded_checkpoint_and_lm_shards_never_opened(blip2_dir, encoder, tmp_path):
    """A sharded checkpoint loads; the shard holding the language model is never opened (here: deleted)."""
    d = tmp_path / "sharded"
    shutil.copytree(blip2_dir, d)
    tensors = load_file(d / "model.safetensors")
    (d / "model.safetensors").unlink()
    wanted = {k: v for k, v in tensors.items() if k.startswith(("vision_model.", "qformer.")) or k == "query_tokens"}
    rest = {k: v for k, v in tensors.items() if k not in wanted}
    vision = {k: v for k, v in wanted.items() if k.startswith("vision_model.")}
    qformer = {k: v for k, v in wanted.items() if k not in vision}
    names = ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"]
    weight_map = {}
    for name, part in zip(names, (vision, qformer, rest)):
        save_file(part, d / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (d / names[2]).unlink()  # the language-model shard: never needed
    enc = QFormerEncoder.from_pretrained(d)
    x = torch.rand(2, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    assert torch.equal(enc.encode(x), encoder.encode(x))
    (d / names[1]).unlink()
    with pytest.raises(FDIError, match="missing"):
        QFormerEncoder.from_pretrained(d)


def test_fingerprint_identifies_checkpoint_not_folder(blip2_dir, encoder, tmp_path):
    moved = tmp_path / "other-name"
    shutil.copytree(blip2_dir, moved)
    fp_moved = QFormerEncoder.from_pretrained(moved).fingerprint
    assert fp_moved.startswith("other-name:")
    assert fp_moved.split(":")[1] == encoder.fingerprint.split(":")[1]
    other = tmp_path / "tiny-blip2"
    build_tiny_blip2(other, seed=1)
    assert QFormerEncoder.from_pretrained(other).fingerprint.split(":")[1] != encoder.fingerprint.split(":")[1]


def test_any_size_and_batch_of_mixed_sizes(encoder):
    torch.manual_seed(0)
    a, b = torch.rand(3, 50, 70), torch.rand(3, 17, 9)
    both = encoder.encode([a, b])
    assert both.shape == (2, TINY_TOKENS, TINY_WIDTH)
    assert torch.allclose(both[0], encoder.encode(a[None])[0], atol=1e-6)
    assert torch.isfinite(both).all()


def test_reduced_precision_vision_model(blip2_dir, encoder):
    enc16 = QFormerEncoder.from_pretrained(blip2_dir, vision_dtype="bf16")
    assert enc16.vision_model.post_layernorm.weight.dtype == torch.bfloat16
    assert enc16.qformer.layernorm.weight.dtype == torch.float32 and enc16.query_tokens.dtype == torch.float32
    x = torch.rand(2, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    out = enc16.encode(x)
    assert out.dtype == torch.float32
    ref = encoder.encode(x)
    assert (out - ref).norm() / ref.norm() < 0.05


@pytest.mark.parametrize("bad", ["images_nan", "empty", "gray"])
def test_bad_image_batches(encoder, bad):
    x = {
        "images_nan": torch.full((1, 3, 8, 8), float("nan")),
        "empty": torch.rand(0, 3, 8, 8),
        "gray": torch.rand(1, 1, 8, 8),
    }[bad]
    with pytest.raises(FDIError):
        encoder.encode(x)


def test_bad_checkpoints(blip2_dir, tmp_path):
    with pytest.raises(FDIError, match="does not exist"):
        QFormerEncoder.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FDIError, match="no config.json"):
        QFormerEncoder.from_pretrained(tmp_path / "empty")
    clip = tmp_path / "clip"
    clip.mkdir()
    (clip / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(FDIError, match="not BLIP-2"):
        QFormerEncoder.from_pretrained(clip)
    pickled = tmp_path / "pickled"
    shutil.copytree(blip2_dir, pickled)
    (pickled / "model.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, pickled / "pytorch_model.bin")
    with pytest.raises(FDIError, match="safetensors"):
        QFormerEncoder.from_pretrained(pickled)
    noq = tmp_path / "noq"
    shutil.copytree(blip2_dir, noq)
    t = load_file(noq / "model.safetensors")
    save_file({k: v for k, v in t.items() if not k.startswith("qformer.")}, noq / "model.safetensors")
    with pytest.raises(FDIError, match="Q-Former"):
        QFormerEncoder.from_pretrained(noq)
    nopre = tmp_path / "nopre"
    shutil.copytree(blip2_dir, nopre)
    (nopre / "preprocessor_config.json").unlink()
    with pytest.raises(FDIError, match="preprocessor_config"):
        QFormerEncoder.from_pretrained(nopre)
    trunc = tmp_path / "trunc"
    shutil.copytree(blip2_dir, trunc)
    data = (trunc / "model.safetensors").read_bytes()
    (trunc / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(FDIError, match="truncated|corrupt"):
        QFormerEncoder.from_pretrained(trunc)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (runs on the device machine, not in CI)")
def test_cuda_matches_cpu(blip2_dir, encoder):
    x = torch.rand(2, 3, 40, 56)
    ref = encoder.encode(x)
    cuda32 = QFormerEncoder.from_pretrained(blip2_dir, device="cuda")
    out32 = cuda32.encode(x)
    assert out32.device.type == "cuda" and out32.dtype == torch.float32
    assert (out32.cpu() - ref).abs().max() < 1e-4
    cuda16 = QFormerEncoder.from_pretrained(blip2_dir, device="cuda", vision_dtype="fp16")
    assert cuda16.vision_model.post_layernorm.weight.dtype == torch.float16
    assert cuda16.qformer.layernorm.weight.dtype == torch.float32
    out16 = cuda16.encode(x).cpu()
    assert out16.dtype == torch.float32 and (out16 - ref).norm() / ref.norm() < 0.02
