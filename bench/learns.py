"""It learns: FDI restoration trained here, end to end, on a small world, with nothing downloaded.

``python bench/learns.py --out DIR`` builds (or reuses, from ``--cache``) the world of
:mod:`world` — a tiny VAE and a tiny SD 2.x UNet trained from scratch on patches of scikit-image's
photos, a tiny random BLIP-2 (``--world`` picks the recipe, by default ``v-v5``, a v-prediction UNet with one
layer a level, the world whose guidance channel is widest on train pairs: docs/design.md, "The small world") — then,
through the project's own commands:

1. ``python -m fdi degrade`` makes (degraded, clean) pairs from the clean train patches for each task
   (haze; Gaussian noise) and from the held-out test patches (``chelsea``, ``coffee``, never seen in training),
   plus test pairs with both (haze + noise);
2. ``python -m fdi train`` trains one FDI adapter per task on all pairs, and on 10 % and 30 % of them
   (the few-pairs curve of the paper's Table 6);
3. ``python -m fdi restore`` restores the test patches: plain inversion + sampling (``--strength 0``),
   FDI-guided, the same adapter with the other task's FDI (wrong FDI), and the two adapters composed
   on haze + noise;
4. the project's eval (:func:`fdi.metrics.evaluate_folders`) measures PSNR/SSIM against the clean patches.

Writes ``DIR/report.json`` (per task ``psnr_degraded``, ``psnr_unguided``, ``psnr_restored``,
``psnr_wrong_fdi`` and the SSIMs, the curve, the world's facts, wall times), the images under
``DIR/<task>/{degraded,unguided,restored,wrong_fdi,clean}/`` and a figure ``DIR/learns.jpg``.

Decisions fixed before any result was seen (nothing here is tuned on the test patches): restoration
runs the paper's recipe as the project's defaults give it (50 inversion + 50 sampling steps, guidance
in the first third, strength 1, no colour fix); noise is σ = 25..50 (8-bit levels), strong enough
that the degraded PSNR lies below what the world's VAE can reconstruct; haze uses fdi.degrade's
default ranges.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

TASKS = {"haze": "haze", "noise": "noise:sigma=25..50"}
COMPOSITE = ("haze+noise", "haze,noise:sigma=25..50")
ADAPTER_CONFIG = {"res_blocks": 1, "heads": 4, "se_reduction": 4}
DEFAULT_WORLD = "v-v5"
#: optimizer steps per adapter: a full run, --reduced, --smoke (--adapter-steps overrides)
ADAPTER_STEPS = {"full": 600, "reduced": 400, "smoke": 3}


def _log(msg: str) -> None:
    print(f"[learns {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _env(threads: int) -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = str(threads)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    return env


def fdi(args: List[str], threads: int) -> None:
    """Run ``python -m fdi ARGS`` (the command a user types); stop with its output if it fails."""
    fdi_many([args], threads, jobs=1)


def fdi_many(commands: List[List], threads: int, jobs: int) -> None:
    """Run several ``python -m fdi`` commands, ``jobs`` at a time; stop with the output of the first that fails."""
    pending = [[sys.executable, "-m", "fdi", *[str(a) for a in args]] for args in commands]
    running: List[tuple] = []
    while pending or running:
        while pending and len(running) < max(1, jobs):
            cmd = pending.pop(0)
            running.append(
                (cmd, subprocess.Popen(cmd, env=_env(threads), stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
            )
        cmd, proc = running.pop(0)
        out, _ = proc.communicate()
        if proc.returncode != 0:
            for _, other in running:
                other.kill()
            sys.stderr.write(out.decode(errors="replace")[-6000:])
            raise SystemExit(f"failed: {' '.join(cmd)}")


def _copy_pngs(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.glob("*.png")):
        shutil.copy2(p, dst / p.name)


def _subset_list(pairs_dir: Path, fraction: float, seed: int, path: Path) -> int:
    """Write a CSV list of a seeded ``fraction`` of the pairs; returns how many."""
    import random

    names = sorted(p.name for p in (pairs_dir / "degraded").glob("*.png"))
    k = max(1, round(fraction * len(names)))
    chosen = sorted(random.Random(seed).sample(names, k))
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["degraded", "clean"])
        for n in chosen:
            w.writerow([str(pairs_dir / "degraded" / n), str(pairs_dir / "clean" / n)])
    return k


def metrics(pred: Path, gt: Path) -> Dict[str, float]:
    from fdi.metrics import evaluate_folders

    m = evaluate_folders(pred, gt).mean
    return {k: round(float(m[k]), 4) for k in ("psnr", "ssim")}


def figure(out: Path, rows: List[tuple], path: Path, caption: str) -> None:
    """Input / strength 0 / restored / clean for a few test patches of each task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fdi.images import load_image

    cols = ("degraded input", "strength 0 (unguided)", "FDI restored", "clean")
    fig, axes = plt.subplots(len(rows), 4, figsize=(8, 2.05 * len(rows) + 0.5), squeeze=False)
    for r, (task, name) in enumerate(rows):
        for c, kind in enumerate(("degraded", "unguided", "restored", "clean")):
            ax = axes[r][c]
            ax.imshow(load_image(out / task / kind / name).permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=9)
            if c == 0:
                ax.set_ylabel(task, fontsize=9)
    fig.suptitle(caption, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, pil_kwargs={"quality": 88})
    plt.close(fig)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    from world import WORLDS

    from fdi.cli import HelpFormatter

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="output folder (report.json, images, figure)")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "fdi-learns", help="world/adapter cache")
    ap.add_argument(
        "--reduced",
        action="store_true",
        help="the slow test's run: a shorter-trained world (VAE 800, UNet 500, adapters 400 steps), 8 test patches, "
        "no few-pairs curve",
    )
    ap.add_argument(
        "--smoke", action="store_true", help="a few steps of everything: checks the plumbing, learns nothing"
    )
    ap.add_argument(
        "--adapter-steps",
        type=int,
        default=None,
        help="optimizer steps per adapter (default: "
        + ", ".join(f"{n} with --{k}" if k != "full" else str(n) for k, n in ADAPTER_STEPS.items())
        + ")",
    )
    ap.add_argument("--no-curve", action="store_true", help="skip the few-pairs curve (10 %%, 30 %%)")
    ap.add_argument("--steps", type=int, default=50, help="DDIM inversion and sampling steps of restoration")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per process")
    ap.add_argument("--jobs", type=int, default=2, help="trainings/restorations run at once (processes)")
    ap.add_argument("--curve", default="haze", help="tasks of the few-pairs curve, comma-separated")
    ap.add_argument("--figure", type=Path, default=None, help="figure path (default OUT/learns.jpg)")
    ap.add_argument(
        "--world",
        default=DEFAULT_WORLD,
        choices=list(WORLDS),
        metavar="NAME",
        help=f"the world's recipe, one of bench/world.py's WORLDS: {', '.join(WORLDS)}",
    )
    args = ap.parse_args(argv)
    return args


def world_recipe(args: argparse.Namespace):
    """``(WorldConfig, adapter_steps, batch)`` for the run (full, ``--reduced`` or ``--smoke``)."""
    import world as W

    if args.world not in W.WORLDS:
        raise SystemExit(f"--world {args.world!r} is not one of {', '.join(W.WORLDS)}")
    cfg = W.WORLDS[args.world]
    adapter_steps, batch = ADAPTER_STEPS["full"], 8
    if args.reduced:
        cfg = replace(cfg, vae_steps=800, unet_steps=500, test_patches=8)
        adapter_steps = ADAPTER_STEPS["reduced"]
        args.no_curve = True
    if args.smoke:
        cfg = replace(cfg, vae_steps=40, unet_steps=40, test_patches=4)  # one-cycle lr needs >= 2 warm-up steps
        adapter_steps = ADAPTER_STEPS["smoke"]
    if args.adapter_steps:
        adapter_steps = args.adapter_steps
    return cfg, adapter_steps, batch


def make_pairs(world: Dict, out: Path) -> Dict[str, Path]:
    """``fdi degrade`` pairs: the train pairs of each task (cached in the world) and the test pairs of every
    task under ``out/<task>/{degraded,clean}``; returns the train pair folders."""
    root: Path = world["root"]
    pairs: Dict[str, Path] = {}
    for task, spec in {**TASKS, COMPOSITE[0]: COMPOSITE[1]}.items():
        if task in TASKS:
            tr = root / "pairs" / task
            if not (tr / "degradations.jsonl").exists():
                shutil.rmtree(tr, ignore_errors=True)
                fdi(["degrade", "--clean", world["train"], "--kind", spec, "-o", tr, "--seed", 1, "--quiet"], 1)
            pairs[task] = tr
        te = out / task
        shutil.rmtree(te, ignore_errors=True)
        fdi(["degrade", "--clean", world["test"], "--kind", spec, "-o", te / "pairs", "--seed", 2, "--quiet"], 1)
        _copy_pngs(te / "pairs" / "degraded", te / "degraded")
        _copy_pngs(te / "pairs" / "clean", te / "clean")
    return pairs


def _train_args(world: Dict, listing: Path, adapter: Path, label: str, patch: int, steps: int, batch: int) -> List:
    return [
        "train",
        "--sd",
        world["sd"],
        "--blip2",
        world["blip2"],
        "--pairs-file",
        listing,
        "-o",
        adapter,
        "--label",
        label,
        "--adapter-config",
        json.dumps(ADAPTER_CONFIG),
        "--resolution",
        patch,
        "--max-steps",
        steps,
        "--batch-size",
        batch,
        "--lr",
        1e-3,
        "--lr-scheduler",
        "cosine",
        "--lr-warmup-steps",
        30,
        "--num-workers",
        0,
        "--checkpoint-every",
        0,
        "--device",
        "cpu",
        "--log-every",
        10,
        "--quiet",
    ]


def train_adapters(world: Dict, cfg, pairs: Dict[str, Path], plan: Dict, args: argparse.Namespace) -> Dict:
    """``fdi train`` one adapter per (task, fraction of pairs), reusing cached ones; returns the recipe and
    fills ``plan["adapters"]`` and ``plan["n_pairs"]``."""
    root: Path = world["root"]
    recipe = {
        "world": cfg.key(),
        "steps": plan["adapter_steps"],
        "batch": plan["batch"],
        "lr": 1e-3,
        "lr_scheduler": "cosine",
        "warmup": 30,
        "config": ADAPTER_CONFIG,
    }
    akey = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:8]
    todo = []
    for task in TASKS:
        for frac in plan["fractions"] if task in plan["curve_tasks"] else (1.0,):
            a_dir = root / "adapters" / f"{task}-{int(frac * 100)}-{akey}"
            a_dir.mkdir(parents=True, exist_ok=True)
            listing = a_dir / "pairs.csv"
            plan["n_pairs"][(task, frac)] = _subset_list(pairs[task], frac, seed=3, path=listing)
            adapter = a_dir / "adapter.safetensors"
            plan["adapters"][(task, frac)] = adapter
            if not adapter.exists():
                label = f"{task} (small world, {int(frac * 100)} % of pairs)"
                todo.append(
                    _train_args(world, listing, adapter, label, cfg.patch, plan["adapter_steps"], plan["batch"])
                )
    _log(f"training {len(todo)} adapters ({plan['adapter_steps']} steps, batch {plan['batch']}), {args.jobs} at a time")
    fdi_many(todo, args.threads, args.jobs)
    return recipe


def restore_all(world: Dict, out: Path, plan: Dict, args: argparse.Namespace) -> None:
    """``fdi restore`` the test patches of every task: unguided, restored, wrong FDI, the curve's adapters, and
    the composite (both adapters) on haze + noise."""
    adapters = plan["adapters"]
    steps = ["--steps", args.steps, "--inversion-steps", args.steps]
    common = [*steps, "--batch-size", 16, "--device", "cpu", "--quiet", "--sd", world["sd"]]
    jobs: List[List] = []

    def restore(task: str, kind: str, adapter_args: List) -> None:
        jobs.append(["restore", *adapter_args, "--image", out / task / "degraded", "-o", out / task / kind, *common])

    def fdi_of(task: str, frac: float = 1.0) -> Path:
        return adapters[(task, frac)].parent / "adapter-run" / "train.fdi.safetensors"

    other = {"haze": "noise", "noise": "haze"}
    for task in TASKS:
        a = adapters[(task, 1.0)]
        restore(task, "unguided", ["--adapter", a, "--strength", 0])
        restore(task, "restored", ["--adapter", a])
        restore(task, "wrong_fdi", ["--adapter", a, "--fdi", fdi_of(other[task])])
        for frac in plan["fractions"][:-1] if task in plan["curve_tasks"] else ():
            restore(task, f"restored_{int(frac * 100)}pct", ["--adapter", adapters[(task, frac)]])
    ctask = COMPOSITE[0]
    both = ["--adapter", adapters[("haze", 1.0)], "--adapter", adapters[("noise", 1.0)]]
    restore(ctask, "unguided", [*both, "--strength", 0])
    restore(ctask, "restored", both)
    restore(ctask, "haze_only", ["--adapter", adapters[("haze", 1.0)]])
    restore(ctask, "noise_only", ["--adapter", adapters[("noise", 1.0)]])
    _log(f"{len(jobs)} restorations, {args.jobs} at a time")
    fdi_many(jobs, args.threads, args.jobs)


def task_row(out: Path, task: str, world: Dict, plan: Dict) -> Dict[str, object]:
    """PSNR/SSIM of every kind of output of ``task`` against its clean patches (and the few-pairs curve)."""
    row: Dict[str, object] = {"spec": TASKS.get(task, COMPOSITE[1]), "test_patches": world["info"]["test_patches"]}
    kinds = ["degraded", "unguided", "restored"]
    kinds += ["wrong_fdi"] if task in TASKS else ["haze_only", "noise_only"]
    for kind in kinds:
        m = metrics(out / task / kind, out / task / "clean")
        row[f"psnr_{kind}"], row[f"ssim_{kind}"] = m["psnr"], m["ssim"]
    if task in plan["curve_tasks"]:
        curve = []
        for frac in plan["fractions"]:
            kind = "restored" if frac == 1.0 else f"restored_{int(frac * 100)}pct"
            m = metrics(out / task / kind, out / task / "clean")
            curve.append({"fraction": frac, "pairs": plan["n_pairs"][(task, frac)], **m})
        row["few_pairs_curve"] = curve
    if task in TASKS:
        row["train_pairs"] = plan["n_pairs"][(task, 1.0)]
    row["gain_db"] = round(float(row["psnr_restored"]) - float(row["psnr_degraded"]), 3)
    return row


def write_figure(out: Path, path: Path) -> None:
    names = sorted(p.name for p in (out / "haze" / "clean").glob("*.png"))
    picks = [names[1], names[-2]] if len(names) > 3 else names[:1]
    tasks = (*TASKS, COMPOSITE[0])
    rows = [(t, n) for t in tasks for n in picks[:1]] + [(t, picks[-1]) for t in tasks]
    caption = (
        "A small model trained here from scratch on 64 px patches of scikit-image's photos (not SD 2.1); "
        "held-out photos; adapters trained with 'fdi train'"
    )
    figure(out, rows, path, caption)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    from fdi.transformers_compat import use_pil_image_processors

    use_pil_image_processors()  # the world's SD pipeline and BLIP-2 processor config, without torchvision warnings
    import torch

    torch.set_num_threads(args.threads)
    import world as W

    from fdi.sampling import GUIDANCE_END

    t_start = time.time()
    timing: Dict[str, float] = {}
    cfg, adapter_steps, batch = world_recipe(args)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    _log(f"world {cfg.key()} (cache {args.cache})")
    world = W.build_world(cfg, args.cache)
    timing["world_s"] = round(time.time() - t_start, 1)
    _log(f"world ready in {timing['world_s']} s: {world['info']}")

    t0 = time.time()
    pairs = make_pairs(world, out)
    timing["degrade_s"] = round(time.time() - t0, 1)

    t0 = time.time()
    fractions = (1.0,) if args.no_curve else (0.1, 0.3, 1.0)
    curve_tasks = () if args.no_curve else tuple(t for t in args.curve.split(",") if t)
    plan = dict(adapter_steps=adapter_steps, batch=batch, fractions=fractions, curve_tasks=curve_tasks)
    plan.update(adapters={}, n_pairs={})
    recipe = train_adapters(world, cfg, pairs, plan, args)
    timing["train_s"] = round(time.time() - t0, 1)

    t0 = time.time()
    restore_all(world, out, plan, args)
    timing["restore_s"] = round(time.time() - t0, 1)

    facts = {**world["info"], "key": cfg.key(), "config": json.loads((world["root"] / "config.json").read_text())}
    report: Dict[str, object] = {"world": facts}
    for task in (*TASKS, COMPOSITE[0]):
        row = task_row(out, task, world, plan)
        report[task] = row
        _log(f"{task}: " + " ".join(f"{k}={v}" for k, v in row.items() if k.startswith("psnr") or k == "gain_db"))
    report["adapter_training"] = {**recipe, "resolution": cfg.patch}
    report["restoration"] = {
        "steps": args.steps,
        "inversion_steps": args.steps,
        "guidance_end": GUIDANCE_END,
        "strength": 1.0,
    }
    timing["total_s"] = round(time.time() - t_start, 1)
    report["timing"] = timing
    report["goal"] = {
        t: {
            "gain_ge_2db": report[t]["gain_db"] >= 2.0,
            "beats_wrong_fdi": report[t]["psnr_restored"] > report[t]["psnr_wrong_fdi"],
        }
        for t in TASKS
    }
    with open(out / "report.json", "w") as fh:
        json.dump(report, fh, indent=2)
    write_figure(out, args.figure or out / "learns.jpg")
    _log(f"done in {timing['total_s']} s: {out / 'report.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
