"""Readers of the haze, low-light, blur and shadow sets: RESIDE-6K, SOTS indoor/outdoor, LOL, MEF, GoPro, DPDD, SRD.

Every tree is a miniature made here with the real file names of each release (tests/dataset_trees.py)."""

from __future__ import annotations

import pytest
from dataset_trees import make_tree, numbered, rel_pairs

from fdi.datasets import LayoutNotFound, read_dataset
from fdi.errors import FDIError

JUNK = ["__MACOSX/{d}/._{f}", "{d}/._{f}", "{d}/Thumbs.db"]


def junk(folder: str, name: str):
    return [j.format(d=folder, f=name) for j in JUNK]


def count_warning(split, release: str, expected: int) -> bool:
    return any(f"reports {expected}" in w and release in w for w in split.warnings)


# ---------------------------------------------------------------------------------------------- RESIDE-6K
def test_reside6k_pairs_equal_names_and_reside_names(tmp_path):
    files = ["RESIDE-6K/train/hazy/1_1_0.90179.png", "RESIDE-6K/train/GT/1_1_0.90179.png"]
    files += ["RESIDE-6K/train/hazy/0025_0.8_0.1.jpg", "RESIDE-6K/train/GT/0025.png"]
    files += ["RESIDE-6K/train/hazy/0031_1_0.2.jpg"]  # no ground truth
    files += numbered("RESIDE-6K/test/hazy/{}_2.png", (1400, 1401)) + numbered("RESIDE-6K/test/GT/{}.png", (1400, 1401))
    files += junk("RESIDE-6K/train/hazy", "0025_0.8_0.1.jpg")
    make_tree(tmp_path, files)
    s = read_dataset("reside6k", tmp_path, "train")
    assert rel_pairs(s, tmp_path) == [
        ("1_1_0.90179", "RESIDE-6K/train/hazy/1_1_0.90179.png", "RESIDE-6K/train/GT/1_1_0.90179.png"),
        ("0025_0.8_0.1", "RESIDE-6K/train/hazy/0025_0.8_0.1.jpg", "RESIDE-6K/train/GT/0025.png"),
    ]  # natural order: 1 before 25
    assert [p.name for p in s.missing_gt] == ["0031_1_0.2.jpg"]
    assert any("no ground truth" in w and "0031_1_0.2.jpg" in w for w in s.warnings)
    assert count_warning(s, "DehazeFormer release", 6000) and s.metric == "rgb" and s.task == "haze"
    t = read_dataset("reside6k", tmp_path / "RESIDE-6K", "test")
    assert [(p.name, p.clean.name) for p in t.pairs] == [("1400_2", "1400.png"), ("1401_2", "1401.png")]
    assert count_warning(t, "DehazeFormer release", 1000)


# ---------------------------------------------------------------------------------------------- SOTS
def test_sots_indoor_ten_hazy_per_clear_image(tmp_path):
    files = numbered("SOTS/indoor/hazy/1400_{}.png", (1, 2, 10)) + ["SOTS/indoor/hazy/1401_1.png"]
    files += ["SOTS/indoor/gt/1400.png", "SOTS/indoor/gt/1401.png"] + junk("SOTS/indoor/gt", "1400.png")
    make_tree(tmp_path / "data", files)
    s = read_dataset("sots-indoor", tmp_path / "data", "test")
    assert rel_pairs(s, tmp_path / "data") == [
        ("1400_1", "SOTS/indoor/hazy/1400_1.png", "SOTS/indoor/gt/1400.png"),
        ("1400_2", "SOTS/indoor/hazy/1400_2.png", "SOTS/indoor/gt/1400.png"),
        ("1400_10", "SOTS/indoor/hazy/1400_10.png", "SOTS/indoor/gt/1400.png"),
        ("1401_1", "SOTS/indoor/hazy/1401_1.png", "SOTS/indoor/gt/1401.png"),
    ]
    assert s.release == "RESIDE release" and s.warnings == []  # the supplement gives no SOTS count
    with pytest.raises(FDIError, match="no 'train' split"):
        read_dataset("sots-indoor", tmp_path / "data", "train")


def test_sots_indoor_nyuhaze500_dehazeformer_and_deanet(tmp_path):
    make_tree(tmp_path / "a", ["SOTS/indoor/nyuhaze500/hazy/1400_3.png", "SOTS/indoor/nyuhaze500/gt/1400.png"])
    assert rel_pairs(read_dataset("sots-indoor", tmp_path / "a", "test"), tmp_path / "a") == [
        ("1400_3", "SOTS/indoor/nyuhaze500/hazy/1400_3.png", "SOTS/indoor/nyuhaze500/gt/1400.png")
    ]
    make_tree(tmp_path / "b", ["RESIDE-IN/test/hazy/1400_3.png", "RESIDE-IN/test/GT/1400_3.png"])
    make_tree(tmp_path / "b", ["RESIDE-IN/train/hazy/1_1_0.9.png", "RESIDE-IN/train/GT/1_1_0.9.png"])
    b = read_dataset("sots-indoor", tmp_path / "b", "test")
    assert rel_pairs(b, tmp_path / "b") == [
        ("1400_3", "RESIDE-IN/test/hazy/1400_3.png", "RESIDE-IN/test/GT/1400_3.png")
    ]
    assert b.release == "DehazeFormer repack"
    make_tree(tmp_path / "c", ["ITS/test/hazy/1400_1.png", "ITS/test/clear/1400.png", "ITS/train/hazy/1_1_0.9.png"])
    c = read_dataset("sots-indoor", tmp_path / "c", "test")
    assert rel_pairs(c, tmp_path / "c") == [("1400_1", "ITS/test/hazy/1400_1.png", "ITS/test/clear/1400.png")]
    assert c.release == "DEA-Net repack"


def test_sots_outdoor_jpg_hazy_png_gt_and_missing_gt(tmp_path):
    files = ["SOTS/outdoor/hazy/0001_0.8_0.2.jpg", "SOTS/outdoor/hazy/0002_0.8_0.08.jpg"]
    files += ["SOTS/outdoor/hazy/0003_1_0.2.jpg", "SOTS/outdoor/gt/0001.png", "SOTS/outdoor/gt/0002.png"]
    files += ["SOTS/indoor/hazy/1400_1.png", "SOTS/indoor/gt/1400.png"]
    make_tree(tmp_path, files)
    s = read_dataset("sots-outdoor", tmp_path, "test")
    assert rel_pairs(s, tmp_path) == [
        ("0001_0.8_0.2", "SOTS/outdoor/hazy/0001_0.8_0.2.jpg", "SOTS/outdoor/gt/0001.png"),
        ("0002_0.8_0.08", "SOTS/outdoor/hazy/0002_0.8_0.08.jpg", "SOTS/outdoor/gt/0002.png"),
    ]
    assert [p.name for p in s.missing_gt] == ["0003_1_0.2.jpg"]
    assert any("no ground truth" in w and "0003_1_0.2.jpg" in w for w in s.warnings)
    make_tree(tmp_path / "r", ["RESIDE-OUT/test/hazy/0001_0.8_0.2.jpg", "RESIDE-OUT/test/GT/0001_0.8_0.2.jpg"])
    make_tree(tmp_path / "o", ["OTS/test/hazy/0001_0.8_0.2.jpg", "OTS/test/clear/0001.png"])
    assert [p.clean.name for p in read_dataset("sots-outdoor", tmp_path / "r", "test").pairs] == ["0001_0.8_0.2.jpg"]
    assert [p.clean.name for p in read_dataset("sots-outdoor", tmp_path / "o", "test").pairs] == ["0001.png"]


def test_haze_wrong_trees(tmp_path):
    make_tree(tmp_path, ["SOTS/indoor/hazy/1400_1.png", "SOTS/indoor/gt/1400.png"])
    with pytest.raises(LayoutNotFound, match="RESIDE-6K/train/hazy"):
        read_dataset("reside6k", tmp_path, "train")
    with pytest.raises(LayoutNotFound, match="SOTS/outdoor/hazy/0001_0.8_0.2.jpg"):
        read_dataset("sots-outdoor", tmp_path, "test")


# ---------------------------------------------------------------------------------------------- LOL
def test_lol_release_and_retinexformer_repack(tmp_path):
    files = numbered("LOLdataset/our485/low/{}.png", (2, 10, 100)) + numbered("LOLdataset/our485/high/{}.png", (2, 10))
    files += numbered("LOLdataset/eval15/low/{}.png", (1, 22)) + numbered("LOLdataset/eval15/high/{}.png", (1, 22))
    files += junk("LOLdataset/our485/low", "2.png")
    make_tree(tmp_path / "a", files)
    s = read_dataset("lol", tmp_path / "a", "train")
    assert rel_pairs(s, tmp_path / "a") == [
        ("2", "LOLdataset/our485/low/2.png", "LOLdataset/our485/high/2.png"),
        ("10", "LOLdataset/our485/low/10.png", "LOLdataset/our485/high/10.png"),
    ]
    assert [p.name for p in s.missing_gt] == ["100.png"]
    assert count_warning(s, "LOL release", 485) and s.task == "lowlight" and s.metric == "rgb"
    t = read_dataset("lol", tmp_path / "a" / "LOLdataset" / "eval15", "test")
    assert [p.name for p in t.pairs] == ["1", "22"] and count_warning(t, "LOL release", 15)
    make_tree(tmp_path / "b", ["LOLv1/Train/input/5.png", "LOLv1/Train/target/5.png", "LOLv1/Test/input/1.png"])
    make_tree(tmp_path / "b", ["LOLv1/Test/target/1.png"])
    r = read_dataset("lol", tmp_path / "b", "test")
    assert rel_pairs(r, tmp_path / "b") == [("1", "LOLv1/Test/input/1.png", "LOLv1/Test/target/1.png")]
    assert count_warning(r, "Retinexformer repack", 15)
    with pytest.raises(LayoutNotFound, match="our485/low/N.png"):
        read_dataset("lol", tmp_path / "b" / "LOLv1" / "Test" / "input", "test")


# ---------------------------------------------------------------------------------------------- MEF
def test_mef_has_no_ground_truth_each_pair_is_its_input(tmp_path):
    make_tree(tmp_path, ["test_data/MEF/Lamp.png", "test_data/MEF/Balloons.png"] + junk("test_data/MEF", "Lamp.png"))
    make_tree(tmp_path, ["test_data/LIME/1.bmp"])
    s = read_dataset("mef", tmp_path, "test")
    assert rel_pairs(s, tmp_path) == [
        ("Balloons", "test_data/MEF/Balloons.png", "test_data/MEF/Balloons.png"),
        ("Lamp", "test_data/MEF/Lamp.png", "test_data/MEF/Lamp.png"),
    ]
    assert count_warning(s, "low-light test folder", 17)
    assert any("no ground truth" in w and "do not apply" in w for w in s.warnings)
    assert get_reference(s.dataset) is False
    with pytest.raises(FDIError, match="no 'train' split"):
        read_dataset("mef", tmp_path, "train")
    make_tree(tmp_path / "stack", ["MEF/Lamp/Lamp_1.png"])  # an exposure stack is not the low-light folder
    with pytest.raises(LayoutNotFound, match="MEF/Lamp.png"):
        read_dataset("mef", tmp_path / "stack", "test")


def get_reference(name: str) -> bool:
    from fdi.datasets import get_dataset

    return get_dataset(name).reference


# ---------------------------------------------------------------------------------------------- GoPro
def gopro_large(root, sequences=("GOPR0372_07_00", "GOPR0374_11_00"), split="train"):
    files = []
    for seq in sequences:
        for kind in ("blur", "blur_gamma", "sharp"):
            files += numbered(f"GOPRO_Large/{split}/{seq}/{kind}/{{:06d}}.png", (47, 48))
    files += junk(f"GOPRO_Large/{split}/{sequences[0]}/blur", "000047.png")
    return make_tree(root, files)


def test_gopro_large_names_pairs_by_sequence_and_reads_blur_not_blur_gamma(tmp_path):
    gopro_large(tmp_path)
    make_tree(tmp_path, ["GOPRO_Large/train/GOPR0374_11_00/blur/000049.png"])  # no sharp frame
    s = read_dataset("gopro", tmp_path, "train")
    assert rel_pairs(s, tmp_path) == [
        (f"{q}-{f}", f"GOPRO_Large/train/{q}/blur/{f}.png", f"GOPRO_Large/train/{q}/sharp/{f}.png")
        for q in ("GOPR0372_07_00", "GOPR0374_11_00")
        for f in ("000047", "000048")
    ]
    assert [p.name for p in s.missing_gt] == ["000049.png"]
    assert count_warning(s, "GOPRO_Large release", 2103) and s.metric == "rgb" and s.task == "motion-blur"
    with pytest.raises(LayoutNotFound, match="GOPRO_Large/test/GOPR0384_11_00"):
        read_dataset("gopro", tmp_path, "test")


def test_gopro_repacks(tmp_path):
    names = ["GOPR0384_11_00-000001", "GOPR0384_11_05-004001"]
    make_tree(tmp_path / "m", [f"Datasets/GoPro/test/{k}/{n}.png" for k in ("input", "target") for n in names])
    make_tree(tmp_path / "m", [f"Datasets/GoPro/train/{k}/GOPR0372_07_00-000047.png" for k in ("input", "target")])
    t = read_dataset("gopro", tmp_path / "m", "test")
    assert rel_pairs(t, tmp_path / "m") == [
        (n, f"Datasets/GoPro/test/input/{n}.png", f"Datasets/GoPro/test/target/{n}.png") for n in names
    ]
    assert count_warning(t, "MPRNet/Restormer repack", 1111)
    assert [p.name for p in read_dataset("gopro", tmp_path / "m", "train").pairs] == ["GOPR0372_07_00-000047"]
    make_tree(tmp_path / "r", [f"Datasets/test/GoPro/{k}/{names[0]}.png" for k in ("input", "target")])
    assert [p.name for p in read_dataset("gopro", tmp_path / "r", "test").pairs] == [names[0]]


# ---------------------------------------------------------------------------------------------- DPDD
#: the first test scenes of DPDD's own lists (DPDNet/file_names/test_src.npy, test_trg.npy)
DPDD_TEST = [("1P0A0917", "1P0A0916"), ("1P0A0933", "1P0A0932"), ("1P0A0960", "1P0A0959"), ("1P0A0984", "1P0A0985")]


def dpdd(root, split="test", scenes=DPDD_TEST, top="dd_dp_dataset_png"):
    files = []
    for s, t in scenes:
        files += [f"{top}/{split}_c/source/{s}.png", f"{top}/{split}_c/target/{t}.png"]
        files += [f"{top}/{split}_l/source/{s}_L.png", f"{top}/{split}_r/source/{s}_R.png"]
    files += junk(f"{top}/{split}_c/source", f"{scenes[0][0]}.png")
    return make_tree(root, files)


def test_dpdd_pairs_sorted_lists_whose_names_differ(tmp_path):
    dpdd(tmp_path)
    dpdd(tmp_path, "val", [("1P0A0894", "1P0A0895")])
    dpdd(tmp_path, "train", [("1P0A0890", "1P0A0891"), ("1P0A0892", "1P0A0893")])
    s = read_dataset("dpdd", tmp_path, "test")
    assert rel_pairs(s, tmp_path) == [
        (a, f"dd_dp_dataset_png/test_c/source/{a}.png", f"dd_dp_dataset_png/test_c/target/{b}.png")
        for a, b in DPDD_TEST
    ]
    assert count_warning(s, "DPDD Canon release", 150) and s.task == "defocus-blur" and s.metric == "rgb"
    tr = read_dataset("dpdd", tmp_path, "train")
    assert [(p.degraded.name, p.clean.name) for p in tr.pairs] == [
        ("1P0A0890.png", "1P0A0891.png"),
        ("1P0A0892.png", "1P0A0893.png"),
    ]
    assert count_warning(tr, "DPDD Canon release", 350)


def test_dpdd_a_missing_file_is_an_error_not_a_shift(tmp_path):
    dpdd(tmp_path)
    (tmp_path / "dd_dp_dataset_png/test_c/target/1P0A0932.png").unlink()
    with pytest.raises(FDIError, match="4 source and 3 target images"):
        read_dataset("dpdd", tmp_path, "test")
    (tmp_path / "dd_dp_dataset_png/test_c/source/1P0A0917.png").unlink()  # equal counts, but shifted
    with pytest.raises(FDIError, match="1P0A0933.png and target 1P0A0916.png are not one scene"):
        read_dataset("dpdd", tmp_path, "test")
    with pytest.raises(LayoutNotFound, match="test_c/source/1P0A0917.png"):
        read_dataset("dpdd", tmp_path / "dd_dp_dataset_png" / "test_l", "test")


# ---------------------------------------------------------------------------------------------- SRD
def test_srd_authors_release_suffixes_differ_between_splits(tmp_path):
    files = ["SRD/Train/shadow/_MG_2340.jpg", "SRD/Train/shadow_free/_MG_2340_no_shadow.jpg"]
    files += ["SRD/Train/shadow/IMG_5001.jpg", "SRD/Train/shadow_free/IMG_5001_no_shadow.jpg"]
    files += ["SRD_Test/SRD/shadow/_MG_6317.jpg", "SRD_Test/SRD/shadow_free/_MG_6317_free.jpg"]
    files += ["SRD_Test/SRD/shadow/IMG_6803.jpg", "SRD_Test/SRD/mask/IMG_6803.png"]  # no shadow-free image
    files += ["ISTD_Dataset/train/train_A/1-1.png", "ISTD_Dataset/train/train_C/1-1.png"]
    files += junk("SRD/Train/shadow", "_MG_2340.jpg")
    make_tree(tmp_path, files)
    s = read_dataset("srd", tmp_path, "train")
    assert rel_pairs(s, tmp_path) == [
        ("_MG_2340", "SRD/Train/shadow/_MG_2340.jpg", "SRD/Train/shadow_free/_MG_2340_no_shadow.jpg"),
        ("IMG_5001", "SRD/Train/shadow/IMG_5001.jpg", "SRD/Train/shadow_free/IMG_5001_no_shadow.jpg"),
    ]
    assert count_warning(s, "authors' release", 2680) and s.task == "shadow" and s.metric == "rgb"
    t = read_dataset("srd", tmp_path, "test")
    assert rel_pairs(t, tmp_path) == [
        ("_MG_6317", "SRD_Test/SRD/shadow/_MG_6317.jpg", "SRD_Test/SRD/shadow_free/_MG_6317_free.jpg")
    ]
    assert [p.name for p in t.missing_gt] == ["IMG_6803.jpg"] and count_warning(t, "authors' release", 408)


def test_srd_abc_repack_skips_masks_and_is_not_istd(tmp_path):
    files = ["SRD_Dataset/train/train_A/_MG_2340.jpg", "SRD_Dataset/train/train_B/_MG_2340.jpg"]
    files += ["SRD_Dataset/train/train_C/_MG_2340_no_shadow.jpg"]
    files += ["SRD_Dataset/test/test_A/IMG_6803.jpg", "SRD_Dataset/test/test_B/IMG_6803.jpg"]
    files += ["SRD_Dataset/test/test_C/IMG_6803_free.jpg"]
    make_tree(tmp_path / "a", files)
    a = read_dataset("srd", tmp_path / "a", "train")
    assert rel_pairs(a, tmp_path / "a") == [
        ("_MG_2340", "SRD_Dataset/train/train_A/_MG_2340.jpg", "SRD_Dataset/train/train_C/_MG_2340_no_shadow.jpg")
    ]
    assert a.release.startswith("A/B/C repack")
    t = read_dataset("srd", tmp_path / "a" / "SRD_Dataset", "test")
    assert [(p.degraded.name, p.clean.name) for p in t.pairs] == [("IMG_6803.jpg", "IMG_6803_free.jpg")]
    make_tree(tmp_path / "istd", ["ISTD_Dataset/train/train_A/1-1.png", "ISTD_Dataset/train/train_C/1-1.png"])
    with pytest.raises(LayoutNotFound, match="shadow_free/X_no_shadow.jpg"):
        read_dataset("srd", tmp_path / "istd", "train")


def test_srd_dc_shadownet_layout(tmp_path):
    files = ["dataset/SRD/trainA/_MG_2340.jpg", "dataset/SRD/trainB/_MG_2340_no_shadow.jpg"]
    files += ["dataset/SRD/trainC/_MG_2340.jpg", "dataset/SRD/testA/IMG_6803.jpg", "dataset/SRD/testB/IMG_6803.jpg"]
    make_tree(tmp_path, files)
    s = read_dataset("srd", tmp_path, "train")
    assert rel_pairs(s, tmp_path) == [
        ("_MG_2340", "dataset/SRD/trainA/_MG_2340.jpg", "dataset/SRD/trainB/_MG_2340_no_shadow.jpg")
    ]
    assert s.release == "DC-ShadowNet layout"
    assert [p.clean.name for p in read_dataset("srd", tmp_path, "test").pairs] == ["IMG_6803.jpg"]
