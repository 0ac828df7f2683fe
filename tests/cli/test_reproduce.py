"""``python -m fdi reproduce`` end to end on a miniature Rain100H tree with the tiny SD and BLIP-2: the stages'
files, the report beside the paper's figures, a resume after Ctrl-C during restoration, proportions, refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from dataset_trees import make_tree
from tiny_sd import tiny_adapter_config

from fdi.adapter import FDIAdapter
from fdi.cli import main
from fdi.data import read_pairs_file
from fdi.images import load_image
from fdi.metrics import image_metrics
from fdi.reproduce import PROTOCOLS, ReproduceConfig, parse_ablations, parse_proportions
from fdi.reproduce.config import adapter_overrides
from fdi.reproduce.stages import subset
from fdi.restoration import AdapterUse


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_sd_folder, tiny_blip2_folder):
    """Rain100H's 2017 tree (three training pairs with their side maps, two test pairs, a __MACOSX folder) of
    48×40 images, and the tiny models."""
    root = tmp_path_factory.mktemp("reproduce")
    files = []
    for split, numbers in (("train", (1, 2, 3)), ("test", (1, 2))):
        for n in numbers:
            files += [f"rain_data_{split}_Heavy/{s}-{n}.png" for s in ("rain", "norain", "rainstreak")]
    files.append("__MACOSX/rain_data_train_Heavy/._rain-1.png")
    make_tree(root / "data", files, size=(48, 40))
    shutil.copytree(tiny_blip2_folder, root / "blip2")
    return {"root": root, "sd": tiny_sd_folder}


def argv(setup, out, *extra):
    return [
        "reproduce",
        "--task",
        "rainstreak",
        "--data",
        str(setup["root"] / "data"),
        "--sd",
        str(setup["sd"]),
        "--blip2",
        str(setup["root"] / "blip2"),
        "-o",
        str(out),
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--resolution",
        "64",
        "--lr",
        "1e-3",
        "--num-workers",
        "0",
        "--checkpoint-every",
        "1",
        "--adapter-config",
        tiny_adapter_config().to_json(),
        "--steps",
        "2",
        "--inversion-steps",
        "2",
        "--device",
        "cpu",
        "--quiet",
        *[str(e) for e in extra],
    ]


@pytest.fixture(scope="module")
def full(setup):
    out = setup["root"] / "runs" / "rainstreak"
    assert main(argv(setup, out)) == 0
    return out


def test_end_to_end_files_metrics_and_report(full, setup, tiny_pipeline):
    data = setup["root"] / "data"
    assert [(p.name, p.degraded.name, p.clean.name) for p in read_pairs_file(full / "test_pairs.csv")] == [
        ("rain-1", "rain-1.png", "norain-1.png"),
        ("rain-2", "rain-2.png", "norain-2.png"),
    ]
    assert len(read_pairs_file(full / "train_pairs.csv")) == 3
    warnings = (full / "warnings.txt").read_text()
    assert "3 pairs found, the paper's supplement reports 1800" in warnings and "2 pairs found" in warnings
    sub = full / "p100"
    adapter = FDIAdapter.from_file(sub / "full" / "adapter.safetensors")
    assert (sub / "task.fdi.safetensors").is_file() and adapter.fdi.n_pairs == 3
    assert sorted(p.name for p in (sub / "full" / "restored").iterdir()) == ["rain-1.png", "rain-2.png"]
    # each output is the restore pipeline's (50-step sampler shortened to 2 here) on the degraded image, to 8 bits
    rows = []
    for n in (1, 2):
        ours = load_image(sub / "full" / "restored" / f"rain-{n}.png")
        ref = tiny_pipeline.restore(
            load_image(data / "rain_data_test_Heavy" / f"rain-{n}.png")[None],
            [AdapterUse(adapter)],
            steps=2,
            inversion_steps=2,
        )[0]
        assert (ours - ref).abs().max() <= 0.5 / 255 + 1e-6
        rows.append(image_metrics(ours, load_image(data / "rain_data_test_Heavy" / f"norain-{n}.png")))
    report = json.loads((full / "report.json").read_text())
    assert report["metric"] == "y" and report["task"] == "rainstreak" and report["protocol"]["is_papers"]
    (row,) = report["rows"]
    for key in ("psnr", "ssim", "psnr_y", "ssim_y"):
        assert row[key] == pytest.approx(sum(r[key] for r in rows) / 2, abs=1e-9)
    assert row["paper"] == {"psnr": 34.55, "lpips": 0.023, "source": row["paper"]["source"]}
    assert "Table 6" in row["paper"]["source"]
    assert row["adapter_parameters"] == adapter.num_parameters() and row["train_pairs"] == 3
    assert row["lpips"] is None and "lpips" in row["lpips_absent"].lower()
    assert row["seconds_per_image"] > 0 and row["timing_devices"][0].startswith("cpu")
    assert report["paper_adapter"]["parameters_m"] == 45.10 and report["paper_adapter"]["seconds_per_image"] == 3.04
    assert "max_steps 2 (paper: 50 epochs)" in report["differences_from_paper"]
    assert report["datasets"]["test"]["release"].startswith("2017 release")
    md = (full / "report.md").read_text()
    psnr_y, ssim_y = f"{row['psnr_y']:.2f}", f"{row['ssim_y']:.4f}"
    assert f"| full | 100 % (3) | {psnr_y} | {ssim_y} |" in md and "| 34.55 | 0.023 |" in md
    assert "| paper (Table 7) | | | | | | | | | 3.04 | 45.10 |" in md and "2017 release" in md


def test_resume_after_ctrl_c_during_restoration_reuses_the_finished_stages(full, setup, monkeypatch, capsys):
    from fdi.pipeline import FDIRestorationPipeline
    from fdi.training import run as training

    out = setup["root"] / "runs" / "resumed"
    original = FDIRestorationPipeline.restore
    calls = []

    def interrupted(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *a, **k)

    monkeypatch.setattr(FDIRestorationPipeline, "restore", interrupted)
    assert main(argv(setup, out)) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    restored = out / "p100" / "full" / "restored"
    assert [p.name for p in restored.iterdir()] == ["rain-1.png"] and not (out / "report.json").exists()
    kept = [out / "datasets.json", out / "p100" / "task.fdi.safetensors", out / "p100" / "full" / "adapter.safetensors"]
    kept.append(restored / "rain-1.png")
    mtimes = [p.stat().st_mtime_ns for p in kept]
    # the resumed run trains nothing and restores the one image left
    trained = []
    monkeypatch.setattr(training, "train", lambda *a, **k: trained.append(1))
    calls.clear()
    assert main(argv(setup, out)) == 0
    assert trained == [] and len(calls) == 1
    assert [p.stat().st_mtime_ns for p in kept] == mtimes
    a = json.loads((full / "report.json").read_text())["rows"][0]
    b = json.loads((out / "report.json").read_text())["rows"][0]
    for key in ("psnr", "ssim", "psnr_y", "ssim_y", "adapter_parameters"):
        assert a[key] == b[key]
    # the same folder with other settings is refused, naming the difference
    capsys.readouterr()
    assert main(argv(setup, out, "--seed", "1")) == 2
    assert "seed: 0 then, 1 now" in capsys.readouterr().err


def test_proportions_give_one_row_each_on_nested_seeded_subsets(setup):
    out = setup["root"] / "runs" / "proportions"
    assert main(argv(setup, out, "--proportions", "0.3,1")) == 0
    report = json.loads((out / "report.json").read_text())
    assert [(r["folder"], r["train_pairs"]) for r in report["rows"]] == [("p030/full", 1), ("p100/full", 3)]
    assert report["rows"][0]["paper"]["psnr"] == 29.57 and report["rows"][1]["paper"]["psnr"] == 34.55
    small = read_pairs_file(out / "p030" / "train_pairs.csv")
    whole = read_pairs_file(out / "p100" / "train_pairs.csv")
    assert [p.name for p in small] == [p.name for p in subset(whole, 0.3, 0)] and set(small) <= set(whole)
    assert FDIAdapter.from_file(out / "p030" / "full" / "adapter.safetensors").fdi.n_pairs == 1
    md = (out / "report.md").read_text()
    assert "| full | 30 % (1) |" in md and "| 29.57 | 0.176 |" in md


def test_subsets_are_seeded_nested_and_keep_order():
    pairs = list(range(20))
    a, b = subset(pairs, 0.3, 0), subset(pairs, 0.6, 0)
    assert len(a) == 6 and len(b) == 12 and set(a) <= set(b) and a == sorted(a)
    assert subset(pairs, 0.3, 0) == a and subset(pairs, 0.3, 1) != a and subset(pairs, 1.0, 0) == pairs


def test_ablations_map_to_adapter_switches():
    cfg = ReproduceConfig("rainstreak", "d", "sd", "b", "o", adapter_config={"res_blocks": 1})
    assert adapter_overrides(cfg, "full") == {"res_blocks": 1}
    assert adapter_overrides(cfg, "no-noise-decoupling") == {"res_blocks": 1, "noise_decoupling": False}
    assert adapter_overrides(cfg, "no-visual-modulator") == {"res_blocks": 1, "visual_modulator": False}
    assert parse_ablations("full,no-visual-modulator") == ("full", "no-visual-modulator")
    assert parse_proportions("0.3,0.6,1") == (0.3, 0.6, 1.0)


def test_the_protocol_table_holds_the_papers_figures_only():
    figures = {t: {p: (f.psnr, f.lpips) for p, f in pr.figures.items()} for t, pr in PROTOCOLS.items() if pr.figures}
    assert figures == {
        "rainstreak": {0.3: (29.57, 0.176), 0.6: (31.88, 0.045), 1.0: (34.55, 0.023)},
        "lowlight": {0.3: (23.19, 0.158), 0.6: (24.28, 0.091), 1.0: (24.55, 0.075)},
    }
    assert PROTOCOLS["noise"].train == ("div2k", "flickr2k") and PROTOCOLS["noise"].test == "cbsd68"
    assert PROTOCOLS["jpeg"].test == "live1" and PROTOCOLS["rainstreak+haze"].test == "outdoor-rain"


def _other_task_run(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "settings.json").write_text(json.dumps({"format": "fdi_reproduce", "settings": {"task": "noise"}}))


BAD = {
    "unknown task": (["--task", "dehaze"], "unknown task 'dehaze'"),
    "set without the split": (["--dataset", "cbsd68"], "cbsd68 has no 'train' split"),
    "unknown set": (["--test-dataset", "rain9"], "unknown data set 'rain9'"),
    "missing root": (["--data", "{tmp}/nowhere"], "does not exist or is not a folder"),
    "wrong tree": (["--data", "{tmp}/empty"], "does not hold Rain100H"),
    "another task's run": ([], "holds a run of task 'noise'"),
    "bad proportion": (["--proportions", "0.3,1.5"], "in (0, 1]"),
    "bad ablation": (["--ablation", "no-adapter"], "use one or more of full"),
    "bad batch split": (["--grad-accum", "3"], "not divisible"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_exits_2_before_any_model_and_writes_nothing(setup, tmp_path, monkeypatch, capsys, case):
    from fdi.encoder import QFormerEncoder
    from fdi.pipeline import FDIRestorationPipeline

    def no_model(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(FDIRestorationPipeline, "from_pretrained", no_model)
    monkeypatch.setattr(QFormerEncoder, "from_pretrained", no_model)
    (tmp_path / "empty" / "photos").mkdir(parents=True)
    out = tmp_path / "runs" / "run"
    if case == "another task's run":
        _other_task_run(out)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    extra, message = BAD[case]
    args = argv(setup, out)
    for i in range(0, len(extra), 2):
        flag, value = extra[i], extra[i + 1].format(tmp=tmp_path)
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ")
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_a_protocol_whose_reader_is_not_registered_says_so(setup, tmp_path, monkeypatch, capsys):
    import fdi.datasets

    monkeypatch.delitem(fdi.datasets.DATASETS, "rain100h")
    assert main(argv(setup, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert "reads rain100h, whose reader is not in this version of the pack yet" in err
    assert not (tmp_path / "run").exists()


def test_ctrl_c_during_training_resumes_from_the_checkpoint_to_the_same_adapter(full, setup, monkeypatch):
    from fdi.training import loop

    out = setup["root"] / "runs" / "train-interrupted"
    original = loop.save_checkpoint

    def save_then_stop(run, step):
        original(run, step)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", save_then_stop)
    assert main(argv(setup, out)) == 130
    variant = out / "p100" / "full"
    assert not (variant / "adapter.safetensors").exists()
    assert sorted(p.name for p in (variant / "train-run").glob("checkpoint-*")) == ["checkpoint-1"]
    monkeypatch.setattr(loop, "save_checkpoint", original)
    assert main(argv(setup, out)) == 0
    a = FDIAdapter.from_file(full / "p100" / "full" / "adapter.safetensors").state_dict()
    b = FDIAdapter.from_file(variant / "adapter.safetensors").state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) == 0
    rows = [json.loads((d / "report.json").read_text())["rows"][0] for d in (full, out)]
    assert rows[0]["psnr_y"] == rows[1]["psnr_y"] and rows[0]["ssim"] == rows[1]["ssim"]


def test_ablations_train_adapters_without_the_switched_off_modules(full, setup):
    out = setup["root"] / "runs" / "ablations"
    assert main(argv(setup, out, "--ablation", "no-noise-decoupling,no-visual-modulator")) == 0
    report = json.loads((out / "report.json").read_text())
    assert [r["folder"] for r in report["rows"]] == ["p100/no-noise-decoupling", "p100/no-visual-modulator"]
    assert all(r["paper"] is None for r in report["rows"])  # the paper prints no figure for them
    a = FDIAdapter.from_file(out / "p100" / "no-noise-decoupling" / "adapter.safetensors")
    b = FDIAdapter.from_file(out / "p100" / "no-visual-modulator" / "adapter.safetensors")
    assert a.config.noise_decoupling is False and a.config.visual_modulator is True
    assert b.config.visual_modulator is False and b.config.noise_decoupling is True
    whole = json.loads((full / "report.json").read_text())["rows"][0]["adapter_parameters"]
    assert all(r["adapter_parameters"] < whole for r in report["rows"])
    assert [r["adapter_parameters"] for r in report["rows"]] == [a.num_parameters(), b.num_parameters()]
    md = (out / "report.md").read_text()
    assert "| no-noise-decoupling | 100 % (3) |" in md and "| no-visual-modulator | 100 % (3) |" in md


def test_a_test_set_without_ground_truth_is_restored_and_not_scored(setup):
    """LOL-v1 training, MEF testing (the supplement's cross-set use): MEF has no ground truth."""
    data = setup["root"] / "lol-mef"
    files = [f"LOLdataset/our485/{d}/{n}.png" for d in ("low", "high") for n in (2, 10)]
    files += ["LOLdataset/eval15/low/1.png", "LOLdataset/eval15/high/1.png", "MEF/Lamp.png", "MEF/Balloons.png"]
    make_tree(data, files, size=(48, 40))
    out = setup["root"] / "runs" / "mef"
    args = argv(setup, out, "--dataset", "lol", "--test-dataset", "mef")
    args[args.index("--task") + 1], args[args.index("--data") + 1] = "lowlight", str(data)
    assert main(args) == 0
    assert sorted(p.name for p in (out / "p100" / "full" / "restored").iterdir()) == ["Balloons.png", "Lamp.png"]
    (row,) = json.loads((out / "report.json").read_text())["rows"]
    assert row["no_reference"] == "mef" and row["psnr"] is None and row["lpips"] is None and row["paper"] is None
    assert row["test_pairs"] == 2 and row["seconds_per_image"] > 0
    md = (out / "report.md").read_text()
    assert "| full | 100 % (2) | – | – | – | – | – | – | – |" in md and "## No ground truth" in md
    assert "mef has no ground truth" in (out / "warnings.txt").read_text()


def test_noise_protocol_synthesizes_its_clean_only_sets_into_the_run_folder(setup):
    """DIV2K + Flickr2K training and CBSD68 testing, all clean: σ = 50 noise written once under the run folder."""
    data = setup["root"] / "clean-only"
    files = ["DIV2K_train_HR/0001.png", "DIV2K_train_HR/0002.png", "Flickr2K/Flickr2K_HR/000001.png"]
    files += ["CBSD68/original_png/0000.png", "CBSD68/original_png/0001.png"]
    make_tree(data, files, size=(48, 40))
    out = setup["root"] / "runs" / "noise"
    args = argv(setup, out, "--data-seed", "3")
    args[args.index("--task") + 1], args[args.index("--data") + 1] = "noise", str(data)
    assert main(args) == 0
    cache = out / "fdi-datasets"
    assert sorted(p.name for p in cache.iterdir()) == [
        "cbsd68-test-noise50-seed3",
        "div2k-train-noise50-seed3",
        "flickr2k-train-noise50-seed3",
    ]
    train = read_pairs_file(out / "train_pairs.csv")
    assert [(p.name, p.degraded.parent.name) for p in train] == [
        ("0001", "div2k-train-noise50-seed3"),
        ("0002", "div2k-train-noise50-seed3"),
        ("000001", "flickr2k-train-noise50-seed3"),
    ]
    report = json.loads((out / "report.json").read_text())
    assert [d["dataset"] for d in report["datasets"]["train"]] == ["div2k", "flickr2k"]
    assert report["metric"] == "rgb" and report["rows"][0]["paper"] is None and report["rows"][0]["test_pairs"] == 2
    noisy = load_image(cache / "cbsd68-test-noise50-seed3" / "0000.png")
    clean = load_image(data / "CBSD68" / "original_png" / "0000.png")
    assert 0.1 < (noisy - clean).std().item() < 0.25  # σ = 50/255 ≈ 0.196, clipped at 0 and 1
