"""bench/learns.py's machinery: the ``python -m fdi`` commands it runs (pairs, task FDIs, adapters, restorations).

Every adapter is one ``fdi train`` of a :class:`Arm` (timestep sampling and guidance window), a seed and a
fraction of the train pairs; every figure one ``fdi restore`` into a folder of :func:`run_dir`. Commands run
``jobs`` at a time in fresh processes with ``threads`` CPU threads each; a restoration starts as soon as the
adapters it needs exist.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[2]

TASKS = {"haze": "haze", "noise": "noise:sigma=25..50"}
COMPOSITE = ("haze+noise", "haze,noise:sigma=25..50")
ADAPTER_CONFIG = {"res_blocks": 1, "heads": 4, "se_reduction": 4}
#: train photos held out of adapter training (whole photos: their stride-32 patches overlap): the validation split
#: the sampling and window are settled on; the world's VAE and UNet were trained on them, the adapters never
VALIDATION_IMAGES = ("rocket", "camera")
#: guidance windows, fractions of sampling (step 0 the noisiest): the paper's first third, and what --windows adds
WINDOWS: Dict[str, Tuple[float, float]] = {"first": (0.0, 0.333), "last": (0.667, 1.0), "all": (0.0, 1.0)}
#: adapter training hyper-parameters (fixed before any result was seen)
TRAIN_LR, TRAIN_SCHEDULER, TRAIN_WARMUP = 1e-3, "cosine", 30


@dataclass(frozen=True)
class Arm:
    """How an adapter is trained and used: ``fdi train --timestep-sampling SAMPLING`` for the guidance window
    ``WINDOWS[window]``, restored in the same window."""

    sampling: str
    window: str = "first"

    @property
    def bounds(self) -> Tuple[float, float]:
        return WINDOWS[self.window]

    @property
    def name(self) -> str:
        return f"{self.sampling}-{self.window}"


def log(msg: str) -> None:
    print(f"[learns {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _env(threads: int) -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = str(threads)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    return env


@dataclass
class Job:
    """One ``python -m fdi ARGS``; it starts once every path in ``needs`` exists."""

    args: List
    needs: Tuple[Path, ...] = ()
    kind: str = "restore"


def fdi(args: List, threads: int) -> None:
    """Run ``python -m fdi ARGS`` (the command a user types); stop with its output if it fails."""
    run_jobs([Job(args, kind="other")], threads, jobs=1)


def _start(job: Job, threads: int) -> tuple:
    cmd = [sys.executable, "-m", "fdi", *[str(a) for a in job.args]]
    log_file = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, env=_env(threads), stdout=log_file, stderr=subprocess.STDOUT)
    return job, cmd, proc, log_file, time.time()


def _fail(cmd: List[str], log_file, running: List[tuple]) -> None:
    for entry in running:
        entry[2].kill()
    log_file.seek(0)
    sys.stderr.write(log_file.read().decode(errors="replace")[-6000:])
    raise SystemExit(f"failed: {' '.join(cmd)}")


def run_jobs(todo: Sequence[Job], threads: int, jobs: int) -> Dict[str, float]:
    """Run ``todo``, ``jobs`` at a time, each when its ``needs`` exist (the first ready in list order); stop with
    the output of the first that fails. Returns the summed wall seconds per ``Job.kind``."""
    pending, running = list(todo), []
    seconds: Dict[str, float] = {}
    while pending or running:
        ready = [j for j in pending if all(Path(p).exists() for p in j.needs)]
        while ready and len(running) < max(1, jobs):
            job = ready.pop(0)
            pending.remove(job)
            running.append(_start(job, threads))
        if not running:
            missing = sorted({str(p) for j in pending for p in j.needs if not Path(p).exists()})
            raise SystemExit(f"nothing can run: missing {', '.join(missing[:3])}")
        time.sleep(0.2)
        for entry in list(running):
            job, cmd, proc, log_file, t0 = entry
            if proc.poll() is None:
                continue
            running.remove(entry)
            if proc.returncode != 0:
                _fail(cmd, log_file, running)
            log_file.close()
            seconds[job.kind] = seconds.get(job.kind, 0.0) + time.time() - t0
    return {k: round(v, 1) for k, v in seconds.items()}


def copy_pngs(src: Path, dst: Path, names: Optional[Sequence[str]] = None) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.glob("*.png")):
        if names is None or p.name in names:
            shutil.copy2(p, dst / p.name)


def _photo(name: str) -> str:
    """The photo a patch file ``<photo>_<index>.png`` was cut from."""
    return name.rsplit("_", 1)[0]


def adapter_pairs(pairs_dir: Path) -> List[str]:
    """The train pairs adapters learn from: every pair not cut from a :data:`VALIDATION_IMAGES` photo."""
    return sorted(p.name for p in (pairs_dir / "degraded").glob("*.png") if _photo(p.name) not in VALIDATION_IMAGES)


def validation_names(pairs_dir: Path, n: int) -> List[str]:
    """``n`` validation pairs, as evenly spaced over each :data:`VALIDATION_IMAGES` photo's patches as they go."""
    names: List[str] = []
    for k, photo in enumerate(VALIDATION_IMAGES):
        own = sorted(p.name for p in (pairs_dir / "degraded").glob(f"{photo}_*.png"))
        want = n // len(VALIDATION_IMAGES) + (1 if k < n % len(VALIDATION_IMAGES) else 0)
        step = len(own) / max(1, want)
        names += [own[int((i + 0.5) * step)] for i in range(min(want, len(own)))]
    return names


def write_list(pairs_dir: Path, fraction: float, seed: int, path: Path) -> int:
    """Write a CSV list of a seeded ``fraction`` of :func:`adapter_pairs`; returns how many."""
    names = adapter_pairs(pairs_dir)
    k = max(1, round(fraction * len(names)))
    chosen = sorted(random.Random(seed).sample(names, k))
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["degraded", "clean"])
        for n in chosen:
            w.writerow([str(pairs_dir / "degraded" / n), str(pairs_dir / "clean" / n)])
    return k


def make_pairs(world: Dict, out: Path, val_patches: int) -> Dict[str, Path]:
    """``fdi degrade`` pairs: the train pairs of each task (cached in the world), the held-out test pairs of every
    task under ``out/<task>/{degraded,clean}`` and the validation pairs under ``out/val/<task>/{degraded,clean}``;
    returns the train pair folders."""
    root: Path = world["root"]
    pairs: Dict[str, Path] = {}
    for task, spec in {**TASKS, COMPOSITE[0]: COMPOSITE[1]}.items():
        if task in TASKS:
            tr = root / "pairs" / task
            if not (tr / "degradations.jsonl").exists():
                shutil.rmtree(tr, ignore_errors=True)
                fdi(["degrade", "--clean", world["train"], "--kind", spec, "-o", tr, "--seed", 1, "--quiet"], 1)
            pairs[task] = tr
            va = out / "val" / task
            shutil.rmtree(va, ignore_errors=True)
            names = validation_names(tr, val_patches)
            copy_pngs(tr / "degraded", va / "degraded", names)
            copy_pngs(tr / "clean", va / "clean", names)
        te = out / task
        shutil.rmtree(te, ignore_errors=True)
        fdi(["degrade", "--clean", world["test"], "--kind", spec, "-o", te / "pairs", "--seed", 2, "--quiet"], 1)
        copy_pngs(te / "pairs" / "degraded", te / "degraded")
        copy_pngs(te / "pairs" / "clean", te / "clean")
    return pairs


def task_fdis(world: Dict, pairs: Dict[str, Path], threads: int, jobs: int) -> Dict[str, Path]:
    """``fdi extract`` each task's FDI from the pairs adapters learn from (cached in the world; the validation
    photos left out): one FDI per task for every full-pairs adapter, as ``fdi train`` would compute it."""
    root: Path = world["root"]
    fdis, todo = {}, []
    for task, tr in pairs.items():
        names = adapter_pairs(tr)
        key = hashlib.sha256("\n".join(names).encode()).hexdigest()[:8]
        path = root / "fdi" / f"{task}-{key}.fdi.safetensors"
        fdis[task] = path
        if path.exists():
            continue
        links = root / "fdi" / f"{task}-{key}-pairs"
        for side in ("degraded", "clean"):
            shutil.rmtree(links / side, ignore_errors=True)
            (links / side).mkdir(parents=True)
            for n in names:
                (links / side / n).symlink_to(tr / side / n)
        todo.append(Job(["extract", "--blip2", world["blip2"], "--degraded", links / "degraded", "--clean",
                         links / "clean", "-o", path, "--label", task, "--quiet"], kind="extract"))  # fmt: skip
    if todo:
        log(f"extracting {len(todo)} task FDIs")
    run_jobs(todo, threads, jobs)
    return fdis


def adapter_key(world_key: str, steps: int, batch: int, threads: int) -> str:
    """The hash of what every adapter of a run shares (seed, arm and fraction name its folder)."""
    recipe = {
        "world": world_key,
        "steps": steps,
        "batch": batch,
        "lr": TRAIN_LR,
        "lr_scheduler": TRAIN_SCHEDULER,
        "warmup": TRAIN_WARMUP,
        "config": ADAPTER_CONFIG,
        "threads": threads,
        "validation_images": VALIDATION_IMAGES,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:8]


def train_job(world: Dict, plan: Dict, task: str, arm: Arm, seed: int, frac: float) -> Optional[Job]:
    """Fill ``plan["adapters"]`` for one adapter; the ``fdi train`` job that makes it, or None when cached.
    Full-pairs adapters read the task FDI; the few-pairs curve's compute theirs from their own pairs."""
    pct = int(round(frac * 100))
    a_dir = world["root"] / "adapters" / f"{task}-{pct}-{arm.name}-s{seed}-{plan['akey']}"
    a_dir.mkdir(parents=True, exist_ok=True)
    listing = a_dir / "pairs.csv"
    plan["n_pairs"][(task, frac)] = write_list(plan["pairs"][task], frac, seed=3, path=listing)
    adapter = a_dir / "adapter.safetensors"
    plan["adapters"][(task, arm, seed, frac)] = adapter
    if adapter.exists():
        return None
    fdi_args = ["--fdi", plan["fdis"][task]] if frac == 1.0 else ["--blip2", world["blip2"]]
    start, end = arm.bounds
    args = ["train", "--sd", world["sd"], *fdi_args, "--pairs-file", listing, "-o", adapter]
    args += ["--label", f"{task} (small world, {pct} % of pairs, {arm.name}, seed {seed})"]
    args += ["--adapter-config", json.dumps(ADAPTER_CONFIG), "--resolution", plan["patch"]]
    args += ["--max-steps", plan["adapter_steps"], "--batch-size", plan["batch"], "--lr", TRAIN_LR]
    args += ["--lr-scheduler", TRAIN_SCHEDULER, "--lr-warmup-steps", TRAIN_WARMUP, "--seed", seed]
    args += ["--timestep-sampling", arm.sampling, "--guidance-start", start, "--guidance-end", end]
    args += ["--num-workers", 0, "--checkpoint-every", 0, "--device", "cpu", "--log-every", 10, "--quiet"]
    return Job(args, kind="train")


def train_jobs(world: Dict, plan: Dict) -> List[Job]:
    """The ``fdi train`` jobs of every (task, arm, seed) and the few-pairs curve's (its tasks, the default arm)."""
    todo: List[Job] = []
    for task in TASKS:
        for arm in plan["arms"][task]:
            for seed in plan["seeds"]:
                fracs = plan["fractions"] if (task in plan["curve_tasks"] and arm == plan["default"]) else (1.0,)
                for frac in fracs:
                    job = train_job(world, plan, task, arm, seed, frac)
                    todo += [job] if job else []
    return todo


def run_dir(out: Path, arm: Arm, seed: int) -> Path:
    """Where the restorations of one arm and adapter seed go: ``out/runs/<arm>-s<seed>``."""
    return out / "runs" / f"{arm.name}-s{seed}"


def window_args(arm: Arm) -> List:
    start, end = arm.bounds
    return (["--guidance-start", start] if start > 0 else []) + ["--guidance-end", end]


def restore_jobs(world: Dict, out: Path, plan: Dict) -> List[Job]:
    """``fdi restore`` jobs: strength 0 once per task (held-out and validation: it does not depend on the adapter);
    per (task, arm, seed) the guided held-out and validation patches; for the default arm the wrong FDI, the
    few-pairs curve and the composite (both adapters) on haze + noise."""
    steps = ["--steps", plan["steps"], "--inversion-steps", plan["steps"]]
    common = [*steps, "--batch-size", 16, "--device", "cpu", "--quiet", "--sd", world["sd"]]
    ad = plan["adapters"]
    first = plan["seeds"][0]
    todo: List[Job] = []

    def restore(src: Path, dst: Path, adapters: Sequence[Path], extra: List) -> None:
        a_args = [x for a in adapters for x in ("--adapter", a)]
        todo.append(Job(["restore", *a_args, "--image", src / "degraded", "-o", dst, *extra, *common], tuple(adapters)))

    other = {"haze": "noise", "noise": "haze"}
    for task in TASKS:
        a0 = ad[(task, plan["default"], first, 1.0)]
        restore(out / task, out / task / "unguided", [a0], ["--strength", 0])
        restore(out / "val" / task, out / "val" / task / "unguided", [a0], ["--strength", 0])
    for seed in plan["seeds"]:
        for task in TASKS:
            for arm in plan["arms"][task]:
                a, rd = ad[(task, arm, seed, 1.0)], run_dir(out, arm, seed)
                restore(out / task, rd / task / "restored", [a], window_args(arm))
                restore(out / "val" / task, rd / "val" / task / "restored", [a], window_args(arm))
            arm, rd = plan["default"], run_dir(out, plan["default"], seed)
            wrong = ["--fdi", plan["fdis"][other[task]], *window_args(arm)]
            restore(out / task, rd / task / "wrong_fdi", [ad[(task, arm, seed, 1.0)]], wrong)
            for frac in plan["fractions"][:-1] if task in plan["curve_tasks"] else ():
                pct_dir = rd / task / f"restored_{int(round(frac * 100))}pct"
                restore(out / task, pct_dir, [ad[(task, arm, seed, frac)]], window_args(arm))
        arm, rd, ctask = plan["default"], run_dir(out, plan["default"], seed), COMPOSITE[0]
        both = [ad[(t, arm, seed, 1.0)] for t in TASKS]
        if seed == first:
            restore(out / ctask, out / ctask / "unguided", both, ["--strength", 0])
        restore(out / ctask, rd / ctask / "restored", both, window_args(arm))
        for t, a in zip(TASKS, both):
            restore(out / ctask, rd / ctask / f"{t}_only", [a], window_args(arm))
    return todo


def keep_first_seed(out: Path, plan: Dict) -> None:
    """Copy the default arm's first-seed restorations to ``out/<task>/<kind>`` (the figure's, today's layout)."""
    rd = run_dir(out, plan["default"], plan["seeds"][0])
    for task in (*TASKS, COMPOSITE[0]):
        for kind_dir in sorted((rd / task).iterdir()):
            shutil.rmtree(out / task / kind_dir.name, ignore_errors=True)
            copy_pngs(kind_dir, out / task / kind_dir.name)
