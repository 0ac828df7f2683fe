"""fdi.degrade: each synthetic degradation moves the image the way its physics says; seeded; any size; the CLI."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
import torch

from fdi.degrade import degrade, degrade_folder, degrade_image, image_seed, parse_spec
from fdi.errors import FDIError
from fdi.images import load_image, pair_folders, save_image
from fdi.seeds import derive_seed


def photo(h: int = 96, w: int = 128, seed: int = 0) -> torch.Tensor:
    """A textured image in 0.1..0.9: smooth gradients plus detail (a stand-in for a photo)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.linspace(0, 1, h).view(h, 1)
    x = torch.linspace(0, 1, w).view(1, w)
    base = torch.stack([0.5 + 0.3 * torch.sin(6 * x + 3 * y), 0.5 + 0.3 * torch.cos(4 * y - 2 * x), 0.3 + 0.4 * x * y])
    return (base + 0.1 * (torch.rand((3, h, w), generator=g) - 0.5)).clamp(0.1, 0.9)


def test_haze_lowers_contrast_towards_the_airlight():
    clean = photo()
    hazy, drawn = degrade_image(clean, "haze:airlight=0.9:beta=1.2", seed=3)
    # I - A = t (J - A) with 0 < t <= 1: every pixel moves towards A, none overshoots
    before, after = (clean - 0.9).abs(), (hazy - 0.9).abs()
    assert bool((after <= before + 1e-6).all())
    assert float(after.mean()) < 0.75 * float(before.mean())
    same_sign = torch.sign(hazy - 0.9) * torch.sign(clean - 0.9) >= 0
    assert bool(same_sign.all())
    assert float(hazy.std()) < 0.8 * float(clean.std())  # contrast drops
    # the transmission is one map for the three channels: (I - A)/(J - A) agrees across channels
    t = (hazy - 0.9) / (clean - 0.9)
    assert float((t.amax(0) - t.amin(0)).abs().max()) < 1e-4
    # denser haze far away: the depth proxy puts distance at the top
    assert float(t[:, :10].mean()) < float(t[:, -10:].mean())
    assert drawn == [{"effect": "haze", "beta": 1.2, "airlight": 0.9}]


def test_haze_strength_follows_beta():
    clean = photo()
    light = degrade_image(clean, "haze:airlight=1:beta=0.6", seed=0)[0]
    dense = degrade_image(clean, "haze:airlight=1:beta=1.8", seed=0)[0]
    assert float(dense.std()) < float(light.std()) < float(clean.std())


@pytest.mark.parametrize("sigma", [5.0, 25.0, 50.0])
def test_gaussian_noise_has_the_asked_sigma(sigma):
    clean = torch.full((3, 256, 256), 0.5)
    noisy = degrade_image(clean, f"noise:sigma={sigma}", seed=1)[0]
    diff = (noisy - clean) * 255
    # 196,608 samples: the std estimate is within ~0.3 % (1 s.e.); clipping is >2.5 sigma away even at 50
    assert float(diff.std()) == pytest.approx(sigma, rel=0.02)
    assert abs(float(diff.mean())) < 0.02 * sigma


def test_poisson_noise_variance_is_the_signal_over_peak():
    level, peak = 0.4, 50.0
    noisy = degrade_image(torch.full((3, 256, 256), level), f"poisson:peak={peak}", seed=2)[0]
    assert float(noisy.mean()) == pytest.approx(level, rel=0.01)
    assert float(noisy.var()) == pytest.approx(level / peak, rel=0.03)
    # counts: every value is a whole number of photons
    counts = noisy * peak
    assert float((counts - counts.round()).abs().max()) < 1e-4


@pytest.mark.parametrize("quality", [10, 30, 50])
def test_jpeg_is_a_real_round_trip_at_quality_q(quality):
    from PIL import Image

    clean = photo(67, 91)  # not a multiple of the 8/16 px blocks
    out = degrade_image(clean, f"jpeg:quality={quality}", seed=0)[0]
    arr = (clean.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    ref = torch.from_numpy(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")) / 255.0).permute(2, 0, 1)
    assert torch.equal(out, ref.float())
    err = float((out - clean).abs().mean())
    assert err > 1 / 255  # it did compress
    # lower quality, larger error
    if quality == 10:
        assert err > float((degrade_image(clean, "jpeg:quality=50", seed=0)[0] - clean).abs().mean())


def test_lowlight_darkens_by_gain_and_gamma():
    clean = photo()
    dark = degrade_image(clean, "lowlight:gamma=2:gain=0.3:sigma=0", seed=0)[0]
    assert torch.allclose(dark, 0.3 * clean**2, atol=1e-6)
    noisy = degrade_image(clean, "lowlight:gamma=2:gain=0.3:sigma=8", seed=0)[0]
    away = dark * 255 > 4 * 8  # pixels far from the clip at 0
    assert int(away.sum()) > 5000
    assert float(((noisy - dark) * 255)[away].std()) == pytest.approx(8, rel=0.05)


def test_blurs_keep_flat_images_and_remove_detail():
    flat = torch.full((3, 40, 50), 0.37)
    for spec in ("defocus:radius=3", "motion_blur:length=11:angle=30"):
        assert torch.allclose(degrade_image(flat, spec, seed=0)[0], flat, atol=1e-6)
    clean = photo()

    def detail(x):  # mean absolute horizontal + vertical difference
        return float((x[:, :, 1:] - x[:, :, :-1]).abs().mean() + (x[:, 1:] - x[:, :-1]).abs().mean())

    for spec in ("defocus:radius=3", "motion_blur:length=11:angle=30"):
        out = degrade_image(clean, spec, seed=0)[0]
        assert detail(out) < 0.5 * detail(clean)
        assert float(out.mean()) == pytest.approx(float(clean.mean()), abs=2e-3)  # the kernels sum to one


def test_motion_blur_smears_along_its_angle_only():
    # stripes that vary along y only: a blur along x (angle 0) leaves them, one along y (90) flattens them
    y = torch.arange(64).float().view(1, 64, 1).expand(3, 64, 64)
    stripes = 0.5 + 0.4 * torch.sin(y * 2 * torch.pi / 8)
    along = degrade_image(stripes, "motion_blur:length=9:angle=0", seed=0)[0]
    across = degrade_image(stripes, "motion_blur:length=9:angle=90", seed=0)[0]
    inner = (slice(None), slice(8, -8), slice(8, -8))
    assert float((along - stripes)[inner].abs().max()) < 1e-5
    assert float(across[inner].std()) < 0.3 * float(stripes[inner].std())


def test_rain_adds_bright_streaks():
    clean = photo() * 0.6
    rainy = degrade_image(clean, "rain:density=0.01:length=15:angle=90:intensity=1", seed=4)[0]
    assert bool((rainy >= clean - 1e-6).all())  # screen blend: rain only brightens
    changed = ((rainy - clean).amax(0) > 0.05).float()
    assert 0.02 < float(changed.mean()) < 0.4
    # streaks at 90° are vertical: a changed pixel's vertical neighbour is changed far more often than chance
    vertical = float((changed[1:] * changed[:-1]).sum() / changed[:-1].sum())
    horizontal = float((changed[:, 1:] * changed[:, :-1]).sum() / changed[:, :-1].sum())
    assert vertical > 0.7 and vertical > 2 * horizontal


def test_sums_apply_in_physical_order_whatever_the_order_asked():
    clean = photo()
    a = degrade_image(clean, "noise:sigma=20,haze", seed=5)[0]
    b = degrade_image(clean, "haze,noise:sigma=20", seed=5)[0]
    assert torch.equal(a, b)
    assert parse_spec("jpeg,noise,haze").names == ["haze", "noise", "jpeg"]
    # noise after haze: the residual against the hazed image has the asked sigma
    hazy = degrade_image(clean, "haze", seed=5)[0]
    assert float(((b - hazy) * 255).std()) == pytest.approx(20, rel=0.05)


def test_same_seed_same_pixels_any_batch_any_size():
    imgs = torch.stack([photo(33, 47, s) for s in range(3)])
    spec = "haze,rain,defocus,motion_blur,lowlight,noise,poisson,jpeg"
    a = degrade(imgs, spec, seed=7)
    b = degrade(imgs, spec, seed=7)
    assert torch.equal(a, b)
    assert not torch.equal(a, degrade(imgs, spec, seed=8))
    # image i of a batch is the image alone with image_seed(seed, image): the batch does not matter
    alone = degrade_image(imgs[2], spec, image_seed(7, imgs[2]))[0]
    assert torch.equal(a[2], alone)
    for h, w in ((1, 1), (5, 3), (17, 200)):
        out = degrade(torch.rand(2, 3, h, w), spec, seed=0)
        assert out.shape == (2, 3, h, w) and float(out.min()) >= 0 and float(out.max()) <= 1
    # bf16 in, bf16 out; the pixels are those of the same (bf16-rounded) photo degraded in float32
    half = imgs.to(torch.bfloat16)
    out = degrade(half, "haze,noise", seed=7)
    assert out.dtype == torch.bfloat16
    assert float((out.float() - degrade(half.float(), "haze,noise", seed=7)).abs().max()) <= 2**-8


def test_a_photo_gets_the_same_pair_wherever_it_sits_in_a_batch():
    """The seed of a pair comes from the photo's pixels, not its place: a photo added in front (or a batch
    re-ordered) leaves every other pair as it was; two different photos still get unrelated draws."""
    a, b, c = (photo(24, 32, s) for s in range(3))
    spec = "haze,noise:sigma=20"
    first = degrade(torch.stack([a, b]), spec, seed=3, copies=2)
    moved = degrade(torch.stack([c, b, a]), spec, seed=3, copies=2)
    assert torch.equal(moved[2:4], first[2:4])  # b's two copies: second in both batches
    assert torch.equal(moved[4:6], first[0:2])  # a's: first, then third
    assert not torch.equal(first[0], first[1])  # the copies of one photo differ
    # the same pixels on another device/dtype path give the same seed; a one-level change gives another
    assert image_seed(3, a) == image_seed(3, a.clone().double()) == image_seed(3, a.contiguous()[None][0])
    nudged = a.clone()
    nudged[0, 0, 0] += 1 / 255
    assert image_seed(3, nudged) != image_seed(3, a)
    assert image_seed(3, a, copy=1) != image_seed(3, a) != image_seed(4, a)


def test_the_seed_rule_is_stable_across_runs_and_platforms():
    """The seed is derive_seed(seed, SHA-256 of "<H>x<W>:" + the 8-bit pixels (channel, row, column order), copy):
    integers and a hash, the same on every machine; pixel values within 8-bit rounding share it."""
    g = torch.Generator().manual_seed(0)
    levels = torch.randint(0, 256, (3, 5, 7), generator=g, dtype=torch.uint8)
    img = levels.float() / 255
    digest = hashlib.sha256(b"5x7:" + levels.numpy().tobytes()).hexdigest()
    assert image_seed(11, img) == derive_seed(11, digest, 0)
    assert image_seed(11, img, copy=2) == derive_seed(11, digest, 2)
    assert image_seed(11, (img + 0.4 / 255).clamp(0, 1)) == image_seed(11, img)  # still the same 8-bit photo
    assert image_seed(11, img.transpose(1, 2).contiguous()) != image_seed(11, img)  # the size is part of the key


def test_bad_specs_name_the_fix():
    for spec, words in (
        ("", "name one or more"),
        ("hase", "unknown degradation 'hase'"),
        ("noise:sgma=3", "no parameter 'sgma'"),
        ("noise:sigma=300", "out of range"),
        ("noise:sigma=30..10", "lo <= hi"),
        ("noise:sigma", "name=value"),
        ("haze,haze", "given twice"),
    ):
        with pytest.raises(FDIError, match=words):
            parse_spec(spec)
    with pytest.raises(FDIError, match="batch"):
        degrade(torch.rand(3, 8, 8), "haze")


def test_degrade_folder_writes_pairs_that_extract_reads(tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    for i, (h, w) in enumerate(((40, 52), (33, 33))):
        save_image(photo(h, w, i), src / f"img{i}.png")
    out = tmp_path / "pairs"
    records = degrade_folder(src, "haze,noise:sigma=10", out, seed=1)
    pairs = pair_folders(out / "degraded", out / "clean")
    assert [p[0] for p in pairs] == ["img0", "img1"] == [r["name"] for r in records]
    for name, d, c in pairs:
        clean = load_image(c)
        assert torch.allclose(clean, load_image(src / f"{name}.png"))
        assert load_image(d).shape == clean.shape
        assert float((load_image(d) - clean).abs().mean()) > 0.02
    lines = (out / "degradations.jsonl").read_text().splitlines()
    assert json.loads(lines[0][2:])["spec"].startswith("haze")
    assert json.loads(lines[1])["effects"][1] == {"effect": "noise", "sigma": 10.0}
    # a second run refuses to mix pairs into a filled folder; --overwrite gives the same pixels
    with pytest.raises(FDIError, match="--overwrite"):
        degrade_folder(src, "haze", out)
    first = load_image(out / "degraded" / "img0.png")
    # the CLI's rule is the node's: a photo's pair is degrade() of its pixels, whatever its name or place
    save_image(degrade(load_image(src / "img0.png")[None], "haze,noise:sigma=10", seed=1)[0], tmp_path / "ref.png")
    assert torch.equal(load_image(tmp_path / "ref.png"), first)
    save_image(photo(20, 20, 9), src / "another.png")  # adding a photo leaves the other pairs as they were
    (src / "img0.png").rename(src / "renamed.png")  # and so does renaming one
    degrade_folder(src, "haze,noise:sigma=10", out, seed=1, overwrite=True)
    assert torch.equal(load_image(out / "degraded" / "renamed.png"), first)
    # copies: several degraded versions of one photo, each different
    degrade_folder(src, "noise", tmp_path / "copies", copies=2)
    names = sorted(p.name for p in (tmp_path / "copies" / "degraded").iterdir())
    assert names == ["another-0.png", "another-1.png", "img1-0.png", "img1-1.png", "renamed-0.png", "renamed-1.png"]


def test_cli_degrade(tmp_path, capsys):
    from fdi.cli import main

    src = tmp_path / "photos"
    src.mkdir()
    save_image(photo(30, 40), src / "a.png")
    args = ["degrade", "--clean", str(src), "-o", str(tmp_path / "o"), "--quiet"]
    assert main(args + ["--kind", "haze,jpeg:quality=20"]) == 0
    assert (tmp_path / "o" / "degraded" / "a.png").is_file() and (tmp_path / "o" / "clean" / "a.png").is_file()
    assert "wrote 1 pairs" in capsys.readouterr().out
    assert main(args + ["--kind", "fog"]) == 2
    assert "unknown degradation 'fog'" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()
