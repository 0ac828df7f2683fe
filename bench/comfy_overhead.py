"""Benchmark FDI guidance against ComfyUI's built-in T2I-Adapter, per sampling step, on ComfyUI's own SD 2.1 UNet.

Not a test: prints one summary line per figure, all measured in one run, side by side:

1. ``ours/plain``: a sampling step of a MODEL patched by our nodes (``FDI Noise Decoupling`` →
   ``Apply FDI Guidance``, guidance active at the timed steps) ÷ a plain step (target ≤ 1.02).
2. ``T2I/plain``: a sampling step with ComfyUI's native T2I-Adapter control ÷ a plain step. The
   adapter is a diffusers-format ``T2IAdapter`` (``full_adapter``, in_channels 3, channels
   320/640/1280/1280, 2 res-blocks, downscale 8 — SD 1.x/2.x widths) with random weights, written
   with ``save_pretrained`` (one ``diffusion_pytorch_model.safetensors``), put in ``models/controlnet``
   and loaded by the stock ``ControlNetLoader`` node (``comfy.controlnet.load_controlnet``), then
   applied to positive and negative by the stock ``ControlNetApplyAdvanced`` node (hint image at
   the sampling resolution, strength 1, 0 → 1).
3. ``one-time``: what each adapter costs once per image / sampling run, outside the per-step
   figures: our adapter's forward (``FDINoiseDecoupling``, run before sampling) and the extra time
   of the T2I run's first step over a plain first step (ComfyUI runs the T2I adapter on the first
   step of every sampling run and caches its output for the later steps).

How: everything runs in this process with ComfyUI's modules imported from ``COMFYUI_DIR`` (as
``--cpu`` unless ``--device cuda``, with a temporary ``--base-directory``) and the pack loaded the
way ComfyUI loads a custom-node folder. The MODEL is the cached full-size random SD 2.1 checkpoint
of ``tests/sd21_fixture.py`` (made by ``tests/comfyui/test_e2e.py``: DiffusersLoader → CheckpointSave),
loaded by ``comfy.sd.load_checkpoint_guess_config`` (what ``CheckpointLoaderSimple`` calls) with
the requested weight dtype; without that cache, the diffusers fixture's UNet (built on first use,
minutes) is loaded by ``comfy.sd.load_diffusion_model``. Our adapter is the default-config 47 M
adapter of ``bench/guidance_overhead.py`` (``trained_like_adapter``: gates and last layers non-zero).
The conditioning is a random ``(1, 77, 1024)`` context (no text encoder is loaded); cfg 1 (the
paper's; ComfyUI then evaluates the positive batch only) unless ``--cfg``.

Each step is timed through the real sampling path: ``comfy.sample.sample_custom`` (what
``SamplerCustom`` calls: CFGGuider, ``prepare_sampling``, ``process_conds``, control ``pre_run`` and
cleanup) with a ``KSAMPLER`` whose sampler function is an Euler loop that times every
``model(x, sigma)`` call (→ ``sampling_function`` → ``calc_cond_batch``: ``control.get_control`` and
the UNet with its ``transformer_options`` patches) on the first sigmas of a 50-step ``normal``
schedule, every one guided (our MODEL is applied with end_percent 1: guidance on every step of the
timed runs) as the T2I's (whole range). Runs are
interleaved plain / ours / T2I (the order rotates every round, so drift of a shared machine hits
all three), the first step of every run is left out of the per-step figures (it is where the T2I
adapter runs), and the medians are compared; the median and interquartile range of the per-round
paired ratios show how much the machine's noise moves them. The first step's prediction of each
guided run is checked to differ from the plain one, so an inactive guidance cannot pass as "no
overhead". Random weights say nothing about quality; they time the same kernels.

Whole-step timings on a shared 2-core CPU scatter by several percent from step to step, more than
the 2 % target. So each per-step line also gives a direct measure, from one extra 6-step run per
adapter (medians over its last 5 steps): the time spent inside our two patch objects' ``__call__``
(every block's call) and inside ComfyUI's T2I control code (``T2IAdapter.get_control`` with its
cached control, plus the ``apply_control`` additions in the UNet), as a share of a plain step.
``--raw`` prints every timed step.

    COMFYUI_DIR=/path/to/ComfyUI /path/to/comfy/venv/bin/python bench/comfy_overhead.py        # CPU, 256 px, 6 rounds
    COMFYUI_DIR=... python bench/comfy_overhead.py --device cuda --dtype fp16 --size 512 --reps 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PACK = "comfyui_fdi_bench"  # the package name the pack is loaded under (ComfyUI uses the folder path)
VARIANTS = ("plain", "ours", "t2i")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DIRECT_STEPS = 6  # steps of the runs that time the code inside a step (5 counted)
CURRENT_STEP = [0]  # the step timing_sampler is at, for time_inside


def comfyui_dir() -> str:
    path = os.environ.get("COMFYUI_DIR", "")
    if not path:
        sys.exit(
            "error: COMFYUI_DIR is not set. This benchmark imports ComfyUI in-process: run it as\n"
            "  COMFYUI_DIR=/path/to/ComfyUI /path/to/comfy/venv/bin/python bench/comfy_overhead.py\n"
            "under ComfyUI's Python (it needs ComfyUI's dependencies and diffusers)."
        )
    if not (Path(path) / "comfy" / "samplers.py").is_file():
        sys.exit(f"error: COMFYUI_DIR={path!r} is not a ComfyUI checkout (no comfy/samplers.py in it)")
    return path


def import_comfy(comfy_path: str, device: str, base: str) -> None:
    """Import ComfyUI's modules from ``comfy_path`` first on the path, set up like
    ``main.py --cpu --base-directory``."""
    sys.path.insert(0, comfy_path)
    import comfy.cli_args

    comfy.cli_args.args.cpu = device == "cpu"
    comfy.cli_args.args.base_directory = base
    import comfy.model_management  # noqa: F401 - device setup reads the args
    import folder_paths  # noqa: F401 - reads base_directory


def load_pack():
    """Load this repository the way ComfyUI loads a custom-node folder; return its guidance-node and common modules."""
    spec = importlib.util.spec_from_file_location(PACK, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules[PACK] = pack
    spec.loader.exec_module(pack)
    asyncio.run(pack.comfy_entrypoint())
    return sys.modules[f"{PACK}.nodes.guidance_nodes"], sys.modules[f"{PACK}.nodes.common"]


@contextlib.contextmanager
def pack_fdi_as_top_level():
    """Let ``from fdi.adapter import …`` (bench/guidance_overhead.py) return the *pack's* classes.

    The nodes check ``isinstance`` against the pack's own ``fdi`` modules (``comfyui_fdi_bench.fdi``),
    which are distinct module objects from a top-level ``fdi`` import.
    """
    keys = ("fdi", "fdi.adapter")
    saved = {k: sys.modules.get(k) for k in keys}
    sys.modules["fdi"], sys.modules["fdi.adapter"] = sys.modules[f"{PACK}.fdi"], sys.modules[f"{PACK}.fdi.adapter"]
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def our_adapter():
    """``bench/guidance_overhead.py``'s ``trained_like_adapter('sd2.1-base')``, built from the pack's modules."""
    path = ROOT / "bench" / "guidance_overhead.py"
    spec = importlib.util.spec_from_file_location("fdi_bench_guidance_overhead", path)
    module = importlib.util.module_from_spec(spec)
    saved_path = list(sys.path)
    spec.loader.exec_module(module)  # it puts the repo root first on sys.path, which would shadow ComfyUI's ``nodes``
    sys.path[:] = saved_path
    with pack_fdi_as_top_level():
        return module.trained_like_adapter("sd2.1-base")


def load_model(checkpoint: str, comfy_path: str, dtype: torch.dtype):
    """The SD 2.1 MODEL (a ModelPatcher) and a description of where it came from."""
    import comfy.sd

    sys.path.append(str(ROOT / "tests"))  # after ComfyUI: tests/ holds no module ComfyUI needs
    import sd21_fixture

    ckpt = Path(checkpoint) if checkpoint else sd21_fixture.checkpoint_path()
    if ckpt.is_file():
        model = comfy.sd.load_checkpoint_guess_config(
            str(ckpt), output_vae=False, output_clip=False, model_options={"dtype": dtype}
        )[0]
        return model, f"checkpoint {ckpt.name} via load_checkpoint_guess_config"
    if checkpoint:
        sys.exit(f"error: checkpoint {checkpoint} does not exist")
    print(
        f"(no cached checkpoint at {ckpt}; using the diffusers fixture's UNet, built on first use — minutes)",
        flush=True,
    )
    folder = sd21_fixture.diffusers_fixture(Path(comfy_path) / "comfy" / "sd1_tokenizer")
    model = comfy.sd.load_diffusion_model(
        str(folder / "unet" / "diffusion_pytorch_model.safetensors"), model_options={"dtype": dtype}
    )
    return model, "diffusers fixture UNet via load_diffusion_model"


def write_t2i_adapter(folder: Path) -> tuple:
    """A random diffusers ``T2IAdapter`` at SD 1.x/2.x widths, saved with ``save_pretrained`` into ``folder``;
    ``(file name, parameters)``."""
    from diffusers import T2IAdapter
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # its "keep in float32" note on .to(fp16): this adapter has no such module
    torch.manual_seed(1)
    adapter = T2IAdapter(
        in_channels=3,
        channels=[320, 640, 1280, 1280],
        num_res_blocks=2,
        downscale_factor=8,
        adapter_type="full_adapter",
    )
    tmp = folder / "t2i_save_pretrained"
    adapter.to(torch.float16).save_pretrained(tmp, safe_serialization=True)  # diffusers' fp16 release format
    name = "t2i_random_sd21_full_adapter.safetensors"
    shutil.move(str(tmp / "diffusion_pytorch_model.safetensors"), str(folder / name))
    shutil.rmtree(tmp)
    return name, sum(p.numel() for p in adapter.parameters())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timing_sampler(model, x, sigmas, extra_args=None, callback=None, disable=None, record=None, device=None):
    """A k-diffusion sampler (Euler) that times every model call; the signature ``KSAMPLER`` calls."""
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        CURRENT_STEP[0] = i
        sync(device)
        t = time.perf_counter()
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sync(device)
        record["times"].append(time.perf_counter() - t)
        if i == 0:
            record["first_prediction"] = denoised.detach().float().cpu()
        x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
    return x


def time_inside(wrappers, run_once, device: torch.device) -> dict:
    """Seconds spent inside some functions during ``run_once()``, per label and step: ``{label: {step: seconds}}``.

    ``wrappers`` lists ``(owner, attribute, label_of)``: ``owner.attribute`` (a class's method or a
    module's function) is replaced by a timing wrapper for the run and restored after; ``label_of(args)``
    names the call's label (``None``: not counted). A direct measure of an adapter's per-step work that
    the noise of whole-step timings cannot hide; such a run is not part of the ratios (the wrappers
    synchronise a GPU at every call).
    """
    spent = {}
    originals = [(owner, name, getattr(owner, name), label_of) for owner, name, label_of in wrappers]

    def timed(original, label_of):
        def call(*args, **kwargs):
            label = label_of(args)
            if label is None:
                return original(*args, **kwargs)
            sync(device)
            t = time.perf_counter()
            out = original(*args, **kwargs)
            sync(device)
            per_step = spent.setdefault(label, {})
            per_step[CURRENT_STEP[0]] = per_step.get(CURRENT_STEP[0], 0.0) + time.perf_counter() - t
            return out

        return call

    try:
        for owner, name, original, label_of in originals:
            setattr(owner, name, timed(original, label_of))
        run_once()
    finally:
        for owner, name, original, _ in originals:
            setattr(owner, name, original)
    return spent


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{torch.get_num_threads()} CPU threads, {cpu}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument(
        "--dtype", choices=tuple(DTYPES), default="fp32", help="UNet weight dtype (ComfyUI's load option 'dtype')"
    )
    ap.add_argument("--size", type=int, default=256, help="image side in pixels (latent = size/8)")
    ap.add_argument(
        "--reps", type=int, default=None, help="interleaved rounds of plain/ours/T2I runs (default 6 on CPU, 30 on GPU)"
    )
    ap.add_argument(
        "--timed-steps",
        type=int,
        default=2,
        help="timed steps per run, after the run's untimed-for-the-ratio first step (default 2)",
    )
    ap.add_argument("--cfg", type=float, default=1.0, help="CFG scale (1 = positive batch only, as the paper samples)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--raw", action="store_true", help="also print every timed step (ms) per variant")
    ap.add_argument(
        "--checkpoint",
        default="",
        help="an SD 2.1 checkpoint (default: the cached random fixture of tests/sd21_fixture.py)",
    )
    args = ap.parse_args()
    if args.size % 64:
        ap.error("--size must be a multiple of 64 (the UNet's deepest level is 1/64 of the image)")
    if args.reps is not None and args.reps < 2:
        ap.error("--reps must be >= 2")
    if args.timed_steps < 1:
        ap.error("--timed-steps must be >= 1")
    comfy_path = comfyui_dir()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    reps = args.reps or (30 if device.type == "cuda" else 6)
    base = Path(tempfile.mkdtemp(prefix="fdi-comfy-bench-"))
    try:
        with torch.inference_mode():  # as ComfyUI's executor runs nodes
            return run(args, comfy_path, device, dtype, reps, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def comfy_version() -> str:
    try:
        from comfyui_version import __version__
    except ImportError:
        return "?"
    return __version__


def load_t2i(comfy_nodes, folder_paths) -> tuple:
    """The native T2I-Adapter: diffusers format → models/controlnet → ControlNetLoader; ``(control net, parameters,
    its class's dotted name)``."""
    cn_dir = Path(folder_paths.get_folder_paths("controlnet")[0])
    cn_dir.mkdir(parents=True, exist_ok=True)
    t2i_name, t2i_params = write_t2i_adapter(cn_dir)
    (control_net,) = comfy_nodes.ControlNetLoader().load_controlnet(t2i_name)
    t2i_class = type(control_net).__module__ + "." + type(control_net).__name__
    if type(control_net).__name__ != "T2IAdapter":
        sys.exit(f"error: ComfyUI loaded the diffusers T2I adapter as {t2i_class}, not comfy.controlnet.T2IAdapter")
    return control_net, t2i_params, t2i_class


def apply_ours(model, image: torch.Tensor, dtype: torch.dtype, device: torch.device) -> tuple:
    """Our guidance: FDINoiseDecoupling (adapter forward, once; timed 3 times after a warm-up) → FDIApplyGuidance
    (patched clone of the MODEL); ``(adapter, guided MODEL, seconds of the 3 timed FDINoiseDecoupling calls)``."""
    guidance_nodes, common = sys.modules[f"{PACK}.nodes.guidance_nodes"], sys.modules[f"{PACK}.nodes.common"]
    FDI = sys.modules[f"{PACK}.fdi.instruction"].FDI
    adapter = our_adapter().to(dtype)
    handle = common.ModelHandle(adapter, common.make_patcher(adapter), "bench")
    fdi = FDI(tokens=torch.randn(32, 768), encoder="", label="bench")
    guidance_nodes.FDINoiseDecoupling.execute(handle, fdi, image)  # warm-up (first calls, model loading)
    ours_once = []
    for _ in range(3):
        sync(device)
        t = time.perf_counter()
        (guidance,) = guidance_nodes.FDINoiseDecoupling.execute(handle, fdi, image)
        sync(device)
        ours_once.append(time.perf_counter() - t)
    # guide every timed step (start 0, end 1 of the sampler's steps): the bench measures guided steps only
    (guided_model,) = guidance_nodes.FDIApplyGuidance.execute(model, guidance, 1.0, 0.0, 1.0)
    return adapter, guided_model, ours_once


def make_sample(setups: dict, records: dict, size: int, cfg: float, default_sigmas, device: torch.device):
    """``sample(variant, sigmas, keep)``: one sampling run of a variant through ``comfy.sample.sample_custom``;
    ``keep`` adds its step times and first prediction to ``records[variant]``."""
    import comfy.sample
    import comfy.samplers

    latent = torch.zeros(1, 4, size // 8, size // 8)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))

    def sample(variant: str, sigmas=default_sigmas, keep: bool = True) -> None:
        m, pos, neg = setups[variant]
        record = {"times": []}
        sampler = comfy.samplers.KSAMPLER(partial(timing_sampler, record=record, device=device))
        comfy.sample.sample_custom(m, noise, cfg, sampler, sigmas, pos, neg, latent, disable_pbar=True, seed=0)
        if not keep:
            return
        records[variant]["first"].append(record["times"][0])
        records[variant]["steady"].extend(record["times"][1:])
        records[variant]["rounds"].append(statistics.mean(record["times"][1:]) if len(record["times"]) > 1 else None)
        records[variant]["prediction"] = record["first_prediction"]

    return sample


def run_rounds(sample, reps: int) -> float:
    """``reps`` interleaved rounds of plain / ours / T2I runs (the order rotates every round); seconds taken."""
    t_bench = time.perf_counter()
    for r in range(reps):
        for v in VARIANTS[r % 3 :] + VARIANTS[: r % 3]:
            sample(v)
    return time.perf_counter() - t_bench


def time_inside_ours(sample, direct_sigmas, device: torch.device) -> float:
    """Milliseconds per step inside our two patch objects' ``__call__`` (median over the later steps of one run)."""
    backend = sys.modules[f"{PACK}.fdi.comfy_backend"]
    ours_in = time_inside(
        [
            (backend.FDIInputPatch, "__call__", lambda a: "patch"),
            (backend.FDIOutputPatch, "__call__", lambda a: "patch"),
        ],
        lambda: sample("ours", direct_sigmas, keep=False),
        device,
    )
    if set(ours_in.get("patch", {})) != set(range(DIRECT_STEPS)):
        sys.exit("error: our patches were not called at every step of the guided run")
    return statistics.median(ours_in["patch"][i] for i in range(1, DIRECT_STEPS)) * 1e3  # every block's call of a step


def time_inside_t2i(sample, direct_sigmas, control_net, device: torch.device) -> float:
    """Milliseconds per step inside ComfyUI's T2I control code (``get_control`` with its cached control plus the
    ``apply_control`` additions; median over the later steps of one run)."""
    from comfy.ldm.modules.diffusionmodules import openaimodel

    later = range(1, DIRECT_STEPS)
    t2i_in = time_inside(
        [
            (
                type(control_net),
                "get_control",
                lambda a: "first" if a[0].cond_hint is None or a[0].control_input is None else "later",
            ),
            (openaimodel, "apply_control", lambda a: "add" if a[1] is not None else None),
        ],
        lambda: sample("t2i", direct_sigmas, keep=False),
        device,
    )
    if (
        set(t2i_in.get("first", {})) != {0}
        or set(t2i_in.get("later", {})) != set(later)
        or set(t2i_in.get("add", {})) != set(range(DIRECT_STEPS))
    ):
        sys.exit(
            "error: ComfyUI's T2I control did not run as expected (adapter on the first "
            f"step, cached control later): {t2i_in}"
        )
    return statistics.median(t2i_in["later"][i] + t2i_in["add"][i] for i in later) * 1e3


def paired(records: dict, v: str) -> str:
    """The median and IQR of the per-round ratios of ``v`` to plain (runs of a round are adjacent in time)."""
    q = statistics.quantiles(
        [a / b for a, b in zip(records[v]["rounds"], records["plain"]["rounds"])], n=4, method="inclusive"
    )
    return f"per-round paired ratios: median {q[1]:.4f}, IQR {q[0]:.4f}-{q[2]:.4f}"


def print_header(args, device: torch.device, where: str, info: dict) -> None:
    """The line that says what was measured: machine, versions, models, sizes, and how long setup and measuring took."""
    import comfy.model_management as mm

    lat = f"{args.size // 8}x{args.size // 8}"
    print(
        f"machine: {where}, torch {torch.__version__}, ComfyUI {info['comfy_version']}; "
        f"device {mm.get_torch_device()}; "
        f"UNet {info['unet_params'] / 1e6:.0f} M params in {str(info['unet_dtype']).replace('torch.', '')} "
        f"({info['model_source']}); "
        f"image {args.size}x{args.size} -> latent {lat}, batch 1, cfg {args.cfg:g}; "
        f"ours {info['ours_params'] / 1e6:.1f} M, T2I {info['t2i_params'] / 1e6:.1f} M params ({info['t2i_class']}); "
        f"setup {info['setup_s']:.0f} s, measuring {info['bench_s']:.0f} s"
    )


def report(args, device: torch.device, reps: int, records: dict, info: dict, ours_ms: float, t2i_ms: float) -> int:
    """Print the summary lines (and ``--raw`` steps); 1 if a guided run predicted the same as the plain one."""
    plain = records["plain"]["prediction"]
    effect = {v: rel(records[v]["prediction"], plain) for v in ("ours", "t2i")}
    med = {v: statistics.median(records[v]["steady"]) for v in VARIANTS}
    first = {v: statistics.median(records[v]["first"]) for v in VARIANTS}
    n = len(records["plain"]["steady"])
    where = machine(device)
    print_header(args, device, where, info)
    tag = f"[{where.split(',')[0] if device.type == 'cpu' else where}, {args.dtype}, {args.size} px]"
    print(
        f"ours/plain step: {med['ours'] * 1e3:.1f} ms / {med['plain'] * 1e3:.1f} "
        f"ms = {med['ours'] / med['plain']:.4f} "
        f"(target <= 1.02; medians of {n} steps in {reps} interleaved rounds; {paired(records, 'ours')}; "
        f"time inside our patches {ours_ms:.1f} ms/step (median of {DIRECT_STEPS - 1}) "
        f"= {ours_ms / (med['plain'] * 1e3):.2%} of a plain step; "
        f"guidance changes the prediction by {effect['ours']:.1%}) {tag}"
    )
    print(
        f"T2I/plain step: {med['t2i'] * 1e3:.1f} ms / {med['plain'] * 1e3:.1f} ms = {med['t2i'] / med['plain']:.4f} "
        "(ComfyUI T2IAdapter via ControlNetLoader + ControlNetApplyAdvanced, same "
        f"rounds; {paired(records, 't2i')}; time inside its control code "
        f"(get_control with cached control + apply_control adds) {t2i_ms:.1f} ms/step "
        f"= {t2i_ms / (med['plain'] * 1e3):.2%} of a plain step; control changes "
        f"the prediction by {effect['t2i']:.1%}) {tag}"
    )
    print(
        f"one-time per image/run: ours FDINoiseDecoupling {statistics.median(info['ours_once']) * 1e3:.1f} "
        "ms (median of 3, before sampling); "
        f"T2I first step {first['t2i'] * 1e3:.1f} ms vs plain first step {first['plain'] * 1e3:.1f} ms = "
        f"+{(first['t2i'] - first['plain']) * 1e3:.1f} ms per sampling run (adapter "
        f"forward, medians of {reps}) {tag}"
    )
    if args.raw:
        for v in VARIANTS:
            print(
                f"raw {v}: first steps {[round(t * 1e3) for t in records[v]['first']]} ms, "
                f"later steps {[round(t * 1e3) for t in records[v]['steady']]} ms"
            )
    if min(effect.values()) <= 1e-6:
        print(
            "error: a guided run predicted the same as the plain run: its guidance "
            "was not active, the ratio means nothing",
            file=sys.stderr,
        )
        return 1
    return 0


def run(args, comfy_path: str, device: torch.device, dtype: torch.dtype, reps: int, base: Path) -> int:
    t_setup = time.perf_counter()
    import_comfy(comfy_path, args.device, str(base))
    import comfy.samplers
    import folder_paths

    import nodes as comfy_nodes  # ComfyUI's stock nodes (COMFYUI_DIR is first on sys.path)

    info = {"comfy_version": comfy_version()}
    load_pack()

    model, info["model_source"] = load_model(args.checkpoint, comfy_path, dtype)  # the MODEL
    info["unet_dtype"] = model.model.get_dtype()
    info["unet_params"] = sum(p.numel() for p in model.model.diffusion_model.parameters())

    control_net, info["t2i_params"], info["t2i_class"] = load_t2i(comfy_nodes, folder_paths)
    torch.manual_seed(0)
    image = torch.rand(1, args.size, args.size, 3)  # ComfyUI IMAGE: the hint for T2I, the degraded image for ours
    context = torch.randn(1, 77, 1024)
    positive = [[context, {}]]
    negative = [[torch.zeros_like(context), {}]]
    t2i_positive, t2i_negative = comfy_nodes.ControlNetApplyAdvanced().apply_controlnet(
        positive, negative, control_net, image, 1.0, 0.0, 1.0
    )
    adapter, guided_model, info["ours_once"] = apply_ours(model, image, dtype, device)
    info["ours_params"] = adapter.num_parameters()

    # one sampling run per variant and round: 1 + timed_steps Euler steps from the top of a 50-step schedule
    model_sampling = model.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(model_sampling, "normal", 50)[: args.timed_steps + 2].cpu()
    setups = {
        "plain": (model, positive, negative),
        "ours": (guided_model, positive, negative),
        "t2i": (model, t2i_positive, t2i_negative),
    }
    records = {v: {"steady": [], "first": [], "rounds": [], "prediction": None} for v in VARIANTS}
    sample = make_sample(setups, records, args.size, args.cfg, sigmas, device)
    for v in VARIANTS:  # warm-up: one 1-step run each (first calls of every kernel and code path), not counted
        sample(v, sigmas[:2], keep=False)
    info["setup_s"] = time.perf_counter() - t_setup
    info["bench_s"] = run_rounds(sample, reps)
    # direct measures: time inside our patches / ComfyUI's control code, one longer run each (medians over its later
    # steps)
    direct_sigmas = comfy.samplers.calculate_sigmas(model_sampling, "normal", 50)[: DIRECT_STEPS + 1].cpu()
    ours_ms = time_inside_ours(sample, direct_sigmas, device)
    t2i_ms = time_inside_t2i(sample, direct_sigmas, control_net, device)
    return report(args, device, reps, records, info, ours_ms, t2i_ms)


if __name__ == "__main__":
    sys.exit(main())
