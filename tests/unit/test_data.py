"""`fdi.data`: pair sources, joint crop/flip, determinism, and the resumable sample stream."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fdi.data import PairedImageDataset, PairStream, collect_pairs, read_pairs_file, transform_pair
from fdi.errors import FDIError


def _write(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _arr(seed, h, w):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_pairs_from_csv_jsonl_and_folders(tmp_path):
    for i in range(3):
        _write(tmp_path / "data" / "d" / f"p{i}.png", _arr(i, 20, 24))
        _write(tmp_path / "data" / "c" / f"p{i}.jpg", _arr(10 + i, 20, 24))
    lst = tmp_path / "data" / "list.csv"
    lst.write_text("degraded,clean\n" + "".join(f"d/p{i}.png,c/p{i}.jpg\n" for i in range(3)) + "\n")
    a = read_pairs_file(lst)
    assert [p.name for p in a] == ["p0", "p1", "p2"] and a[1].clean == tmp_path / "data" / "c" / "p1.jpg"
    jl = tmp_path / "data" / "list.jsonl"
    jl.write_text(
        "# comment\n"
        + "".join(
            json.dumps({"degraded": f"d/p{i}.png", "clean": str(tmp_path / "data" / "c" / f"p{i}.jpg")}) + "\n"
            for i in range(2)
        )
    )
    b = collect_pairs(pairs_file=jl)
    assert [(p.degraded, p.clean) for p in b] == [(p.degraded, p.clean) for p in a[:2]]
    c = collect_pairs(tmp_path / "data" / "d", tmp_path / "data" / "c")
    assert [(p.name, p.degraded, p.clean) for p in c] == [(p.name, p.degraded, p.clean) for p in a]


def test_pair_source_errors(tmp_path):
    with pytest.raises(FDIError, match="no training pairs"):
        collect_pairs()
    (tmp_path / "d").mkdir()
    (tmp_path / "c").mkdir()
    with pytest.raises(FDIError, match="holds no images"):  # fewer than one pair
        collect_pairs(tmp_path / "d", tmp_path / "c")
    empty = tmp_path / "empty.csv"
    empty.write_text("degraded,clean\n")
    with pytest.raises(FDIError, match="lists no pairs"):
        read_pairs_file(empty)
    bad = tmp_path / "bad.csv"
    bad.write_text("input,target\na.png,b.png\n")
    with pytest.raises(FDIError, match="'degraded' and 'clean'"):
        read_pairs_file(bad)
    missing = tmp_path / "m.jsonl"
    missing.write_text(json.dumps({"degraded": "nope.png", "clean": "nope2.png"}) + "\n")
    with pytest.raises(FDIError, match="line 1: degraded image .* does not exist"):
        read_pairs_file(missing)
    with pytest.raises(FDIError, match="one way, not --degraded/--clean and --pairs-file"):
        collect_pairs(tmp_path / "d", tmp_path / "c", pairs_file=missing)
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(FDIError, match=r"\.csv"):
        read_pairs_file(tmp_path / "m.txt")


def test_same_crop_and_flip_for_both_images():
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(3, 16, 40, generator=g)
    degraded = 0.5 * clean + torch.tensor([0.3, 0.1, 0.0]).view(3, 1, 1)  # a colour cast: pixelwise map
    seen_flip = set()
    for s in range(12):
        d, c = transform_pair(degraded, clean, 16, torch.Generator().manual_seed(s))
        assert d.shape == c.shape == (3, 16, 16)
        assert torch.allclose(d, 0.5 * c + torch.tensor([0.3, 0.1, 0.0]).view(3, 1, 1), atol=1e-6)
        # find where the crop came from, and whether it was flipped
        for left in range(25):
            win = clean[:, :, left : left + 16]
            if torch.equal(c, win):
                seen_flip.add(False)
            if torch.equal(c, win.flip(-1)):
                seen_flip.add(True)
    assert seen_flip == {True, False}
    d, c = transform_pair(degraded, clean, 16, None)  # validation: centre crop, no flip
    assert torch.equal(c, clean[:, :, 12:28])


def test_pairs_of_different_sizes_are_resized_together():
    y, x = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 96), indexing="ij")
    big = torch.stack([x, y, 0.5 * (x + y)])
    small = torch.nn.functional.interpolate(big[None], size=(32, 48), mode="bilinear", align_corners=True)[0]
    d, c = transform_pair(small, big, 32, torch.Generator().manual_seed(3))  # degraded small, clean big
    assert d.shape == c.shape == (3, 32, 32)
    assert (d - c).abs().max() < 0.03  # same content at the same place


def test_dataset_is_deterministic_and_handles_modes(tmp_path):
    _write(tmp_path / "d" / "a.png", _arr(0, 30, 20))
    (tmp_path / "c").mkdir()
    Image.fromarray(_arr(1, 60, 40)[..., 0], "L").save(tmp_path / "c" / "a.png")  # grayscale, twice the size
    rgba = np.concatenate([_arr(2, 30, 20), np.full((30, 20, 1), 9, np.uint8)], 2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "d" / "b.png")
    _write(tmp_path / "c" / "b.png", _arr(3, 30, 20))
    pairs = collect_pairs(tmp_path / "d", tmp_path / "c")
    ds = PairedImageDataset(pairs, resolution=16, seed=7)
    a, b = ds[1], ds[1]
    assert a["degraded"].shape == a["clean"].shape == (3, 16, 16) and a["index"] == 1
    assert torch.equal(a["degraded"], b["degraded"]) and torch.equal(a["clean"], b["clean"])
    gray = ds[0]["clean"]  # pair "a": grayscale clean image at twice the size
    assert gray.shape == (3, 16, 16) and torch.equal(gray[0], gray[1])
    ds2 = PairedImageDataset(pairs, resolution=16, seed=8)
    other_epochs = [ds[1 + 2 * e]["degraded"] for e in range(1, 6)] + [ds2[1]["degraded"]]
    assert any(not torch.equal(a["degraded"], o) for o in other_epochs)
    with pytest.raises(FDIError, match="multiple of 8"):
        PairedImageDataset(pairs, resolution=12)
    with pytest.raises(FDIError, match="at least one"):
        PairedImageDataset([], resolution=16)


def test_stream_epochs_processes_and_resume():
    n, b, P = 5, 2, 3
    single = PairStream(n, b * P, seed=1, start=0, stop=4)
    keys = list(single)
    # every epoch visits every pair exactly once
    assert len(keys) == 24
    for e in range(4):
        chunk = keys[e * n : (e + 1) * n]
        assert sorted(k - e * n for k in chunk) == list(range(n))
    # P processes with micro-batch b together see exactly the single-process batches
    per_proc = [list(PairStream(n, b, seed=1, num_processes=P, process_index=p, start=0, stop=4)) for p in range(P)]
    for g in range(4):
        together = sum((per_proc[p][g * b : (g + 1) * b] for p in range(P)), [])
        assert together == keys[g * b * P : (g + 1) * b * P]
    # resuming at micro-batch 2 continues exactly where a full run would be
    assert list(PairStream(n, b * P, seed=1, start=2, stop=4)) == keys[2 * b * P :]
    assert len(PairStream(n, b, start=2, stop=4)) == 4
    assert list(PairStream(n, b * P, seed=2, start=0, stop=4)) != keys
