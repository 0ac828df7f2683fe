"""``torch.compile`` of the restoration UNet (fdi.compile, GuidanceSlot) on the tiny SD 2.1-shaped models.

The fast tests trace with dynamo and a counting backend (the graph runs eagerly): graphs, graph
breaks and recompiles are counted over two images, the guided and unguided steps and a new
strength. The slow test compiles with inductor on the CPU and compares pixels with the eager run.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from tiny_sd import TINY_TEXT_WIDTH, randomise_adapter, tiny_adapter_config, tiny_unet

from fdi.adapter import FDIAdapter
from fdi.compile import CompiledCall, compile_unavailable_reason, compile_unet
from fdi.diffusers_backend import DiffusersGuidance
from fdi.errors import FDIError
from fdi.guidance_slot import SLOT_ATTRIBUTE, GuidanceSlot
from fdi.instruction import FDI
from fdi.pipeline import AdapterUse, FDIRestorationPipeline

RUN = dict(steps=2, inversion_steps=2, guidance_end=0.5)  # step 0 guided, step 1 not


def _use(seed: int = 0) -> AdapterUse:
    torch.manual_seed(seed)
    adapter = FDIAdapter(tiny_adapter_config(), base_family="custom-base", encoder="blip2-tiny:abcd").eval()
    fdi = FDI(torch.randn(8, 32, generator=torch.Generator().manual_seed(seed)), encoder="blip2-tiny:abcd", n_pairs=2)
    return AdapterUse(randomise_adapter(adapter, seed=seed + 1), fdi, 1.0)


def _image(seed: int) -> torch.Tensor:
    return torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def _guidance():
    use = _use()
    return use.adapter(
        torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5)), use.resolved_fdi()
    ).detach()


def _run(unet, x, ctx, t: int = 500):
    with torch.no_grad():
        return unet(x, torch.full((x.shape[0],), t), encoder_hidden_states=ctx).sample


@pytest.fixture()
def inputs():
    g = torch.Generator().manual_seed(3)
    return torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, TINY_TEXT_WIDTH, generator=g)


# ---- the slot, eagerly ----------------------------------------------------------------------------


def test_slot_is_an_exact_noop_when_unbound_or_off_and_equals_the_hooks_when_on(inputs):
    x, ctx = inputs
    guidance = _guidance()
    unet = tiny_unet()
    plain = _run(unet, x, ctx)
    with DiffusersGuidance(unet, [(guidance, 0.8)], strength=0.9):
        hooked = _run(unet, x, ctx)
    assert (hooked - plain).abs().max() > 1e-2  # the guidance changes the output

    slot = GuidanceSlot(unet)
    assert getattr(unet, SLOT_ATTRIBUTE) is slot
    assert torch.equal(_run(unet, x, ctx), plain)  # installed, nothing bound: gate 0, exact
    with DiffusersGuidance(unet, [(guidance, 0.8)], strength=0.9, active=False) as g:
        assert not g._handles  # drives the slot, no hooks of its own
        assert torch.equal(_run(unet, x, ctx), plain)
        g.active = True
        torch.testing.assert_close(_run(unet, x, ctx), hooked, rtol=0, atol=1e-6)
        g.strength = 0.0  # a new strength refills the buffers
        assert torch.equal(_run(unet, x, ctx), plain)
        g.strength = 0.9
        torch.testing.assert_close(
            _run(unet, x[:1], ctx[:1]), hooked[:1], rtol=0, atol=1e-5
        )  # another shape: its buffers
        with pytest.raises(FDIError, match="two FDI guidances"):
            DiffusersGuidance(unet, [(guidance, 1.0)]).attach()
    assert torch.equal(_run(unet, x, ctx), plain)  # unbound on exit: gate 0 and zero buffers
    slot.remove()
    assert getattr(unet, SLOT_ATTRIBUTE, None) is None and not unet._forward_pre_hooks
    assert torch.equal(_run(unet, x, ctx), plain)


def test_slot_keeps_buffers_for_a_few_recent_shapes_frees_them_on_unbind_and_results_are_unchanged(inputs):
    """A folder of mixed sizes used to leave one buffer set per latent shape on the UNet for good, also after the
    guidance was removed. The slot keeps the most recent SLOT_SHAPES (least recently used out) and none after
    unbind; a shape that comes back after its buffers were dropped is refilled: the outputs equal a fresh slot's
    bit for bit, and the plain hooks' to float rounding."""
    from fdi.guidance_slot import SLOT_SHAPES

    x, ctx = inputs
    g = torch.Generator().manual_seed(11)
    x, ctx = x[:1].repeat(6, 1, 1, 1) + torch.randn(6, 4, 8, 8, generator=g), ctx[:1].repeat(6, 1, 1)
    guidance, unet = _guidance(), tiny_unet()
    with DiffusersGuidance(unet, [(guidance, 0.8)], strength=0.9):  # the plain hooks, no slot
        hooked = {b: _run(unet, x[:b], ctx[:b]) for b in range(1, 7)}
    fresh = {}
    for b in range(1, 7):
        s = GuidanceSlot(unet)
        with DiffusersGuidance(unet, [(guidance, 0.8)], strength=0.9):
            fresh[b] = _run(unet, x[:b], ctx[:b])
        s.remove()

    slot = GuidanceSlot(unet)
    assert SLOT_SHAPES == 4 and slot.buffered_shapes == []
    for b in range(1, 7):  # no guidance bound: gate 0, zero buffers, still one set per shape
        _run(unet, x[:b], ctx[:b])
        assert len(slot.buffered_shapes) == min(b, SLOT_SHAPES)
    order = [1, 2, 3, 4, 5, 6, 1, 2, 6, 5, 1]  # 1 and 2 come back after being dropped
    with DiffusersGuidance(unet, [(guidance, 0.8)], strength=0.9):
        for b in order:
            got = _run(unet, x[:b], ctx[:b])
            assert torch.equal(got, fresh[b]), b
            torch.testing.assert_close(got, hooked[b], rtol=0, atol=1e-5)
            assert len(slot.buffered_shapes) <= SLOT_SHAPES
        assert [k[0][0] for k in slot.buffered_shapes] == [2, 6, 5, 1]  # least recently used first
    assert slot.buffered_shapes == []  # freed on unbind
    assert torch.equal(_run(unet, x[:2], ctx[:2]), _run(tiny_unet(), x[:2], ctx[:2]))  # unguided again
    assert len(slot.buffered_shapes) == 1
    slot.remove()
    assert slot.buffered_shapes == []


# ---- compiled pipeline: graphs, breaks, recompiles ------------------------------------------------


class CountingBackend:
    """A ``torch.compile`` backend that counts the graphs it is given and runs them eagerly."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


def test_compiled_restore_traces_one_graph_and_never_recompiles(tiny_sd_folder):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    use = _use()
    eager = FDIRestorationPipeline.from_pretrained(tiny_sd_folder)
    want = [eager.restore(_image(s), [use], **RUN) for s in (0, 1)]
    unguided = eager.restore(_image(0), [use], strength=0.0, **RUN)
    effect = (want[0] - unguided).abs().max()
    assert effect > 0.02  # the guidance changes the pixels: the comparisons below mean something

    pipe = FDIRestorationPipeline.from_pretrained(tiny_sd_folder)
    backend = CountingBackend()
    assert pipe.compile(backend=backend) is True
    got = [pipe.restore(_image(0), [use], **RUN)]
    assert backend.graphs == 1  # UNet forward and guidance hooks in one graph, no graph break
    got.append(pipe.restore(_image(1), [use], **RUN))  # a new image: new buffer values, same graph
    got_unguided = pipe.restore(_image(0), [use], strength=0.0, **RUN)  # a new strength
    assert backend.graphs == 1, "a new image, the guidance window's end or a new strength recompiled the UNet"
    assert not counters["graph_break"], dict(counters["graph_break"])
    for g, w in zip(got, want):
        assert (g - w).abs().max() <= 1e-3 * effect  # channels_last changes the rounding only
    assert (got_unguided - unguided).abs().max() <= 1e-3 * effect
    pipe.restore(torch.rand(2, 3, 64, 64), [use], **RUN)  # another batch size: one more graph, once
    assert backend.graphs == 2
    torch._dynamo.reset()


def test_cli_restore_compile_calls_pipe_compile_once_before_restoring(tmp_path, tiny_sd_folder, monkeypatch):
    """The flag's wiring (what compiling does is tested above, without the CLI's cost of a second trace)."""
    import numpy as np
    from PIL import Image

    from fdi.cli import main

    use = _use()
    adapter = use.adapter.save(tmp_path / "a.safetensors", fdi=use.fdi)
    Image.fromarray((np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)).save(tmp_path / "in.png")
    args = [
        "restore",
        "--sd",
        str(tiny_sd_folder),
        "--adapter",
        str(adapter),
        "--image",
        str(tmp_path / "in.png"),
        "--steps",
        "1",
        "--inversion-steps",
        "1",
        "--quiet",
        "--device",
        "cpu",
        "-o",
        str(tmp_path / "out"),
    ]
    calls = []
    monkeypatch.setattr(
        FDIRestorationPipeline, "compile", lambda self, *a, **k: calls.append(("compile", a, k)) or True
    )
    original_restore = FDIRestorationPipeline.restore
    monkeypatch.setattr(
        FDIRestorationPipeline,
        "restore",
        lambda self, *a, **k: calls.append("restore") or original_restore(self, *a, **k),
    )
    assert main(args) == 0 and calls == ["restore"]
    calls.clear()
    assert main(args + ["--compile"]) == 0 and calls == [("compile", (), {}), "restore"]


# ---- fallback -------------------------------------------------------------------------------------


def test_unavailable_compile_warns_once_and_runs_eagerly(monkeypatch, inputs):
    import fdi.compile as fc

    x, ctx = inputs
    unet = tiny_unet()
    plain = _run(unet, x, ctx)
    monkeypatch.setattr(fc, "compile_unavailable_reason", lambda device, backend="inductor": "no C++ compiler found")
    with pytest.warns(
        RuntimeWarning, match=r"unavailable for the UNet \(no C\+\+ compiler found\); running it eagerly"
    ):
        call = compile_unet(unet, torch.device("cpu"))
    assert not call.is_compiled
    torch.testing.assert_close(
        call(x, torch.full((2,), 500), encoder_hidden_states=ctx).sample, plain, rtol=0, atol=1e-5
    )


def test_a_failing_compiled_call_falls_back_with_a_one_line_warning():
    def broken(x):
        raise RuntimeError("Cannot find a working triton installation.\nmore details")

    call = CompiledCall(lambda x: x + 1, broken, "UNet")
    with pytest.warns(RuntimeWarning) as record:
        assert call(1) == 2
    assert len(record) == 1 and "\n" not in str(record[0].message)
    assert "torch.compile of the UNet failed (RuntimeError: Cannot find a working triton installation.)" in str(
        record[0].message
    )
    assert not call.is_compiled
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert call(2) == 3  # no second warning


def test_unavailable_reasons(monkeypatch):
    import fdi.compile as fc

    assert compile_unavailable_reason(torch.device("cpu"), backend="eager") is None
    monkeypatch.setattr(fc.shutil, "which", lambda name: None)
    assert "no C++ compiler" in compile_unavailable_reason(torch.device("cpu"))
    monkeypatch.setattr(fc.importlib.util, "find_spec", lambda name: None)
    assert "Triton" in compile_unavailable_reason(torch.device("cuda"))


# ---- inductor on the CPU --------------------------------------------------------------------------


@pytest.mark.slow
def test_inductor_compiled_restore_equals_eager_within_2_of_255(tiny_sd_folder):
    if compile_unavailable_reason(torch.device("cpu")) is not None:
        pytest.skip(compile_unavailable_reason(torch.device("cpu")))
    torch._dynamo.reset()
    use = _use()
    eager = FDIRestorationPipeline.from_pretrained(tiny_sd_folder)
    want = [eager.restore(_image(s), [use], steps=3, inversion_steps=3) for s in (0, 1)]
    effect = (want[0] - eager.restore(_image(0), [use], strength=0.0, steps=3, inversion_steps=3)).abs().max()
    assert effect > 4 / 255
    pipe = FDIRestorationPipeline.from_pretrained(tiny_sd_folder)
    assert pipe.compile(vae=True) is True
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback to eager
        got = [pipe.restore(_image(s), [use], steps=3, inversion_steps=3) for s in (0, 1)]
    for g, w in zip(got, want):
        assert (g - w).abs().max() <= 2 / 255
    torch._dynamo.reset()
