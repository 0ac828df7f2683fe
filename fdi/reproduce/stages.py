"""The stages of a reproduction, each resumable: (a) the data sets' pairs, (b) the task FDI of each training
subset, (c) the adapters (``fdi.training``'s run with its checkpoints, resumed from the newest), (d) the test
set restored (one PNG per pair, existing ones kept), (e) the metrics. Each stage's results are files of the run
folder, written atomically; a stage whose files exist is not run again.

``run`` below is a :class:`~fdi.reproduce.run.Plan`: the checked config, the data plan, the folder, the log.
"""

from __future__ import annotations

import csv
import gc
import json
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

import torch

from ..data import Pair, read_pairs_file
from ..errors import FDIError
from ..files import atomic_write
from ..progress import tqdm_progress
from ..seeds import seeded_generator
from .config import ReproduceConfig, Variant, adapter_overrides

if TYPE_CHECKING:
    from .run import Plan

DATASETS_FILE = "datasets.json"
TIMES_FILE = "restore_times.csv"
METRICS_FILE = "metrics.json"


def _write_json(path: Path, data: dict) -> None:
    with atomic_write(path, "w") as fh:
        json.dump(data, fh, indent=2, allow_nan=False)
        fh.write("\n")


# ---------------------------------------------------------------------------------------------- (a) pairs
def _describe(split) -> dict:
    return {
        "dataset": split.dataset,
        "release": split.release,
        "top": str(split.top),
        "pairs": len(split.pairs),
        "missing_gt": len(split.missing_gt),
        "warnings": list(split.warnings),
        "metric": split.metric,
        "crop_border": split.crop_border,
        "reference": split.reference,
    }


def read_pairs(run: "Plan") -> Tuple[List[Pair], List[Pair], dict]:
    """Stage (a): the training and test pairs and what was read (``datasets.json``); clean-only sets are
    synthesized into ``<run>/fdi-datasets/``. A finished stage is read back from its files."""
    from ..datasets import read_dataset, write_pairs_csv

    folder, info_file = run.folder, run.folder / DATASETS_FILE
    if info_file.is_file():
        return (
            read_pairs_file(folder / "train_pairs.csv"),
            read_pairs_file(folder / "test_pairs.csv"),
            (json.loads(info_file.read_text())),
        )
    cache = folder / "fdi-datasets"
    splits = []
    for name, split in [*((n, "train") for n in run.data.train), (run.data.test, "test")]:
        run.log(f"(a) reading {name} {split} under {run.cfg.data}")
        with ExitStack() as stack:  # a bar only when the reader synthesizes images (clean-only sets)
            bar: list = []

            def cb(done: int, total: int, desc: str = f"(a) {name} {split}: synthesizing") -> None:
                if not bar:
                    bar.append(stack.enter_context(tqdm_progress(desc, total, "img", enabled=not run.cfg.quiet)))
                if bar[0]:
                    bar[0](done, total)

            splits.append(read_dataset(name, run.cfg.data, split, run.data.task, cache, run.cfg.data_seed, cb))
    train = [p for s in splits[:-1] for p in s.pairs]
    test = splits[-1]
    if not train or not test.pairs:
        raise FDIError(f"no {'training' if not train else 'test'} pairs found; check --data")
    info = {"train": [_describe(s) for s in splits[:-1]], "test": _describe(test)}
    warnings = [w for s in splits for w in s.warnings]
    with atomic_write(folder / "warnings.txt", "w") as fh:
        fh.write("".join(w + "\n" for w in warnings))
    for w in warnings:
        run.log(f"warning: {w}")
    write_pairs_csv(train, folder / "train_pairs.csv")
    write_pairs_csv(test.pairs, folder / "test_pairs.csv")
    _write_json(info_file, info)  # last: its presence marks the stage done
    return read_pairs_file(folder / "train_pairs.csv"), read_pairs_file(folder / "test_pairs.csv"), info


def subset(pairs: List[Pair], proportion: float, seed: int) -> List[Pair]:
    """A seeded random ``proportion`` of ``pairs`` (at least one), in their order. One permutation per seed:
    a smaller proportion's pairs are a part of a larger one's."""
    if proportion >= 1:
        return list(pairs)
    n = max(1, round(proportion * len(pairs)))
    order = torch.randperm(len(pairs), generator=seeded_generator("reproduce-subset", seed))
    keep = sorted(order[:n].tolist())
    return [pairs[i] for i in keep]


def subset_pairs(run: "Plan", train: List[Pair], proportion: float, sub: Path) -> Path:
    """The training pairs list of one proportion, ``<run>/p<percent>/train_pairs.csv`` (written once)."""
    from ..datasets import write_pairs_csv

    file = sub / "train_pairs.csv"
    if not file.is_file():
        sub.mkdir(parents=True, exist_ok=True)
        write_pairs_csv(subset(train, proportion, run.cfg.seed), file)
    return file


# ---------------------------------------------------------------------------------------------- (b) FDI
def task_fdis(run: "Plan", train: List[Pair]) -> None:
    """Stage (b): the task FDI of each proportion's pairs, ``<run>/p<percent>/task.fdi.safetensors``."""
    from ..encoder import QFormerEncoder
    from ..extract import extract_fdi_from_pairs

    encoder = None
    for proportion in run.cfg.proportions:
        sub = run.folder / Variant(proportion, "full").subset_dir
        pairs = read_pairs_file(subset_pairs(run, train, proportion, sub))
        out = sub / "task.fdi.safetensors"
        if out.is_file():
            run.log(f"(b) {out.relative_to(run.folder)} exists: kept")
            continue
        if encoder is None:
            encoder = QFormerEncoder.from_pretrained(run.cfg.blip2, device=run.device)
        run.log(f"(b) task FDI of {len(pairs)} training pairs ({proportion:.0%} of the set)")
        with tqdm_progress("(b) task FDI", len(pairs), unit="pair", enabled=not run.cfg.quiet) as cb:
            fdi = extract_fdi_from_pairs(
                encoder, pairs, label=f"{run.data.task} {sub.name}", batch_size=run.cfg.blip2_batch_size, progress=cb
            )
        fdi.save(out)
    del encoder
    _free()


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------- (c) adapters
def train_config(cfg: ReproduceConfig, run_folder: Path, task: str, variant: Variant):
    """The :class:`~fdi.training.config.TrainConfig` of one variant: the paper's settings and the run's options,
    resumed from the newest checkpoint of ``<variant>/train-run/``."""
    from ..training.config import TrainConfig

    sub, folder = run_folder / variant.subset_dir, run_folder / variant.folder
    return TrainConfig(
        sd=cfg.sd,
        sd_config=cfg.sd_config,
        output=str(folder / "adapter.safetensors"),
        blip2=cfg.blip2,
        pairs_file=str(sub / "train_pairs.csv"),
        fdi=str(sub / "task.fdi.safetensors"),
        checkpoint_dir=str(folder / "train-run"),
        resume="latest",
        resolution=cfg.resolution,
        batch_size=cfg.batch_size,
        max_steps=cfg.max_steps,
        epochs=cfg.epochs,
        lr=cfg.lr,
        grad_accum=cfg.grad_accum,
        mixed_precision=cfg.mixed_precision,
        gradient_checkpointing=cfg.gradient_checkpointing,
        adapter_config=adapter_overrides(cfg, variant.ablation),
        checkpoint_every=cfg.checkpoint_every,
        seed=cfg.seed,
        device=cfg.device,
        num_workers=cfg.num_workers,
        label=f"{task} {variant.folder}",
        quiet=cfg.quiet,
    )


def train_adapters(run: "Plan") -> Dict[str, int]:
    """Stage (c): each variant's adapter, ``<run>/p<percent>/<ablation>/adapter.safetensors``; returns the
    optimizer steps trained per variant folder in this call (0 for a kept adapter)."""
    from ..training import run as training

    steps = {}
    for variant in run.variants:
        tc = train_config(run.cfg, run.folder, run.data.task, variant)
        Path(tc.output).parent.mkdir(parents=True, exist_ok=True)
        if Path(tc.output).is_file():
            run.log(f"(c) {variant.folder}/adapter.safetensors exists: kept")
            steps[variant.folder] = 0
            continue
        run.log(f"(c) training the {variant.ablation} adapter on {variant.subset_dir}'s pairs (resumable)")
        result = training.train(tc)
        steps[variant.folder] = result.steps - result.start_step
        _free()
    return steps


# ---------------------------------------------------------------------------------------------- (d) restore
def restore_test_set(run: "Plan", test: List[Pair]) -> Dict[str, int]:
    """Stage (d): every test pair restored by each variant's adapter with the paper's sampler into
    ``<variant>/restored/<pair name>.png`` (``fdi restore``'s naming and jobs; existing outputs kept), the time of
    each restoration appended to ``restore_times.csv``; returns the images restored per variant folder."""
    from ..adapter import FDIAdapter
    from ..commands.restore import plan_jobs, remove_stale_temporaries
    from ..images import load_image, save_image
    from ..restoration import AdapterUse

    done: Dict[str, int] = {}
    pipe = None
    for variant in run.variants:
        folder = run.folder / variant.folder
        jobs = plan_jobs([], folder / "restored", named=[(Path(p.degraded), p.name) for p in test])
        todo = [j for j in jobs if not j.output.is_file()]
        done[variant.folder] = len(todo)
        if not todo:
            run.log(f"(d) {variant.folder}: all {len(test)} test images restored already")
            continue
        (folder / "restored").mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(todo)
        if pipe is None:
            pipe = run.load_pipeline()
        use = AdapterUse(FDIAdapter.from_file(folder / "adapter.safetensors"))
        pipe.check_adapter(use.adapter)
        run.log(f"(d) {variant.folder}: restoring {len(todo)} of {len(test)} test images")
        with tqdm_progress(f"(d) {variant.folder}", len(todo), unit="img", enabled=not run.cfg.quiet) as cb:
            for i, job in enumerate(todo):
                image = load_image(job.source)[None]
                start = time.perf_counter()
                out = pipe.restore(image, [use], steps=run.cfg.steps, inversion_steps=run.cfg.inversion_steps)
                seconds = time.perf_counter() - start  # the output is on the CPU: the device has finished
                save_image(out[0], job.output)
                with open(folder / TIMES_FILE, "a", newline="") as fh:
                    csv.writer(fh).writerow([job.output.stem, f"{seconds:.4f}", run.device_name])
                if cb:
                    cb(i + 1, len(todo))
    del pipe
    _free()
    return done


# ---------------------------------------------------------------------------------------------- (e) metrics
def _times(folder: Path, names: List[str]) -> Tuple[Dict[str, float], List[str]]:
    """The last recorded restoration time (s) of each of ``names``, and the devices they were measured on."""
    out: Dict[str, float] = {}
    devices: Dict[str, str] = {}
    file = folder / TIMES_FILE
    if file.is_file():
        for row in csv.reader(file.read_text().splitlines()):
            if len(row) >= 3 and row[0] in names:
                out[row[0]], devices[row[0]] = float(row[1]), row[2]
    return out, sorted(set(devices.values()))


def lpips_absence(device) -> Optional[str]:
    """Why LPIPS cannot be computed here (``None`` when it can): the package or its weights missing."""
    from ..metrics import load_lpips

    try:
        load_lpips(device)
    except (FDIError, ImportError, OSError) as exc:
        return str(exc)
    return None


def _scores(run: "Plan", test: List[Pair], folder: Path, info: dict, lpips_absent: Optional[str]) -> dict:
    """``fdi eval``'s figures of one variant's restorations (none for a set without ground truth)."""
    from ..metrics import evaluate_files, match_predictions

    if not info.get("reference", True):
        return {"mean": {}, "images": [], "n_images": 0, "no_reference": info["dataset"]}
    items = match_predictions(folder / "restored", test)
    result = evaluate_files(items, info["crop_border"], use_lpips=lpips_absent is None, device=run.device)
    return {**result.to_json(), "lpips_absent": lpips_absent}


def measure(run: "Plan", test: List[Pair], info: dict) -> Dict[str, dict]:
    """Stage (e): per variant, PSNR/SSIM on RGB and Y of every restored test image against its clean image (the
    test split's ``info``: crop border, ground truth or not), LPIPS when available (else the reason), the seconds
    per image and the adapter's parameter count (``<variant>/metrics.json``); returns them by variant folder."""
    from ..adapter import FDIAdapter

    out: Dict[str, dict] = {}
    absent: Optional[List[Optional[str]]] = None
    run.log("(e) metrics")
    for variant in run.variants:
        folder = run.folder / variant.folder
        file = folder / METRICS_FILE
        if file.is_file():
            out[variant.folder] = json.loads(file.read_text())
            continue
        absent = absent or [lpips_absence(run.device)]
        result = _scores(run, test, folder, info, absent[0])
        times, devices = _times(folder, [p.name for p in test])
        adapter = FDIAdapter.from_file(folder / "adapter.safetensors")
        result.update(
            seconds_per_image=sum(times.values()) / len(times) if times else None,
            timed_images=len(times),
            timing_devices=devices,
            adapter_parameters=adapter.num_parameters(),
            adapter_config=json.loads(adapter.config.to_json()),
        )
        _write_json(file, result)
        out[variant.folder] = result
    return out
