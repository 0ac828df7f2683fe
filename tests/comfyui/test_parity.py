"""ComfyUI ↔ diffusers parity of FDI guidance on full-size SD 2.1 weights (needs ``COMFYUI_DIR`` and diffusers).

Both UNets are loaded in this process from the same random SD 2.1 weights (the cached diffusers
fixture of ``tests/sd21_fixture.py``): ComfyUI's through its own ``load_diffusion_model`` (what
``DiffusersLoader`` uses), diffusers' through ``from_pretrained``. The same adapter guidance is
installed with :func:`fdi.comfy_backend.add_guidance` (the ComfyUI patches) and
:class:`fdi.diffusers_backend.DiffusersGuidance`; the noise predictions must agree to a relative
error of 1e-3 in fp32 at a guided step, and match the plain prediction outside the window.

Run under ComfyUI's Python::

    COMFYUI_DIR=/path/to/ComfyUI /path/to/comfy/venv/bin/python -m pytest -m comfyui tests/comfyui/test_parity.py
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import comfyui_harness as harness
import pytest
import torch

COMFYUI_DIR = harness.comfyui_dir()
ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.comfyui,
    pytest.mark.skipif(
        not COMFYUI_DIR,
        reason="COMFYUI_DIR is not set: the parity tests need a ComfyUI checkout "
        "(run with COMFYUI_DIR=/path/to/ComfyUI under ComfyUI's Python, which has "
        "diffusers)",
    ),
]


def test_pack_loads_in_comfyui_without_importing_diffusers(tmp_path):
    """Loading the pack the way ComfyUI does registers every node of nodes/*.py and keeps diffusers out
    (docs/design.md)."""
    body = """
    print(json.dumps({"nodes": [n.GET_SCHEMA().node_id for n in asyncio.run(extension.get_node_list())],
                      "diffusers": sorted(m for m in sys.modules if m.split(".")[0] == "diffusers"),
                      "fdi_paths": folder_paths.get_folder_paths("fdi")}))
    """
    code = harness.script(body, COMFYUI_DIR, tmp_path, pack_name=str(tmp_path / "custom_nodes" / "comfyui-fdi"))
    result = harness.run_json(code, tmp_path, timeout=300)
    declared = sorted(
        set(re.findall(r'node_id="(\w+)"', "".join(p.read_text() for p in (ROOT / "nodes").glob("*.py"))))
    )
    assert len(declared) >= 18 and sorted(result["nodes"]) == declared
    assert all(n.startswith("FDI") for n in result["nodes"])
    assert result["diffusers"] == []
    assert result["fdi_paths"][0] == str(tmp_path / "models" / "fdi")


@pytest.fixture(scope="module")
def comfy():
    """ComfyUI's modules from ``COMFYUI_DIR`` (first on the path, before this repo's ``nodes/``), set up as
    ``--cpu``."""
    return harness.import_comfyui(COMFYUI_DIR)


def test_each_family_is_taken_on_its_own_comfyui_config_and_refused_on_others(comfy):
    """ComfyUI's real SD 2.x / SDXL / SD 1.5 unet configs through the check ``FDIApplyGuidance`` runs."""
    from fdi.comfy_backend import check_unet_for_adapter
    from fdi.errors import FDIError

    sm = comfy.supported_models
    channels = (320, 640, 1280, 1280)

    def full(cfg: dict, levels: int) -> dict:  # detection adds the per-checkpoint keys; these are SD's
        mult = [1, 2, 4, 4][:levels]
        return {"num_res_blocks": [2] * levels, "channel_mult": mult, "in_channels": 4, **cfg}

    assert check_unet_for_adapter(full(sm.SD20.unet_config, 4), channels, "sd2.1-base") == ((2, 5, 8, 11), (3, 6, 9))
    with pytest.raises(FDIError, match="SDXL"):
        check_unet_for_adapter(full(sm.SDXL.unet_config, 3), channels, "sd2.1-base")
    with pytest.raises(FDIError, match="SD 1.x"):
        check_unet_for_adapter(full(sm.SD15.unet_config, 4), channels, "sd2.1-base")
    # each family on its own UNet (SDXL: three levels, input blocks 0-8, output blocks 0-8)
    assert check_unet_for_adapter(full(sm.SD15.unet_config, 4), channels, "sd1.5") == ((2, 5, 8, 11), (3, 6, 9))
    assert check_unet_for_adapter(full(sm.SDXL.unet_config, 3), channels[:3], "sdxl") == ((2, 5, 8), (3, 6))


def comfy_model_sampling(comfy, path: Path):
    """ComfyUI's reading of a single file's schedule, as ``CheckpointLoaderSimple`` does it (without the weights): its
    UNet config from the ``model.diffusion_model.`` shapes (``model_config_from_unet``), the model type from the whole
    state dict (``model_type``: the ``v_pred`` / ``ztsnr`` keys), and the model's own ``model_sampling`` object.
    ``(model config, model type name, model_sampling)``."""
    from safetensors import safe_open

    prefix = "model.diffusion_model."
    sd = {}
    with safe_open(str(path), framework="pt") as fh:
        for key in fh.keys():
            sl = fh.get_slice(key)
            if key.startswith(prefix):
                sd[key] = torch.empty(sl.get_shape(), dtype=torch.float16, device="meta")
            else:
                sd[key] = fh.get_tensor(key)
    config = comfy.model_detection.model_config_from_unet(sd, prefix)
    model_type = config.model_type(sd, prefix)
    return config, model_type.name, comfy.model_base.model_sampling(config, model_type)


def comfy_discrete_patch(comfy, model_config, sampling: str, zsnr: bool):
    """The ``model_sampling`` ComfyUI's ``ModelSamplingDiscrete`` node (comfy_extras) puts on a MODEL of
    ``model_config``: the node's own ``patch`` on a stand-in MODEL that records its object patch."""
    import types

    from comfy_extras.nodes_model_advanced import ModelSamplingDiscrete

    class Model:
        def __init__(self):
            self.model, self.patches = types.SimpleNamespace(model_config=model_config), {}

        def clone(self):
            return self

        def add_object_patch(self, name, obj):
            self.patches[name] = obj

    (patched,) = ModelSamplingDiscrete().patch(Model(), sampling, zsnr)
    return patched.patches["model_sampling"]


#: the single-file markers: none, v-prediction, v-prediction on the zero-terminal-SNR schedule
MARKER_SETS = {"none": (), "v_pred": ("v_pred",), "v_pred+ztsnr": ("v_pred", "ztsnr")}


@pytest.mark.parametrize("markers", sorted(MARKER_SETS))
@pytest.mark.parametrize("family", ["sdxl", "sd1.5"])
def test_the_cli_schedule_of_a_marked_single_file_equals_comfyuis(comfy, family, markers, tmp_path):
    """A full-size SDXL / SD 1.5 header with ComfyUI's ``v_pred`` / ``ztsnr`` markers: the CLI's scheduler
    (:func:`fdi.models.single_file_scheduler`, what ``load_sd`` loads the file with) has ComfyUI's prediction and ᾱ
    schedule, relative 1e-6 at every training timestep (ᾱ = 1 / (1 + σ²) of ComfyUI's σ table, as the nodes read
    it), and the same adapter family. ComfyUI reads the markers for SDXL only; on SD 1.5 it reads epsilon, and its
    ``ModelSamplingDiscrete`` node (the markers' prediction and zsnr) makes it agree with the CLI, which honours the
    markers there too."""
    import bases_fixture

    from fdi.checkpoints import inspect_single_file
    from fdi.comfy_unet import comfy_family
    from fdi.families import family_for
    from fdi.models import single_file_scheduler
    from fdi.sampling import sigma_to_alpha

    marks = MARKER_SETS[markers]
    path = bases_fixture.header_checkpoint(family, tmp_path / f"{family}.safetensors", marks)
    config, model_type, ms = comfy_model_sampling(comfy, path)
    name = type(config).__name__
    v, zsnr = "v_pred" in marks, "ztsnr" in marks
    if family == "sdxl":
        assert (name, model_type, bool(ms.zsnr)) == ("SDXL", "V_PREDICTION" if v else "EPS", zsnr)
    else:  # ComfyUI 0.33 reads neither marker on SD 1.5
        assert (name, model_type, bool(ms.zsnr)) == ("SD15", "EPS", False)
        if v:
            ms = comfy_discrete_patch(comfy, config, "v_prediction", zsnr)
    assert isinstance(ms, comfy.model_sampling.V_PREDICTION if v else comfy.model_sampling.EPS)
    ours = single_file_scheduler(path)
    assert ours.config.prediction_type == ("v_prediction" if v else "epsilon")
    theirs = sigma_to_alpha(ms.sigmas.float())
    mine = ours.alphas_cumprod.double()
    rel = ((mine - theirs).abs() / theirs).max().item()
    print(f"{family} {markers}: ᾱ(981) CLI {mine[981]:.6g}, ComfyUI {theirs[981]:.6g}; max relative {rel:.2e}")
    assert rel <= 1e-6
    assert abs(mine[981].item() - (6.8866e-05 if zsnr else 5.7755e-03)) < 1e-4 * mine[981].item()
    # the adapter family follows in both doors: FDITrainAdapter's (the UNet config and the MODEL's prediction) is
    # the one the CLI loads the file as, so an adapter trained on either door is taken by the other
    comfy_side = comfy_family(config.unet_config, "v_prediction" if v else "epsilon")
    cli_side = family_for(inspect_single_file(path)["arch"], ours.config.prediction_type)
    assert comfy_side == cli_side == {"sdxl": "sdxl", "sd1.5": "sd1.5"}[family] + ("-v" if v else "")


def test_parity_comfyui_patched_unet_vs_diffusers_backend(comfy):
    import sd21_fixture
    from diffusers import UNet2DConditionModel

    from fdi.comfy_backend import GuidanceEntry, add_guidance, check_unet_for_adapter, sigma_window
    from fdi.diffusers_backend import DiffusersGuidance

    folder = sd21_fixture.diffusers_fixture(Path(COMFYUI_DIR) / "comfy" / "sd1_tokenizer")
    patcher = comfy.sd.load_diffusion_model(
        str(folder / "unet" / "diffusion_pytorch_model.safetensors"), model_options={"dtype": torch.float32}
    )
    base = patcher.model
    assert base.get_dtype() == torch.float32
    unet_d = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=torch.float32).eval()

    adapter = sd21_fixture.random_adapter(768, 32, seed=1)
    torch.manual_seed(0)
    with torch.no_grad():
        g = adapter(torch.rand(2, 3, 64, 64), torch.randn(32, 768))
    blocks = check_unet_for_adapter(base.model_config.unet_config, adapter.config.channels, adapter.base_family)
    ms = base.model_sampling
    sigma_start, sigma_end = sigma_window(ms.percent_to_sigma, 0.0, 0.5)
    model_options = copy.deepcopy(patcher.model_options)  # what ModelPatcher.clone() does
    add_guidance(model_options, GuidanceEntry(g, 0.9, 0.0, 0.5, sigma_start, sigma_end), *blocks)

    x = torch.randn(2, 4, 8, 8) * 8
    ctx = torch.randn(2, 77, 1024)

    def comfy_eps(t: int, options: dict) -> torch.Tensor:
        sigma = ms.sigmas[t].reshape(1).expand(2).float()
        to = {**options.get("transformer_options", {}), "sigmas": sigma, "cond_or_uncond": [0]}
        with torch.no_grad():
            denoised = base.apply_model(x, sigma, c_crossattn=ctx, transformer_options=to)
        return (x - denoised) / sigma.view(-1, 1, 1, 1)

    def diffusers_eps(t: int, guided: bool) -> torch.Tensor:
        xc = x / torch.sqrt(ms.sigmas[t] ** 2 + 1)
        with torch.no_grad():
            if guided:
                with DiffusersGuidance(unet_d, [(g, 1.0)], strength=0.9):
                    return unet_d(xc, t, encoder_hidden_states=ctx).sample
            return unet_d(xc, t, encoder_hidden_states=ctx).sample

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).norm() / b.norm())

    t_in, t_out = 900, 200  # inside and outside the [0, 0.5] window
    assert sigma_end <= float(ms.sigmas[t_in]) <= sigma_start and float(ms.sigmas[t_out]) < sigma_end
    plain_c, plain_d = comfy_eps(t_in, patcher.model_options), diffusers_eps(t_in, False)
    guided_c, guided_d = comfy_eps(t_in, model_options), diffusers_eps(t_in, True)
    print(
        f"relative errors: plain {rel(plain_c, plain_d):.2e}, guided {rel(guided_c, guided_d):.2e}, "
        f"guidance effect {rel(guided_c, plain_c):.2e}"
    )
    assert rel(plain_c, plain_d) <= 1e-3
    assert rel(guided_c, guided_d) <= 1e-3
    assert rel(guided_c, plain_c) > 1e-2, "the guidance must change the prediction for the parity to mean anything"
    outside_c, outside_d = comfy_eps(t_out, model_options), diffusers_eps(t_out, False)
    assert rel(outside_c, outside_d) <= 1e-3
    assert torch.equal(outside_c, comfy_eps(t_out, patcher.model_options))


@pytest.mark.parametrize("family", ["sd1.5", pytest.param("sdxl", marks=pytest.mark.slow)])  # SDXL: 20 GB peak RSS
def test_parity_per_family_on_the_published_single_file_layout(comfy, family):
    """SD 1.5 and SDXL: the same adapter on the same weights (the random single files of ``tests/bases_fixture.py``,
    read by ComfyUI's checkpoint loader and by :func:`fdi.models.load_sd`) gives the same UNet output through the
    ComfyUI patches and the diffusers hooks, relative ≤ 1e-5 in fp32; a fresh adapter is an exact no-op in both.
    SDXL gets its pooled text and size conditioning in both (ComfyUI's ``encode_adm``, diffusers' time ids). The two
    UNets are loaded one after the other (an SDXL UNet is 10 GB in fp32)."""
    import gc

    import bases_fixture

    from fdi.comfy_backend import GuidanceEntry, add_guidance, check_unet_for_adapter
    from fdi.conditioning import TextConditioning, unet_kwargs
    from fdi.diffusers_backend import DiffusersGuidance
    from fdi.models import load_sd

    path = Path(bases_fixture.checkpoint_path(family))
    if not path.is_file():
        bases_fixture.ensure_checkpoint(family, COMFYUI_DIR)
    torch.manual_seed(0)
    adapter = bases_fixture.random_adapter(family, 768, 32, seed=1)
    fresh = bases_fixture.fresh_adapter(family, 768, 32, seed=2)
    images, tokens = torch.rand(2, 3, 64, 64), torch.randn(32, 768)
    with torch.no_grad():
        g, g0 = adapter(images, tokens), fresh(images, tokens)
    ctx_dim = {"sd1.5": 768, "sdxl": 2048}[family]
    x = torch.randn(2, 4, 8, 8) * 8
    ctx = torch.randn(2, 77, ctx_dim)
    pooled = torch.randn(2, 1280) if family == "sdxl" else None
    t_in = 900

    patcher, *_ = comfy.sd.load_checkpoint_guess_config(
        str(path), output_vae=False, output_clip=False, model_options={"dtype": torch.float32}
    )
    base = patcher.model
    assert base.get_dtype() == torch.float32
    blocks = check_unet_for_adapter(base.model_config.unet_config, adapter.config.channels, family, "epsilon")
    assert blocks == (((2, 5, 8, 11), (3, 6, 9)) if family == "sd1.5" else ((2, 5, 8), (3, 6)))
    extra = {} if pooled is None else {"y": base.encode_adm(pooled_output=pooled, width=64, height=64)}
    sigma = base.model_sampling.sigmas[t_in].reshape(1).expand(2).float()

    def comfy_eps(guidance) -> torch.Tensor:
        options = copy.deepcopy(patcher.model_options)
        if guidance is not None:
            add_guidance(options, GuidanceEntry(guidance, 0.9, 0.0, 1.0, float("inf"), 0.0), *blocks)
        to = {**options.get("transformer_options", {}), "sigmas": sigma, "cond_or_uncond": [0]}
        with torch.no_grad():
            denoised = base.apply_model(x, sigma, c_crossattn=ctx, transformer_options=to, **extra)
        return (x - denoised) / sigma.view(-1, 1, 1, 1)

    plain_c, guided_c, fresh_c = comfy_eps(None), comfy_eps(g), comfy_eps(g0)
    patcher = base = None  # free the ComfyUI UNet before loading the diffusers one
    gc.collect()

    parts = load_sd(path)
    assert parts.family == family
    unet = parts.unet.eval()
    del parts
    gc.collect()
    xc = x / torch.sqrt(sigma.view(-1, 1, 1, 1) ** 2 + 1)
    kwargs = unet_kwargs(TextConditioning(ctx, pooled), 2, (64, 64), torch.float32)

    def diffusers_eps(guidance) -> torch.Tensor:
        with torch.no_grad():
            if guidance is None:
                return unet(xc, t_in, **kwargs).sample
            with DiffusersGuidance(unet, [(guidance, 1.0)], strength=0.9):
                return unet(xc, t_in, **kwargs).sample

    plain_d, guided_d, fresh_d = diffusers_eps(None), diffusers_eps(g), diffusers_eps(g0)

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).norm() / b.norm())

    print(
        f"{family}: relative errors plain {rel(plain_c, plain_d):.2e}, guided {rel(guided_c, guided_d):.2e}, "
        f"guidance effect {rel(guided_c, plain_c):.2e}"
    )
    assert rel(guided_c, plain_c) > 1e-2, "the guidance must change the prediction for the parity to mean anything"
    assert rel(plain_c, plain_d) <= 1e-5
    assert rel(guided_c, guided_d) <= 1e-5
    assert torch.equal(fresh_c, plain_c) and torch.equal(fresh_d, plain_d)


WINDOW_SCRIPT = """
import gc
import numpy as np
import comfy.sd
from PIL import Image
gn = sys.modules[name + ".nodes.guidance_nodes"]
from sd21_fixture import random_adapter
from fdi.cli import main
from fdi.instruction import FDI

base, ckpt, diffusers = sys.argv[1:4]
adapter = random_adapter(768, 32, seed=1)
adapter.encoder = "blip2-test:0123456789abcdef"
adapter.guidance_window = (0.667, 1.0)  # trained for the last third
fdi = FDI(torch.randn(32, 768, generator=torch.Generator().manual_seed(0)), encoder=adapter.encoder, n_pairs=1)
path = folder_paths.get_folder_paths("fdi_adapters")[0] + "/late.safetensors"
os.makedirs(os.path.dirname(path), exist_ok=True)
adapter.save(path, fdi=fdi)
handle = gn.FDIAdapterLoader.execute("late.safetensors")[0]
arr = (np.random.default_rng(21).random((64, 64, 3)) * 255).astype(np.uint8)
Image.fromarray(arr).save(base + "/parity.png")
image = torch.from_numpy(arr).float()[None] / 255
model, clip, vae = comfy.sd.load_checkpoint_guess_config(ckpt, output_vae=True, output_clip=True)[:3]
positive = clip.encode_from_tokens_scheduled(clip.tokenize(""))
custom = dict(guidance_window="custom", guidance_start=0.0)
with torch.inference_mode():  # as ComfyUI's executor runs a node; the widgets at their defaults (end 0.333)
    for key, extra in (("default", {}), ("first_third", custom)):
        img = gn.FDIRestore.execute(model, vae, image, handle, positive, 8, 8, 1.0, 0.333, 1.0, **extra)[0]
        np.save(base + f"/{key}.npy", img.numpy())
del model, clip, vae
gc.collect()
args = ["restore", "--sd", diffusers, "--adapter", path, "--image", base + "/parity.png", "-o", base + "/cli"]
args += ["--steps", "8", "--inversion-steps", "8", "--device", "cpu", "--dtype", "fp32", "--quiet"]
print(json.dumps({"rc": main(args)}))
"""


def test_both_doors_restore_in_the_adapters_recorded_window_by_default(tmp_path):
    """An adapter file recording the last third (0.667, 1): FDIRestore with its widgets at their defaults and
    ``python -m fdi restore`` without window flags both guide steps 6, 7 of 8, and give the same pixels (max ≤ 4/255,
    mean ≤ 1/255, the doors' parity bound); FDIRestore with a custom first third differs, and says so."""
    import numpy as np
    import sd21_fixture
    from PIL import Image

    ckpt = sd21_fixture.checkpoint_path()
    diffusers = sd21_fixture.cache_dir() / "diffusers" / sd21_fixture.FIXTURE_NAME
    if not ckpt.is_file() or not diffusers.is_dir():
        pytest.skip("the SD 2.1 fixture is not built yet (tests/comfyui/test_e2e.py builds it)")
    boot = dict(pack_name="comfyui_fdi_window", tests_path=True, library_path=True, threads=2)
    code = harness.script(WINDOW_SCRIPT, COMFYUI_DIR, tmp_path, **boot)
    proc = harness.run_python(code, tmp_path, timeout=1500, args=(tmp_path, ckpt, diffusers))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"rc": 0}
    with Image.open(tmp_path / "cli" / "parity.png") as im:
        cli = np.asarray(im.convert("RGB"), dtype=np.int16)

    def pixels(key: str) -> np.ndarray:  # as SaveImage writes them
        return np.clip(255.0 * np.load(tmp_path / f"{key}.npy")[0], 0, 255).astype(np.uint8).astype(np.int16)

    default, first_third = pixels("default"), pixels("first_third")
    d, moved = np.abs(cli - default), np.abs(first_third - default)
    print(f"CLI vs FDIRestore: max {d.max()}, mean {d.mean():.3f}; the first third instead: mean {moved.mean():.2f}")
    assert d.max() <= 4 and d.mean() <= 1
    assert moved.mean() > 4 * max(d.mean(), 0.25), "the window must change the image for the parity to mean anything"
    note = "FDI Restore: adapter e2e (late.safetensors) was trained to guide steps 0.667..1 of sampling; "
    assert note + "guidance_start 0 guidance_end 0.333 makes it guide 0..0.333, outside" in proc.stderr
    assert proc.stderr.count("was trained to guide") == 1  # the default run and the CLI say nothing
