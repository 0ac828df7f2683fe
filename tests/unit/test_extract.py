"""FDI extraction, files and combination: the numbers."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_blip2 import TINY_TOKENS, TINY_WIDTH

from fdi.encoder import QFormerEncoder
from fdi.errors import FDIError
from fdi.extract import extract_fdi, extract_fdi_from_folders
from fdi.images import save_image
from fdi.instruction import FDI, combine, cosine_similarity_matrix


@pytest.fixture(scope="module")
def encoder(tiny_blip2_folder):
    return QFormerEncoder.from_pretrained(tiny_blip2_folder)


def random_fdi(seed: int, encoder: str = "tiny:abc", label: str = "", pairs: int = 0) -> FDI:
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(pairs, TINY_TOKENS, TINY_WIDTH, generator=g) if pairs else None
    return FDI(
        tokens=torch.randn(TINY_TOKENS, TINY_WIDTH, generator=g),
        encoder=encoder,
        n_pairs=pairs or 3,
        label=label,
        pairs=p,
    )


def test_fdi_is_mean_of_pair_differences(encoder):
    torch.manual_seed(0)
    degraded, clean = torch.rand(5, 3, 40, 48), torch.rand(5, 3, 40, 48)
    fdi = extract_fdi(encoder, degraded, clean, label="t", batch_size=2, keep_pairs=True)
    per_pair = encoder.encode(degraded) - encoder.encode(clean)
    # the fixture sees its images: different pairs give clearly different differences (not ~0, as with
    # transformers' default 1e-10 vision init), so the bounds below are relative to a real effect
    scale = float(per_pair.norm(dim=(1, 2)).mean())
    assert scale > 0.1 * float(encoder.encode(clean).norm(dim=(1, 2)).mean())
    assert float((per_pair[0] - per_pair[1]).norm()) > 0.3 * scale
    assert float((fdi.pairs - per_pair).abs().max()) <= 1e-6 * scale
    assert float((fdi.tokens - per_pair.mean(0)).abs().max()) <= 1e-6 * scale
    assert fdi.n_pairs == 5 and fdi.encoder == encoder.fingerprint
    # streaming: the batch size changes nothing
    fdi1 = extract_fdi(encoder, degraded, clean, batch_size=1)
    fdi5 = extract_fdi(encoder, degraded, clean, batch_size=5)
    assert (fdi1.tokens - fdi5.tokens).abs().max() <= 1e-6 * scale
    assert fdi1.pairs is None


def test_extraction_progress_and_interrupt(encoder):
    calls = []
    degraded, clean = torch.rand(5, 3, 16, 16), torch.rand(5, 3, 16, 16)
    extract_fdi(encoder, degraded, clean, batch_size=2, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(0, 5), (2, 5), (4, 5), (5, 5)]

    def stop(done, total):
        if done >= 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_fdi(encoder, degraded, clean, batch_size=2, progress=stop)


def test_extraction_from_folders_matches_tensors(encoder, tmp_path):
    torch.manual_seed(3)
    deg, cln = tmp_path / "deg", tmp_path / "cln"
    deg.mkdir(), cln.mkdir()
    images = []
    for i in range(3):
        a, b = torch.rand(3, 32, 32), torch.rand(3, 32, 32)
        save_image(a, deg / f"im{i}.png")
        save_image(b, cln / f"im{i}.png")
        q = lambda t: (t * 255 + 0.5).floor() / 255  # what the 8-bit PNG holds  # noqa: E731
        images.append((q(a), q(b)))
    fdi = extract_fdi_from_folders(encoder, deg, cln, label="folders", batch_size=2)
    ref = extract_fdi(encoder, torch.stack([a for a, _ in images]), torch.stack([b for _, b in images]))
    assert (fdi.tokens - ref.tokens).abs().max() < 1e-5


def test_mismatched_batches(encoder):
    with pytest.raises(FDIError, match="same number"):
        extract_fdi(encoder, torch.rand(2, 3, 8, 8), torch.rand(3, 3, 8, 8))


def test_round_trip_is_bit_exact(tmp_path):
    f = random_fdi(0, label="derain", pairs=4)
    path = f.save(tmp_path / "derain.fdi.safetensors")
    g = FDI.load(path)
    assert torch.equal(g.tokens, f.tokens) and torch.equal(g.pairs, f.pairs)
    assert (g.encoder, g.n_pairs, g.label) == (f.encoder, f.n_pairs, f.label)
    meta_keys = {"format", "format_version", "encoder", "n_pairs", "label"}
    from fdi.files import read_header

    _, meta = read_header(path)
    assert meta_keys <= set(meta) and meta["format"] == "fdi" and meta["format_version"] == "1"
    f.save(tmp_path / "nopairs.fdi.safetensors", keep_pairs=False)
    assert FDI.load(tmp_path / "nopairs.fdi.safetensors").pairs is None


def test_combine_is_linear():
    a, b, c = random_fdi(1, label="a"), random_fdi(2, label="b"), random_fdi(3, label="c")
    s = combine([a, b, c], [0.5, -1.25, 2.0])
    expected = 0.5 * a.tokens.double() - 1.25 * b.tokens.double() + 2.0 * c.tokens.double()
    assert (s.tokens.double() - expected).abs().max() < 1e-6
    # linearity: combine(x+y) == combine(x) + combine(y)
    ab = combine([a, b], [1.0, 1.0])
    lhs = combine([ab, c], [0.3, 0.7]).tokens
    rhs = combine([a, b, c], [0.3, 0.3, 0.7]).tokens
    assert (lhs - rhs).abs().max() < 1e-6
    m = combine([a, b], [1.0, 3.0], mode="mean")
    assert (m.tokens - (0.25 * a.tokens + 0.75 * b.tokens)).abs().max() < 1e-6
    d = combine([a, b], [2.0, 0.5], mode="difference")
    assert (d.tokens - (2 * a.tokens - 0.5 * b.tokens)).abs().max() < 1e-6
    assert s.n_pairs == 9 and s.encoder == a.encoder


def test_combine_refuses_mixed_encoders_and_bad_weights():
    a = random_fdi(1, encoder="blip2-opt-2.7b:1111", label="rain")
    b = random_fdi(2, encoder="blip2-flan-t5:2222", label="snow")
    with pytest.raises(FDIError) as info:
        combine([a, b])
    assert "blip2-opt-2.7b:1111" in str(info.value) and "blip2-flan-t5:2222" in str(info.value)
    # same hash in another folder is the same encoder
    combine([a, random_fdi(3, encoder="renamed:1111")])
    wide = FDI(tokens=torch.zeros(TINY_TOKENS, 16), encoder="blip2-opt-2.7b:1111")
    with pytest.raises(FDIError, match="shape"):
        combine([a, wide])
    with pytest.raises(FDIError, match="2 weights for 3"):
        combine([a, a, a], [1, 2])
    with pytest.raises(FDIError, match="zero"):
        combine([a, a], [1, -1], mode="mean")
    with pytest.raises(FDIError, match="exactly two"):
        combine([a, a, a], mode="difference")
    with pytest.raises(FDIError):
        combine([])


def test_cosine_matrix():
    a = random_fdi(1)
    neg = FDI(tokens=-a.tokens, encoder=a.encoder)
    m = cosine_similarity_matrix([a, neg, a])
    assert torch.allclose(m, torch.tensor([[1.0, -1, 1], [-1, 1, -1], [1, -1, 1]], dtype=torch.float64), atol=1e-9)


def test_bad_fdi_files(tmp_path):
    f = random_fdi(0)
    good = f.save(tmp_path / "good.fdi.safetensors")
    tensors = load_file(good)
    from fdi.files import read_header

    _, meta = read_header(good)
    nan = dict(tensors)
    nan["fdi"] = nan["fdi"].clone()
    nan["fdi"][0, 0] = float("nan")
    save_file(nan, tmp_path / "nan.fdi.safetensors", metadata=meta)
    with pytest.raises(FDIError, match="NaN"):
        FDI.load(tmp_path / "nan.fdi.safetensors")
    save_file(tensors, tmp_path / "other.fdi.safetensors", metadata={**meta, "format": "lora"})
    with pytest.raises(FDIError, match="not an FDI file"):
        FDI.load(tmp_path / "other.fdi.safetensors")
    save_file(tensors, tmp_path / "v9.fdi.safetensors", metadata={**meta, "format_version": "9"})
    with pytest.raises(FDIError, match="version"):
        FDI.load(tmp_path / "v9.fdi.safetensors")
    save_file({"fdi": tensors["fdi"].to(torch.int32)}, tmp_path / "int.fdi.safetensors", metadata=meta)
    with pytest.raises(FDIError, match="dtype"):
        FDI.load(tmp_path / "int.fdi.safetensors")
    torch.save(tensors, tmp_path / "x.pt")
    with pytest.raises(FDIError, match="pickle"):
        FDI.load(tmp_path / "x.pt")
    with pytest.raises(FDIError, match="does not exist"):
        f.save(tmp_path / "missing-dir" / "a.fdi.safetensors")
    assert not (tmp_path / "missing-dir").exists()
    with pytest.raises(FDIError, match="must end with"):
        f.save(tmp_path / "a.safetensors")
