"""FDIRestore in a real ComfyUI = ``python -m fdi restore`` on SD 1.5 and SDXL single files (random weights).

Run under ComfyUI's own Python::

    COMFYUI_DIR=/path/to/ComfyUI /path/to/comfy/venv/bin/python -m pytest -m comfyui -rs tests/comfyui/test_bases_e2e.py

Per base family, the same random-weight single file of the base's published layout (``tests/bases_fixture.py``:
made by ComfyUI's own ``DiffusersLoader`` → ``CheckpointSave``, detected by ComfyUI as ``SD15`` / ``SDXL``) goes
through ``CheckpointLoaderSimple`` → ``FDIRestore`` in a ComfyUI server (``--cpu --force-fp32``) and through
``python -m fdi restore --sd FILE --device cpu --dtype fp32`` (the family detected from the file), with the same
non-fresh adapter built for the family, the same images and settings: max ≤ 4/255, mean ≤ 1/255. The bound means
something only if the fixture responds, so the guided picture must differ from the unguided one by much more than
it; and a fresh (zero-initialised) adapter must give exactly the unguided pixels.

Images are 64 px and 72×56 px, 4 steps (the first two guided). The server is stopped before the CLI runs, so one
full-size fp32 model is in memory at a time. SDXL's cases are marked ``slow`` (run them with ``-m "comfyui and slow"``):
``sdxl-v`` took 3 min 15 s on a shared 2-core CPU (2026-12-07) and peaked at 19.5 GiB, ComfyUI's server loading the
SDXL file in fp32 (the CLI's whole ``restore`` on it peaks at 15.9 GiB: it builds an fp16 file's modules in fp16 and
upcasts them). ``sdxl-v`` is the same SDXL file with ComfyUI's ``v_pred`` and ``ztsnr`` keys, as v-prediction
zero-terminal-SNR fine-tunes ship: ComfyUI reads it as v-prediction on the zsnr schedule, and so must the CLI, with an
``sdxl-v`` adapter.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import comfyui_harness as harness
import numpy as np
import pytest
from comfyui_harness import node
from images_fixture import load_png, write_image

COMFYUI_DIR = harness.comfyui_dir()

pytestmark = [
    pytest.mark.comfyui,
    pytest.mark.skipif(
        not COMFYUI_DIR,
        reason="COMFYUI_DIR is not set: these e2e tests need a ComfyUI checkout "
        "(run with COMFYUI_DIR=/path/to/ComfyUI under ComfyUI's Python)",
    ),
]

FAMILIES = ("sd1.5", "sdxl")
#: the adapters' families: the bases' and a v-prediction SDXL fine-tune's (``bases_fixture``'s ``sdxl-v`` file)
ADAPTER_FAMILIES = FAMILIES + ("sdxl-v",)
STEPS = 4
GUIDANCE_END = 0.5  # with 4 steps: the first two are guided
IMAGES = {"parity64.png": (64, 64, 31), "parity72x56.png": (72, 56, 32)}  # name: (width, height, seed)
MAX_BOUND, MEAN_BOUND = 4.0, 1.0  # in 1/255
#: the guided picture must differ from the unguided one by this many times the mean bound
RESPONSE_FACTOR = 5.0


def adapter_name(family: str, fresh: bool = False) -> str:
    return f"e2e_{family.replace('.', '')}{'_fresh' if fresh else ''}.safetensors"


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_blip2_folder):
    """A ComfyUI base folder with the pack, the tiny BLIP-2 and the input images; per family a random and a fresh
    adapter (with an FDI extracted by the tiny BLIP-2) in an ``fdi_adapters`` folder of ``extra_model_paths.yaml``,
    which also points ``checkpoints`` at the fixture cache."""
    import bases_fixture
    import sd21_fixture
    from tiny_blip2 import TINY_TOKENS, TINY_WIDTH

    from fdi.encoder import QFormerEncoder
    from fdi.extract import extract_fdi_from_folders

    base = tmp_path_factory.mktemp("comfy_base")
    extra = tmp_path_factory.mktemp("comfy_extra")
    harness.link_pack(base)
    blip = base / "models" / "blip2" / "tiny_blip2"
    shutil.copytree(tiny_blip2_folder, blip)
    inp = base / "input"
    for sub in ("pairs/degraded", "pairs/clean"):
        (inp / sub).mkdir(parents=True)
    for i in range(3):
        write_image(inp / "pairs" / "degraded" / f"p{i}.png", 40, 36, seed=i)
        write_image(inp / "pairs" / "clean" / f"p{i}.png", 40, 36, seed=100 + i)
    for name, (w, h, seed) in IMAGES.items():
        write_image(inp / name, w, h, seed=seed)
    fdi = extract_fdi_from_folders(
        QFormerEncoder.from_pretrained(blip), inp / "pairs" / "degraded", inp / "pairs" / "clean", label="bases"
    )
    adapters = extra / "adapters"
    adapters.mkdir()
    for family in ADAPTER_FAMILIES:
        bases_fixture.random_adapter(family, TINY_WIDTH, TINY_TOKENS, seed=0).save(
            adapters / adapter_name(family), fdi=fdi
        )
        bases_fixture.fresh_adapter(family, TINY_WIDTH, TINY_TOKENS, seed=0).save(
            adapters / adapter_name(family, fresh=True), fdi=fdi
        )
    yaml = extra / "extra_model_paths.yaml"
    yaml.write_text(
        f"fdi_test:\n  fdi_adapters: {adapters}\n  checkpoints: {sd21_fixture.cache_dir() / 'checkpoints'}\n"
    )
    return {"base": base, "yaml": yaml, "adapters": adapters, "input": inp, "output": base / "output"}


def restore_graph(ckpt: str, cases: list, prefix: str) -> dict:
    """One CheckpointLoaderSimple and empty-prompt CLIPTextEncode, then per ``(image, adapter, strength)`` case
    LoadImage → FDIAdapterLoader → FDIRestore → SaveImage (node ids suffixed ``_<case index>``)."""
    graph = {"1": node("CheckpointLoaderSimple", ckpt_name=ckpt), "2": node("CLIPTextEncode", text="", clip=["1", 1])}
    for i, (image, adapter, strength) in enumerate(cases):
        graph[f"4_{i}"] = node("LoadImage", image=image)
        graph[f"5_{i}"] = node("FDIAdapterLoader", adapter_name=adapter)
        graph[f"13_{i}"] = node(
            "FDIRestore",
            model=["1", 0],
            vae=["1", 2],
            image=[f"4_{i}", 0],
            adapter=[f"5_{i}", 0],
            positive=["2", 0],
            steps=STEPS,
            inversion_steps=STEPS,
            strength=strength,
            guidance_end=GUIDANCE_END,
            cfg=1.0,
            fdi=[f"5_{i}", 1],
        )
        graph[f"14_{i}"] = node("SaveImage", images=[f"13_{i}", 0], filename_prefix=f"{prefix}_{i}")
    return graph


def cli_restore(sd: Path, adapter: Path, images: list, out: Path, strength: float) -> dict:
    """``python -m fdi restore --sd FILE --device cpu --dtype fp32`` in a fresh interpreter (its memory is returned
    when it exits); ``{image name: pixels}``."""
    cmd = [sys.executable, "-m", "fdi", "restore", "--sd", str(sd), "--adapter", str(adapter), "--image"]
    cmd += [str(i) for i in images] + ["-o", str(out), "--steps", str(STEPS), "--inversion-steps", str(STEPS)]
    cmd += ["--strength", str(strength), "--guidance-end", str(GUIDANCE_END), "--device", "cpu", "--dtype", "fp32"]
    root = str(harness.ROOT)
    threads = os.environ.get("FDI_TEST_THREADS", "1")
    env = {**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": threads, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd + ["--quiet"], cwd=root, env=env, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {Path(i).name: load_png(out / f"{Path(i).stem}.png") for i in images}


def saved_image(env, entry: dict, node_id: str) -> np.ndarray:
    (img,) = entry["outputs"][node_id]["images"]
    return load_png(env["output"] / img["subfolder"] / img["filename"])


@pytest.mark.parametrize("family", FAMILIES)
def test_comfyui_detects_the_base_of_each_fixture(family):
    """ComfyUI's own detection (``comfy.model_detection``, on the single file's shapes) reads each random single file as
    its base (``SD15`` / ``SDXL``, epsilon), with a text encoder and a VAE: the fixtures are the published layouts."""
    import bases_fixture

    bases_fixture.ensure_checkpoint(family, COMFYUI_DIR)
    found = bases_fixture.check_checkpoint(COMFYUI_DIR, family, bases_fixture.checkpoint_path(family))
    assert found["unet_dtypes"] == (["F16"] if family == "sdxl" else ["F32"])


#: SDXL's cases are ``slow`` for their memory: a full-size fp32 SDXL in each door
@pytest.mark.parametrize(
    "family", ["sd1.5", pytest.param("sdxl", marks=pytest.mark.slow), pytest.param("sdxl-v", marks=pytest.mark.slow)]
)
def test_fdi_restore_equals_the_cli_on_a_single_file_of_the_base(env, family, tmp_path):
    """The family's random single file through CheckpointLoaderSimple → FDIRestore and through ``python -m fdi
    restore --sd FILE`` (fp32, CPU): max ≤ 4/255 and mean ≤ 1/255 guided on two image sizes and unguided; the guided
    picture differs from the unguided one by more than 5× the mean bound; a fresh adapter gives exactly the
    unguided pixels. ``sdxl-v`` (``v_pred`` + ``ztsnr``): ComfyUI reads v-prediction with zsnr, the CLI's schedule
    from the file is the zero-terminal-SNR one, and both take the ``sdxl-v`` adapter."""
    import bases_fixture

    from fdi.models import single_file_scheduler

    ckpt_name = bases_fixture.ensure_checkpoint(family, COMFYUI_DIR)
    ckpt = bases_fixture.checkpoint_path(family)
    found = bases_fixture.check_checkpoint(COMFYUI_DIR, family, ckpt)
    print(
        f"{family}: ComfyUI detects {found['config']} / {found['model_type']} (zsnr {found['zsnr']}), "
        f"UNet weights {found['unet_dtypes']}"
    )
    scheduler = single_file_scheduler(ckpt)  # what the CLI loads it with (header only)
    zsnr = family == "sdxl-v"
    assert scheduler.config.prediction_type == ("v_prediction" if zsnr else "epsilon")
    assert abs(float(scheduler.alphas_cumprod[981]) / (6.886572e-05 if zsnr else 5.775500e-03) - 1) < 1e-5

    # (image, adapter, strength): guided on both sizes, unguided, and the fresh adapter at full strength
    random, fresh = adapter_name(family), adapter_name(family, fresh=True)
    cases = [("parity64.png", random, 1.0), ("parity72x56.png", random, 1.0), ("parity64.png", random, 0.0)]
    cases.append(("parity64.png", fresh, 1.0))
    server = harness.ComfyServer(env["base"], env["yaml"])
    try:
        entry = server.run_ok(restore_graph(ckpt_name, cases, f"bases_{family}"))
    finally:
        server.stop()  # its model leaves memory before the CLI loads its own
    comfy = [saved_image(env, entry, f"14_{i}") for i in range(len(cases))]

    # the CLI on the same file, adapter, images and settings: the guided run takes both images, the unguided one
    cli = {
        1.0: cli_restore(ckpt, env["adapters"] / random, [env["input"] / img for img in IMAGES], tmp_path / "g", 1.0),
        0.0: cli_restore(ckpt, env["adapters"] / random, [env["input"] / "parity64.png"], tmp_path / "u", 0.0),
    }
    report, failures = [], []
    for i, (img, _, strength) in enumerate(cases[:3]):
        theirs = cli[strength][img]
        assert theirs.shape == comfy[i].shape == (IMAGES[img][1], IMAGES[img][0], 3)
        d = np.abs(theirs - comfy[i])
        report.append(f"{family} {img} strength={strength}: max {d.max()}, mean {d.mean():.3f}")
        if d.max() > MAX_BOUND or d.mean() > MEAN_BOUND:
            failures.append(report[-1])
    effect = np.abs(comfy[0] - comfy[2]).mean()
    report.append(f"{family} guided vs unguided (ComfyUI, 64 px), mean: {effect:.2f}")
    fresh_vs_unguided = np.abs(comfy[3] - comfy[2]).max()
    report.append(f"{family} fresh adapter vs unguided (ComfyUI), max: {fresh_vs_unguided}")
    print("\n".join(report))
    assert not failures, "\n".join(failures)
    # the fixture responds: the bound is small beside the guidance's effect
    assert effect > RESPONSE_FACTOR * MEAN_BOUND, report[-2]
    # a fresh adapter is an exact no-op on this base
    assert fresh_vs_unguided == 0, report[-1]
