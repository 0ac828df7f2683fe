"""FDIAdapter: sizes, stage formulas, no-op at init, FDI checks, and the adapter file."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tiny_sd import TINY_CHANNELS, randomise_adapter, tiny_adapter_config

from fdi.adapter import FDIAdapter, FDIAdapterConfig, count_parameters
from fdi.errors import FDIError
from fdi.instruction import FDI


def tiny(seed: int = 0, **kw) -> FDIAdapter:
    torch.manual_seed(seed)
    return FDIAdapter(tiny_adapter_config(), base_family="custom-base", **kw).eval()


def test_default_config_is_sd21_and_has_40_to_50_million_parameters():
    cfg = FDIAdapterConfig()
    assert cfg.channels == (320, 640, 1280, 1280) and cfg.token_width == 768 and cfg.num_tokens == 32
    n = count_parameters(cfg)
    print(f"default FDI adapter: {n:,} parameters ({n / 1e6:.2f} M; paper 45.10 M)")
    assert 40e6 <= n <= 50e6


def test_shapes_for_an_odd_image_size():
    a = tiny()
    x = torch.rand(2, 3, 72, 100)
    g = a(x, torch.randn(8, 32))
    # h_1 = ceil(72/8) = 9, w_1 = ceil(100/8) = 13, then ceil halving
    sizes = [(9, 13), (5, 7), (3, 4), (2, 2)]
    assert [tuple(r.shape) for r in g.residuals] == [(2, c, *s) for c, s in zip(TINY_CHANNELS, sizes)]
    assert [tuple(f.shape) for f in g.refined] == [(2, 8, c) for c in TINY_CHANNELS]
    for m, c in zip(g.modulations, (TINY_CHANNELS[3], TINY_CHANNELS[2], TINY_CHANNELS[1])):
        assert tuple(m.mean.shape) == (2, c) and tuple(m.std.shape) == (2, c) and tuple(m.gate.shape) == (c,)


def test_fresh_adapter_gives_exactly_zero_residuals_and_gates():
    a = tiny()
    gen = torch.Generator().manual_seed(5)
    fdi = torch.randn(8, 32, generator=gen)
    g = a(torch.rand(1, 3, 64, 64, generator=gen), fdi)
    assert all(torch.equal(r, torch.zeros_like(r)) for r in g.residuals)
    assert all(torch.equal(m.gate, torch.zeros_like(m.gate)) for m in g.modulations)
    # but the refined tokens carry information (non-trivial, image dependent)
    g2 = a(torch.rand(1, 3, 64, 64, generator=gen), fdi)
    assert not torch.allclose(g.refined[0], g2.refined[0])


def test_noise_decoupling_matches_the_formula():
    a = tiny()
    m = a.decouple_levels[2]
    tokens = torch.randn(2, 8, 32)
    c = torch.randn(2, TINY_CHANNELS[2], 3, 5)
    got = m(tokens, c)
    # F̂ = F·P + softmax(q kᵀ/√d) v · Wo, per head; q = LN(F)Wq, k = LN(c)Wk, v = c Wv
    kv = c.flatten(2).transpose(1, 2)
    q = m.to_q(F.layer_norm(tokens, (32,), m.norm_tokens.weight, m.norm_tokens.bias))
    k = m.to_k(F.layer_norm(kv, (kv.shape[-1],), m.norm_features.weight, m.norm_features.bias))
    v = m.to_v(kv)
    heads, d = m.heads, kv.shape[-1] // m.heads
    outs = []
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        w = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(d), dim=-1)
        outs.append(w @ v[..., sl])
    want = tokens @ m.proj.weight.T + m.proj.bias + m.to_out(torch.cat(outs, -1))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_guidance_residual_and_modulation_targets_match_the_formulas():
    a = randomise_adapter(tiny())
    x, fdi = torch.rand(1, 3, 64, 64), torch.randn(8, 32)
    feats = a.image_features(x)
    refined = a.decouple(a.tokens_for(fdi, 1), feats)
    g = a(x, fdi)
    for i, head in enumerate(a.guidance_heads):
        s = torch.sigmoid(head.excite(torch.relu(head.squeeze(refined[i].mean(1)))))
        want = F.conv2d(feats[i] * s[:, :, None, None], head.out.weight, head.out.bias)
        torch.testing.assert_close(g.residuals[i], want, rtol=1e-5, atol=1e-6)
        assert g.residuals[i].abs().max() > 0
    for m, level in zip(g.modulations, (3, 2, 1)):
        torch.testing.assert_close(m.mean, refined[level].mean(1))
        torch.testing.assert_close(m.std, torch.sqrt(refined[level].var(1, unbiased=False) + 1e-5))


def test_guidance_does_not_depend_on_the_batch_companions():
    a = randomise_adapter(tiny())
    x, fdi = torch.rand(3, 3, 64, 64), torch.randn(8, 32)
    both = a(x, fdi)
    one = a(x[1:2], fdi)
    for r_all, r_one in zip(both.residuals, one.residuals):
        torch.testing.assert_close(r_all[1:2], r_one, rtol=1e-5, atol=1e-6)
    # [T, D] broadcasts like [B, T, D]
    again = a(x, fdi.expand(3, -1, -1))
    assert all(torch.equal(p, q) for p, q in zip(both.residuals, again.residuals))


def test_weighted_scales_residuals_and_gates_only():
    g = randomise_adapter(tiny())(torch.rand(1, 3, 64, 64), torch.randn(8, 32))
    h = g.weighted(0.25)
    for r, r2 in zip(g.residuals, h.residuals):
        assert torch.equal(r2, r * 0.25)
    for m, m2 in zip(g.modulations, h.modulations):
        assert torch.equal(m2.gate, m.gate * 0.25) and torch.equal(m2.mean, m.mean) and torch.equal(m2.std, m.std)
    moved = g.to(dtype=torch.float16)
    assert moved.residuals[0].dtype == torch.float16 and moved.modulations[0].mean.dtype == torch.float16


def test_fdi_width_token_count_and_encoder_are_checked():
    a = tiny(encoder="blip2-tiny:aaaa")
    x = torch.rand(1, 3, 64, 64)
    with pytest.raises(FDIError, match="token width 768 does not match the adapter's token width 32"):
        a(x, torch.randn(32, 768))
    with pytest.raises(FDIError, match="has 32 tokens but the adapter expects 8"):
        a(x, torch.randn(32, 32))
    with pytest.raises(FDIError, match="comes from encoder other:bbbb"):
        a(x, FDI(torch.randn(8, 32), encoder="other:bbbb"))
    a(x, FDI(torch.randn(8, 32), encoder="renamed-folder:aaaa"))  # same hash, other folder name: fine
    with pytest.raises(FDIError, match="at least 8 pixels"):
        a(torch.rand(1, 3, 7, 64), torch.randn(8, 32))


def test_config_validation():
    with pytest.raises(FDIError, match="three \\(SDXL\\) or four"):
        FDIAdapterConfig(channels=(320, 640, 1280, 1280, 1280))
    with pytest.raises(FDIError, match="unknown base family"):
        FDIAdapterConfig.for_family("sd3")
    assert FDIAdapterConfig.for_family("sdxl").channels == (320, 640, 1280)
    assert FDIAdapterConfig.for_family("sd1.5").channels == (320, 640, 1280, 1280)
    with pytest.raises(FDIError, match="divisible by heads"):
        FDIAdapterConfig(channels=(30, 32, 64, 64), heads=4)
    with pytest.raises(FDIError, match="unknown adapter config keys"):
        FDIAdapterConfig.from_json(json.dumps({"channels": [32, 32, 64, 64], "bogus": 1}))


def test_save_load_round_trip_is_bit_exact_with_embedded_fdi(tmp_path):
    a = randomise_adapter(tiny(label="derain"))
    fdi = FDI(torch.randn(8, 32), encoder="blip2-tiny:1234", n_pairs=3, label="rain", pairs=torch.randn(3, 8, 32))
    path = a.save(tmp_path / "derain.safetensors", fdi=fdi)
    b = FDIAdapter.from_file(path)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert b.config == a.config and b.base_family == "custom-base" and b.label == "derain"
    assert b.encoder == "blip2-tiny:1234"  # taken from the FDI
    assert torch.equal(b.fdi.tokens, fdi.tokens) and torch.equal(b.fdi.pairs, fdi.pairs)
    assert b.fdi.label == "rain" and b.fdi.n_pairs == 3 and b.fdi.encoder == fdi.encoder
    x = torch.rand(1, 3, 64, 64)
    ga, gb = a(x, fdi), b(x, b.fdi)
    assert all(torch.equal(p, q) for p, q in zip(ga.residuals, gb.residuals))
    # without an FDI
    c = FDIAdapter.from_file(a.save(tmp_path / "plain.safetensors"))
    assert c.fdi is None


def test_from_file_refuses_bad_files(tmp_path):
    a = tiny()
    good = a.save(tmp_path / "a.safetensors")
    with pytest.raises(FDIError, match="trained for custom-base, not sd2.1-base"):
        FDIAdapter.from_file(good, base_family="sd2.1-base")
    pt = tmp_path / "a.pt"
    torch.save(a.state_dict(), pt)
    with pytest.raises(FDIError, match="pickle"):
        FDIAdapter.from_file(pt)
    fdi_file = FDI(torch.randn(8, 32), encoder="x:1").save(tmp_path / "t.fdi.safetensors")
    with pytest.raises(FDIError, match="not an FDI adapter file"):
        FDIAdapter.from_file(fdi_file)
    # weights that do not fit the config (e.g. a file whose config was edited)
    sd = {k: v.contiguous() for k, v in a.state_dict().items()}
    meta = a.file_metadata()
    meta["config"] = FDIAdapterConfig(
        channels=(64, 64, 128, 128), token_width=32, num_tokens=8, res_blocks=1, heads=4, se_reduction=4
    ).to_json()
    save_file(sd, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(FDIError, match="has shape"):
        FDIAdapter.from_file(tmp_path / "bad.safetensors")
    del sd["gates.0"]
    save_file(sd, str(tmp_path / "missing.safetensors"), metadata=a.file_metadata())
    with pytest.raises(FDIError, match="weights missing"):
        FDIAdapter.from_file(tmp_path / "missing.safetensors")
    with pytest.raises(FDIError, match="token width"):
        a.save(tmp_path / "c.safetensors", fdi=FDI(torch.randn(8, 16), encoder="x:1"))
    assert not (tmp_path / "c.safetensors").exists()
    with pytest.raises(FDIError, match="must end with"):
        a.save(tmp_path / "c.pt")
