"""Image loading in every mode, and pairing of folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fdi.errors import FDIError
from fdi.images import load_image, pair_folders


def _rgb(h=6, w=5):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_modes(tmp_path):
    arr = _rgb()
    Image.fromarray(arr).save(tmp_path / "rgb.png")
    x = load_image(tmp_path / "rgb.png")
    assert x.shape == (3, 6, 5) and x.dtype == torch.float32
    assert torch.equal(x, torch.from_numpy(arr).permute(2, 0, 1).float() / 255)
    rgba = np.concatenate([arr, np.full((6, 5, 1), 7, np.uint8)], 2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert torch.equal(load_image(tmp_path / "rgba.png"), x)  # alpha dropped
    Image.fromarray(arr[..., 0], "L").save(tmp_path / "l.png")
    g = load_image(tmp_path / "l.png")
    assert g.shape == (3, 6, 5) and torch.equal(g[0], g[2]) and torch.equal(g[0], x[0])
    sixteen = np.arange(30, dtype=np.uint16).reshape(6, 5) * 2000
    Image.fromarray(sixteen).save(tmp_path / "16.png")
    s = load_image(tmp_path / "16.png")
    assert torch.allclose(s[0], torch.from_numpy(sixteen.astype(np.float32) / 65535), atol=1e-7)
    smooth = np.stack(
        list(np.meshgrid(np.linspace(0, 255, 16), np.linspace(0, 255, 16))) + [np.full((16, 16), 128.0)], 2
    ).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "j.jpg", quality=95)
    j = load_image(tmp_path / "j.jpg")
    assert j.shape == (3, 16, 16) and (j - torch.from_numpy(smooth).permute(2, 0, 1) / 255).abs().mean() < 0.02
    Image.fromarray(arr).convert("P").save(tmp_path / "p.png")
    assert load_image(tmp_path / "p.png").shape == (3, 6, 5)
    Image.fromarray(arr).convert("CMYK").save(tmp_path / "cmyk.jpg")
    assert load_image(tmp_path / "cmyk.jpg").shape == (3, 6, 5)


def test_bad_images(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(FDIError, match="empty"):
        load_image(tmp_path / "empty.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(FDIError, match="could not be read"):
        load_image(tmp_path / "text.png")
    frames = [Image.fromarray(_rgb()), Image.fromarray(_rgb()[::-1].copy())]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    with pytest.raises(FDIError, match="animated"):
        load_image(tmp_path / "anim.gif")
    with pytest.raises(FDIError, match="does not exist"):
        load_image(tmp_path / "missing.png")


def _folders(tmp_path, deg, cln):
    d, c = tmp_path / "d", tmp_path / "c"
    d.mkdir(), c.mkdir()
    for n in deg:
        Image.fromarray(_rgb()).save(d / n)
    for n in cln:
        Image.fromarray(_rgb()).save(c / n)
    return d, c


def test_pairing_by_stem(tmp_path):
    d, c = _folders(tmp_path, ["a.png", "b.jpg"], ["b.png", "a.jpg"])
    (d / ".DS_Store").write_text("")
    pairs = pair_folders(d, c)
    assert [(s, x.name, y.name) for s, x, y in pairs] == [("a", "a.png", "a.jpg"), ("b", "b.jpg", "b.png")]


def test_pairing_errors(tmp_path):
    d, c = _folders(tmp_path, ["a.png", "x.png"], ["a.png", "y.png"])
    with pytest.raises(FDIError) as info:
        pair_folders(d, c)
    assert "x" in str(info.value) and "y" in str(info.value) and "unmatched" in str(info.value)
    (tmp_path / "e").mkdir()
    with pytest.raises(FDIError, match="holds no images"):
        pair_folders(tmp_path / "e", c)
    (d / "notes.txt").write_text("hi")
    with pytest.raises(FDIError, match="not images"):
        pair_folders(d, c)
    with pytest.raises(FDIError, match="does not exist"):
        pair_folders(tmp_path / "nope", c)
