"""fdi.datasets: the shared machinery (finding trees, junk, pairing, counts, errors) on Rain100H/L and CBSD68.

Every tree is a miniature made here with the layout's real file names (tests/dataset_trees.py)."""

from __future__ import annotations

import numpy as np
import pytest
from dataset_trees import make_tree, numbered, rel_pairs

from fdi.datasets import DATASETS, LayoutNotFound, get_dataset, read_dataset, write_pairs_csv
from fdi.datasets.core import find_dirs, natural_key
from fdi.errors import FDIError
from fdi.images import load_image


def old_rain100h(root, train=(1, 2, 10), test=(1, 2)):
    files = []
    for n in train:
        files += [f"rain_data_train_Heavy/{s}-{n}.png" for s in ("rain", "norain", "rainregion", "rainstreak")]
    for n in test:
        files += [f"rain_data_test_Heavy/{s}-{n}.png" for s in ("rain", "norain", "rainregion", "rainstreak")]
    files += ["__MACOSX/rain_data_train_Heavy/._rain-1.png", "rain_data_train_Heavy/._rain-2.png"]
    files += ["rain_data_train_Heavy/Thumbs.db"]
    return make_tree(root, files)


def test_old_rain100h_pairs_by_number_and_skips_side_maps_and_junk(tmp_path):
    old_rain100h(tmp_path)
    s = read_dataset("rain100h", tmp_path, "train")
    assert rel_pairs(s, tmp_path) == [
        ("rain-1", "rain_data_train_Heavy/rain-1.png", "rain_data_train_Heavy/norain-1.png"),
        ("rain-2", "rain_data_train_Heavy/rain-2.png", "rain_data_train_Heavy/norain-2.png"),
        ("rain-10", "rain_data_train_Heavy/rain-10.png", "rain_data_train_Heavy/norain-10.png"),
    ]
    assert s.release.startswith("2017 release") and s.metric == "y" and s.task == "rainstreak"
    t = read_dataset("rain100h", tmp_path, "test")
    assert [p.name for p in t.pairs] == ["rain-1", "rain-2"]
    assert t.top.name == "rain_data_test_Heavy"


def test_count_warning_names_the_release(tmp_path):
    old_rain100h(tmp_path)
    s = read_dataset("rain100h", tmp_path, "train")
    assert len(s.warnings) == 1
    w = s.warnings[0]
    assert "3 pairs found" in w and "reports 1800" in w and "2017 release" in w


def test_new_rain100h_release_pairs_x2_names(tmp_path):
    files = numbered("rain_heavy_test/rain/X2/norain-{}x2.png", (1, 2, 3)) + numbered(
        "rain_heavy_test/norain/norain-{}.png", (1, 2)
    )
    files += numbered("rain_data_train_Heavy/rain/X2/norain-{}x2.png", (5,))
    files += numbered("rain_data_train_Heavy/norain/norain-{}.png", (5,))
    files += numbered("rain_data_train_Heavy/rainstreak/rainstreak-{}.png", (5,))
    make_tree(tmp_path / "dl", files)
    t = read_dataset("rain100h", tmp_path / "dl", "test")
    assert rel_pairs(t, tmp_path / "dl") == [
        ("norain-1", "rain_heavy_test/rain/X2/norain-1x2.png", "rain_heavy_test/norain/norain-1.png"),
        ("norain-2", "rain_heavy_test/rain/X2/norain-2x2.png", "rain_heavy_test/norain/norain-2.png"),
    ]
    assert t.release.startswith("2018 release")
    # the degraded image without ground truth is skipped, with a warning naming it
    assert [p.name for p in t.missing_gt] == ["norain-3x2.png"]
    assert any("no ground truth" in w and "norain-3x2.png" in w for w in t.warnings)
    assert any("2018 release" in w and "reports 100" in w for w in t.warnings)
    tr = read_dataset("rain100h", tmp_path / "dl", "train")
    assert [(p.degraded.name, p.clean.name) for p in tr.pairs] == [("norain-5x2.png", "norain-5.png")]


def test_root_may_be_the_sets_own_folder_or_above(tmp_path):
    old_rain100h(tmp_path / "downloads" / "rain100h")
    for root in (tmp_path, tmp_path / "downloads", tmp_path / "downloads" / "rain100h" / "rain_data_test_Heavy"):
        assert len(read_dataset("rain100h", root, "test").pairs) == 2


def test_repack_and_prenet_names(tmp_path):
    make_tree(
        tmp_path / "a",
        numbered("Datasets/test/Rain100L/input/{}.png", (1, 2))
        + numbered("Datasets/test/Rain100L/target/{}.png", (1, 2)),
    )
    s = read_dataset("rain100l", tmp_path / "a", "test")
    assert rel_pairs(s, tmp_path / "a") == [
        ("1", "Datasets/test/Rain100L/input/1.png", "Datasets/test/Rain100L/target/1.png"),
        ("2", "Datasets/test/Rain100L/input/2.png", "Datasets/test/Rain100L/target/2.png"),
    ]
    make_tree(tmp_path / "b", numbered("RainTrainL/rain-{}.png", (1, 2)) + numbered("RainTrainL/norain-{}.png", (1, 2)))
    assert [p.clean.name for p in read_dataset("rain100l", tmp_path / "b", "train").pairs] == [
        "norain-1.png",
        "norain-2.png",
    ]


def test_wrong_tree_names_expected_layout_and_what_was_found(tmp_path):
    make_tree(tmp_path, ["hazy/0001_0.8_0.2.jpg", "GT/0001.png"])
    with pytest.raises(LayoutNotFound) as err:
        read_dataset("rain100h", tmp_path, "train")
    msg = str(err.value)
    assert "Rain100H" in msg and "rain_data_train_Heavy" in msg and "hazy/ (1 images)" in msg and "GT/" in msg


def test_bad_names_splits_and_tasks_are_refused(tmp_path):
    with pytest.raises(FDIError, match="unknown data set 'rain100x'.*rain100h"):
        get_dataset("rain100x")
    with pytest.raises(FDIError, match="no 'train' split"):
        read_dataset("cbsd68", tmp_path, "train")
    with pytest.raises(FDIError, match="no task 'haze'"):
        read_dataset("rain100h", tmp_path, "test", task="haze")
    with pytest.raises(FDIError, match="does not exist"):
        read_dataset("rain100h", tmp_path / "nope", "test")


def test_cbsd68_noise_is_synthesized_once_seeded_by_name(tmp_path):
    make_tree(
        tmp_path / "data", numbered("CBSD68/original_png/{:04d}.png", (0, 1)) + ["CBSD68/noisy50/0000.png"], (16, 16)
    )
    with pytest.raises(FDIError, match="cache"):
        read_dataset("cbsd68", tmp_path / "data", "test")
    s = read_dataset("cbsd68", tmp_path / "data", "test", cache=tmp_path / "cache")
    assert [p.name for p in s.pairs] == ["0000", "0001"]
    noisy, clean = load_image(s.pairs[0].degraded), load_image(s.pairs[0].clean)
    assert s.pairs[0].degraded.parent.name == "cbsd68-test-noise50-seed0"
    # σ = 50 levels before clipping: the residual's spread (clipping shrinks it a little) is near 50/255
    assert 0.13 < float((noisy - clean).std()) < 0.2
    again = read_dataset("cbsd68", tmp_path / "data", "test", cache=tmp_path / "cache2")
    assert np.array_equal(load_image(again.pairs[0].degraded).numpy(), noisy.numpy())
    other_seed = read_dataset("cbsd68", tmp_path / "data", "test", cache=tmp_path / "cache", seed=1)
    assert not np.array_equal(load_image(other_seed.pairs[0].degraded).numpy(), noisy.numpy())
    mtime = s.pairs[0].degraded.stat().st_mtime_ns
    read_dataset("cbsd68", tmp_path / "data", "test", cache=tmp_path / "cache")
    assert s.pairs[0].degraded.stat().st_mtime_ns == mtime  # written once


def test_pairs_csv_is_read_back_by_the_pairs_reader(tmp_path):
    from fdi.data import read_pairs_file

    old_rain100h(tmp_path / "d")
    s = read_dataset("rain100h", tmp_path / "d", "test")
    out = write_pairs_csv(s.pairs, tmp_path / "pairs.csv")
    back = read_pairs_file(out)
    assert [(p.name, p.degraded, p.clean) for p in back] == [
        (p.name, p.degraded.resolve(), p.clean.resolve()) for p in s.pairs
    ]


def test_find_dirs_and_natural_order(tmp_path):
    (tmp_path / "x" / "SOTS" / "indoor").mkdir(parents=True)
    (tmp_path / "__MACOSX" / "SOTS" / "indoor").mkdir(parents=True)
    assert find_dirs(tmp_path, "sots/Indoor") == [(tmp_path / "x" / "SOTS" / "indoor").resolve()]
    assert sorted(["rain-10", "rain-2", "rain-1"], key=natural_key) == ["rain-1", "rain-2", "rain-10"]


def test_every_reader_describes_itself():
    for name, reader in DATASETS.items():
        assert reader.name == name and reader.tasks and reader.splits and reader.layout and reader.source
