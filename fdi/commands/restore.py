"""``python -m fdi restore``: restore images with FDI adapters on Stable Diffusion 1.5, 2.1 or SDXL (diffusers).

Files and folders in, one output per image written as soon as it is done (atomically); images of
the same size are restored in batches; ``--skip-existing`` resumes; under ``accelerate launch`` or
``torchrun`` the images are sharded over the processes (sorted by output name, image ``i`` to
process ``i % world``).
"""

from __future__ import annotations

import argparse
import glob
import os
import signal
import sys
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

from ..colorfix import COLOR_FIXES
from ..dtypes import DTYPES
from ..errors import FDIError
from ..restoration import MODES
from ..sampling import DEFAULT_GUIDANCE_WINDOW, PREDICTION_TYPES
from ..tiles import DEFAULT_TILE_OVERLAP
from .data_args import add_dataset_args, dataset_source
from .restore_auto import add_auto_args, check_auto_args, run_auto


class Job(NamedTuple):
    """One image to restore: its file, its output file and its size ``(H, W)``."""

    source: Path
    output: Path
    size: Tuple[int, int]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "restore",
        help="restore images with one or more FDI adapters (DDIM inversion + guided DDIM sampling)",
        description=(
            "Restore images with FDI adapters on SD 1.5, SD 2.1 or SDXL: the image is VAE-encoded, DDIM-inverted, "
            "then denoised with each adapter's guidance active during its guidance window, the part of the "
            "sampling steps it was trained for (recorded in its file; the paper's first third for files that "
            "record none); --guidance-start/--guidance-end replace that window for every adapter. "
            "Several adapters are combined by weighted sum (--mode composite: at each step, of the adapters whose "
            "window holds it) or run one after another (--mode progressive, each in its own window). "
            "Each FDI comes from --fdi or from the adapter file. "
            "Outputs are OUT_DIR/<input name>.png at the input's size (with --dataset: <pair name>.png), each "
            "written as soon as it is done. "
            "With --auto, a degradation classifier picks the adapters of each image (and --blip2 is needed). "
            "Nothing is downloaded; without --auto, BLIP-2 is not needed."
        ),
    )
    _model_args(p)
    add_auto_args(p.add_argument_group("automatic restoration: the adapters picked per image (docs/design.md)"))
    _io_args(p)
    add_dataset_args(p.add_argument_group("a downloaded data set instead of --image (docs/datasets.md)"), "test")
    _sampling_args(p)
    _runtime_args(p)
    p.set_defaults(func=run)
    return p


def _model_args(p: argparse.ArgumentParser) -> None:
    """The model and the adapters: --sd, --sd-config, --prediction-type, --adapter, --weight, --fdi."""
    p.add_argument(
        "--sd",
        required=True,
        metavar="MODEL",
        help="diffusers SD 1.5 / SD 2.1 / SDXL folder, or a single-file .safetensors checkpoint (family detected)",
    )
    p.add_argument(
        "--sd-config",
        metavar="FOLDER",
        help="for a single-file checkpoint: a diffusers folder with the matching configs (no download)",
    )
    p.add_argument(
        "--prediction-type",
        choices=PREDICTION_TYPES,
        default=None,
        help="override the model's prediction type (default: the scheduler's, "
        "or for a single file detected from the weights)",
    )
    p.add_argument(
        "--adapter",
        required=True,
        action="append",
        metavar="A.safetensors",
        help="FDI adapter file; repeat for several",
    )
    p.add_argument(
        "--weight",
        action="append",
        type=float,
        metavar="W",
        help="weight of each adapter, in --adapter order (default 1 each)",
    )
    p.add_argument(
        "--fdi",
        action="append",
        metavar="F.fdi.safetensors",
        help="FDI file: once for all adapters, or once per adapter (default: the FDI embedded in each adapter file)",
    )


def _io_args(p: argparse.ArgumentParser) -> None:
    """Inputs and outputs: --image, -o, --skip-existing, --batch-size, --color-fix, --tile-size, --tile-overlap."""
    p.add_argument(
        "--image",
        nargs="+",
        metavar="IN",
        help="degraded image files and/or folders (a folder: its image files, not recursive)",
    )
    p.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="output folder (created if missing)")
    p.add_argument(
        "--skip-existing", action="store_true", help="skip images whose output already exists (resume a run)"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=1,
        metavar="N",
        help="restore up to N images of the same size together (default 1)",
    )
    p.add_argument(
        "--color-fix",
        choices=COLOR_FIXES,
        default="none",
        help="colour correction towards the input: wavelet (keep the input's low frequencies), "
        "adain (match its per-channel mean/std) or none (default; "
        "haze and low-light restorations change colours on purpose)",
    )
    p.add_argument(
        "--tile-size",
        type=int,
        default=0,
        metavar="PX",
        help="restore in overlapping tiles of PX pixels (a multiple of 64, from 128; "
        "default 0 = whole image): bounded memory for large photos",
    )
    p.add_argument(
        "--tile-overlap",
        type=int,
        default=DEFAULT_TILE_OVERLAP,
        metavar="PX",
        help=f"overlap of neighbouring tiles in pixels, blended smoothly (default {DEFAULT_TILE_OVERLAP})",
    )


def _sampling_args(p: argparse.ArgumentParser) -> None:
    """The restoration's settings: steps, guidance window and strength, mode, prompts, CFG."""
    p.add_argument("--steps", type=int, default=50, help="DDIM sampling steps (default 50)")
    p.add_argument("--inversion-steps", type=int, default=50, help="DDIM inversion steps (default 50)")
    start, end = DEFAULT_GUIDANCE_WINDOW
    p.add_argument(
        "--guidance-start",
        type=float,
        default=None,
        metavar="F",
        help="first guided step as a fraction of the sampling steps, 0..1 (step k is guided when "
        "start·N ≤ k < end·N). Default: each adapter's own, from the window it was trained for "
        f"(files that record none: {start:g}). Given, it applies to every adapter; a note says when that "
        "leaves an adapter's trained window",
    )
    p.add_argument(
        "--guidance-end",
        type=float,
        default=None,
        metavar="F",
        help="end of the guided steps as a fraction of the sampling steps, 0..1. Default: each adapter's own "
        f"(files that record none: {end}, the paper's first third); given, it applies to every adapter",
    )
    p.add_argument("--strength", type=float, default=1.0, help="global guidance strength (default 1.0)")
    p.add_argument(
        "--mode",
        choices=MODES,
        default="composite",
        help="how several adapters combine (default composite)",
    )
    p.add_argument("--prompt", default="", help="text prompt (default empty, as in the paper)")
    p.add_argument("--negative-prompt", default="", help="negative prompt, used when --cfg > 1")
    p.add_argument("--cfg", type=float, default=1.0, help="classifier-free guidance scale (default 1 = none)")


def _runtime_args(p: argparse.ArgumentParser) -> None:
    """Where and how it runs: --device, --dtype, --compile, --quiet."""
    p.add_argument(
        "--device",
        default=None,
        help="torch device (default cuda if available, else cpu; cuda:LOCAL_RANK under accelerate/torchrun)",
    )
    p.add_argument(
        "--dtype",
        choices=tuple(DTYPES),
        default=None,
        help="UNet/VAE dtype (default fp16 on cuda, fp32 on cpu)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the UNet (CUDA graphs on cuda) once per image shape: slower first image, faster after",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def distributed_rank() -> Tuple[int, int, int]:
    """``(rank, world size, local rank)`` from the environment ``accelerate launch`` and ``torchrun`` set
    (else ``(0, 1, 0)``)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    rank = int(os.environ.get("RANK", "0") or 0)
    local = int(os.environ.get("LOCAL_RANK", str(rank)) or 0)
    return rank, max(world, 1), local


def plan_jobs(inputs: List[str], out_dir: Path, named: Optional[Sequence[Tuple[Path, str]]] = None) -> List[Job]:
    """Every image of ``inputs`` (files and folders; or ``named``: ``(file, output stem)``, a data set's pairs) with
    its output name and size, sorted by output name.

    Raises :class:`FDIError` for a missing path, a folder without images, an unreadable or too small
    image, or two inputs that would write the same output.
    """
    from ..images import collect_images, probe_image
    from ..restoration import check_image_size

    if named is None:
        named = [(path, path.stem) for path in collect_images(inputs)]
    jobs: Dict[str, Job] = {}
    for path, stem in named:
        name = f"{stem}.png"
        if name in jobs:
            raise FDIError(
                f"images {str(jobs[name].source)!r} and {str(path)!r} would both be written as {name}; "
                "rename one or restore them into different folders"
            )
        h, w = probe_image(path)
        check_image_size(h, w, f"image {path.name!r}")
        jobs[name] = Job(path, out_dir / name, (h, w))
    return [jobs[k] for k in sorted(jobs)]


def dataset_inputs(args: argparse.Namespace) -> Optional[List[Tuple[Path, str]]]:
    """``--dataset``: the degraded images of the split with their pair names (``None`` without ``--dataset``);
    refuses ``--image`` beside it, and asks for one of the two."""
    source = dataset_source(args, args.output)
    if source is None:
        if not args.image:
            raise FDIError("nothing to restore: give --image FILES/FOLDERS, or --dataset NAME --data ROOT")
        return None
    if args.image:
        raise FDIError("give the images to restore one way: --image or --dataset, not both")
    return [(p.degraded, p.name) for p in source.read().pairs]


def shard(jobs: List[Job], rank: int, world: int) -> List[Job]:
    """The jobs of process ``rank`` of ``world``: job ``i`` of the sorted list goes to process ``i % world``."""
    return jobs[rank::world]


def make_batches(jobs: List, batch_size: int, key: Callable = lambda job: job.size) -> List[List]:
    """Batches of at most ``batch_size`` items with the same ``key`` (a job's size by default), in the order of
    each key's first item."""
    by_key: Dict[object, List] = {}
    for job in jobs:
        by_key.setdefault(key(job), []).append(job)
    return [group[i : i + batch_size] for group in by_key.values() for i in range(0, len(group), batch_size)]


def remove_stale_temporaries(jobs: List[Job]) -> None:
    """Delete temporary files a hard-killed earlier run left for these outputs (``.NAME.*.tmp``, :mod:`fdi.files`)."""
    for job in jobs:
        for tmp in job.output.parent.glob(f".{glob.escape(job.output.name)}.*.tmp"):
            try:
                tmp.unlink()
            except OSError:
                pass


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt inside the block (main thread only), as Ctrl-C does."""
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if main_thread else None
    try:
        yield
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def check_args(args: argparse.Namespace) -> list:
    """Every cheap check of the arguments, before anything is loaded or written; returns the adapters'
    :class:`fdi.restoration.AdapterUse` (adapter files and FDI files read and matched). Prints a note (stderr)
    for each adapter made to guide outside the window it was trained for."""
    from ..adapter import FDIAdapter
    from ..instruction import FDI
    from ..restoration import CLI_SETTING_NAMES, AdapterUse, check_settings, guidance_windows
    from ..tiles import check_tiling

    start, end = args.guidance_start, args.guidance_end
    check_settings(args.steps, args.inversion_steps, start, end, args.strength, args.cfg, args.mode, CLI_SETTING_NAMES)
    if args.batch_size < 1:
        raise FDIError(f"--batch-size {args.batch_size} must be at least 1")
    if args.tile_size:
        try:
            check_tiling(args.tile_size, args.tile_overlap)
        except FDIError as exc:
            raise FDIError(f"--tile-size/--tile-overlap: {exc}") from None
    n = len(args.adapter)
    weights = args.weight or [1.0] * n
    if len(weights) != n:
        raise FDIError(
            f"{len(weights)} --weight values for {n} --adapter files; give one weight per adapter, in the same order"
        )
    fdis = args.fdi or []
    if len(fdis) not in (0, 1, n):
        raise FDIError(f"{len(fdis)} --fdi files for {n} adapters; give one FDI for all adapters or one per adapter")
    sd = Path(args.sd)
    if not sd.exists():
        raise FDIError(
            f"model {str(sd)!r} does not exist; give a diffusers folder (SD 1.5, 2.1, SDXL) or a .safetensors file"
        )
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise FDIError(f"output {str(out_dir)!r} is a file; give a folder (-o OUT_DIR)")
    adapters = [FDIAdapter.from_file(a) for a in args.adapter]
    loaded = [FDI.load(f) for f in fdis]
    uses = []
    for i, (adapter, w) in enumerate(zip(adapters, weights)):
        fdi = loaded[0] if len(loaded) == 1 else (loaded[i] if loaded else None)
        use = AdapterUse(adapter, fdi, w)
        adapter.tokens_for(use.resolved_fdi(), 1)  # no FDI at all, width, token count, encoder
        uses.append(use)
    for note in guidance_windows(adapters, start, end, names=CLI_SETTING_NAMES)[1]:
        print(f"note: {note}", file=sys.stderr)
    return uses


def pick_device(requested, world: int, local_rank: int):
    """The torch device: ``requested``, else ``cuda:LOCAL_RANK`` under a launcher (the current CUDA device
    otherwise), else the CPU."""
    import torch

    if requested:
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank if world > 1 else torch.cuda.current_device())
    return torch.device("cpu")


def todo_jobs(args: argparse.Namespace) -> Tuple[List[Job], int, Tuple[int, int, int]]:
    """This process's jobs (planned, sharded, those with an output dropped under ``--skip-existing``), how many were
    skipped, and ``(rank, world, local rank)``."""
    jobs = plan_jobs(args.image, Path(args.output), dataset_inputs(args))
    rank, world, local_rank = distributed_rank()
    jobs = shard(jobs, rank, world)
    skipped = 0
    if args.skip_existing:
        todo = [j for j in jobs if not j.output.exists()]
        skipped, jobs = len(jobs) - len(todo), todo
    return jobs, skipped, (rank, world, local_rank)


def load_pipeline(args: argparse.Namespace, uses: list, device):
    """The restoration pipeline of ``--sd`` on ``device``, every adapter and the step count checked against it."""
    from ..encoder import parse_dtype
    from ..pipeline import FDIRestorationPipeline

    dtype = parse_dtype(args.dtype or ("fp16" if device.type == "cuda" else "fp32"))
    pipe = FDIRestorationPipeline.from_pretrained(
        Path(args.sd), device=device, dtype=dtype, config=args.sd_config, prediction_type=args.prediction_type
    )
    for use in uses:  # family and channel layout, before any work
        pipe.check_adapter(use.adapter)
    pipe.check_steps(args.steps)  # the schedule's step bound (fdi.sampling.max_ddim_steps)
    return pipe


def run(args: argparse.Namespace) -> int:
    from ..pipeline import GuidanceWindowNote

    if check_auto_args(args):
        return run_auto(args)
    uses = check_args(args)
    jobs, skipped, (_, world, local_rank) = todo_jobs(args)
    pipe = load_pipeline(args, uses, pick_device(args.device, world, local_rank))
    if skipped:
        print(f"skipping {skipped} image(s) whose output exists", file=sys.stderr)
    if not jobs:
        return 0
    if args.compile:
        pipe.compile()
    Path(args.output).mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(jobs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GuidanceWindowNote)  # check_args printed the notes once
        return restore_jobs(pipe, uses, jobs, args)


def restore_settings(args: argparse.Namespace) -> dict:
    """The keyword settings of :meth:`fdi.pipeline.FDIRestorationPipeline.restore` from the arguments."""
    names = ("steps", "inversion_steps", "guidance_start", "guidance_end", "strength", "mode", "prompt")
    names += ("negative_prompt", "cfg", "tile_size", "tile_overlap")
    return {k: getattr(args, k) for k in names}


def restore_jobs(pipe, uses: list, jobs: List[Job], args: argparse.Namespace) -> int:
    """Restore ``jobs`` in batches and write each output as soon as it is done; 130 when interrupted (Ctrl-C or
    SIGTERM: the finished outputs stay, the one being written is dropped with its temporary file)."""
    import torch

    from ..colorfix import color_fix
    from ..images import load_image, save_image
    from ..progress import tqdm_progress

    per_image = (args.steps + args.inversion_steps) * (len(uses) if args.mode == "progressive" else 1)
    total = per_image * len(jobs)
    done_images = 0
    try:
        bar = tqdm_progress(f"restore {len(jobs)} image(s)", total, unit="step", enabled=not args.quiet)
        with sigterm_interrupts(), bar as cb:
            for batch in make_batches(jobs, args.batch_size):
                images = torch.stack([load_image(j.source) for j in batch])
                offset, b = done_images * per_image, len(batch)
                progress = (lambda d, t, o=offset, b=b: cb(o + d * b, total)) if cb else None
                out = pipe.restore(images, uses, progress=progress, **restore_settings(args))
                out = color_fix(out, images, args.color_fix)
                for job, img in zip(batch, out):
                    save_image(img, job.output)
                    print(job.output, flush=True)
                done_images += b
                del images, out
    except KeyboardInterrupt:
        print(
            f"interrupted after {done_images} of {len(jobs)} image(s): the finished outputs are kept; "
            "rerun with --skip-existing to resume",
            file=sys.stderr,
        )
        return 130
    return 0
