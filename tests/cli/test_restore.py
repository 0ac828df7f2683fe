"""``python -m fdi restore`` over collections: folders, streaming writes, resume, batches, bad input, sharding."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_sd import make_adapter, tiny_fdi

import fdi.images
import fdi.progress
from fdi.cli import main
from fdi.images import load_image
from fdi.pipeline import AdapterUse, FDIRestorationPipeline

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--steps", "2", "--inversion-steps", "2", "--quiet", "--device", "cpu"]


def write_image(path: Path, h: int, w: int, seed: int) -> Path:
    arr = (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture()
def photos(tmp_path):
    """A folder of five photos (two sizes) with a sidecar file, one loose photo and an adapter with its FDI."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, (h, w) in enumerate([(48, 64), (48, 64), (40, 72), (48, 64), (40, 72)]):
        write_image(folder / f"p{i}.jpg" if i % 2 else folder / f"p{i}.png", h, w, i)
    (folder / "notes.txt").write_text("not an image")
    loose = write_image(tmp_path / "loose.png", 56, 56, 9)
    adapter = make_adapter().save(tmp_path / "a.safetensors", fdi=tiny_fdi())
    return tmp_path, folder, loose, adapter


def base_args(sd, adapter, out, *images):
    return ["restore", "--sd", str(sd), "--adapter", str(adapter), "-o", str(out), "--image", *map(str, images), *FAST]


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


class Spy:
    """Wraps ``FDIRestorationPipeline.restore``: records batch sizes and which outputs existed at each call."""

    def __init__(self, monkeypatch, out: Path):
        self.calls, self.out, self.loads = [], out, []
        original = FDIRestorationPipeline.restore
        original_load = fdi.images.load_image

        def restore(pipe, images, *a, **k):
            self.calls.append((images.shape[0], sorted(p.name for p in out.glob("*.png")) if out.exists() else []))
            self.loads.append(len(self.loads_done))
            return original(pipe, images, *a, **k)

        self.loads_done = []

        def load(path):
            self.loads_done.append(path)
            return original_load(path)

        monkeypatch.setattr(FDIRestorationPipeline, "restore", restore)
        monkeypatch.setattr(fdi.images, "load_image", load)


def test_folders_and_files_stream_one_output_per_image_equal_to_the_library(
    photos, tiny_sd_folder, tiny_pipeline, monkeypatch, capsys
):
    d, folder, loose, adapter = photos
    out = d / "out"
    spy = Spy(monkeypatch, out)
    assert main(base_args(tiny_sd_folder, adapter, out, folder, loose)) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["loose.png", "p0.png", "p1.png", "p2.png", "p3.png", "p4.png"]  # the .txt sidecar is ignored
    # streamed: one image per restore call, and every earlier output was on disk before the next call started
    assert [c[0] for c in spy.calls] == [1] * 6
    assert [len(c[1]) for c in spy.calls] == list(range(6))
    assert spy.loads == [1, 2, 3, 4, 5, 6]  # each image is read only when its turn comes: memory holds one batch
    printed = capsys.readouterr().out.split()
    assert len(printed) == 6 and all(Path(p).is_file() for p in printed)
    # each output is the library's restore of that file, quantised to 8 bits
    use = [AdapterUse(make_adapter(), tiny_fdi(), 1.0)]
    for name, src in (("p3.png", folder / "p3.jpg"), ("loose.png", loose)):
        ref = tiny_pipeline.restore(load_image(src)[None], use, steps=2, inversion_steps=2)[0]
        expect = (ref.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.int16)
        assert np.abs(pixels(out / name) - expect).max() <= 1
    # restoring changes the image (the bound above means something)
    assert np.abs(pixels(out / "loose.png") - pixels(loose)).mean() > 5


def test_skip_existing_resumes_and_leaves_finished_outputs_alone(photos, tiny_sd_folder, monkeypatch):
    d, folder, _, adapter = photos
    out = d / "out"
    assert main(base_args(tiny_sd_folder, adapter, out, folder)) == 0
    (out / "p2.png").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    spy = Spy(monkeypatch, out)
    assert main(base_args(tiny_sd_folder, adapter, out, folder) + ["--skip-existing"]) == 0
    assert len(spy.calls) == 1 and (out / "p2.png").is_file()
    assert all((out / n).stat().st_mtime_ns == t for n, t in before.items())
    spy.calls.clear()
    assert main(base_args(tiny_sd_folder, adapter, out, folder) + ["--skip-existing"]) == 0
    assert spy.calls == []


class _Recorder:
    """Stands in for :func:`fdi.progress.tqdm_progress`: logs ``("bar", total)`` once, then every ``(done, total)``."""

    def __init__(self, log, total):
        self.log = log
        log.append(("bar", total))

    def __enter__(self):
        return lambda done, total: self.log.append((done, total))

    def __exit__(self, *exc):
        return False


def test_one_progress_bar_counts_every_step_of_every_image(photos, tiny_sd_folder, monkeypatch):
    d, folder, _, adapter = photos
    seen = []
    monkeypatch.setattr(
        fdi.progress, "tqdm_progress", lambda desc, total, unit="it", enabled=True: _Recorder(seen, total)
    )
    args = base_args(tiny_sd_folder, adapter, d / "out", folder) + ["--batch-size", "2", "--steps", "3"]
    assert main(args) == 0
    assert seen[0] == ("bar", 5 * (3 + 2)) and sum(1 for s in seen if s[0] == "bar") == 1
    counts = [s[0] for s in seen[1:]]
    assert counts == sorted(counts) and counts[-1] == 25 and {s[1] for s in seen[1:]} == {25}


def test_batches_group_same_sizes_and_match_batch_one(photos, tiny_sd_folder, monkeypatch):
    d, folder, _, adapter = photos
    assert main(base_args(tiny_sd_folder, adapter, d / "one", folder)) == 0
    spy = Spy(monkeypatch, d / "two")
    assert main(base_args(tiny_sd_folder, adapter, d / "two", folder) + ["--batch-size", "2"]) == 0
    assert sorted(c[0] for c in spy.calls) == [1, 2, 2]  # 48x64: p0 p1 | p3; 40x72: p2 p4
    for p in (d / "one").iterdir():
        assert np.abs(pixels(p) - pixels(d / "two" / p.name)).max() <= 2


def test_tiles_from_the_command_line(photos, tiny_sd_folder, tiny_pipeline):
    d, _, _, adapter = photos
    big = write_image(d / "big.png", 200, 264, 5)
    assert main(base_args(tiny_sd_folder, adapter, d / "plain", big)) == 0
    assert main(base_args(tiny_sd_folder, adapter, d / "whole", big) + ["--tile-size", "320"]) == 0  # padded: 256x320
    assert np.array_equal(pixels(d / "plain" / "big.png"), pixels(d / "whole" / "big.png"))
    tiled = ["--tile-size", "128", "--tile-overlap", "64"]
    assert main(base_args(tiny_sd_folder, adapter, d / "tiled", big) + tiled) == 0
    use = [AdapterUse(make_adapter(), tiny_fdi(), 1.0)]
    ref = tiny_pipeline.restore(load_image(big)[None], use, steps=2, inversion_steps=2, tile_size=128, tile_overlap=64)[
        0
    ]
    expect = (ref.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.int16)
    assert np.abs(pixels(d / "tiled" / "big.png") - expect).max() <= 1
    assert np.abs(pixels(d / "tiled" / "big.png") - pixels(d / "plain" / "big.png")).mean() > 1  # tiles did run


def test_color_fix_flag_changes_outputs_towards_the_input(photos, tiny_sd_folder):
    d, _, _, adapter = photos
    yy, xx = np.mgrid[0:56, 0:56] / 56.0
    smooth = np.stack([0.3 + 0.3 * yy, 0.5 + 0.1 * xx, 0.4 + 0.2 * yy * xx], -1)  # mid-range: clamping stays rare
    smooth += np.random.default_rng(0).normal(0, 0.03, smooth.shape)
    loose = d / "smooth.png"
    Image.fromarray((smooth.clip(0, 1) * 255).astype(np.uint8)).save(loose)
    means = {}
    for method in ("none", "wavelet", "adain"):
        assert main(base_args(tiny_sd_folder, adapter, d / method, loose) + ["--color-fix", method]) == 0
        means[method] = pixels(d / method / "smooth.png").reshape(-1, 3).mean(0)
    target = pixels(loose).reshape(-1, 3).mean(0)
    assert np.abs(means["none"] - target).max() > 4  # the random model shifts colours
    assert np.abs(means["wavelet"] - target).max() <= 2 and np.abs(means["adain"] - target).max() <= 2


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty folder", "holds no images"),
        ("same output name", "would both be written as p1.png"),
        ("unreadable file in folder", "could not be read"),
        ("missing path", "does not exist"),
        ("batch size 0", "--batch-size 0 must be at least 1"),
        ("tile not a multiple of 64", "--tile-size/--tile-overlap: tile size 200 px is invalid"),
        ("tile under 128", "tile size 64 px is invalid; use a multiple of 64 of at least 128"),
        ("overlap not smaller than the tile", "tile overlap 256 px must be smaller than the tile (256 px)"),
    ],
)
def test_bad_collections_fail_before_any_work(photos, tiny_sd_folder, capsys, case, message):
    d, folder, loose, adapter = photos
    out = d / "never"
    images = [folder]
    extra = []
    if case == "empty folder":
        (d / "empty").mkdir()
        (d / "empty" / "readme.txt").write_text("x")
        images = [d / "empty"]
    elif case == "same output name":
        images = [folder, write_image(d / "p1.png", 16, 16, 0)]
    elif case == "unreadable file in folder":
        (folder / "p9.png").write_bytes(b"\x89PNG broken")
    elif case == "missing path":
        images = [d / "nowhere"]
    elif case == "batch size 0":
        extra = ["--batch-size", "0"]
    else:
        tile, overlap = {"tile not a multiple of 64": (200, 64), "tile under 128": (64, 0)}.get(case, (256, 256))
        extra = ["--tile-size", str(tile), "--tile-overlap", str(overlap)]
    assert main(base_args(tiny_sd_folder, adapter, out, *images) + extra) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def _run_cli(args, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-m", "fdi", *map(str, args)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGKILL, marks=pytest.mark.slow)])
def test_a_killed_run_keeps_finished_outputs_and_leaves_no_partial_file(photos, tiny_sd_folder, sig):
    d, folder, _, adapter = photos
    for i in range(5, 12):
        write_image(folder / f"p{i:02d}.png", 48, 64, i)
    out = d / "out"
    args = base_args(tiny_sd_folder, adapter, out, folder)[1:]
    args[args.index("2")] = "12"  # --steps 12: long enough to be killed mid-way
    proc = _run_cli(["restore", *args])
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("*.png"))) < 2 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    finished = sorted(out.glob("*.png"))
    assert 2 <= len(finished) < 12, err
    for p in finished:  # every output under its final name is a complete image
        assert pixels(p).shape == ((48, 64, 3) if p.stem != "p2" and p.stem != "p4" else (40, 72, 3))
    if sig == signal.SIGTERM:
        assert proc.returncode == 130 and "rerun with --skip-existing" in err
        assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    # resuming restores only the rest and removes any temporary file a hard kill left
    mtimes = {p.name: p.stat().st_mtime_ns for p in finished}
    args[args.index("12")] = "2"
    resumed = _run_cli(["restore", *args, "--skip-existing"])
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert len(list(out.glob("*.png"))) == 12 and [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    assert all((out / n).stat().st_mtime_ns == t for n, t in mtimes.items())


@pytest.mark.slow
def test_accelerate_launch_shards_the_images_over_processes_with_the_same_outputs(photos, tiny_sd_folder):
    """Two CPU processes (``accelerate launch --multi_gpu`` starts them through torch.distributed.run, GPUs or not):
    every image is restored once, by one process, and the files equal a one-process run's."""
    d, folder, loose, adapter = photos
    args = base_args(tiny_sd_folder, adapter, d / "one", folder, loose)[1:]
    single = _run_cli(["restore", *args])
    _, err = single.communicate(timeout=300)
    assert single.returncode == 0, err
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    two = [a if a != str(d / "one") else str(d / "two") for a in args]
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            "fdi",
            "restore",
            *two,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    printed = [line for line in run.stdout.split() if line.endswith(".png")]
    assert sorted(printed) == sorted(set(printed)) and len(printed) == 6  # each image once
    names = sorted(p.name for p in (d / "one").iterdir())
    assert names == sorted(p.name for p in (d / "two").iterdir())
    for name in names:
        assert (d / "one" / name).read_bytes() == (d / "two" / name).read_bytes()


def test_sharding_rule_is_sorted_names_modulo_world(photos, tmp_path, monkeypatch):
    from fdi.commands.restore import distributed_rank, plan_jobs, shard

    _, folder, loose, _ = photos
    jobs = plan_jobs([str(folder), str(loose)], tmp_path)
    assert [j.output.name for j in jobs] == ["loose.png", "p0.png", "p1.png", "p2.png", "p3.png", "p4.png"]
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    rank, world, local = distributed_rank()
    assert (rank, world, local) == (1, 2, 1)
    assert [j.output.name for j in shard(jobs, rank, world)] == ["p0.png", "p2.png", "p4.png"]
    assert [j.output.name for j in shard(jobs, 0, 2)] == ["loose.png", "p1.png", "p3.png"]


# ---- the guidance window: each adapter's own by default ----------------------------------------------------------


def guided_steps(monkeypatch) -> list:
    """Record, per UNet call of every pipeline the CLI builds, whether FDI guidance reached the UNet (its first down
    block got residuals); a list per pipeline."""
    runs = []
    original = FDIRestorationPipeline.from_pretrained

    def from_pretrained(*a, **k):
        pipe = original(*a, **k)
        seen = []
        runs.append(seen)
        pipe.unet.down_blocks[0].register_forward_pre_hook(
            lambda m, args, kwargs: seen.append("additional_residuals" in kwargs), with_kwargs=True
        )
        return pipe

    monkeypatch.setattr(FDIRestorationPipeline, "from_pretrained", from_pretrained)
    return runs


def test_an_adapter_recording_the_last_third_guides_steps_34_to_49_of_50(photos, tiny_sd_folder, monkeypatch, capsys):
    d, _, loose, _ = photos
    late = make_adapter()
    late.guidance_window = (0.667, 1.0)
    path = late.save(d / "late.safetensors", fdi=tiny_fdi())
    runs = guided_steps(monkeypatch)
    args = base_args(tiny_sd_folder, path, d / "out", loose) + ["--steps", "50", "--inversion-steps", "3"]
    assert main(args) == 0
    seen = runs[0]
    assert len(seen) == 3 + 50 and not any(seen[:3])  # the inversion is never guided
    assert [k for k, guided in enumerate(seen[3:]) if guided] == list(range(34, 50))
    assert "note:" not in capsys.readouterr().err


def test_an_old_file_restores_as_before_and_the_flags_override_the_window(photos, tiny_sd_folder, monkeypatch, capsys):
    """A file without a recorded window guides the paper's first third (steps 0, 1 of 6), the same pixels as the
    explicit --guidance-start 0 --guidance-end 0.333; the flags move a recorded window (no note inside it)."""
    d, _, loose, old = photos
    runs = guided_steps(monkeypatch)
    six = ["--steps", "6", "--inversion-steps", "2"]
    assert main(base_args(tiny_sd_folder, old, d / "default", loose) + six) == 0
    flags = ["--guidance-start", "0", "--guidance-end", "0.333"]
    assert main(base_args(tiny_sd_folder, old, d / "explicit", loose) + six + flags) == 0
    assert np.array_equal(pixels(d / "default" / "loose.png"), pixels(d / "explicit" / "loose.png"))
    assert [k for k, g in enumerate(runs[0][2:]) if g] == [0, 1] == [k for k, g in enumerate(runs[1][2:]) if g]
    late = make_adapter()
    late.guidance_window = (0.667, 1.0)
    path = late.save(d / "late.safetensors", fdi=tiny_fdi())
    ten = ["--steps", "10", "--inversion-steps", "2"]
    assert main(base_args(tiny_sd_folder, path, d / "own", loose) + ten) == 0
    assert main(base_args(tiny_sd_folder, path, d / "narrow", loose) + ten + ["--guidance-end", "0.9"]) == 0
    assert [k for k, g in enumerate(runs[2][2:]) if g] == [7, 8, 9]  # 0.667·10 ≤ k < 10
    assert [k for k, g in enumerate(runs[3][2:]) if g] == [7, 8]  # 0.667·10 ≤ k < 0.9·10
    assert "note:" not in capsys.readouterr().err


def test_a_window_leaving_the_trained_one_is_said_once_and_one_ending_before_it_starts_is_refused(
    photos, tiny_sd_folder, capsys
):
    d, folder, _, old = photos
    late = make_adapter(3)
    late.guidance_window = (0.667, 1.0)
    path = late.save(d / "late.safetensors", fdi=tiny_fdi())
    args = base_args(tiny_sd_folder, path, d / "out", folder) + ["--adapter", str(old), "--guidance-start", "0"]
    assert main(args + ["--guidance-end", "0.5"]) == 0  # five photos in two sizes: several batches
    err = capsys.readouterr().err
    want = (
        "note: adapter a3 (late.safetensors) was trained to guide steps 0.667..1 of sampling; --guidance-start 0 "
        "--guidance-end 0.5 makes it guide 0..0.5, outside the window it learned"
    )
    assert err.count("note:") == 1 and want in err and "a0" not in err and "Warning" not in err
    assert main(base_args(tiny_sd_folder, path, d / "bad", folder) + ["--guidance-end", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "a3 (late.safetensors) would guide steps 0.667..0.5 of sampling (--guidance-end 0.5 with its own" in err
    assert "give both --guidance-start and --guidance-end" in err and not (d / "bad").exists()
