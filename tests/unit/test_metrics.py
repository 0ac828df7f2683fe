"""`fdi.metrics` and `python -m fdi eval`: PSNR/SSIM against direct formulas, Y channel, reports."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from fdi.errors import FDIError
from fdi.metrics import evaluate_folders, evaluate_tensors, image_metrics, load_lpips, rgb_to_y


def _img(seed, h=48, w=40):
    g = torch.Generator().manual_seed(seed)
    # smooth + noise so SSIM is neither ~0 nor ~1
    base = torch.rand(3, h // 8, w // 8, generator=g)
    base = torch.nn.functional.interpolate(base[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    return (0.8 * base + 0.2 * torch.rand(3, h, w, generator=g)).clamp(0, 1).double()


def _direct_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of Wang et al. 2004 written out: 11x11 Gaussian (sigma 1.5), 'valid' windows, L = 1."""
    r = np.arange(-5, 6, dtype=np.float64)
    k1 = np.exp(-(r**2) / (2 * 1.5**2))
    k1 /= k1.sum()
    win = torch.from_numpy(np.outer(k1, k1))[None, None]
    x = torch.from_numpy(a)[None, None]
    y = torch.from_numpy(b)[None, None]
    f = lambda t: torch.nn.functional.conv2d(t, win)  # noqa: E731
    mx, my = f(x), f(y)
    sxx, syy, sxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return float(m.mean())


def test_identical_images_have_infinite_psnr_and_unit_ssim():
    x = _img(0)
    m = image_metrics(x, x.clone())
    assert math.isinf(m["psnr"]) and m["psnr"] > 0 and math.isinf(m["psnr_y"])
    assert m["ssim"] == pytest.approx(1.0, abs=1e-12) and m["ssim_y"] == pytest.approx(1.0, abs=1e-12)
    res = evaluate_tensors([x, _img(1)], [x, _img(2)], names=["same", "other"])
    assert math.isinf(res.mean["psnr"])
    js = res.to_json()
    text = json.dumps(js, allow_nan=False)  # raises if an inf leaked into the report
    assert js["images"][0]["psnr"] is None and js["mean"]["psnr"] is None and "notes" in js
    assert math.isfinite(js["images"][1]["psnr"]) and '"psnr": null' in text
    assert " inf" in res.table()


def test_psnr_of_known_noise_matches_formula():
    gt = _img(3)
    noise = torch.randn(gt.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 0.05
    pred = gt + noise  # not clipped: the MSE is exactly what we put in
    mse = float(((pred - gt) ** 2).mean())
    m = image_metrics(pred, gt)
    assert m["psnr"] == pytest.approx(10 * math.log10(1.0 / mse), abs=1e-9)
    assert 24 < m["psnr"] < 28  # sigma 0.05 -> about 26 dB
    # Y channel: BT.601 luma from the MATLAB formula, on a 0..1 scale
    w = torch.tensor([65.481, 128.553, 24.966], dtype=torch.float64).view(3, 1, 1)
    py, gy = (16 + (pred * w).sum(0)) / 255, (16 + (gt * w).sum(0)) / 255
    mse_y = float(((py - gy) ** 2).mean())
    assert m["psnr_y"] == pytest.approx(10 * math.log10(1.0 / mse_y), abs=1e-9)
    assert rgb_to_y(np.ones((1, 1, 3)))[0, 0] * 255 == pytest.approx(235.0, abs=1e-9)
    assert rgb_to_y(np.zeros((1, 1, 3)))[0, 0] * 255 == pytest.approx(16.0, abs=1e-9)


def test_ssim_matches_direct_formula():
    gt = _img(5)
    pred = (gt + 0.1 * torch.randn(gt.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)).clamp(
        0, 1
    )
    m = image_metrics(pred, gt)
    p, g = pred.numpy(), gt.numpy()
    direct_rgb = np.mean([_direct_ssim(p[c], g[c]) for c in range(3)])
    assert 0.2 < m["ssim"] < 0.95
    assert abs(m["ssim"] - direct_rgb) < 1e-4
    py, gy = rgb_to_y(p.transpose(1, 2, 0)), rgb_to_y(g.transpose(1, 2, 0))
    assert abs(m["ssim_y"] - _direct_ssim(py, gy)) < 1e-4
    # crop_border removes pixels before the metric
    c = image_metrics(pred, gt, crop_border=4)
    assert abs(c["ssim"] - np.mean([_direct_ssim(p[k, 4:-4, 4:-4], g[k, 4:-4, 4:-4]) for k in range(3)])) < 1e-4
    assert c["psnr"] != m["psnr"]


def test_bad_inputs():
    with pytest.raises(FDIError, match="same size"):
        image_metrics(_img(0, 48, 40), _img(0, 40, 48))
    with pytest.raises(FDIError, match="too small"):
        image_metrics(_img(0, 8, 8), _img(1, 8, 8))
    with pytest.raises(FDIError, match="removes the whole"):
        image_metrics(_img(0), _img(1), crop_border=30)


def _save(t: torch.Tensor, path):
    Image.fromarray((t.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)).save(path)


def test_eval_command_table_and_report(tmp_path, capsys):
    from fdi.cli import main

    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    for i in range(3):
        g = _img(10 + i)
        _save(g, gt / f"im{i}.png")
        _save(
            (g + 0.03 * torch.randn(g.shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64)).clamp(
                0, 1
            )
            if i
            else g,
            pred / f"im{i}.jpg" if i == 2 else pred / f"im{i}.png",
        )
    report = tmp_path / "r.json"
    assert main(["eval", "--pred", str(pred), "--gt", str(gt), "--y-channel", "--report", str(report), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "psnr_y=inf" in out and "3 images" in out
    data = json.loads(report.read_text())
    assert set(data["mean"]) == {"psnr", "ssim", "psnr_y", "ssim_y"} and data["primary"] == "y"
    assert [r["name"] for r in data["images"]] == ["im0", "im1", "im2"]
    assert data["images"][0]["psnr"] is None and data["mean"]["psnr"] is None
    # the per-image numbers are those of the 8-bit files
    from fdi.images import load_image

    a, b = load_image(pred / "im1.png").double(), load_image(gt / "im1.png").double()
    assert data["images"][1]["psnr"] == pytest.approx(10 * math.log10(1 / float(((a - b) ** 2).mean())), abs=1e-6)
    res = evaluate_folders(pred, gt)
    assert res.images[1]["ssim"] == pytest.approx(data["images"][1]["ssim"], abs=1e-12)
    # missing counterpart -> error, nothing written
    (gt / "im3.png").write_bytes((gt / "im0.png").read_bytes())
    report.unlink()
    assert main(["eval", "--pred", str(pred), "--gt", str(gt), "--report", str(report), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "without prediction (im3)" in err and not report.exists()


def test_lpips_missing_is_a_clear_error():
    try:
        import lpips  # noqa: F401
    except ImportError:
        with pytest.raises(FDIError, match="pip install lpips"):
            load_lpips()
    else:  # package present: either the cached weights are there, or the message says how to get them
        try:
            fn = load_lpips()
        except FDIError as exc:
            assert "AlexNet" in str(exc)
        else:
            x = _img(0).float()
            assert fn(x, x) == pytest.approx(0.0, abs=1e-6)
