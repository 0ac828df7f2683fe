"""Watching training: preview strips (`--preview-every`, the node's live preview) and the clean-latent cache,
on the tiny SD fixture (64-px crops, single-threaded)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_blip2 import TINY_TOKENS, TINY_WIDTH
from tiny_sd import tiny_adapter_config

from fdi.adapter import FDIAdapter
from fdi.errors import FDIError
from fdi.images import save_image
from fdi.instruction import FDI
from fdi.models import load_sd, place, vae_encode
from fdi.plots import render_loss_curve
from fdi.training import preview as pv
from fdi.training.config import TrainConfig
from fdi.training.latents import LatentCache
from fdi.training.memory import TrainSettings, train_on_pairs
from fdi.training.run import train
from fdi.training.state import list_checkpoints


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _write_pairs(root: Path, sizes, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for d in ("deg", "clean"):
        (root / d).mkdir(parents=True)
    for i, (h, w) in enumerate(sizes):
        clean = torch.rand(3, h, w, generator=g)
        save_image(clean, root / "clean" / f"{i:02d}.png")
        save_image((0.6 * clean + 0.2).clamp(0, 1), root / "deg" / f"{i:02d}.png")


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_sd_folder):
    """``wide/``: 4 pairs larger than the crop (random windows); ``square/``: 3 square pairs of other sizes (whole
    crops after resizing); ``val/``: 3 held-out pairs; a random task FDI; the tiny SD."""
    root = tmp_path_factory.mktemp("watch")
    _write_pairs(root / "wide", [(72, 80 + 4 * i) for i in range(4)], 0)
    _write_pairs(root / "square", [(64, 64), (96, 96), (80, 80)], 1)
    _write_pairs(root / "val", [(70, 90), (64, 64), (66, 66)], 2)
    g = torch.Generator().manual_seed(3)
    FDI(tokens=torch.randn(TINY_TOKENS, TINY_WIDTH, generator=g), encoder="tiny:0123456789abcdef", n_pairs=4).save(
        root / "toy.fdi.safetensors"
    )
    shutil.copytree(tiny_sd_folder, root / "sd")
    return root


def _cfg(root: Path, out: Path, pairs: str = "wide", **kw) -> TrainConfig:
    base = dict(
        sd=str(root / "sd"),
        output=str(out),
        degraded=str(root / pairs / "deg"),
        clean=str(root / pairs / "clean"),
        fdi=str(root / "toy.fdi.safetensors"),
        resolution=64,
        batch_size=2,
        lr=1e-3,
        num_workers=0,
        checkpoint_every=0,
        adapter_config=json.loads(tiny_adapter_config().to_json()),
        val_steps=2,
        quiet=True,
    )
    base.update(kw)
    return TrainConfig(**base)


# ---- the strip ----------------------------------------------------------------------------------------------


def test_strip_layout_rows_columns_and_labels():
    """Rows input / restored / clean, one column per image, each tile exactly the image at strip_layout's place."""
    g = torch.Generator().manual_seed(0)
    rows = [torch.rand(3, 3, 64, 64, generator=g) for _ in range(3)]
    picture = pv.render_strip(*rows, ["a", "b", "c"], "step 5 of 10")
    width, height, left, top = pv.strip_layout(3, 64)
    assert picture.shape == (height, width, 3) and picture.dtype == np.uint8
    assert (width, height, left, top) == (72 + 3 * 68, 36 + 3 * 68, 72, 36)
    for r in range(3):
        for c in range(3):
            y, x = top + r * (64 + pv.GAP), left + c * (64 + pv.GAP)
            assert np.array_equal(picture[y : y + 64, x : x + 64], pv.to_uint8(rows[r][c])), (r, c)
    assert (picture[:top, :] < 128).any() and (picture[:, :left] < 128).any()  # the title, names and row labels
    assert (picture[top - pv.GAP : top, left:] == 255).all()  # white gaps between labels and tiles
    with pytest.raises(ValueError, match="k names"):
        pv.render_strip(*rows, ["a"], "x")


def test_preview_steps_every_n_and_the_last():
    assert [s for s in range(1, 12) if pv.preview_due(s, 4, 11)] == [4, 8, 11]
    assert not any(pv.preview_due(s, 0, 11) for s in range(1, 12))
    assert pv.strip_path("run", 500) == Path("run/previews/step-000500.jpg")


# ---- the CLI door ---------------------------------------------------------------------------------------------


def test_cli_writes_a_strip_every_n_steps_of_the_held_out_pairs(data, tmp_path, monkeypatch, capsys):
    """--preview-every 2 over 5 steps: strips of steps 2, 4 and 5 (the last), each 3 rows × --preview-images columns
    of 64-px crops; the input row is the held-out pairs' centre crops; at a step that validates too, each pair is
    restored once (one restore call per step: 2 pairs, micro-batch 2)."""
    from fdi.pipeline import FDIRestorationPipeline

    calls = []
    real = FDIRestorationPipeline.restore
    monkeypatch.setattr(FDIRestorationPipeline, "restore", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    val = data / "val"
    res = train(
        _cfg(
            data,
            tmp_path / "a.safetensors",
            max_steps=5,
            preview_every=2,
            preview_images=2,
            validate_every=2,
            val_max_images=2,
            val_degraded=str(val / "deg"),
            val_clean=str(val / "clean"),
            quiet=False,
        )
    )
    strips = sorted(p.name for p in (res.run_dir / "previews").iterdir())
    assert strips == ["step-000002.jpg", "step-000004.jpg", "step-000005.jpg"]
    width, height, left, top = pv.strip_layout(2, 64)
    picture = np.asarray(Image.open(res.run_dir / "previews" / "step-000004.jpg").convert("RGB")).astype(float)
    assert picture.shape == (height, width, 3)
    from fdi.images import load_image

    crop = pv.centre_crops([load_image(val / "deg" / "00.png")], [load_image(val / "clean" / "00.png")], 64)[0][0]
    tile, want = picture[top : top + 64, left : left + 64], pv.to_uint8(crop).astype(float)
    blocks = lambda a: a.reshape(8, 8, 8, 8, 3).mean((1, 3))  # noqa: E731  (JPEG keeps 8×8 block means)
    assert np.abs(blocks(tile) - blocks(want)).max() < 6
    assert len(calls) == 3  # steps 2 and 4: validation and preview share one restore; step 5: the preview alone
    assert len((res.run_dir / "val_log.csv").read_text().splitlines()) == 3
    assert "step 4: preview previews/step-000004.jpg" in capsys.readouterr().out


def test_cli_previews_training_pairs_without_held_out_ones_and_a_failure_keeps_the_run(
    data, tmp_path, monkeypatch, capsys
):
    """Without --val-*: the first training pairs. A strip that fails is reported, the run finishes with its
    checkpoints and adapter."""
    res = train(_cfg(data, tmp_path / "a.safetensors", max_steps=1, preview_every=1, preview_images=3))
    picture = Image.open(res.run_dir / "previews" / "step-000001.jpg")
    assert picture.size == pv.strip_layout(3, 64)[:2]

    def broken(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(pv, "render_strip", broken)
    monkeypatch.setattr("fdi.training.validation.render_strip", broken)
    out = tmp_path / "b.safetensors"
    res = train(_cfg(data, out, max_steps=2, preview_every=1, checkpoint_every=1))
    assert out.is_file() and [s for s, _ in list_checkpoints(res.run_dir)] == [1, 2]
    assert not (res.run_dir / "previews").exists() or not list((res.run_dir / "previews").glob("*.jpg"))
    assert "step 2: no preview (RuntimeError: disk on fire); training goes on" in capsys.readouterr().err


def test_a_run_without_previews_builds_no_restoration_pipeline(data, tmp_path, monkeypatch):
    import fdi.pipeline

    def refuse(*a, **k):
        raise AssertionError("the restoration pipeline was built")

    monkeypatch.setattr(fdi.pipeline.FDIRestorationPipeline, "__init__", refuse)
    res = train(_cfg(data, tmp_path / "a.safetensors", max_steps=1))
    assert not (res.run_dir / "previews").exists()


def test_bad_preview_and_cache_options_are_refused(data, tmp_path):
    for kw, flag in (
        ({"preview_every": -1}, "--preview-every"),
        ({"preview_images": 0}, "--preview-images"),
        ({"latent_cache_mib": -5}, "--latent-cache-mib"),
    ):
        with pytest.raises(FDIError, match=flag):
            train(_cfg(data, tmp_path / "a.safetensors", max_steps=1, **kw))


# ---- the in-memory door (the node's) -------------------------------------------------------------------------


def test_live_preview_shows_the_strip_above_the_loss_curve_at_its_steps():
    """The node's preview: a fake restoration; a strip at steps 2, 4, 5, shown above the loss curve, the curve alone
    before the first strip; a failing strip is skipped and the last one kept."""
    g = torch.Generator().manual_seed(0)
    deg = [torch.rand(3, 64, 80, generator=g) for _ in range(5)]
    clean = [torch.rand(3, 96, 96, generator=g) for _ in range(5)]
    seen = []

    def restore(images):
        seen.append(tuple(images.shape))
        return images * 0.5

    make = pv.strip_maker(restore, deg, clean, [f"p{i}" for i in range(5)], 64, steps=5, count=3)
    live = pv.LivePreview(5, every=2, strip=make)
    shown = [live.show(s, 1.0 / s) for s in range(1, 6)]
    assert seen == [(3, 3, 64, 64)] * 3 and live.strips == 3
    width, height, _, _ = pv.strip_layout(3, 64)
    curve = render_loss_curve([1.0]).shape  # 600 × 360 px
    assert shown[0].shape == curve  # step 1: the loss curve only
    assert [shown[s].shape for s in (1, 3, 4)] == [(height + curve[0], max(width, curve[1]), 3)] * 3
    assert np.array_equal(shown[4][:height, :width], live.latest)  # steps 2, 4, 5: the strip on top, the curve below
    failing = pv.LivePreview(4, every=1, strip=lambda step: 1 / 0 if step == 2 else make(step))
    pics = [failing.show(s, 0.5) for s in range(1, 5)]
    assert failing.strips == 3 and pics[1] is not None  # step 2: the curve under step 1's strip


@pytest.fixture(scope="module")
def tiny(tiny_sd_folder):
    from fdi.conditioning import encode_prompt

    parts = load_sd(tiny_sd_folder)
    unet, vae = place(parts.unet, "cpu", torch.float32), place(parts.vae, "cpu", torch.float32)
    ctx = encode_prompt(parts.text_encoder, parts.tokenizer, "", "cpu", torch.float32)
    return unet, vae, ctx, parts.scheduler.alphas_cumprod.float()


def _memory_run(tiny, pairs, budget: int, steps: int = 6, batch: int = 2):
    from fdi.training.step import diffusers_predictor

    unet, vae, ctx, alphas = tiny
    torch.manual_seed(0)
    adapter = FDIAdapter(tiny_adapter_config(), base_family="custom-base")
    encodes = []

    def encode(x):
        encodes.append(x.shape[0])
        return vae_encode(vae, x, torch.float32)

    res = train_on_pairs(
        adapter,
        diffusers_predictor(unet, ctx, torch.float32),
        encode,
        *pairs,
        torch.randn(8, 32, generator=torch.Generator().manual_seed(1)),
        alphas,
        "epsilon",
        TrainSettings(steps=steps, lr=1e-3, batch_size=batch, resolution=64, latent_cache_mib=budget),
        torch.device("cpu"),
    )
    return adapter, res, encodes


# ---- the clean-latent cache ----------------------------------------------------------------------------------


def test_cached_latents_are_the_encodings_of_each_crop_alone(tiny):
    """A cached latent is bit for bit the encoding of its crop alone; crops that are not whole images are encoded as
    one batch and never kept."""
    _, vae, _, _ = tiny
    enc = lambda x: vae_encode(vae, x, torch.float32)  # noqa: E731
    cache = LatentCache(enc)
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    first = cache.encode(x, [4, -1, 5])
    again = cache.encode(x, [4, -1, 5])
    alone = torch.cat([enc(x[i : i + 1]) for i in (0, 2)])
    assert torch.equal(first[[0, 2]], alone) and torch.equal(again, first)
    assert torch.equal(first[1], enc(x[1:2])[0])
    assert (cache.hits, cache.misses, sorted(cache.entries)) == (2, 2, [4, 5])
    tiny_budget = LatentCache(enc, budget_mib=0)
    tiny_budget.encode(x, [4, 5, 6])
    assert tiny_budget.entries == {} and tiny_budget.misses == 3


def test_square_pairs_train_bit_identically_with_and_without_the_cache(tiny):
    """Square pairs: whole crops, keyed by (pair, flip). 6 steps × 2 samples of 3 pairs: at most 6 keys, so at least
    6 hits, each a VAE call saved; the losses and the weights are bit-identical to encoding every step."""
    g = torch.Generator().manual_seed(0)
    clean = [torch.rand(3, s, s, generator=g) for s in (64, 96, 80)]
    pairs = ([(0.5 * c + 0.3).clamp(0, 1) for c in clean], clean)
    a, cached, enc_cached = _memory_run(tiny, pairs, budget=64)
    b, plain, enc_plain = _memory_run(tiny, pairs, budget=0)
    assert cached.latent_hits >= 6 and cached.latent_hits + cached.latent_misses == 12
    assert plain.latent_hits == 0 and len(enc_plain) == 12 and len(enc_cached) == cached.latent_misses
    assert cached.losses == plain.losses
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_cli_cache_hits_on_square_pairs_and_changes_nothing(data, tmp_path):
    """The CLI door: square pairs hit the cache; the adapter equals the one trained with --latent-cache-mib 0, bit
    for bit; pairs larger than the crop never hit."""
    a = train(_cfg(data, tmp_path / "a.safetensors", pairs="square", max_steps=4))
    b = train(_cfg(data, tmp_path / "b.safetensors", pairs="square", max_steps=4, latent_cache_mib=0))
    assert a.latent_hits >= 2 and a.latent_hits + a.latent_misses == 8 and b.latent_hits == 0
    assert a.losses == b.losses
    wa = FDIAdapter.from_file(tmp_path / "a.safetensors").state_dict()
    wb = FDIAdapter.from_file(tmp_path / "b.safetensors").state_dict()
    assert all(torch.equal(v, wb[k]) for k, v in wa.items())
    wide = train(_cfg(data, tmp_path / "c.safetensors", max_steps=2))
    assert (wide.latent_hits, wide.latent_misses) == (0, 0)


def test_column_labels_keep_the_end_of_long_names():
    """Names of one folder differ at the end: a cut label keeps its end (camera_002 vs camera_007, not camera_0)."""
    assert pv.fit_label("camera_002.png", 8) == "..ra_002"
    assert pv.fit_label("camera_007.png", 8) != pv.fit_label("camera_002.png", 8)
    assert pv.fit_label("00.png", 8) == "00" and pv.fit_label("pair 3", 8) == "pair 3"
    assert pv.fit_label(".hidden", 20) == ".hidden"
