"""The pack under ComfyUI's dynamic VRAM (``ModelPatcherDynamic``, on by default on NVIDIA from ComfyUI 0.28), on a CPU.

Dynamic VRAM needs comfy-aimdo's CUDA library, which a CPU box cannot load, and ComfyUI turns it off with ``--cpu``.
What a CPU can reach of it is ComfyUI's own Python: the test does what ``main.py`` does when aimdo starts
(``comfy.model_patcher.CoreModelPatcher = ModelPatcherDynamic``), gives ComfyUI the ``meta`` device as its GPU, and
replaces aimdo's two native objects that ``ModelPatcherDynamic`` builds on load (the pinned host buffer and the
virtual VRAM bar) with bookkeeping that holds nothing: plain ``torch.nn`` modules (the pack's) have no ``comfy.ops``
weights to stream through them. Then ComfyUI's real ``load``/``partially_unload``/``detach`` code runs, under
``load_models_gpu``'s ``--novram`` budget. What the GPU run of docs/gpu.md still has to show is listed there.

Needs ``COMFYUI_DIR`` (run under ComfyUI's Python); no model file.
"""

from __future__ import annotations

from pathlib import Path

import comfyui_harness as harness
import pytest

COMFYUI_DIR = harness.comfyui_dir()

pytestmark = [
    pytest.mark.comfyui,
    pytest.mark.skipif(
        not COMFYUI_DIR,
        reason="COMFYUI_DIR is not set: these tests import a ComfyUI checkout "
        "(run with COMFYUI_DIR=/path/to/ComfyUI under ComfyUI's Python)",
    ),
]

SCRIPT = """
import comfy.model_management as mm
import comfy.model_patcher
from tiny_sd import randomise_adapter, tiny_adapter_config
from fdi.adapter import FDIAdapter

common = sys.modules[name + ".nodes.common"]
train_nodes = sys.modules[name + ".nodes.train_nodes"]
backend = sys.modules[name + ".fdi.comfy_backend"]
meta, cpu = torch.device("meta"), torch.device("cpu")
out = {}
dynamic = getattr(comfy.model_patcher, "ModelPatcherDynamic", None)
out["has_dynamic"] = dynamic is not None
if dynamic is not None:
    import comfy_aimdo.host_buffer, comfy_aimdo.model_vbar

    class HostBuffer:  # aimdo's pinned staging buffer: nothing is pinned on a CPU box
        def __init__(self, *args):
            self.size = 0

        def truncate(self, *args, **kwargs):
            pass

    class ModelVBAR:  # aimdo's virtual VRAM for streamed comfy.ops weights: plain modules have none
        def __init__(self, size, device_index):
            pass

        def prioritize(self):
            pass

        def loaded_size(self):
            return 0

        def free_memory(self, size):
            return 0

    comfy_aimdo.host_buffer.HostBuffer = HostBuffer
    comfy_aimdo.model_vbar.ModelVBAR = ModelVBAR


def devices(module):
    return sorted({t.device.type for t in list(module.parameters()) + list(module.buffers())})


def adapter():
    torch.manual_seed(0)
    return randomise_adapter(FDIAdapter(tiny_adapter_config()))


# the legacy class (dynamic VRAM off, --cpu, older ComfyUI): WholeModelPatcher
out["legacy_class"] = type(common.make_patcher(adapter())).__name__
if dynamic is not None:
    comfy.model_patcher.CoreModelPatcher = dynamic  # what main.py does when aimdo starts
    out["cpu_load_device_class"] = type(common.make_patcher(adapter())).__name__  # ComfyUI's own reroute
    mm.get_torch_device = lambda: meta  # the "GPU"
    a = adapter()
    p = common.make_patcher(a)
    out["class"] = type(p).__name__
    loaded = mm.LoadedModel(p)
    loaded.model_load(0.1)  # load_models_gpu's budget under --novram
    out["loaded"] = devices(a)
    out["counted"] = [p.loaded_size(), p.model_size()]
    g = a(torch.rand(1, 3, 64, 64, device=meta), torch.randn(8, 32, device=meta))
    out["forward"] = g.residuals[0].device.type
    out["freed"] = [p.partially_unload(cpu, 1), devices(a)]  # ComfyUI freeing one byte frees all of it
    loaded.model_load(0.1)
    out["reloaded"] = devices(a)
    loaded.model_unload(1)
    out["unloaded"] = [devices(a), p.loaded_size()]

    # a guided MODEL: its load set is the UNet alone (load_models_gpu adds model_patches_models()), and loading it
    # (model_patches_to the device) leaves the guidance where the adapter's output was put
    with torch.no_grad():
        guidance = adapter()(torch.rand(1, 3, 64, 64), torch.randn(8, 32))
    unet = dynamic(common.ModuleHolder(torch.nn.Linear(4, 4)), load_device=meta, offload_device=cpu)
    guided = unet.clone()
    entry = backend.GuidanceEntry(guidance, 1.0, sigma_start=10.0, sigma_end=2.0)
    backend.add_guidance(guided.model_options, entry, (2, 5, 8, 11), (3, 6, 9))
    backend.add_guidance(guided.model_options, entry, (2, 5, 8, 11), (3, 6, 9))  # a second Apply node
    load_set = [guided] + guided.model_patches_models()
    out["load_set"] = [[type(m).__name__, common.is_dynamic(m)] for m in load_set]
    home = [t.data_ptr() for t in guidance.residuals] + [t.data_ptr() for m in guidance.modulations for t in m]
    loaded = mm.LoadedModel(guided)
    loaded.model_load(0.1)
    patches = backend.fdi_patches(guided.model_options)
    inp, outp = patches[backend.INPUT_PATCH_KEY], patches[backend.OUTPUT_PATCH_KEY]
    options = {"block": ("input", 2), "sigmas": torch.tensor([5.0])}
    h = torch.zeros(1, 32, 8, 8, device=meta)
    with torch.no_grad():
        moved = [inp(h, options).device.type]
        d = torch.zeros(1, 64, 2, 2, device=meta)
        moved.append(outp(d, d, {**options, "block": ("output", 3)})[0].device.type)
    out["per_use"] = moved
    now = [t.data_ptr() for t in guidance.residuals] + [t.data_ptr() for m in guidance.modulations for t in m]
    out["guidance_home"] = [now == home, sorted({t.device.type for t in guidance.residuals})]
    out["cached_on_device"] = sorted({str(k[-1]) for k in outp._cache._values})
    loaded.model_unload()  # detach: model_patches_to(the offload device)
    out["cached_after_unload"] = len(outp._cache._values)

    # training: a dynamic MODEL whose loader can run again trains on a fresh copy (ComfyUI's LoRA trainer's rule)
    def load_again(disable_dynamic=False):
        torch.manual_seed(1)
        module = common.ModuleHolder(torch.nn.Linear(4, 4))
        cls = comfy.model_patcher.ModelPatcher if disable_dynamic else dynamic
        return cls(module, load_device=meta, offload_device=cpu)

    with torch.inference_mode():  # a loader node runs in inference mode
        model = load_again()
    model.cached_patcher_init = (load_again, ())
    with torch.inference_mode(False):  # as FDITrainAdapter runs training
        trained = train_nodes.training_model(model)
    w, w0 = trained.model.inner.weight, model.model.inner.weight
    out["training_copy"] = [
        type(trained).__name__,
        trained.model is not model.model,
        bool(torch.equal(w, w0)),
        w.is_inference(),
        w0.is_inference(),
    ]
    legacy = load_again(disable_dynamic=True)
    out["legacy_training_model_is_model"] = train_nodes.training_model(legacy) is legacy
print(json.dumps(out))
"""


def test_pack_under_dynamic_vram(tmp_path: Path):
    boot = dict(pack_name="comfyui_fdi_dynamic", tests_path=True, library_path=True, threads=1)
    code = harness.script(SCRIPT, COMFYUI_DIR, tmp_path, **boot)
    out = harness.run_json(code, tmp_path, 300, stderr_chars=4000)
    assert out["legacy_class"] == "WholeModelPatcher"
    if not out["has_dynamic"]:
        pytest.skip("this ComfyUI has no ModelPatcherDynamic (dynamic VRAM came with 0.8-0.28)")
    assert out["cpu_load_device_class"] == "WholeModelPatcher"
    # the adapter gets ComfyUI's own dynamic patcher, which loads it whole under any budget and frees it whole
    assert out["class"] == "ModelPatcherDynamic"
    assert out["loaded"] == ["meta"] and out["counted"][0] == out["counted"][1] > 0 and out["forward"] == "meta"
    assert out["freed"] == [out["counted"][1], ["cpu"]]
    assert out["reloaded"] == ["meta"] and out["unloaded"] == [["cpu"], 0]
    # the guided MODEL loads alone (no legacy model makes load_models_gpu free VRAM the non-dynamic way); the
    # guidance stays home and each call copies what it reads to the features' device; nothing stays there
    assert out["load_set"] == [["ModelPatcherDynamic", True]]
    assert out["per_use"] == ["meta", "meta"] and out["guidance_home"] == [True, ["cpu"]]
    assert out["cached_on_device"] == ["meta"] and out["cached_after_unload"] == 0
    # training under dynamic VRAM: a fresh copy with normal (autograd-safe) weights, the MODEL untouched
    assert out["training_copy"] == ["ModelPatcherDynamic", True, True, False, True]
    assert out["legacy_training_model_is_model"] is True


# ------------------------------------------------------------------------------------------------ on a GPU

#: the GPU run's sizes: restore side (px) and steps, training crop (px)
GPU_SIDE, GPU_STEPS, TRAIN_SIDE = 512, 20, 256


def _gpu_graphs(ckpt: str, adapter: str) -> tuple:
    """Prompt 1: FDIRestore at 512 px with a file adapter, strength 1 and 0. Prompt 2 (same MODEL, which has sampled
    in inference mode): FDITrainAdapter, 2 steps at 256 px in bf16, then FDIRestore with the trained adapter."""
    from comfyui_harness import node

    common = {
        "1": node("CheckpointLoaderSimple", ckpt_name=ckpt),
        "2": node("CLIPTextEncode", text="", clip=["1", 1]),
        "3": node("LoadImage", image="degraded.png"),
        "4": node("FDIAdapterLoader", adapter_name=adapter),
    }
    restore = dict(
        model=["1", 0], vae=["1", 2], image=["3", 0], positive=["2", 0], steps=GPU_STEPS, inversion_steps=GPU_STEPS
    )
    restore.update(guidance_end=0.34, cfg=1.0)
    first = dict(common)
    for key, strength in (("s1", 1.0), ("s0", 0.0)):
        first[f"r_{key}"] = node("FDIRestore", adapter=["4", 0], fdi=["4", 1], strength=strength, **restore)
        first[f"save_{key}"] = node("SaveImage", images=[f"r_{key}", 0], filename_prefix=f"dyn_{key}")
    second = dict(common)
    second["5"] = node("FDILoadPairs", degraded_folder="pairs/degraded", clean_folder="pairs/clean")
    train = dict(steps=2, learning_rate=1e-4, batch_size=1, resolution=TRAIN_SIDE, seed=0, gradient_checkpointing=True)
    train.update(training_dtype="bf16", recon_weight=0.1)
    second["6"] = node(
        "FDITrainAdapter", model=["1", 0], clip=["1", 1], vae=["1", 2], fdi=["4", 1], pairs=["5", 0], **train
    )
    second["r_t"] = node("FDIRestore", adapter=["6", 0], fdi=["4", 1], strength=1.0, **restore)
    second["save_t"] = node("SaveImage", images=["r_t", 0], filename_prefix="dyn_t")
    return first, second


@pytest.mark.slow
def test_restore_and_training_step_with_dynamic_vram_on_a_gpu(tmp_path: Path):
    """The one GPU run of docs/gpu.md: ComfyUI with its default memory management on an NVIDIA GPU (dynamic VRAM
    on), a restore, then a 2-step training on the MODEL that has sampled, then a restore with that adapter."""
    import time

    import numpy as np
    import sd21_fixture
    import torch
    from images_fixture import load_png, write_image

    from fdi.instruction import FDI

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here: this is the GPU run of docs/gpu.md")
    ckpt = sd21_fixture.ensure_checkpoint(COMFYUI_DIR)
    base = tmp_path / "base"
    harness.link_pack(base)
    (base / "models" / "checkpoints").mkdir(parents=True)
    (base / "models" / "checkpoints" / ckpt).symlink_to(sd21_fixture.checkpoint_path())
    (base / "models" / "fdi_adapters").mkdir(parents=True)
    adapter = sd21_fixture.random_adapter(768, 32, seed=1)
    adapter.encoder = "blip2-test:0123456789abcdef"
    fdi = FDI(torch.randn(32, 768, generator=torch.Generator().manual_seed(0)), encoder=adapter.encoder, n_pairs=1)
    adapter.save(base / "models" / "fdi_adapters" / "dyn.safetensors", fdi=fdi)
    for sub in ("pairs/degraded", "pairs/clean"):
        (base / "input" / sub).mkdir(parents=True)
    for i in range(3):
        write_image(base / "input" / "pairs" / "degraded" / f"p{i}.png", TRAIN_SIDE + 64, TRAIN_SIDE + 32, seed=i)
        write_image(base / "input" / "pairs" / "clean" / f"p{i}.png", TRAIN_SIDE + 64, TRAIN_SIDE + 32, seed=100 + i)
    write_image(base / "input" / "degraded.png", GPU_SIDE, GPU_SIDE, seed=7)
    first, second = _gpu_graphs(ckpt, "dyn.safetensors")
    server = harness.ComfyServer(base, gpu=True)
    try:
        timings = []
        for graph in (first, second):
            start = time.perf_counter()
            entry = server.run_ok(graph)
            timings.append(round(time.perf_counter() - start, 1))
        log = server.log_tail(100000)
    finally:
        server.stop()
    images = {k: load_png(next((base / "output").glob(f"dyn_{k}_*.png"))) for k in ("s1", "s0", "t")}
    print({"seconds per prompt": timings, "log": [line for line in log.splitlines() if "dynamic" in line.lower()]})
    assert "DynamicVRAM support detected and enabled" in log
    assert "Model ModuleHolder prepared for dynamic VRAM loading" in log  # the adapter, through ComfyUI's patcher
    assert entry["status"]["status_str"] == "success"
    assert np.abs(images["s1"] - images["s0"]).mean() > 1.0  # the guidance acts on the GPU
    assert images["t"].shape == (GPU_SIDE, GPU_SIDE, 3)
