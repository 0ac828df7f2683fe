"""The FDI-patched MODEL under ComfyUI's stock ``TorchCompileModel`` node (needs ``COMFYUI_DIR``).

A fresh interpreter imports ComfyUI (``--cpu``, PyTorch attention: ComfyUI's CPU default, sub-quadratic
attention, reads free memory with psutil inside the forward and graph-breaks with or without FDI),
builds a small SD 2.x-shaped ComfyUI UNet in-process (``supported_models.SD20`` with widths
32/32/64/64, random weights), and samples with ``comfy.sample.sample`` (DDIM, 4 steps, CFG 1) with the
plain MODEL and with the MODEL patched by the pack's ``FDIApplyGuidance`` (guided for the first half of
the steps, so the runs cross the window's end; 16 × 16 latents: on 8 × 8 the AdaIN statistics of
the deepest decoder point cover 2 × 2 pixels of near-zero variance and amplify inductor's rounding).
``TorchCompileModel.execute`` compiles each with a backend that counts the graphs dynamo hands it
(and runs them eagerly); dynamo's counters give the graph breaks. The patched MODEL must have no
graph break and no graph or recompile more than the plain one, give the uncompiled latents, and stay
right when the step count or the strength changes on an already compiled model (ComfyUI's node drops
dynamo's guards on ``transformer_options``). The slow test does the same with the node's ``inductor``
backend.
"""

from __future__ import annotations

import json
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

SCRIPT = r"""
import comfy.model_base, comfy.model_management, comfy.model_patcher, comfy.sample, comfy.supported_models
from comfy_extras.nodes_torch_compile import TorchCompileModel
from torch._dynamo.utils import counters

nodes = importlib.import_module(name + ".nodes.guidance_nodes")
common = importlib.import_module(name + ".nodes.common")
adapter_mod = importlib.import_module(name + ".fdi.adapter")
from tiny_sd import TINY_CHANNELS, randomise_adapter

BACKEND = {backend!r}
unet_config = dict(use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
                   adm_in_channels=None, dtype=torch.float32, in_channels=4, model_channels=32,
                   num_res_blocks=[2, 2, 2, 2], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], channel_mult=[1, 1, 2, 2],
                   transformer_depth_middle=1, use_linear_in_transformer=True, context_dim=32,
                   transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
                   use_temporal_attention=False, use_temporal_resblock=False)
model_config = comfy.supported_models.SD20(unet_config)  # SD 2.x's layout and extra config, narrow widths
model_config.unet_config["num_head_channels"] = 8
base = comfy.model_base.BaseModel(model_config, model_type=comfy.model_base.ModelType.EPS, device=torch.device("cpu"))
g = torch.Generator().manual_seed(0)
with torch.no_grad():  # ComfyUI's layers skip weight init: random weights, unit norms
    for n, p in base.diffusion_model.named_parameters():
        norm_weight = (n.endswith(".weight") and ".norm" in n or n.endswith("in_layers.0.weight")
                       or n.endswith("out_layers.0.weight"))
        p.copy_(torch.randn(p.shape, generator=g) * 0.02 + (1.0 if norm_weight and p.ndim == 1 else 0.0))
cpu = torch.device("cpu")
model = comfy.model_patcher.ModelPatcher(base.eval(), load_device=cpu, offload_device=cpu)

torch.manual_seed(0)
config = adapter_mod.FDIAdapterConfig(channels=TINY_CHANNELS, token_width=32, num_tokens=8, res_blocks=1, heads=4,
                                      se_reduction=4)
adapter = randomise_adapter(adapter_mod.FDIAdapter(config, base_family="custom-base").eval(), seed=1)
with torch.no_grad():
    guidance = adapter(torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(1)),
                       torch.randn(8, 32, generator=torch.Generator().manual_seed(2)))
handle = common.GuidanceHandle(guidance, tuple(adapter.config.channels), adapter.base_family, "test")
cond = [[torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(3)), {{}}]]
latent = torch.zeros(1, 4, 16, 16)


def sample(m, steps=4):
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(4))
    return comfy.sample.sample(m, noise, steps, 1.0, "ddim", "ddim_uniform", cond, [], latent, denoise=1.0,
                               disable_pbar=True, seed=0)


class Counter:
    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


def compiled(m, backend):
    out = TorchCompileModel.execute(m, backend)
    return out.result[0] if hasattr(out, "result") else out[0]


def maxdiff(a, b):
    return float((a - b).abs().max())


patched = nodes.apply_guidance(model, handle, 0.9, 0.0, 0.5)
weaker = nodes.apply_guidance(model, handle, 0.3, 0.0, 0.5)
ref = {{"plain": sample(model), "patched": sample(patched), "patched6": sample(patched, 6), "weaker": sample(weaker)}}
result = {{"effect": maxdiff(ref["patched"], ref["plain"]), "strength_effect": maxdiff(ref["patched"], ref["weaker"]),
          "steps_effect": maxdiff(sample(model, 6), ref["patched6"])}}
for label, m in (("plain", model), ("patched", patched)):
    torch._dynamo.reset()
    counters.clear()
    backend = Counter() if BACKEND == "count" else BACKEND
    cm = compiled(m, backend)
    first = sample(cm)
    graphs_first = backend.graphs if BACKEND == "count" else counters["stats"]["unique_graphs"]
    second = sample(cm)
    r = {{"diff": max(maxdiff(first, ref[label]), maxdiff(second, ref[label])),
          "diff_first": maxdiff(first, ref[label])}}
    if label == "patched":
        r["diff_6_steps"] = maxdiff(sample(cm, 6), ref["patched6"])  # the same compiled MODEL, another schedule
        # a new Apply, compiled again
        r["diff_new_strength"] = maxdiff(sample(compiled(weaker, backend)), ref["weaker"])
    r["graphs_first"] = graphs_first
    r["graphs"] = backend.graphs if BACKEND == "count" else counters["stats"]["unique_graphs"]
    r["graph_breaks"] = sum(counters["graph_break"].values())
    r["break_reasons"] = [k.splitlines()[0] for k in counters["graph_break"]][:3]
    result[label] = r
print(json.dumps(result))
"""


def run_script(tmp_path: Path, backend: str, timeout: int) -> dict:
    flags = {"use_pytorch_cross_attention": True}
    boot = dict(pack_name="comfyui_fdi_under_test", tests_path=True, flags=flags)
    code = harness.script(SCRIPT.format(backend=backend), COMFYUI_DIR, tmp_path, **boot)
    result = harness.run_json(code, tmp_path, timeout, stderr_chars=4000)
    print(json.dumps(result, indent=1))
    return result


def check(result: dict, tol: float) -> None:
    plain, patched = result["plain"], result["patched"]
    # the guidance, its strength and the step count change the latents: the equalities below mean something
    assert result["effect"] > 1e-3 and result["strength_effect"] > 1e-3 and result["steps_effect"] > 1e-3
    assert plain["graph_breaks"] == 0, plain["break_reasons"]
    assert patched["graph_breaks"] == 0, patched["break_reasons"]
    assert patched["graphs_first"] <= plain["graphs_first"]  # one graph for the whole run, across the window's end
    assert patched["graphs"] - patched["graphs_first"] <= plain["graphs"] - plain["graphs_first"]  # no recompile
    assert plain["diff"] <= tol * result["effect"]
    assert patched["diff"] <= tol * result["effect"]
    assert patched["diff_6_steps"] <= tol * result["steps_effect"]
    assert patched["diff_new_strength"] <= tol * result["strength_effect"]


def test_patched_model_under_torch_compile_model_counts_and_pixels(tmp_path):
    check(run_script(tmp_path, "count", timeout=900), tol=1e-3)


@pytest.mark.slow
def test_patched_model_under_torch_compile_model_with_inductor(tmp_path):
    check(run_script(tmp_path, "inductor", timeout=3000), tol=1e-3)
