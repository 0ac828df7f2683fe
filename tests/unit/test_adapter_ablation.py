"""The paper's module ablation as adapter options: ``noise_decoupling=False`` (``F̂_i = F·P_i``) and
``visual_modulator=False`` (no gates, no modulations: the UNet decoder is left alone), through the config, the
file, both guidance backends, composites, training and ``adapter-info`` (docs/design.md, "Adapter ablations")."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from tiny_sd import TINY_CHANNELS, TINY_TEXT_WIDTH, make_adapter, tiny_adapter_config, tiny_fdi, tiny_unet

from fdi.adapter import FDIAdapter, FDIAdapterConfig, FDIGuidance, count_parameters
from fdi.comfy_backend import FDIInputPatch, FDIOutputPatch, GuidanceEntry
from fdi.diffusers_backend import guide_unet
from fdi.errors import FDIError
from fdi.guidance import apply_modulation, apply_residual, modulation_coefficients
from fdi.guidance_slot import GuidanceSlot

NO_ND = {"noise_decoupling": False}
NO_VM = {"visual_modulator": False}
#: the JSON main wrote for the tiny config before the switches existed (key for key, byte for byte)
OLD_TINY_JSON = (
    '{"bottleneck": 2, "channels": [32, 32, 64, 64], "heads": 4, "num_tokens": 8, "res_blocks": 1, '
    '"se_reduction": 4, "token_width": 32, "unshuffle": 8}'
)
ATTENTION = ("norm_tokens", "norm_features", "to_q", "to_k", "to_v", "to_out")


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _guidance(adapter: FDIAdapter, seed: int = 0, batch: int = 2) -> FDIGuidance:
    g = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():
        return adapter(torch.rand(batch, 3, 64, 64, generator=g), torch.randn(8, 32, generator=g))


# ---- config and parameters ----------------------------------------------------------------------------------------


def test_switches_default_on_are_validated_and_left_out_of_a_default_json():
    cfg = tiny_adapter_config()
    assert cfg.noise_decoupling is True and cfg.visual_modulator is True
    assert cfg.to_json() == OLD_TINY_JSON  # a default adapter file stays readable by older packs
    old = FDIAdapterConfig.from_json(OLD_TINY_JSON)
    assert old == cfg and old.noise_decoupling is True and old.visual_modulator is True
    for key in ("noise_decoupling", "visual_modulator"):
        ablated = FDIAdapterConfig(**{**cfg.as_dict(), key: False})
        assert json.loads(ablated.to_json())[key] is False
        assert FDIAdapterConfig.from_json(ablated.to_json()) == ablated
        explicit = json.dumps({**json.loads(OLD_TINY_JSON), key: True})
        assert FDIAdapterConfig.from_json(explicit) == cfg  # an explicit true is read too
        for bad in (0, 1, "false", None):
            with pytest.raises(FDIError, match=f"{key}={bad!r} is invalid; use true or false"):
                FDIAdapterConfig(**{**cfg.as_dict(), key: bad})
    # an ablated file read by a pack without the switch: refused as "newer", which is right (it would misread it)
    assert "noise_decoupling" in FDIAdapterConfig(**{**cfg.as_dict(), **NO_ND}).to_json()


def test_each_ablation_removes_exactly_its_parameters():
    full, no_nd, no_vm = make_adapter(0), make_adapter(0, **NO_ND), make_adapter(0, **NO_VM)
    names = {k: set(dict(a.named_parameters())) for k, a in (("full", full), ("nd", no_nd), ("vm", no_vm))}
    attention = {n for n in names["full"] if n.startswith("decouple_levels.") and n.split(".")[2] in ATTENTION}
    gates = {n for n in names["full"] if n.startswith("gates.")}
    assert len(attention) == 4 * 12 and gates == {"gates.0", "gates.1", "gates.2"}
    assert names["nd"] == names["full"] - attention
    assert {n for n in names["nd"] if n.startswith("decouple_levels.")} == {
        f"decouple_levels.{i}.proj.{p}" for i in range(4) for p in ("weight", "bias")
    }
    assert names["vm"] == names["full"] - gates and len(no_vm.gates) == 0
    c, d = TINY_CHANNELS, 32
    attn = sum(2 * d + 2 * ch + d * ch + ch + 3 * (ch * ch + ch) for ch in c)
    assert full.num_parameters() - no_nd.num_parameters() == attn == 38_272
    assert full.num_parameters() - no_vm.num_parameters() == 64 + 64 + 32
    for a in (full, no_nd, no_vm):
        assert sum(a.parameter_counts().values()) == a.num_parameters()
    assert no_vm.parameter_counts()["visual_modulator"] == 0 and no_vm.ablations() == ["visual_modulator"]
    assert no_nd.ablations() == ["noise_decoupling"] and full.ablations() == []
    assert "without noise decoupling" in no_nd.describe() and "without" not in full.describe()


def test_sd21_base_counts_against_the_paper():
    """Table 7 of the paper: 45.10 M (SD 2.1). Ours (docs/design.md, "Adapter ablations"): 47,297,244 with the
    default config, 33,200,220 without noise decoupling, 47,294,044 without the visual modulator."""
    base = FDIAdapterConfig.for_family("sd2.1-base", token_width=768, num_tokens=32)
    counts = {
        k: count_parameters(FDIAdapterConfig(**{**base.as_dict(), **over}))
        for k, over in (("full", {}), ("nd", NO_ND), ("vm", NO_VM))
    }
    print(counts)
    assert counts == {"full": 47_297_244, "nd": 33_200_220, "vm": 47_294_044}
    d, widths = 768, (320, 640, 1280, 1280)
    attention = sum(2 * d + 2 * c + d * c + c + 3 * (c * c + c) for c in widths)  # LNs, Wq, Wk, Wv, Wo with biases
    assert counts["full"] - counts["nd"] == attention == 14_097_024
    assert counts["full"] - counts["vm"] == 1280 + 1280 + 640  # gates of up_blocks[0..2]


def test_noise_decoupling_off_is_the_projection_exactly():
    a = make_adapter(0, **NO_ND)
    g = torch.Generator().manual_seed(7)
    x, tokens = torch.rand(2, 3, 64, 48, generator=g), torch.randn(2, 8, 32, generator=g)
    with torch.no_grad():
        feats = a.image_features(x)
        refined = a.decouple(tokens, feats)
        for level, m in enumerate(a.decouple_levels):
            assert torch.equal(refined[level], F.linear(tokens, m.proj.weight, m.proj.bias))
        # the image does not enter F̂ any more: another image gives the same tokens
        other = a.decouple(tokens, a.image_features(torch.rand(2, 3, 64, 48, generator=g)))
        assert all(torch.equal(p, q) for p, q in zip(refined, other))
        # and the full adapter's F̂ is that projection plus a non-zero attention term
        full = make_adapter(0)
        full_refined = full.decouple(tokens, full.image_features(x))
        proj = F.linear(tokens, full.decouple_levels[0].proj.weight, full.decouple_levels[0].proj.bias)
        assert float((full_refined[0] - proj).abs().max()) > 1e-3


def test_an_ablated_adapter_file_keeps_its_options_and_a_default_file_its_bytes(tmp_path):
    for over in (NO_ND, NO_VM, {**NO_ND, **NO_VM}):
        a = make_adapter(0, **over)
        b = FDIAdapter.from_file(a.save(tmp_path / "a.safetensors", fdi=tiny_fdi()))
        assert b.config == a.config and b.ablations() == a.ablations()
        assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
        ga, gb = _guidance(a), _guidance(b)
        assert all(torch.equal(p, q) for p, q in zip(ga.residuals, gb.residuals))
        assert len(gb.modulations) == (0 if "visual_modulator" in over else 3)
    full = make_adapter(0)
    assert full.file_metadata()["config"] == OLD_TINY_JSON  # the file's config as before the switches
    # a file whose config says "no modulator" but holds gates is another adapter: refused, not misread
    from safetensors.torch import save_file

    meta = full.file_metadata()
    meta["config"] = FDIAdapterConfig(**{**tiny_adapter_config().as_dict(), **NO_VM}).to_json()
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(tmp_path / "x.safetensors"), meta)
    with pytest.raises(FDIError, match=r"does not match its config \(0 weights missing.*3 unexpected"):
        FDIAdapter.from_file(tmp_path / "x.safetensors")


# ---- guidance without the visual modulator --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unet():
    return tiny_unet(0)


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(3)
    return torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 5, TINY_TEXT_WIDTH, generator=g)


def _output(unet, inputs, guidances=None, slot: bool = False) -> torch.Tensor:
    """The UNet's output, plain or guided (eager hooks, or through a :class:`GuidanceSlot` as a compiled UNet)."""
    x, ctx = inputs
    s = GuidanceSlot(unet) if slot else None
    try:
        with torch.no_grad():
            if guidances is None:
                return unet(x, torch.tensor([500, 500]), encoder_hidden_states=ctx).sample
            with guide_unet(unet, guidances):
                return unet(x, torch.tensor([500, 500]), encoder_hidden_states=ctx).sample
    finally:
        if s is not None:
            s.remove()


def test_without_the_modulator_the_decoder_is_untouched_and_residuals_act(unet, inputs):
    """Reference: the ablated adapter's residuals added by hand at the design's points and no decoder hook at all —
    equal bit for bit at the UNet's output, eagerly and through the compile slot (zero modulation coefficients)."""
    no_vm = make_adapter(0, **NO_VM)
    g = _guidance(no_vm)
    assert g.modulations == [] and g.modulation(0) is None
    assert float(g.residuals[0].abs().max()) > 1e-3  # the residuals are not zero
    plain = _output(unet, inputs)
    reference = _reference_residuals_only(unet, inputs, g)
    for slot in (False, True):
        guided = _output(unet, inputs, [(g, 1.0)], slot=slot)
        assert float((guided - plain).abs().max()) > 1e-4  # the residuals act
        assert torch.equal(guided, reference)
    full = _guidance(make_adapter(0))
    with_full_modulation = FDIGuidance(g.residuals, full.modulations, g.refined)
    assert float((_output(unet, inputs, [(with_full_modulation, 1.0)]) - reference).abs().max()) > 1e-4
    d = torch.randn(2, TINY_CHANNELS[3], 2, 2, generator=torch.Generator().manual_seed(9)) * 3 + 1
    with torch.no_grad():
        assert torch.equal(apply_modulation(d, 0, [(g, 1.0)]), d)
        assert apply_modulation(d, 0, [(g, 1.0)]) is d
        assert float((apply_modulation(d, 0, [(full, 1.0)]) - d).abs().max()) > 1e-3
    a, b, gs = modulation_coefficients(0, [(g, 1.0)], 1.0, 2, TINY_CHANNELS[3], torch.device("cpu"))
    assert not a.any() and not b.any() and not gs.any()


def _reference_residuals_only(unet, inputs, g: FDIGuidance) -> torch.Tensor:
    """The residuals added by hand at the design's points, no decoder hook at all."""
    handles = []
    for level, block in enumerate(unet.down_blocks):
        target = block.attentions[-1] if getattr(block, "has_cross_attention", False) else block.resnets[-1]

        def add(mod, args, out, level=level):
            if isinstance(out, tuple):
                return (apply_residual(out[0], level, [(g, 1.0)], 1.0),) + tuple(out[1:])
            return apply_residual(out, level, [(g, 1.0)], 1.0)

        handles.append(target.register_forward_hook(add))
    x, ctx = inputs
    try:
        with torch.no_grad():
            return unet(x, torch.tensor([500, 500]), encoder_hidden_states=ctx).sample
    finally:
        for h in handles:
            h.remove()


def test_the_diffusers_hooks_leave_the_decoder_points_alone(unet, inputs):
    """What enters up_blocks[1..3] with the ablated guidance is exactly what up_blocks[0..2] returned."""
    g = _guidance(make_adapter(0, **NO_VM))
    returned, entered, handles = [], [], []
    for i, block in enumerate(unet.up_blocks):
        if i < 3:
            handles.append(block.register_forward_hook(lambda m, a, o: returned.append(o.clone())))
        if i > 0:
            handles.append(
                block.register_forward_pre_hook(
                    lambda m, a, kw: entered.append(kw.get("hidden_states", a[0] if a else None).clone()),
                    with_kwargs=True,
                )
            )
    x, ctx = inputs
    try:
        with torch.no_grad(), guide_unet(unet, [(g, 1.0)]):
            unet(x, torch.tensor([500, 500]), encoder_hidden_states=ctx)
        full = _guidance(make_adapter(0))
        with torch.no_grad(), guide_unet(unet, [(full, 1.0)]):
            unet(x, torch.tensor([500, 500]), encoder_hidden_states=ctx)
    finally:
        for h in handles:
            h.remove()
    ablated_returned, ablated_entered = returned[:3], entered[:3]
    assert all(torch.equal(r, e) for r, e in zip(ablated_returned, ablated_entered))
    full_returned, full_entered = returned[3:], entered[3:]
    assert all(float((r - e).abs().max()) > 1e-4 for r, e in zip(full_returned, full_entered))


def test_comfy_patches_without_the_modulator():
    """ComfyUI's output patch leaves ``h`` as it is for an ablated entry, and a chain of an ablated and a full
    entry equals the full entry's modulation alone; the input patch still adds the ablated residuals."""
    no_vm, full = _guidance(make_adapter(0, **NO_VM), batch=1), _guidance(make_adapter(1), seed=1, batch=1)
    window = dict(sigma_start=10.0, sigma_end=2.0)
    e_vm, e_full = GuidanceEntry(no_vm, 0.8, **window), GuidanceEntry(full, 1.3, **window)
    assert e_vm.modulation(0) is None and e_full.modulation(0) is full.modulations[0]
    in_blocks, out_blocks = (2, 5, 8, 11), (3, 6, 9)
    opts = lambda block: {"block": block, "sigmas": torch.tensor([5.0])}  # noqa: E731
    g = torch.Generator().manual_seed(4)
    for entries, expect in (([e_vm], []), ([e_vm, e_full], [(full, 1.3)])):
        inp, out = FDIInputPatch(entries, in_blocks, out_blocks), FDIOutputPatch(entries, in_blocks, out_blocks)
        for point, block in enumerate(out_blocks):
            c = (TINY_CHANNELS[3], TINY_CHANNELS[2], TINY_CHANNELS[1])[point]
            h = torch.randn(1, c, 2 << point, 2 << point, generator=g) * 3 + 1
            got, _ = out(h, h, opts(("output", block)))
            if not expect:
                assert got is h
            else:
                alone = FDIOutputPatch([e_full], in_blocks, out_blocks)(h, h, opts(("output", block)))[0]
                assert torch.equal(got, alone)  # the ablated entry takes no part
                assert torch.equal(got, apply_modulation(h, point, [(full, 1.0)], 1.3))  # the formula (diffusers')
                assert not torch.equal(got, h)
        h = torch.randn(1, TINY_CHANNELS[0], 8, 8, generator=g)
        weighted = [(e.guidance, e.strength) for e in entries]
        assert torch.equal(inp(h, opts(("input", 2))), apply_residual(h, 0, weighted))
        assert float((inp(h, opts(("input", 2))) - h).abs().max()) > 1e-4


def test_a_composite_of_ablated_and_full_adapters_restores(tiny_pipeline):
    from fdi.pipeline import AdapterUse

    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    full, no_vm, no_nd = make_adapter(0), make_adapter(5, **NO_VM), make_adapter(6, **NO_ND)
    fast = dict(steps=2, inversion_steps=2, guidance_end=1.0)
    one = tiny_pipeline.restore(x, [AdapterUse(full, tiny_fdi(0), 0.7)], **fast)
    zero = tiny_pipeline.restore(x, [AdapterUse(full, tiny_fdi(0), 0.7), AdapterUse(no_vm, tiny_fdi(1), 0.0)], **fast)
    assert torch.equal(one, zero)
    mixed = tiny_pipeline.restore(
        x,
        [AdapterUse(no_vm, tiny_fdi(1), 1.0), AdapterUse(full, tiny_fdi(0), 0.7), AdapterUse(no_nd, tiny_fdi(2), 0.5)],
        **fast,
    )
    assert torch.isfinite(mixed).all() and float((mixed - one).abs().max()) > 1e-4
    wide = torch.rand(1, 3, 64, 256, generator=torch.Generator().manual_seed(1))
    uses = [AdapterUse(no_vm, tiny_fdi(1), 1.0), AdapterUse(full, tiny_fdi(0), 0.7)]
    tiled = tiny_pipeline.restore(wide, uses, tile_size=128, tile_overlap=64, **fast)  # fdi.tiles cuts the guidance
    assert tiled.shape == wide.shape and torch.isfinite(tiled).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_ablated_adapters_restore_in_half_precision_like_fp32(tiny_sd_folder, tiny_pipeline, dtype):
    """What a GPU runs: the UNet and VAE in bf16/fp16, the adapters' guidance cast to them. An ablated adapter's
    half-precision restoration is as far from its fp32 one as the pipeline's own rounding puts an unguided or a full
    adapter's restoration (measured here: bf16 ~0.007, fp16 ~0.0008 mean absolute), and that floor is well under
    what the guidance changes (~0.013-0.019)."""
    from fdi.pipeline import AdapterUse, FDIRestorationPipeline

    half = FDIRestorationPipeline.from_pretrained(tiny_sd_folder, dtype=dtype)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    fast = dict(steps=2, inversion_steps=2, guidance_end=1.0)

    def gap(adapter, weight=1.0):
        use = [AdapterUse(adapter, tiny_fdi(0), weight)]
        ref, got = tiny_pipeline.restore(x, use, **fast), half.restore(x, use, **fast)
        assert torch.isfinite(got).all()
        return ref, float((got.float() - ref).abs().mean())

    plain, floor_unguided = gap(make_adapter(7), 0.0)
    full, floor_full = gap(make_adapter(7))
    floor = max(floor_unguided, floor_full)
    for switches in (NO_ND, NO_VM, {**NO_ND, **NO_VM}):
        ref, err = gap(make_adapter(7, **switches))
        effect = float((ref - plain).abs().mean())
        assert effect > 1.5 * floor, switches  # the guidance acts beyond rounding: the bound below means something
        assert err <= 1.25 * floor, (switches, err, floor)


# ---- training and the command line ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from fdi.images import save_image
    from fdi.instruction import FDI

    root = tmp_path_factory.mktemp("ablation-train")
    g = torch.Generator().manual_seed(0)
    for d in ("deg", "clean"):
        (root / d).mkdir()
    for i in range(4):
        clean = torch.rand(3, 64, 64, generator=g)
        save_image(clean, root / "clean" / f"{i:02d}.png")
        save_image((0.6 * clean + 0.2).clamp(0, 1), root / "deg" / f"{i:02d}.png")
    FDI(torch.randn(8, 32, generator=g), encoder="tiny:0123456789abcdef", n_pairs=4).save(root / "toy.fdi.safetensors")
    return root


@pytest.mark.parametrize("switch", ["noise_decoupling", "visual_modulator"])
def test_train_with_each_ablation_from_the_command_line_options(switch, toy, tiny_sd_folder, tmp_path, capsys):
    """``--adapter-config '{"<switch>": false}'`` reaches the adapter file through fdi.commands.train, and two steps
    move every part the ablated adapter has (the first step moves the zero-initialised heads, the second the rest)."""
    from fdi.cli import build_parser, main
    from fdi.commands.train import config_from_args
    from fdi.training.run import train

    out = tmp_path / "a.safetensors"
    over = {**json.loads(tiny_adapter_config().to_json()), switch: False}
    argv = ["train", "--sd", str(tiny_sd_folder), "-o", str(out), "--degraded", str(toy / "deg")]
    argv += ["--clean", str(toy / "clean"), "--fdi", str(toy / "toy.fdi.safetensors"), "--resolution", "64"]
    argv += ["--batch-size", "2", "--max-steps", "2", "--lr", "1e-2", "--num-workers", "0", "--checkpoint-every", "0"]
    argv += ["--adapter-config", json.dumps(over), "--quiet"]
    cfg = config_from_args(build_parser().parse_args(argv))
    assert cfg.adapter_config[switch] is False
    init = FDIAdapter(FDIAdapterConfig(**over), base_family="custom-base")
    torch.manual_seed(cfg.seed)
    res = train(cfg)
    assert len(res.losses) == 2 and all(torch.isfinite(torch.tensor(res.losses)))
    a = FDIAdapter.from_file(out)
    assert getattr(a.config, switch) is False and a.ablations() == [switch]
    assert set(a.state_dict()) == set(init.state_dict())
    start = _initial_weights(cfg, a.config)
    moved = {k.split(".")[0] for k, v in a.state_dict().items() if not torch.allclose(v, start[k], atol=1e-6)}
    expected = {"conv_in", "levels", "decouple_levels", "guidance_heads", "gates"}
    assert moved == expected - ({"gates"} if switch == "visual_modulator" else set())
    assert main(["adapter-info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info[switch] is False and info["config"][switch] is False
    assert info["parameters"] == a.num_parameters() == sum(info["parameter_counts"].values())
    assert main(["adapter-info", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"{switch.replace('_', ' ')} off (ablated)" in text and f"{a.num_parameters():,}" in text


def _initial_weights(cfg, config: FDIAdapterConfig) -> dict:
    """The adapter train() starts from: weights a function of --seed only (fdi.training.run.TrainRun.make_adapter)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return FDIAdapter(config, base_family="custom-base").state_dict()


def test_adapter_info_of_a_full_adapter_shows_both_modules_on(tmp_path, capsys):
    from fdi.cli import main

    path = make_adapter(0).save(tmp_path / "a.safetensors")
    assert main(["adapter-info", str(path)]) == 0
    text = capsys.readouterr().out
    assert "noise decoupling on, visual modulator on" in text
    assert main(["adapter-info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["noise_decoupling"] is True and info["visual_modulator"] is True
    assert info["config"]["noise_decoupling"] is True and info["parameter_counts"]["visual_modulator"] == 160
