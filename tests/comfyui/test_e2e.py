"""End-to-end tests against a real ComfyUI (``COMFYUI_DIR``), plus ComfyUI ↔ diffusers parity.

Run under ComfyUI's own Python (it must have ComfyUI's requirements, diffusers and pytest)::

    COMFYUI_DIR=/path/to/ComfyUI /path/to/comfy/venv/bin/python -m pytest -m comfyui tests/comfyui/test_e2e.py

What happens:

* a ComfyUI server is started (``main.py --cpu`` on a free loopback port) with a temporary
  ``--base-directory`` whose ``custom_nodes/comfyui-fdi`` is a symlink to this repository, a tiny
  random BLIP-2 in ``models/blip2``, and an ``extra_model_paths.yaml`` that points
  ``fdi_adapters`` at another temporary folder (so that file's support is exercised too) and
  ``checkpoints``/``diffusers`` at the fixture cache. Nothing under ``COMFYUI_DIR`` is modified; the
  temporary folders are removed at the end.
* graphs are POSTed in API format to ``/prompt`` and ``/history`` is polled for their results.
* the SD 2.1 fixture (full-size architecture, random weights; see ``tests/sd21_fixture.py``) is built
  once and cached: a diffusers folder, then ComfyUI's own ``DiffusersLoader`` → ``CheckpointSave``
  (in a separate short-lived server) makes the single-file checkpoint that ``CheckpointLoaderSimple``
  loads here.

Images are 64 px (an 8×8 latent), so a full-size UNet step takes a fraction of a second on CPU.
The server runs with ``--force-fp32``: the fixture's weights are fp16, and without it ComfyUI keeps
them in fp16 on the CPU and casts every layer to fp32 at every step (about 10 s per step instead of
a fraction of one).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import comfyui_harness as harness
import numpy as np
import pytest
import torch
from comfyui_harness import error_message, node
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

NODE_IDS = (
    "FDIQFormerLoader",
    "FDIExtract",
    "FDIExtractFromFolders",
    "FDISave",
    "FDILoad",
    "FDICombine",
    "FDIAdapterLoader",
    "FDINoiseDecoupling",
    "FDIApplyGuidance",
    "FDIInvert",
    "FDIRestore",
    "FDIInspect",
    "FDIColorFix",
    "FDILoadPairs",
    "FDITrainAdapter",
    "FDISaveAdapter",
    "FDIPairStability",
)
CUSTOM_TYPES = ("BLIP2_QFORMER", "FDI", "FDI_ADAPTER", "FDI_GUIDANCE")
STEPS = 3  # ddim_uniform: t = 667 (guided for end 0.5), 334, 1 — the CPU here runs a full-size UNet step in seconds
ADAPTER_NAME = "e2e_adapter.safetensors"
V_ADAPTER_NAME = "e2e_adapter_v.safetensors"


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_blip2_folder, sd21_adapter):
    """Temporary ComfyUI base folder + extra model paths, the tiny BLIP-2, the adapter, input images."""
    import sd21_fixture
    from tiny_blip2 import TINY_TOKENS, TINY_WIDTH

    from fdi.encoder import QFormerEncoder
    from fdi.extract import extract_fdi_from_folders

    ckpt_name = sd21_fixture.ensure_checkpoint(COMFYUI_DIR)
    base = tmp_path_factory.mktemp("comfy_base")
    extra = tmp_path_factory.mktemp("comfy_extra")
    harness.link_pack(base)
    blip = base / "models" / "blip2" / "tiny_blip2"
    shutil.copytree(tiny_blip2_folder, blip)
    inp = base / "input"
    for sub in ("pairs/degraded", "pairs/clean", "empty"):
        (inp / sub).mkdir(parents=True)
    for i in range(5):
        write_image(inp / "pairs" / "degraded" / f"p{i}.png", 40 + 4 * i, 36, seed=i)
        write_image(inp / "pairs" / "clean" / f"p{i}.png", 40 + 4 * i, 36, seed=100 + i)
    write_image(inp / "degraded.png", 64, 64, seed=7)
    write_image(inp / "odd.png", 60, 52, seed=8)
    outside = tmp_path_factory.mktemp("outside")
    write_image(outside / "p0.png", 32, 32, seed=9)
    (inp / "escape").symlink_to(outside, target_is_directory=True)

    encoder = QFormerEncoder.from_pretrained(blip)
    fdi = extract_fdi_from_folders(
        encoder, inp / "pairs" / "degraded", inp / "pairs" / "clean", label="e2e-pairs", keep_pairs=True
    )
    (extra / "adapters").mkdir()
    sd21_adapter(TINY_WIDTH, TINY_TOKENS).save(extra / "adapters" / ADAPTER_NAME, fdi=fdi)
    yaml = extra / "extra_model_paths.yaml"
    yaml.write_text(
        "fdi_test:\n"
        f"  fdi_adapters: {extra / 'adapters'}\n"
        f"  checkpoints: {sd21_fixture.checkpoint_path().parent}\n"
        f"  diffusers: {sd21_fixture.diffusers_fixture(Path(COMFYUI_DIR) / 'comfy' / 'sd1_tokenizer').parent}\n"
    )
    return {
        "base": base,
        "extra": extra,
        "yaml": yaml,
        "ckpt": ckpt_name,
        "fdi": fdi,
        "encoder": encoder,
        "input": inp,
        "models_fdi": base / "models" / "fdi",
        "output": base / "output",
    }


@pytest.fixture(scope="module")
def server(env):
    s = harness.ComfyServer(env["base"], env["yaml"])
    yield s
    s.stop()


# ------------------------------------------------------------------------------------------------ object info


def test_object_info_lists_every_node_with_descriptions_and_tooltips(server):
    info = server.object_info()
    missing = [n for n in NODE_IDS if n not in info]
    assert not missing, f"nodes not registered: {missing}\n{server.log_tail()}"
    types = set()
    for n in NODE_IDS:
        d = info[n]
        assert d["category"].startswith("FDI/"), n
        assert len(d.get("description", "")) > 20, n
        for section in ("required", "optional"):
            for name, spec in d["input"].get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{n}.{name} has no tooltip"
                types.add(spec[0] if isinstance(spec[0], str) else "COMBO")
        types.update(d["output"])
    assert set(CUSTOM_TYPES) <= types
    # via extra_model_paths.yaml
    assert ADAPTER_NAME in json.dumps(info["FDIAdapterLoader"]["input"]["required"]["adapter_name"])
    assert "tiny_blip2" in str(info["FDIQFormerLoader"]["input"]["required"]["folder"])


# ------------------------------------------------------------------------------------------------ (1) FDI round trip


def test_extract_save_load_combine_inspect(server, env):
    from fdi.extract import extract_fdi
    from fdi.images import load_image
    from fdi.instruction import FDI, combine

    first = {
        "1": node("FDIQFormerLoader", folder="tiny_blip2", dtype="fp32"),
        "2": node(
            "FDIExtractFromFolders",
            qformer=["1", 0],
            degraded_folder="pairs/degraded",
            clean_folder="pairs/clean",
            label="rain",
            batch_size=2,
            keep_pairs=True,
        ),
        "3": node("FDISave", fdi=["2", 0], name="e2e_rain", keep_pairs=True, overwrite=True),
        "4": node("LoadImage", image="degraded.png"),
        "5": node("LoadImage", image="odd.png"),
        "6": node("ImageBatch", image1=["4", 0], image2=["4", 0]),
        "7": node(
            "FDIExtract",
            qformer=["1", 0],
            degraded=["6", 0],
            clean=["6", 0],
            label="zero",
            batch_size=8,
            keep_pairs=True,
        ),
        "8": node(
            "FDIExtract",
            qformer=["1", 0],
            degraded=["4", 0],
            clean=["5", 0],
            label="imgs",
            batch_size=8,
            keep_pairs=True,
        ),
        "9": node("FDISave", fdi=["8", 0], name="e2e_imgs.fdi.safetensors", keep_pairs=True, overwrite=True),
        "10": node("FDISave", fdi=["7", 0], name="e2e_zero", keep_pairs=False, overwrite=True),
    }
    server.run_ok(first)
    folder = env["models_fdi"]
    rain = FDI.load(folder / "e2e_rain.fdi.safetensors")
    imgs = FDI.load(folder / "e2e_imgs.fdi.safetensors")
    zero = FDI.load(folder / "e2e_zero.fdi.safetensors")
    # the same numbers as the library on the same files
    assert torch.allclose(rain.tokens, env["fdi"].tokens, atol=1e-5) and rain.n_pairs == 5 and rain.pairs.shape[0] == 5
    assert rain.label == "rain" and rain.encoder.split(":")[-1] == env["encoder"].fingerprint.split(":")[-1]
    assert zero.tokens.abs().max() < 1e-5 and zero.pairs is None and zero.n_pairs == 2
    ref = extract_fdi(
        env["encoder"], load_image(env["input"] / "degraded.png")[None], load_image(env["input"] / "odd.png")[None]
    )
    assert torch.allclose(imgs.tokens, ref.tokens, atol=1e-3)  # through LoadImage's 8-bit → float path

    # FDILoad lists the saved files without moving them
    options = server.object_info()["FDILoad"]["input"]["required"]["fdi_name"]
    assert "e2e_rain.fdi.safetensors" in str(options) and "e2e_imgs.fdi.safetensors" in str(options)

    second = {
        "1": node("FDILoad", fdi_name="e2e_rain.fdi.safetensors"),
        "2": node("FDILoad", fdi_name="e2e_imgs.fdi.safetensors"),
        "3": node("FDICombine", fdi_a=["1", 0], weight_a=0.75, fdi_b=["2", 0], weight_b=0.25, mode="mean"),
        "4": node("FDISave", fdi=["3", 0], name="e2e_mean", keep_pairs=False, overwrite=True),
        "5": node("FDIInspect", fdi=["1", 0], fdi_2=["2", 0], fdi_3=["3", 0]),
        "6": node("FDICombine", fdi_a=["1", 0], weight_a=1.0, fdi_b=["2", 0], weight_b=1.0, mode="difference"),
        "7": node("FDICombine", fdi_a=["6", 0], weight_a=2.0, fdi_b=["1", 0], weight_b=1.0, mode="sum"),
        "8": node("FDISave", fdi=["7", 0], name="e2e_chain", keep_pairs=False, overwrite=True),
    }
    entry = server.run_ok(second)
    mean = FDI.load(folder / "e2e_mean.fdi.safetensors")
    assert torch.allclose(mean.tokens, combine([rain, imgs], [0.75, 0.25], "mean").tokens, atol=1e-6)
    assert torch.allclose(mean.tokens, 0.75 * rain.tokens + 0.25 * imgs.tokens, atol=1e-5)
    chain = FDI.load(folder / "e2e_chain.fdi.safetensors")
    assert torch.allclose(chain.tokens, 3 * rain.tokens - 2 * imgs.tokens, atol=1e-5)
    shown = entry["outputs"]["5"]["images"]
    assert len(shown) == 1
    png = env["base"] / "temp" / shown[0]["subfolder"] / shown[0]["filename"]
    arr = load_png(png)
    assert arr.shape[0] > 100 and arr.shape[1] > 100 and arr.std() > 5


# ------------------------------------------------------------------------------------------------ (2) guided sampling
# with stock nodes


def guided_graph(
    ckpt: str, strength: float, prefix: str, cfg: float = 1.0, negative: str = "", end: float = 0.5, apply: bool = True
) -> dict:
    g = {
        "1": node("CheckpointLoaderSimple", ckpt_name=ckpt),
        "2": node("CLIPTextEncode", text="", clip=["1", 1]),
        "3": node("CLIPTextEncode", text=negative, clip=["1", 1]),
        "4": node("LoadImage", image="degraded.png"),
        "5": node("FDIAdapterLoader", adapter_name=ADAPTER_NAME),
        "6": node("FDINoiseDecoupling", adapter=["5", 0], fdi=["5", 1], image=["4", 0]),
        "7": node(
            "FDIApplyGuidance", model=["1", 0], guidance=["6", 0], strength=strength, start_percent=0.0, end_percent=end
        ),
        "8": node("VAEEncode", pixels=["4", 0], vae=["1", 2]),
        "9": node("FDIInvert", model=["1", 0], positive=["2", 0], latent=["8", 0], steps=STEPS),
        "10": node(
            "KSamplerAdvanced",
            model=["7", 0] if apply else ["1", 0],
            add_noise="disable",
            noise_seed=0,
            steps=STEPS,
            cfg=cfg,
            sampler_name="ddim",
            scheduler="ddim_uniform",
            positive=["2", 0],
            negative=["3", 0],
            latent_image=["9", 0],
            start_at_step=0,
            end_at_step=STEPS,
            return_with_leftover_noise="disable",
        ),
        "11": node("VAEDecode", samples=["10", 0], vae=["1", 2]),
        "12": node("SaveImage", images=["11", 0], filename_prefix=prefix),
    }
    if not apply:
        for k in ("5", "6", "7"):
            del g[k]
    return g


def saved_image(env, entry: dict, node_id: str) -> np.ndarray:
    (img,) = entry["outputs"][node_id]["images"]
    return load_png(env["output"] / img["subfolder"] / img["filename"])


@pytest.fixture(scope="module")
def guided_images(server, env):
    runs = {
        "s1": guided_graph(env["ckpt"], 1.0, "e2e_s1"),
        "s0": guided_graph(env["ckpt"], 0.0, "e2e_s0"),
        "plain": guided_graph(env["ckpt"], 0.0, "e2e_plain", apply=False),
        "cfg_s1": guided_graph(env["ckpt"], 1.0, "e2e_cfg_s1", cfg=4.0, negative="blurry, noisy"),
        "cfg_s0": guided_graph(env["ckpt"], 0.0, "e2e_cfg_s0", cfg=4.0, negative="blurry, noisy"),
    }
    return {k: saved_image(env, server.run_ok(g), "12") for k, g in runs.items()}


def test_guided_sampling_with_stock_ksampler(guided_images):
    s1, s0, plain = guided_images["s1"], guided_images["s0"], guided_images["plain"]
    assert s1.shape == s0.shape == (64, 64, 3)
    assert np.array_equal(s0, plain), "strength 0 must give exactly the unpatched model's image"
    assert np.abs(s1 - s0).mean() > 1.0, "a non-fresh adapter at strength 1 must change the image"


def test_guided_sampling_with_cfg_and_negative_prompt(guided_images):
    a, b = guided_images["cfg_s1"], guided_images["cfg_s0"]
    assert np.abs(a - b).mean() > 1.0
    assert np.abs(b - guided_images["s0"]).mean() > 0.0  # cfg 4 with a negative prompt is a different sampling


# ------------------------------------------------------------------------------------------------ (3) FDIRestore


def restore_graph(
    env,
    image: str,
    prefix: str,
    steps: int = STEPS,
    strength: float = 1.0,
    end: float = 0.333,
    cfg: float = 1.0,
    loader: dict | None = None,
    key: str = "",
    adapter: str = ADAPTER_NAME,
) -> dict:
    """A graph running FDIRestore on an input image (nodes suffixed with ``key`` so several fit in one prompt)."""
    return {
        f"1{key}": loader or node("CheckpointLoaderSimple", ckpt_name=env["ckpt"]),
        f"2{key}": node("CLIPTextEncode", text="", clip=[f"1{key}", 1]),
        f"4{key}": node("LoadImage", image=image),
        f"5{key}": node("FDIAdapterLoader", adapter_name=adapter),
        f"13{key}": node(
            "FDIRestore",
            model=[f"1{key}", 0],
            vae=[f"1{key}", 2],
            image=[f"4{key}", 0],
            adapter=[f"5{key}", 0],
            positive=[f"2{key}", 0],
            steps=steps,
            inversion_steps=steps,
            strength=strength,
            guidance_end=end,
            cfg=cfg,
            fdi=[f"5{key}", 1],
        ),
        f"14{key}": node("SaveImage", images=[f"13{key}", 0], filename_prefix=prefix),
    }


def test_fdi_restore_equals_the_node_by_node_graph(server, env, guided_images):
    """The restore_single recipe (Noise Decoupling → Apply Guidance → VAE Encode → FDI Invert → KSamplerAdvanced ddim /
    ddim_uniform) and FDIRestore guide the same steps (k < end·N) and give the same pixels."""
    same = saved_image(env, server.run_ok(restore_graph(env, "degraded.png", "e2e_restore", end=0.5)), "14")
    assert np.array_equal(same, guided_images["s1"]), f"max difference {np.abs(same - guided_images['s1']).max()}"
    # a size that is not a multiple of 8 comes back at its size; cfg > 1 without a negative uses a zeroed positive
    odd = saved_image(env, server.run_ok(restore_graph(env, "odd.png", "e2e_restore_odd", cfg=3.0)), "14")
    assert odd.shape == (52, 60, 3) and odd.std() > 0


PARITY_CASES = [
    (img, steps, strength) for img in ("parity64.png", "parity56x72.png") for steps in (4, 6) for strength in (0.0, 1.0)
]


def cli_restore(
    env, sd: Path, img: str, out: Path, steps: int, strength: float, adapter: str = ADAPTER_NAME
) -> np.ndarray:
    """``python -m fdi restore --device cpu --dtype fp32`` (in process) on an input image with the e2e adapter."""
    from fdi.cli import main

    args = ["restore", "--sd", str(sd), "--adapter", str(env["extra"] / "adapters" / adapter)]
    args += ["--image", str(env["input"] / img), "-o", str(out), "--steps", str(steps), "--inversion-steps", str(steps)]
    args += ["--strength", str(strength), "--guidance-end", "0.333", "--device", "cpu", "--dtype", "fp32", "--quiet"]
    assert main(args) == 0
    return load_png(out / f"{Path(img).stem}.png")


def test_fdi_restore_equals_the_cli_on_the_same_files(server, env, tmp_path):
    """The same SD 2.1 folder (ComfyUI's DiffusersLoader / the CLI's --sd), adapter, image and settings through
    FDIRestore and ``python -m fdi restore --device cpu --dtype fp32``: max ≤ 4/255, mean ≤ 1/255 in every case."""
    import sd21_fixture

    folder = sd21_fixture.diffusers_fixture(Path(COMFYUI_DIR) / "comfy" / "sd1_tokenizer")
    write_image(env["input"] / "parity64.png", 64, 64, seed=21)
    write_image(env["input"] / "parity56x72.png", 72, 56, seed=22)
    loader = node("DiffusersLoader", model_path=folder.name)
    graph = {}
    for i, (img, steps, strength) in enumerate(PARITY_CASES):
        graph.update(
            restore_graph(env, img, f"e2e_parity{i}", steps=steps, strength=strength, loader=loader, key=f"_{i}")
        )
    entry = server.run_ok(graph)
    report, failures = [], []
    for i, (img, steps, strength) in enumerate(PARITY_CASES):
        comfy_img = saved_image(env, entry, f"14_{i}")
        cli_img = cli_restore(env, folder, img, tmp_path / f"cli{i}", steps, strength)
        assert cli_img.shape == comfy_img.shape
        d = np.abs(cli_img - comfy_img)
        report.append(f"{img} steps={steps} strength={strength}: max {d.max()}, mean {d.mean():.3f}")
        if d.max() > 4 or d.mean() > 1:
            failures.append(report[-1])
    print("\n".join(report))
    assert not failures, "\n".join(failures)
    # the cases are not all the same picture: strength changes the image, so the bound above means something
    s0 = saved_image(env, entry, "14_0")
    s1 = saved_image(env, entry, "14_1")
    print(f"strength 0 vs 1 (64 px, 4 steps): mean {np.abs(s0 - s1).mean():.2f}")
    assert np.abs(s0 - s1).mean() > 1.0


DETECT = """
import torch
from safetensors import safe_open
import comfy.model_detection
P = "model.diffusion_model."
res = []
for path in sys.argv[1:]:
    with safe_open(path, framework="pt") as fh:
        sd = {}
        for k in fh.keys():
            if k.startswith(P):
                sl = fh.get_slice(k)
                dt = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[sl.get_dtype()]
                real = k.endswith("norm1.bias")
                sd[k] = fh.get_tensor(k) if real else torch.empty(sl.get_shape(), dtype=dt, device="meta")
    cfg = comfy.model_detection.model_config_from_unet(sd, P)
    res.append([type(cfg).__name__, cfg.model_type(sd, P).name])
print(json.dumps(res))
"""


def comfy_detects(*paths: Path) -> list:
    """``[config class, model type]`` per single file, by ComfyUI's own detection (the loader's, on shapes)."""
    code = harness.script(DETECT, COMFYUI_DIR, None, load_pack=False)
    return harness.run_json(code, None, timeout=300, args=paths)


#: (single file, image, steps, strength): the v file's cases, and the epsilon file's as the control of the same door
V_CASES = [
    ("v", "parity64.png", 6, 1.0),
    ("v", "parity56x72.png", 4, 1.0),
    ("v", "parity64.png", 6, 0.0),
    ("eps", "parity64.png", 6, 1.0),
]


def test_fdi_restore_equals_the_cli_on_a_v_prediction_single_file(server, env, tmp_path, sd21_adapter):
    """An SD 2.1-v single file (random weights, detected as V_PREDICTION by ComfyUI's CheckpointLoaderSimple and as
    v_prediction by the CLI) through FDIRestore and ``python -m fdi restore --sd FILE``: max ≤ 4/255, mean ≤ 1/255;
    the epsilon single file it was made from, through the same loaders, is the control."""
    import sd21_fixture
    from tiny_blip2 import TINY_TOKENS, TINY_WIDTH

    from fdi.checkpoints import inspect_single_file

    files = {"v": sd21_fixture.v_checkpoint(), "eps": sd21_fixture.checkpoint_path()}
    names = {"v": sd21_fixture.v_checkpoint_name(), "eps": env["ckpt"]}
    # the e2e adapter's weights, labelled for the v family (the pack refuses an epsilon adapter on a v MODEL)
    adapters = {"v": V_ADAPTER_NAME, "eps": ADAPTER_NAME}
    v_adapter = sd21_adapter(TINY_WIDTH, TINY_TOKENS, base_family="sd2.1-v")
    v_adapter.save(env["extra"] / "adapters" / V_ADAPTER_NAME, fdi=env["fdi"])
    assert comfy_detects(files["v"], files["eps"]) == [["SD20", "V_PREDICTION"], ["SD20", "EPS"]]
    assert inspect_single_file(files["v"])["v_prediction"] is True
    assert inspect_single_file(files["eps"])["v_prediction"] is False
    write_image(env["input"] / "parity64.png", 64, 64, seed=21)
    write_image(env["input"] / "parity56x72.png", 72, 56, seed=22)
    graph = {}
    for i, (kind, img, steps, strength) in enumerate(V_CASES):
        loader = node("CheckpointLoaderSimple", ckpt_name=names[kind])
        graph.update(
            restore_graph(
                env, img, f"e2e_vparity{i}", steps, strength, loader=loader, key=f"_v{i}", adapter=adapters[kind]
            )
        )
    entry = server.run_ok(graph)
    report, failures, comfy_imgs = [], [], []
    for i, (kind, img, steps, strength) in enumerate(V_CASES):
        comfy_img = saved_image(env, entry, f"14_v{i}")
        comfy_imgs.append(comfy_img)
        cli_img = cli_restore(env, files[kind], img, tmp_path / f"cli_v{i}", steps, strength, adapters[kind])
        assert cli_img.shape == comfy_img.shape
        d = np.abs(cli_img - comfy_img)
        report.append(
            f"{kind} single file, {img} steps={steps} strength={strength}: max {d.max()}, mean {d.mean():.3f}"
        )
        if d.max() > 4 or d.mean() > 1:
            failures.append(report[-1])
    print("\n".join(report))
    assert not failures, "\n".join(failures)
    # the bound means something: strength changes the v picture, and the v file is not sampled as the epsilon one
    strength_effect = np.abs(comfy_imgs[0] - comfy_imgs[2]).mean()
    v_vs_eps = np.abs(comfy_imgs[0] - comfy_imgs[3]).mean()
    print(f"v: strength 0 vs 1 mean {strength_effect:.2f}; v vs eps file, same settings: mean {v_vs_eps:.2f}")
    assert strength_effect > 1.0 and v_vs_eps > 1.0


# ------------------------------------------------------------------------------------------------ (4) bad input


def bad_cases(env) -> list:
    q = node("FDIQFormerLoader", folder="tiny_blip2", dtype="fp32")
    img = node("LoadImage", image="degraded.png")
    return [
        (
            "different batch lengths",
            {
                "1": q,
                "2": img,
                "3": node("ImageBatch", image1=["2", 0], image2=["2", 0]),
                "4": node(
                    "FDIExtract",
                    qformer=["1", 0],
                    degraded=["3", 0],
                    clean=["2", 0],
                    label="x",
                    batch_size=4,
                    keep_pairs=False,
                ),
                "5": node("FDISave", fdi=["4", 0], name="bad_batches", keep_pairs=False, overwrite=True),
            },
            "2 degraded images but 1 clean",
        ),
        (
            "folder outside input",
            {
                "1": q,
                "2": node(
                    "FDIExtractFromFolders",
                    qformer=["1", 0],
                    degraded_folder="../models",
                    clean_folder="pairs/clean",
                    label="x",
                    batch_size=2,
                    keep_pairs=False,
                ),
                "3": node("FDISave", fdi=["2", 0], name="bad_outside", keep_pairs=False, overwrite=True),
            },
            "'..'",
        ),
        (
            "absolute folder",
            {
                "1": q,
                "2": node(
                    "FDIExtractFromFolders",
                    qformer=["1", 0],
                    degraded_folder=str(env["input"] / "pairs" / "degraded"),
                    clean_folder="pairs/clean",
                    label="x",
                    batch_size=2,
                    keep_pairs=False,
                ),
                "3": node("FDISave", fdi=["2", 0], name="bad_abs", keep_pairs=False, overwrite=True),
            },
            "absolute path",
        ),
        (
            "symlink escaping input",
            {
                "1": q,
                "2": node(
                    "FDIExtractFromFolders",
                    qformer=["1", 0],
                    degraded_folder="escape",
                    clean_folder="escape",
                    label="x",
                    batch_size=2,
                    keep_pairs=False,
                ),
                "3": node("FDISave", fdi=["2", 0], name="bad_link", keep_pairs=False, overwrite=True),
            },
            "outside ComfyUI's input folder",
        ),
        (
            "empty folder",
            {
                "1": q,
                "2": node(
                    "FDIExtractFromFolders",
                    qformer=["1", 0],
                    degraded_folder="empty",
                    clean_folder="empty",
                    label="x",
                    batch_size=2,
                    keep_pairs=False,
                ),
                "3": node("FDISave", fdi=["2", 0], name="bad_empty", keep_pairs=False, overwrite=True),
            },
            "holds no images",
        ),
        (
            "save name with separator",
            {
                "1": node("FDILoad", fdi_name="e2e_bad_width.fdi.safetensors"),
                "2": node("FDISave", fdi=["1", 0], name="../escape", keep_pairs=False, overwrite=True),
            },
            "path separator",
        ),
        (
            "save name with ..",
            {
                "1": node("FDILoad", fdi_name="e2e_bad_width.fdi.safetensors"),
                "2": node("FDISave", fdi=["1", 0], name="a..b", keep_pairs=False, overwrite=True),
            },
            "'..'",
        ),
        (
            "FDI width not matching the adapter",
            {
                "1": node("FDILoad", fdi_name="e2e_bad_width.fdi.safetensors"),
                "2": img,
                "3": node("FDIAdapterLoader", adapter_name=ADAPTER_NAME),
                "4": node("FDINoiseDecoupling", adapter=["3", 0], fdi=["1", 0], image=["2", 0]),
                "5": node("CheckpointLoaderSimple", ckpt_name=env["ckpt"]),
                "6": node(
                    "FDIApplyGuidance",
                    model=["5", 0],
                    guidance=["4", 0],
                    strength=1.0,
                    start_percent=0.0,
                    end_percent=0.3,
                ),
                "7": node(
                    "KSampler",
                    model=["6", 0],
                    seed=0,
                    steps=1,
                    cfg=1.0,
                    sampler_name="ddim",
                    scheduler="ddim_uniform",
                    positive=["8", 0],
                    negative=["8", 0],
                    latent_image=["9", 0],
                    denoise=1.0,
                ),
                "8": node("CLIPTextEncode", text="", clip=["5", 1]),
                "9": node("EmptyLatentImage", width=64, height=64, batch_size=1),
                "10": node("PreviewImage", images=["11", 0]),
                "11": node("VAEDecode", samples=["7", 0], vae=["5", 2]),
            },
            "token width",
        ),
        (
            "FDIs of different encoders",
            {
                "1": node("FDILoad", fdi_name="e2e_other_encoder.fdi.safetensors"),
                "2": node("FDILoad", fdi_name="e2e_rain.fdi.safetensors"),
                "3": node("FDICombine", fdi_a=["2", 0], weight_a=1.0, fdi_b=["1", 0], weight_b=1.0, mode="sum"),
                "4": node("FDISave", fdi=["3", 0], name="bad_combined", keep_pairs=False, overwrite=True),
            },
            "different Q-Former",
        ),
        (
            "end_percent < start_percent",
            {
                "1": node("CheckpointLoaderSimple", ckpt_name=env["ckpt"]),
                "2": img,
                "3": node("FDIAdapterLoader", adapter_name=ADAPTER_NAME),
                "4": node("FDINoiseDecoupling", adapter=["3", 0], fdi=["3", 1], image=["2", 0]),
                "5": node(
                    "FDIApplyGuidance",
                    model=["1", 0],
                    guidance=["4", 0],
                    strength=1.0,
                    start_percent=0.6,
                    end_percent=0.2,
                ),
                "6": node("CLIPTextEncode", text="", clip=["1", 1]),
                "7": node("EmptyLatentImage", width=64, height=64, batch_size=1),
                "8": node(
                    "KSampler",
                    model=["5", 0],
                    seed=0,
                    steps=1,
                    cfg=1.0,
                    sampler_name="ddim",
                    scheduler="ddim_uniform",
                    positive=["6", 0],
                    negative=["6", 0],
                    latent_image=["7", 0],
                    denoise=1.0,
                ),
                "9": node("VAEDecode", samples=["8", 0], vae=["1", 2]),
                "10": node("PreviewImage", images=["9", 0]),
            },
            "end_percent",
        ),
    ]


def test_bad_inputs_give_clear_errors_and_write_nothing(server, env):
    from fdi.instruction import FDI

    folder = env["models_fdi"]
    folder.mkdir(parents=True, exist_ok=True)
    FDI(torch.randn(8, 16), encoder=env["fdi"].encoder, label="narrow").save(folder / "e2e_bad_width.fdi.safetensors")
    FDI(torch.randn(*env["fdi"].shape), encoder="other_blip2:0123456789abcdef", label="other").save(
        folder / "e2e_other_encoder.fdi.safetensors"
    )
    # the rain FDI is written by the round-trip test; write it here too so this test can run alone
    if not (folder / "e2e_rain.fdi.safetensors").exists():
        env["fdi"].save(folder / "e2e_rain.fdi.safetensors")
    before = sorted(p.name for p in folder.iterdir()) + sorted(p.name for p in env["base"].glob("*"))
    failures = []
    for what, graph, expected in bad_cases(env):
        entry = server.run(graph)
        msg = error_message(entry)
        if entry["status"]["status_str"] != "error" or expected not in msg:
            failures.append(f"{what}: status {entry['status']['status_str']}, message {msg!r}")
        assert server.alive(), f"server died after {what}"
    after = sorted(p.name for p in folder.iterdir()) + sorted(p.name for p in env["base"].glob("*"))
    assert not failures, "\n".join(failures)
    assert before == after, "a failed prompt wrote a file"
