"""fdi.datasets readers of Rain1400, RainDrop, RainDS (syn/real), Outdoor-Rain and Snow100K on miniature trees.

Every tree uses the real folder and file names of its release (docs/datasets.md cites where each was read)."""

from __future__ import annotations

import pytest
from dataset_trees import make_tree, numbered, rel_pairs

from fdi.datasets import LayoutNotFound, get_dataset, read_dataset
from fdi.errors import FDIError

JUNK = ["__MACOSX/x/._a.png", "Thumbs.db"]


def count_warning(split, published: int) -> str:
    """The count warning of ``split``; it names the release found."""
    hits = [w for w in split.warnings if f"reports {published}" in w]
    assert len(hits) == 1, split.warnings
    assert split.release in hits[0]
    return hits[0]


# ---------------------------------------------------------------------------------------------- rain1400
def ddn_tree(root):
    files = numbered("training/rainy_image/{}.jpg", ("1_1", "1_2", "1_14", "2_1", "._1_3"))
    files += numbered("training/ground_truth/{}.jpg", (1, 2))
    files += numbered("testing/rainy_image/{}.jpg", ("901_1", "901_2", "902_1"))
    files += ["testing/ground_truth/901.jpg", "__MACOSX/training/rainy_image/._1_1.jpg", "testing/Thumbs.db"]
    return make_tree(root, files)


def test_rain1400_ddn_release_pairs_fourteen_rain_images_per_scene(tmp_path):
    ddn_tree(tmp_path / "DDN")
    tr = read_dataset("rain1400", tmp_path, "train")
    assert rel_pairs(tr, tmp_path) == [
        (n, f"DDN/training/rainy_image/{n}.jpg", f"DDN/training/ground_truth/{n.split('_')[0]}.jpg")
        for n in ("1_1", "1_2", "1_14", "2_1")
    ]
    assert tr.release.startswith("DDN release") and tr.metric == "y" and tr.task == "rainstreak"
    assert "4 pairs found" in count_warning(tr, 3780)
    te = read_dataset("rain1400", tmp_path / "DDN" / "testing", "test")
    assert [(p.name, p.clean.name) for p in te.pairs] == [("901_1", "901.jpg"), ("901_2", "901.jpg")]
    assert [p.name for p in te.missing_gt] == ["902_1.jpg"]
    assert any("no ground truth" in w and "902_1.jpg" in w for w in te.warnings)
    assert "2 pairs found" in count_warning(te, 1400)


def test_rain1400_prenet_folders(tmp_path):
    files = numbered("train/Rain12600/rainy_image/{}.jpg", ("1_1", "1_2")) + ["train/Rain12600/ground_truth/1.jpg"]
    files += numbered("test/Rain1400/rainy_image/{}.jpg", ("1000_14",)) + ["test/Rain1400/ground_truth/1000.jpg"]
    make_tree(tmp_path, files)
    tr = read_dataset("rain1400", tmp_path, "train")
    assert [(p.name, p.clean.name) for p in tr.pairs] == [("1_1", "1.jpg"), ("1_2", "1.jpg")]
    assert tr.release.startswith("PReNet") and tr.top.name == "Rain12600"
    te = read_dataset("rain1400", tmp_path, "test")
    assert rel_pairs(te, tmp_path) == [
        ("1000_14", "test/Rain1400/rainy_image/1000_14.jpg", "test/Rain1400/ground_truth/1000.jpg")
    ]
    count_warning(te, 1400)


def test_rain1400_wrong_tree(tmp_path):
    make_tree(tmp_path, ["training/input/1_1.jpg", "training/label/1.jpg"])
    with pytest.raises(LayoutNotFound) as err:
        read_dataset("rain1400", tmp_path, "train")
    msg = str(err.value)
    assert "Rain1400" in msg and "rainy_image" in msg and "Rain12600" in msg and "training/" in msg


# ---------------------------------------------------------------------------------------------- raindrop
def raindrop_tree(root):
    files = numbered("raindrop_data/train/data/{}_rain.png", (0, 1, 10))
    files += numbered("raindrop_data/train/gt/{}_clean.png", (0, 1)) + ["raindrop_data/train/gt/10_clean.jpg"]
    files += numbered("raindrop_data/test_a/data/{}_rain.png", (2, 3)) + ["raindrop_data/test_a/gt/2_clean.png"]
    files += ["raindrop_data/test_b/data/5_rain.jpg", "raindrop_data/test_b/gt/5_clean.jpg"]
    files += ["raindrop_data/train/data/._0_rain.png", "__MACOSX/raindrop_data/train/data/._1_rain.png"]
    return make_tree(root, files)


def test_raindrop_pairs_rain_with_clean_suffix_and_tests_on_test_a(tmp_path):
    raindrop_tree(tmp_path)
    tr = read_dataset("raindrop", tmp_path, "train")
    assert rel_pairs(tr, tmp_path) == [
        ("0_rain", "raindrop_data/train/data/0_rain.png", "raindrop_data/train/gt/0_clean.png"),
        ("1_rain", "raindrop_data/train/data/1_rain.png", "raindrop_data/train/gt/1_clean.png"),
        ("10_rain", "raindrop_data/train/data/10_rain.png", "raindrop_data/train/gt/10_clean.jpg"),
    ]
    assert tr.metric == "y" and tr.task == "raindrop"
    assert "3 pairs found" in count_warning(tr, 861)
    te = read_dataset("raindrop", tmp_path, "test")
    assert rel_pairs(te, tmp_path) == [
        ("2_rain", "raindrop_data/test_a/data/2_rain.png", "raindrop_data/test_a/gt/2_clean.png")
    ]
    assert [p.name for p in te.missing_gt] == ["3_rain.png"]  # test_b is not read
    count_warning(te, 58)


def test_raindrop_and_outdoor_rain_side_by_side_each_find_their_own_train_data(tmp_path):
    # both unpack to <x>/train/data + <x>/train/gt; each reader checks the names are its own
    make_tree(
        tmp_path,
        ["CVPR19RainTrain/train/data/im_0001_s80_a04.png", "CVPR19RainTrain/train/gt/im_0001.png"]
        + ["drops/train/data/7_rain.png", "drops/train/gt/7_clean.png"],
    )
    assert [p.name for p in read_dataset("raindrop", tmp_path, "train").pairs] == ["7_rain"]
    assert [p.name for p in read_dataset("outdoor-rain", tmp_path, "train").pairs] == ["im_0001_s80_a04"]


def test_raindrop_wrong_tree(tmp_path):
    # train/data + train/gt, but the names are Outdoor-Rain's: not RainDrop
    make_tree(tmp_path, ["train/data/im_0001_s80_a04.png", "train/gt/im_0001.png"])
    with pytest.raises(LayoutNotFound, match="(?s)RainDrop.*N_rain.png.*train/data/ [(]1 images[)]"):
        read_dataset("raindrop", tmp_path, "train")


# ---------------------------------------------------------------------------------------------- RainDS
def rainds_tree(root, syn_split=("train", "test")):
    files = []
    for split, ns in ((syn_split[0], (1, 2)), (syn_split[1], (5,))):
        base = f"RainDS/RainDS_syn/{split}"
        for pie in ("", "pie-"):
            files += [f"{base}/gt/{pie}norain-{n}.png" for n in ns]
            files += [f"{base}/rainstreak/{pie}rain-{n}.png" for n in ns]
            files += [f"{base}/raindrop/{pie}rd-{n}.png" for n in ns]
            files += [f"{base}/rainstreak_raindrop/{pie}rd-rain-{n}.png" for n in ns]
    files += [f"RainDS/RainDS_syn/{syn_split[0]}/rainstreak_raindrop/rd-rain-3.png"]  # no norain-3
    for split, ns in (("train_set", (2, 3)), ("test_set", (4,))):
        for folder in ("gt", "rainstreak", "raindrop", "rainstreak_raindrop"):
            files += [f"RainDS/RainDS_real/{split}/{folder}/{n}.png" for n in ns]
    files += ["RainDS/RainDS_real/test_set/rainstreak/IMG_7435.png", "__MACOSX/RainDS/._RainDS_syn"]
    return make_tree(root, files)


def test_rainds_syn_mixed_task_is_the_default_and_pie_scenes_keep_their_prefix(tmp_path):
    rainds_tree(tmp_path)
    tr = read_dataset("rainds-syn", tmp_path, "train")
    base = "RainDS/RainDS_syn/train"
    assert tr.task == "rainstreak+raindrop" and tr.metric == "y"
    assert rel_pairs(tr, tmp_path) == [
        ("pie-rd-rain-1", f"{base}/rainstreak_raindrop/pie-rd-rain-1.png", f"{base}/gt/pie-norain-1.png"),
        ("pie-rd-rain-2", f"{base}/rainstreak_raindrop/pie-rd-rain-2.png", f"{base}/gt/pie-norain-2.png"),
        ("rd-rain-1", f"{base}/rainstreak_raindrop/rd-rain-1.png", f"{base}/gt/norain-1.png"),
        ("rd-rain-2", f"{base}/rainstreak_raindrop/rd-rain-2.png", f"{base}/gt/norain-2.png"),
    ]
    assert [p.name for p in tr.missing_gt] == ["rd-rain-3.png"]
    assert "4 pairs found" in count_warning(tr, 1000)
    te = read_dataset("rainds-syn", tmp_path, "test")
    assert [(p.name, p.clean.name) for p in te.pairs] == [
        ("pie-rd-rain-5", "pie-norain-5.png"),
        ("rd-rain-5", "norain-5.png"),
    ]
    count_warning(te, 200)


def test_rainds_syn_single_tasks_and_split_folder_names(tmp_path):
    rainds_tree(tmp_path, ("train_set", "test_set"))
    streak = read_dataset("rainds-syn", tmp_path, "test", task="rainstreak")
    assert [(p.degraded.parent.name, p.name, p.clean.name) for p in streak.pairs] == [
        ("rainstreak", "pie-rain-5", "pie-norain-5.png"),
        ("rainstreak", "rain-5", "norain-5.png"),
    ]
    drop = read_dataset("rainds-syn", tmp_path, "train", task="raindrop")
    assert [p.name for p in drop.pairs] == ["pie-rd-1", "pie-rd-2", "rd-1", "rd-2"]
    assert all(p.degraded.parent.name == "raindrop" for p in drop.pairs)
    with pytest.raises(FDIError, match="no task 'haze'"):
        read_dataset("rainds-syn", tmp_path, "test", task="haze")


def test_rainds_real_pairs_identical_names_and_is_not_the_syn_set(tmp_path):
    rainds_tree(tmp_path)
    tr = read_dataset("rainds-real", tmp_path, "train")
    assert rel_pairs(tr, tmp_path) == [
        (n, f"RainDS/RainDS_real/train_set/rainstreak_raindrop/{n}.png", f"RainDS/RainDS_real/train_set/gt/{n}.png")
        for n in ("2", "3")
    ]
    assert tr.warnings == []  # the supplement gives no RainDS_real counts
    te = read_dataset("rainds-real", tmp_path, "test", task="rainstreak")
    assert [p.name for p in te.pairs] == ["4"]
    assert [p.name for p in te.missing_gt] == ["IMG_7435.png"]
    assert any("IMG_7435.png" in w for w in te.warnings)
    assert get_dataset("rainds-real").tasks == ("rainstreak+raindrop", "rainstreak", "raindrop")


def test_rainds_wrong_tree(tmp_path):
    make_tree(tmp_path, ["RainDS_syn/train/gt/norain-1.png", "RainDS_syn/train/rainstreak/rain-1.png"])
    with pytest.raises(LayoutNotFound, match="RainDS_real"):
        read_dataset("rainds-real", tmp_path, "train")
    # the syn tree lacks the mixed folder: the default task finds nothing
    with pytest.raises(LayoutNotFound, match="rainstreak_raindrop"):
        read_dataset("rainds-syn", tmp_path, "train")


# ---------------------------------------------------------------------------------------------- Outdoor-Rain
def test_outdoor_rain_pairs_many_rain_images_per_scene_and_skips_side_maps(tmp_path):
    files = numbered("CVPR19RainTrain/train/in/{}.png", ("im_0001_s80_a04", "im_0001_s85_a05", "im_0002_s90_a06"))
    files += numbered("CVPR19RainTrain/train/gt/{}.png", ("im_0001", "im_0002"))
    files += ["CVPR19RainTrain/train/streak/im_0001_s80_a04.png", "CVPR19RainTrain/train/trans/im_0001_s80_a04.png"]
    files += ["CVPR19RainTrain/train/atm/im_0001_s80_a04.png", "CVPR19RainTrain/train/in/._im_0002_s90_a06.png"]
    files += numbered("CVPR19RainTrain/test/data/{}.png", ("im_0003_s95_a06", "im_0004_s80_a04"))
    files += ["CVPR19RainTrain/test/gt/im_0003.png"]
    make_tree(tmp_path, files)
    tr = read_dataset("outdoor-rain", tmp_path, "train")
    assert rel_pairs(tr, tmp_path) == [
        ("im_0001_s80_a04", "CVPR19RainTrain/train/in/im_0001_s80_a04.png", "CVPR19RainTrain/train/gt/im_0001.png"),
        ("im_0001_s85_a05", "CVPR19RainTrain/train/in/im_0001_s85_a05.png", "CVPR19RainTrain/train/gt/im_0001.png"),
        ("im_0002_s90_a06", "CVPR19RainTrain/train/in/im_0002_s90_a06.png", "CVPR19RainTrain/train/gt/im_0002.png"),
    ]
    assert tr.task == "rainstreak+haze" and tr.metric == "y"
    assert "3 pairs found" in count_warning(tr, 750)
    te = read_dataset("outdoor-rain", tmp_path, "test")
    assert [(p.name, p.clean.name) for p in te.pairs] == [("im_0003_s95_a06", "im_0003.png")]
    assert [p.name for p in te.missing_gt] == ["im_0004_s80_a04.png"]
    count_warning(te, 50)


def test_outdoor_rain_test1_sample_layout(tmp_path):
    make_tree(tmp_path, ["data/synthetic/Test1/in/im_0001_s80_a04.png", "data/synthetic/Test1/gt/im_0001.png"])
    te = read_dataset("outdoor-rain", tmp_path, "test")
    assert rel_pairs(te, tmp_path) == [
        ("im_0001_s80_a04", "data/synthetic/Test1/in/im_0001_s80_a04.png", "data/synthetic/Test1/gt/im_0001.png")
    ]
    assert te.release.startswith("Test1")
    with pytest.raises(LayoutNotFound, match="CVPR19RainTrain"):
        read_dataset("outdoor-rain", tmp_path, "train")


# ---------------------------------------------------------------------------------------------- Snow100K
SNOW_TEST = "Snow100K-testset/media/jdway/GameSSD/overlapping/test"


def snow_tree(root):
    names = ("beautiful_smile_00001", "beautiful_smile_00002", "beautiful_smile_00010")
    files = numbered("Snow100K-training/all/synthetic/{}.jpg", names)
    files += numbered("Snow100K-training/all/gt/{}.jpg", names[:2])
    files += numbered("Snow100K-training/all/mask/{}.jpg", names)
    for sub in ("Snow100K-L", "Snow100K-S", "Snow100K-M"):
        for folder in ("synthetic", "gt", "mask"):
            files += [f"{SNOW_TEST}/{sub}/{folder}/winter_street_00007.jpg"]
    files += ["realistic/realistic_00001.jpg", f"{SNOW_TEST}/Snow100K-S/synthetic/._winter_street_00007.jpg"]
    return make_tree(root, files)


def test_snow100k_pairs_same_names_and_skips_masks(tmp_path):
    snow_tree(tmp_path)
    tr = read_dataset("snow100k", tmp_path, "train")
    assert rel_pairs(tr, tmp_path) == [
        (n, f"Snow100K-training/all/synthetic/{n}.jpg", f"Snow100K-training/all/gt/{n}.jpg")
        for n in ("beautiful_smile_00001", "beautiful_smile_00002")
    ]
    assert [p.name for p in tr.missing_gt] == ["beautiful_smile_00010.jpg"]
    assert tr.task == "snow" and tr.metric == "rgb"
    assert "2 pairs found" in count_warning(tr, 1872)


def test_snow100k_test_reads_s_m_l_with_the_subset_in_the_name(tmp_path):
    snow_tree(tmp_path)
    te = read_dataset("snow100k", tmp_path, "test")
    assert rel_pairs(te, tmp_path) == [
        (
            f"{sub}-winter_street_00007",
            f"{SNOW_TEST}/{sub}/synthetic/winter_street_00007.jpg",
            f"{SNOW_TEST}/{sub}/gt/winter_street_00007.jpg",
        )
        for sub in ("Snow100K-S", "Snow100K-M", "Snow100K-L")
    ]
    assert "3 pairs found" in count_warning(te, 601)
    # ROOT at one subset reads that subset only
    only_l = read_dataset("snow100k", tmp_path / SNOW_TEST / "Snow100K-L", "test")
    assert [p.name for p in only_l.pairs] == ["Snow100K-L-winter_street_00007"]


def test_snow100k_wrong_tree(tmp_path):
    make_tree(tmp_path, ["Snow100K/train/input/a.jpg", "Snow100K/train/target/a.jpg"])
    with pytest.raises(LayoutNotFound) as err:
        read_dataset("snow100k", tmp_path, "train")
    assert "all/synthetic" in str(err.value) and "Snow100K/" in str(err.value)
