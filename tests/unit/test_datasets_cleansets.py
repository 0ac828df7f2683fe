"""Readers of the clean-only sets DIV2K, Flickr2K, LIVE1 (degradations synthesized) and of DA-CLIP's universal tree.

Every tree is a miniature made here with the layout's real file names (tests/dataset_trees.py)."""

from __future__ import annotations

import numpy as np
import pytest
from dataset_trees import make_tree, numbered, rel_pairs
from PIL import Image

from fdi.datasets import LayoutNotFound, get_dataset, read_dataset
from fdi.errors import FDIError
from fdi.images import load_image

JUNK = ["__MACOSX/DIV2K_train_HR/._0001.png", "DIV2K_train_HR/._0002.png", "DIV2K_train_HR/Thumbs.db"]


def cached(kind, split, tag, name):
    return f"cache/{kind}-{split}-{tag}-seed0/{name}.png"


# ---------------------------------------------------------------------------------------------- DIV2K
def test_div2k_official_release_train_and_valid_folders(tmp_path):
    files = numbered("DIV2K_train_HR/{:04d}.png", (1, 2, 10)) + numbered("DIV2K_valid_HR/{:04d}.png", (801, 802))
    files += ["DIV2K_train_LR_bicubic/X2/0001x2.png", "DIV2K_valid_LR_bicubic/X4/0801x4.png"] + JUNK
    make_tree(tmp_path, files)
    s = read_dataset("div2k", tmp_path, "train", cache=tmp_path / "cache")
    assert rel_pairs(s, tmp_path) == [
        (n, cached("div2k", "train", "noise50", n), f"DIV2K_train_HR/{n}.png") for n in ("0001", "0002", "0010")
    ]
    assert s.task == "noise" and s.release.startswith("official") and s.metric == "rgb"
    assert s.warnings == []  # the supplement counts DIV2K and Flickr2K together: no per-set count to compare
    t = read_dataset("div2k", tmp_path, "test", task="jpeg", cache=tmp_path / "cache")
    assert rel_pairs(t, tmp_path) == [
        (n, cached("div2k", "test", "jpeg10", n), f"DIV2K_valid_HR/{n}.png") for n in ("0801", "0802")
    ]


def test_div2k_snu_repack_splits_its_900_images_by_number(tmp_path):
    files = numbered("DIV2K/DIV2K_train_HR/{:04d}.png", (1, 800, 801, 900))
    files += numbered("DIV2K/DIV2K_train_LR_bicubic/X2/{:04d}x2.png", (1, 801))
    make_tree(tmp_path / "dl", files)
    s = read_dataset("div2k", tmp_path / "dl", "train", cache=tmp_path / "cache")
    assert [(p.name, p.clean.name) for p in s.pairs] == [("0001", "0001.png"), ("0800", "0800.png")]
    assert s.release.startswith("SNU") and s.top.name == "DIV2K_train_HR"
    t = read_dataset("div2k", tmp_path / "dl" / "DIV2K", "test", cache=tmp_path / "cache")
    assert [p.name for p in t.pairs] == ["0801", "0900"] and t.release.startswith("SNU")


def test_div2k_test_split_needs_the_valid_folder(tmp_path):
    make_tree(tmp_path, numbered("DIV2K_train_HR/{:04d}.png", (1, 2)))
    with pytest.raises(LayoutNotFound) as err:
        read_dataset("div2k", tmp_path, "test", cache=tmp_path / "cache")
    assert "DIV2K_valid_HR" in str(err.value) and "DIV2K_train_HR/ (2 images)" in str(err.value)
    assert not (tmp_path / "cache").exists()


# ---------------------------------------------------------------------------------------------- synthesis
def _gray(path, size=32, level=128):
    Image.fromarray(np.full((size, size, 3), level, np.uint8)).save(path)


def test_noise_is_sigma_50_written_once_and_seeded_by_name(tmp_path):
    make_tree(tmp_path / "a", numbered("DIV2K_train_HR/{:04d}.png", (1, 2)))
    make_tree(tmp_path / "b", numbered("DIV2K_train_HR/{:04d}.png", (1,)))
    for root in ("a", "b"):
        _gray(tmp_path / root / "DIV2K_train_HR" / "0001.png")
    _gray(tmp_path / "a" / "DIV2K_train_HR" / "0002.png")
    s = read_dataset("div2k", tmp_path / "a", "train", cache=tmp_path / "ca")
    noisy, clean = load_image(s.pairs[0].degraded), load_image(s.pairs[0].clean)
    residual = (noisy - clean).numpy()
    # mid-grey clean image: almost no clipping, so the residual's spread is σ = 50/255 = 0.196 (8-bit storage adds
    # 0.3/255); its mean is near 0
    assert 0.185 < float(residual.std()) < 0.207 and abs(float(residual.mean())) < 0.02
    # seeded by (seed, name): the same file in a folder with other files gets the same noise; another name does not
    alone = read_dataset("div2k", tmp_path / "b", "train", cache=tmp_path / "cb")
    assert np.array_equal(load_image(alone.pairs[0].degraded).numpy(), noisy.numpy())
    assert not np.array_equal(load_image(s.pairs[1].degraded).numpy(), noisy.numpy())
    seed1 = read_dataset("div2k", tmp_path / "a", "train", cache=tmp_path / "ca", seed=1)
    assert seed1.pairs[0].degraded.parent.name == "div2k-train-noise50-seed1"
    assert not np.array_equal(load_image(seed1.pairs[0].degraded).numpy(), noisy.numpy())
    # written once: a second read reuses the file
    mtime = s.pairs[0].degraded.stat().st_mtime_ns
    again = read_dataset("div2k", tmp_path / "a", "train", cache=tmp_path / "ca")
    assert again.pairs[0].degraded == s.pairs[0].degraded and s.pairs[0].degraded.stat().st_mtime_ns == mtime


def test_jpeg_quality_10_differs_from_clean_and_is_reproducible(tmp_path):
    make_tree(tmp_path, ["Flickr2K/Flickr2K_HR/000001.png"], (32, 32))
    s = read_dataset("flickr2k", tmp_path, "train", task="jpeg", cache=tmp_path / "c1")
    jpeg, clean = load_image(s.pairs[0].degraded), load_image(s.pairs[0].clean)
    assert s.pairs[0].degraded.parent.name == "flickr2k-train-jpeg10-seed0"
    assert float((jpeg - clean).abs().mean()) > 0.05  # quality 10 on random pixels loses most of them
    other = read_dataset("flickr2k", tmp_path, "train", task="jpeg", cache=tmp_path / "c2")
    assert np.array_equal(load_image(other.pairs[0].degraded).numpy(), jpeg.numpy())


# ---------------------------------------------------------------------------------------------- Flickr2K
def test_flickr2k_reads_hr_and_ignores_lr_folders(tmp_path):
    files = numbered("Flickr2K/Flickr2K_HR/{:06d}.png", (1, 2, 2650))
    files += ["Flickr2K/Flickr2K_LR_bicubic/X2/000001x2.png", "Flickr2K/Flickr2K_LR_unknown/X4/000001x4.png"]
    files += ["__MACOSX/Flickr2K/Flickr2K_HR/._000001.png"]
    make_tree(tmp_path, files)
    s = read_dataset("flickr2k", tmp_path, "train", cache=tmp_path / "cache")
    assert rel_pairs(s, tmp_path) == [
        (n, cached("flickr2k", "train", "noise50", n), f"Flickr2K/Flickr2K_HR/{n}.png")
        for n in ("000001", "000002", "002650")
    ]
    assert s.warnings == []
    with pytest.raises(FDIError, match="no 'test' split"):
        read_dataset("flickr2k", tmp_path, "test", cache=tmp_path / "cache")
    make_tree(tmp_path / "wrong", ["Flickr2K/Flickr2K_LR_bicubic/X2/000001x2.png"])
    with pytest.raises(LayoutNotFound, match="Flickr2K_HR"):
        read_dataset("flickr2k", tmp_path / "wrong", "train", cache=tmp_path / "cache2")


# ---------------------------------------------------------------------------------------------- LIVE1
def test_live1_from_the_live_release_skips_its_distorted_folders(tmp_path):
    files = [f"databaserelease2/refimgs/{n}.bmp" for n in ("bikes", "caps", "womanhat")]
    files += ["databaserelease2/jpeg/img1.bmp", "databaserelease2/jp2k/img1.bmp", "databaserelease2/wn/img1.bmp"]
    files += ["databaserelease2/dmos.mat", "databaserelease2/refimgs/._bikes.bmp"]
    make_tree(tmp_path, files)
    s = read_dataset("live1", tmp_path, "test", cache=tmp_path / "cache")
    assert rel_pairs(s, tmp_path) == [
        (n, cached("live1", "test", "jpeg10", n), f"databaserelease2/refimgs/{n}.bmp")
        for n in ("bikes", "caps", "womanhat")
    ]
    assert s.task == "jpeg" and s.metric == "rgb" and s.release.startswith("LIVE")
    assert len(s.warnings) == 1
    assert "3 pairs found" in s.warnings[0] and "reports 29" in s.warnings[0] and s.release in s.warnings[0]
    with pytest.raises(FDIError, match="no 'train' split"):
        read_dataset("live1", tmp_path, "train", cache=tmp_path / "cache")


@pytest.mark.parametrize("folder", ["testsets/LIVE1", "testsets/LIVE1_color"])
def test_live1_test_set_folders(tmp_path, folder):
    make_tree(tmp_path, [f"{folder}/{n}.bmp" for n in ("bikes", "parrots")] + ["testsets/LIVE1_gray/bikes.png"])
    s = read_dataset("live1", tmp_path, "test", cache=tmp_path / "cache")
    assert rel_pairs(s, tmp_path) == [
        (n, cached("live1", "test", "jpeg10", n), f"{folder}/{n}.bmp") for n in ("bikes", "parrots")
    ]
    assert s.release.startswith("test-set folder")
    assert any("2 pairs found" in w and s.release in w for w in s.warnings)


def test_live1_wrong_tree(tmp_path):
    make_tree(tmp_path, ["CBSD68/original_png/0000.png"])
    with pytest.raises(LayoutNotFound) as err:
        read_dataset("live1", tmp_path, "test", cache=tmp_path / "cache")
    assert "refimgs" in str(err.value) and "CBSD68/" in str(err.value)
    assert not (tmp_path / "cache").exists()


# ---------------------------------------------------------------------------------------------- DA-CLIP
def daclip_tree(root):
    u = "datasets/universal"
    files = [f"{u}/daclip_train.csv", f"{u}/daclip_val.csv"]
    # rainy: Rain100H's own names (IR-SDE's instructions: copy rain-N into LQ, norain-N into GT); rain-3 lacks GT
    files += numbered(f"{u}/train/rainy/LQ/rain-{{}}.png", (1, 2, 3))
    files += numbered(f"{u}/train/rainy/GT/norain-{{}}.png", (1, 2))
    files += [f"{u}/train/rainy/LQ/._rain-1.png", f"{u}/__MACOSX/train/rainy/LQ/rain-9.png"]
    files += numbered(f"{u}/val/rainy/LQ/{{:03d}}.png", (1, 2)) + numbered(f"{u}/val/rainy/GT/{{:03d}}.png", (1, 2))
    files += [f"{u}/val/hazy/LQ/0001_0.8_0.2.jpg", f"{u}/val/hazy/GT/0001.png"]
    files += [f"{u}/val/hazy/LQ/0002_0.9_0.16.jpg", f"{u}/val/hazy/GT/0002_0.9_0.16.jpg"]
    files += [f"{u}/val/raindrop/LQ/0_rain.png", f"{u}/val/raindrop/GT/0_clean.png"]
    files += [f"{u}/train/shadowed/LQ/IMG_1_5453.jpg", f"{u}/train/shadowed/GT/IMG_1_5453_no_shadow.jpg"]
    files += [f"{u}/val/shadowed/LQ/IMG_1_5453.jpg", f"{u}/val/shadowed/GT/IMG_1_5453_free.jpg"]
    files += [f"{u}/val/motion-blurry/{d}/GOPR0384_11_00_000001.png" for d in ("LQ", "GT")]
    files += numbered(f"{u}/val/noisy/GT/{{}}.png", (101085, 105025))
    files += [f"{u}/val/jpeg-compressed/{d}/bikes.png" for d in ("LQ", "GT")]
    return make_tree(root, files, (16, 16))


def test_daclip_pairs_by_name_and_by_the_source_sets_rules(tmp_path):
    daclip_tree(tmp_path)
    u = "datasets/universal"
    tr = read_dataset("daclip", tmp_path, "train")
    assert tr.task == "rainstreak"  # the first of core.TASKS that DA-CLIP has
    assert rel_pairs(tr, tmp_path) == [
        ("rain-1", f"{u}/train/rainy/LQ/rain-1.png", f"{u}/train/rainy/GT/norain-1.png"),
        ("rain-2", f"{u}/train/rainy/LQ/rain-2.png", f"{u}/train/rainy/GT/norain-2.png"),
    ]
    assert [p.name for p in tr.missing_gt] == ["rain-3.png"]
    assert any("no ground truth" in w and "rain-3.png" in w for w in tr.warnings)
    assert any("2 pairs found" in w and "reports 1800" in w and tr.release in w for w in tr.warnings)
    te = read_dataset("daclip", tmp_path, "test")
    assert [p.name for p in te.pairs] == ["001", "002"] and te.top.name == "rainy" and te.top.parent.name == "val"
    assert any("reports 100" in w for w in te.warnings)
    hazy = read_dataset("daclip", tmp_path, "test", task="haze")
    assert [(p.degraded.name, p.clean.name) for p in hazy.pairs] == [
        ("0001_0.8_0.2.jpg", "0001.png"),
        ("0002_0.9_0.16.jpg", "0002_0.9_0.16.jpg"),
    ]
    assert any("reports 1000" in w for w in hazy.warnings)
    drop = read_dataset("daclip", tmp_path, "test", task="raindrop")
    assert [(p.name, p.clean.name) for p in drop.pairs] == [("0_rain", "0_clean.png")]
    for split, gt in (("train", "IMG_1_5453_no_shadow.jpg"), ("test", "IMG_1_5453_free.jpg")):
        sh = read_dataset("daclip", tmp_path, split, task="shadow")
        assert [(p.name, p.clean.name) for p in sh.pairs] == [("IMG_1_5453", gt)]
    blur = read_dataset("daclip", tmp_path, "test", task="motion-blur")
    assert rel_pairs(blur, tmp_path) == [
        (
            "GOPR0384_11_00_000001",
            f"{u}/val/motion-blurry/LQ/GOPR0384_11_00_000001.png",
            f"{u}/val/motion-blurry/GT/GOPR0384_11_00_000001.png",
        )
    ]
    assert any("reports 1111" in w for w in blur.warnings)


def test_daclip_synthesizes_noisy_lq_when_only_gt_is_there(tmp_path):
    daclip_tree(tmp_path)
    with pytest.raises(FDIError, match="cache"):
        read_dataset("daclip", tmp_path, "test", task="noise")
    s = read_dataset("daclip", tmp_path, "test", task="noise", cache=tmp_path / "cache")
    assert rel_pairs(s, tmp_path) == [
        (n, cached("daclip", "test", "noise50", n), f"datasets/universal/val/noisy/GT/{n}.png")
        for n in ("101085", "105025")
    ]
    assert any("reports 68" in w for w in s.warnings)
    # an LQ folder that is there is read as it is (DA-CLIP's generate_LQ.py output), nothing synthesized
    j = read_dataset("daclip", tmp_path, "test", task="jpeg", cache=tmp_path / "cache2")
    assert [p.degraded.parent.name for p in j.pairs] == ["LQ"] and not (tmp_path / "cache2").exists()
    assert any("1 pairs found" in w and "reports 29" in w for w in j.warnings)


def test_daclip_tasks_and_wrong_trees(tmp_path):
    reader = get_dataset("daclip")
    assert reader.tasks == (
        "rainstreak",
        "raindrop",
        "haze",
        "snow",
        "lowlight",
        "noise",
        "motion-blur",
        "shadow",
        "jpeg",
        "inpainting",
    )
    daclip_tree(tmp_path)
    with pytest.raises(FDIError, match="no task 'defocus-blur'"):
        read_dataset("daclip", tmp_path, "test", task="defocus-blur")
    # the tree holds no snowy folder: the error lists the expected tree and what is there
    with pytest.raises(LayoutNotFound) as err:
        read_dataset("daclip", tmp_path, "test", task="snow")
    msg = str(err.value)
    assert "universal/val/<degradation>/LQ" in msg and "snow → snowy" in msg and "datasets/universal/" in msg
    # inpainting has no published counts in the supplement: no count warning
    make_tree(tmp_path / "inp", [f"val/uncompleted/{d}/00001.jpg" for d in ("LQ", "GT")])
    s = read_dataset("daclip", tmp_path / "inp", "test", task="inpainting")
    assert [p.name for p in s.pairs] == ["00001"] and s.warnings == []
    # ROOT may be the degradation folder itself
    one = read_dataset("daclip", tmp_path / "datasets" / "universal" / "val" / "hazy", "test", task="haze")
    assert len(one.pairs) == 2
