"""It learns: FDI restoration trained here, end to end, on a small world, with nothing downloaded.

``python bench/learns.py --out DIR`` builds (or reuses, from ``--cache``) the world of
:mod:`world` — a tiny VAE and a tiny SD 2.x UNet trained from scratch on patches of scikit-image's
photos, a tiny random BLIP-2 (``--world`` picks the recipe, by default ``v-v5``, a v-prediction UNet with one
layer a level, the world whose guidance channel is widest on train pairs: docs/design.md, "The small world") — then,
through the project's own commands:

1. ``python -m fdi degrade`` makes (degraded, clean) pairs from the clean train patches for each task
   (haze; Gaussian noise) and from the held-out test patches (``chelsea``, ``coffee``, never seen by the world),
   plus test pairs with both (haze + noise);
2. ``python -m fdi train`` trains, per task, ``--seeds`` adapters (``--seed 0, 1, ...``; the world fixed) for each
   ``--timestep-sampling`` in the paper's guidance window (the first third), on the train pairs of every train
   photo but the validation photos (``rocket``, ``camera``: learns_jobs.VALIDATION_IMAGES); for the first
   sampling also on 10 % and 30 % of them (the few-pairs curve of the paper's Table 6); with ``--windows``, the
   ``--window-tasks`` adapters also trained (``window`` sampling) and used on the last third and on every step;
3. ``python -m fdi restore`` restores the held-out test patches and ``--val-patches`` validation patches (pairs of
   the validation photos, twice as many as test patches by default): plain inversion + sampling (``--strength 0``,
   once per task: it needs no adapter), each adapter guided in the window it was trained for, for the first sampling
   also the same adapter with the other task's FDI (wrong FDI) and the two adapters composed on haze + noise;
4. the project's eval (:func:`fdi.metrics.evaluate_folders`) measures PSNR/SSIM against the clean patches.

Writes ``DIR/report.json``: per task the first sampling's figures (``psnr_degraded``, ``psnr_unguided``,
``psnr_restored``, ``psnr_wrong_fdi``, SSIMs; a figure that depends on the adapter is the mean over seeds, with
``<key>_range`` [min, max] and ``<key>_per_seed``), its validation figures, the curve; ``sampling_comparison`` (per
task and sampling: restored PSNR and its gain over the input and over strength 0, mean/min/max/per seed, on the
validation split and held out; ``preferred_on_validation``); with ``--windows`` the same per window in ``windows``;
the world's facts and wall times. The images: ``DIR/<task>/{degraded,unguided,restored,wrong_fdi,clean}/`` (the first
sampling's first seed), every run under ``DIR/runs/<sampling>-<window>-s<seed>/``, and a figure ``DIR/learns.jpg``.

Decisions fixed before any result was seen (nothing here is selected on the test patches): restoration
runs the paper's recipe as the project's defaults give it (50 inversion + 50 sampling steps, guidance
in the first third, strength 1, no colour fix); noise is σ = 25..50 (8-bit levels), strong enough
that the degraded PSNR lies below what the world's VAE can reconstruct; haze uses fdi.degrade's
default ranges. The sampling and window are settled on the validation split: two whole train photos (their
overlapping stride-32 patches never reach adapter training), which the world's VAE and UNet did see, as SD saw most
photos a user restores; the held-out figures are reported whatever they say.

Reproducible: the same command from an empty cache gives the same figures on the same machine (the world is trained
in one thread, every ``fdi`` command with ``--threads``; the adapters' cache key holds the thread count, its seed,
sampling and window); world.py says what another CPU or library version changes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench" / "smallworld"))

import learns_jobs as J  # noqa: E402
import learns_report as R  # noqa: E402

DEFAULT_WORLD = "v-v5"
#: optimizer steps per adapter: a full run, --reduced, --smoke (--adapter-steps overrides)
ADAPTER_STEPS = {"full": 600, "reduced": 400, "smoke": 3}
SAMPLINGS = ("window", "cubic", "uniform")
LOGGED = ("psnr_degraded", "psnr_unguided", "psnr_restored", "psnr_restored_range", "gain_db", "gain_over_unguided_db")


def _csv(text: str) -> List[str]:
    return [t for t in text.split(",") if t]


def _samplings(text: str) -> List[str]:
    names = _csv(text)
    bad = [n for n in names if n not in SAMPLINGS]
    if bad or not names or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"a comma-separated list of distinct {', '.join(SAMPLINGS)}; got {text!r}")
    return names


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
    ap.add_argument("--seeds", type=int, default=3, help="adapter seeds per task and sampling (fdi train --seed 0..)")
    ap.add_argument(
        "--timestep-sampling",
        type=_samplings,
        default=["window"],
        metavar="LIST",
        help="fdi train --timestep-sampling rules to compare, comma-separated (window,cubic,uniform); the first is "
        "the one the task rows, the curve and the figure show (default: window)",
    )
    ap.add_argument(
        "--windows",
        action="store_true",
        help="also train and restore the --window-tasks adapters on the last third and on every step",
    )
    ap.add_argument("--window-tasks", default="noise", help="tasks --windows compares, comma-separated")
    ap.add_argument(
        "--val-patches",
        type=int,
        default=None,
        help="validation patches per task (default: twice the test patches; a restoration's time is mostly its "
        "process start: 16 patches 8.9 s, 4 patches 6.5 s)",
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
        help=f"the world's recipe, one of bench/smallworld/world.py's WORLDS: {', '.join(WORLDS)}",
    )
    args = ap.parse_args(argv)
    for t in _csv(args.window_tasks) + _csv(args.curve):
        if t not in J.TASKS:
            ap.error(f"unknown task {t!r} in --window-tasks/--curve; the tasks are {', '.join(J.TASKS)}")
    if args.seeds < 1:
        ap.error("--seeds must be at least 1")
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


def check_commands(args: argparse.Namespace) -> None:
    """Stop before any training if this checkout's ``fdi`` lacks an option the run needs."""
    env = J._env(1)
    train = subprocess.run([sys.executable, "-m", "fdi", "train", "--help"], env=env, capture_output=True, text=True)
    needs = {"fdi train": (train.stdout, ("--timestep-sampling", "--guidance-start", "--seed"))}
    if args.windows:
        restore = subprocess.run(
            [sys.executable, "-m", "fdi", "restore", "--help"], env=env, capture_output=True, text=True
        )
        needs["fdi restore"] = (restore.stdout, ("--guidance-start",))
    for cmd, (text, options) in needs.items():
        missing = [o for o in options if o not in text]
        if missing:
            raise SystemExit(
                f"{cmd} has no {', '.join(missing)} in this checkout; update it (issue 32) or drop the flag"
            )


def make_plan(args: argparse.Namespace, cfg, adapter_steps: int, batch: int) -> Dict:
    """What the run trains and restores: the arms per task, the seeds, the curve."""
    samplings = args.timestep_sampling
    default = J.Arm(samplings[0])
    window_tasks = tuple(_csv(args.window_tasks)) if args.windows else ()
    arms = {}
    for task in J.TASKS:
        arms[task] = [J.Arm(s) for s in samplings]
        if task in window_tasks:
            arms[task] += [a for a in (J.Arm("window", w) for w in J.WINDOWS) if a not in arms[task]]
    fractions = (1.0,) if args.no_curve else (0.1, 0.3, 1.0)
    return dict(
        samplings=samplings,
        default=default,
        arms=arms,
        window_tasks=window_tasks,
        seeds=list(range(args.seeds)),
        fractions=fractions,
        curve_tasks=() if args.no_curve else tuple(_csv(args.curve)),
        adapter_steps=adapter_steps,
        batch=batch,
        patch=cfg.patch,
        steps=args.steps,
        akey=J.adapter_key(cfg.key(), adapter_steps, batch, args.threads),
        adapters={},
        n_pairs={},
    )


def build_report(out: Path, world: Dict, cfg, plan: Dict, args: argparse.Namespace) -> Dict[str, object]:
    """report.json's content (timing added by the caller)."""
    fig = R.Figures(out, plan)
    facts = {**world["info"], "key": cfg.key(), "config": json.loads((world["root"] / "config.json").read_text())}
    report: Dict[str, object] = {"world": facts}
    for task in (*J.TASKS, J.COMPOSITE[0]):
        row = R.task_row(fig, task, world)
        report[task] = row
        J.log(f"{task}: " + " ".join(f"{k}={row[k]}" for k in LOGGED if k in row))
    report["sampling_comparison"] = R.sampling_comparison(fig)
    if plan["window_tasks"]:
        report["windows"] = R.window_comparison(fig)
    report["adapter_training"] = {
        "world": cfg.key(),
        "steps": plan["adapter_steps"],
        "batch": plan["batch"],
        "lr": J.TRAIN_LR,
        "lr_scheduler": J.TRAIN_SCHEDULER,
        "warmup": J.TRAIN_WARMUP,
        "config": J.ADAPTER_CONFIG,
        "resolution": cfg.patch,
        "seeds": plan["seeds"],
        "samplings": list(plan["samplings"]),
        "validation_images": list(J.VALIDATION_IMAGES),
        "threads": args.threads,
        "cache_key": plan["akey"],
    }
    report["restoration"] = {
        "steps": args.steps,
        "inversion_steps": args.steps,
        "guidance_window": list(plan["default"].bounds),
        "guidance_end": plan["default"].bounds[1],
        "strength": 1.0,
    }
    report["goal"] = R.goal(report)
    return report


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    from fdi.transformers_compat import use_pil_image_processors

    use_pil_image_processors()  # the world's SD pipeline and BLIP-2 processor config, without torchvision warnings
    import torch

    torch.set_num_threads(args.threads)
    import world as W

    t_start = time.time()
    timing: Dict[str, float] = {}
    cfg, adapter_steps, batch = world_recipe(args)
    check_commands(args)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    J.log(f"world {cfg.key()} (cache {args.cache})")
    world = W.build_world(cfg, args.cache)
    timing["world_s"] = round(time.time() - t_start, 1)
    J.log(f"world ready in {timing['world_s']} s: {world['info']}")

    t0 = time.time()
    plan = make_plan(args, cfg, adapter_steps, batch)
    val_patches = args.val_patches or 2 * cfg.test_patches
    plan["pairs"] = J.make_pairs(world, out, val_patches)
    plan["fdis"] = J.task_fdis(world, plan["pairs"], args.threads, args.jobs)
    timing["pairs_and_fdi_s"] = round(time.time() - t0, 1)

    t0 = time.time()
    trains = J.train_jobs(world, plan)
    restores = J.restore_jobs(world, out, plan)
    J.log(f"{len(trains)} adapters to train ({adapter_steps} steps, batch {batch}), {len(restores)} restorations, "
          f"{args.jobs} at a time")  # fmt: skip
    per_kind = J.run_jobs(trains + restores, args.threads, args.jobs)
    timing["train_and_restore_s"] = round(time.time() - t0, 1)
    timing.update({f"{k}_process_s": v for k, v in per_kind.items()})
    timing["adapters_trained"], timing["restorations"] = len(trains), len(restores)
    J.keep_first_seed(out, plan)

    report = build_report(out, world, cfg, plan, args)
    timing["total_s"] = round(time.time() - t_start, 1)
    report["timing"] = timing
    with open(out / "report.json", "w") as fh:
        json.dump(report, fh, indent=2)
    R.write_figure(out, args.figure or out / "learns.jpg", plan["default"], plan["seeds"][0])
    J.log(f"done in {timing['total_s']} s: {out / 'report.json'}")
    return 0
