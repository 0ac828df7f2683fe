"""Restoration guides each adapter in its own window: the rule (fdi.restoration.guidance_windows), the hooks'
selection of adapters per step (DiffusersGuidance.selected) and the pipeline's composite and progressive modes, on
the tiny random SD-shaped model."""

from __future__ import annotations

import pytest
import torch
from tiny_sd import make_adapter, tiny_fdi

from fdi.diffusers_backend import DiffusersGuidance
from fdi.errors import FDIError
from fdi.pipeline import AdapterUse, GuidanceWindowNote
from fdi.restoration import CLI_SETTING_NAMES, check_settings, guidance_windows
from fdi.sampling import ddim_step, pad_to_multiple

LATE = (0.667, 1.0)
STEPS = 6  # (0.667, 1) of 6 steps: step 5; (0, 0.333): steps 0, 1; (0.333, 0.667): steps 2, 3, 4


def adapter(seed: int = 0, window=None):
    a = make_adapter(seed)
    a.guidance_window = window
    return a


def image(seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


# ---- the rule ------------------------------------------------------------------------------------


def test_each_adapter_guides_its_recorded_window_and_old_files_the_papers():
    old, late, mid = adapter(0), adapter(1, LATE), adapter(2, (0.25, 0.75))
    assert guidance_windows([old, late, mid]) == ([(0.0, 0.333), LATE, (0.25, 0.75)], [])
    # a given end replaces every adapter's end (old files: today's --guidance-end), no note inside the window
    assert guidance_windows([old, late], end=0.9) == ([(0.0, 0.9), (0.667, 0.9)], [])
    assert guidance_windows([late], start=0.8) == ([(0.8, 1.0)], [])
    # ComfyUI's "from adapter": a file that records no window guides the node's own start/end widgets
    assert guidance_windows([old, late], unrecorded=(0.0, 0.5)) == ([(0.0, 0.5), LATE], [])


def test_a_window_that_leaves_the_trained_one_gets_a_note_naming_adapter_and_windows():
    late, old = adapter(1, LATE), adapter(0)
    windows, notes = guidance_windows([late, old], 0.0, 0.5, names=CLI_SETTING_NAMES)
    assert windows == [(0.0, 0.5), (0.0, 0.5)]
    assert notes == [
        "adapter a1 was trained to guide steps 0.667..1 of sampling; --guidance-start 0 --guidance-end 0.5 makes it "
        "guide 0..0.5, outside the window it learned"
    ]
    assert guidance_windows([late], 0.7, 0.9)[1] == []  # inside: no note
    assert guidance_windows([adapter(2, (0.0, 0.333))], end=0.0)[1] == []  # nothing guided: no note


def test_windows_that_end_before_they_start_are_refused_with_the_flags():
    with pytest.raises(FDIError, match=r"a1 would guide steps 0.667..0.5 .*--guidance-end 0.5 with its own 0.667..1"):
        guidance_windows([adapter(1, LATE)], end=0.5, names=CLI_SETTING_NAMES)
    with pytest.raises(FDIError, match="--guidance-end 0.2 is before --guidance-start 0.5"):
        check_settings(2, 2, 0.5, 0.2, names=CLI_SETTING_NAMES)
    with pytest.raises(FDIError, match="--guidance-start 1.5 is outside 0..1"):
        check_settings(2, 2, 1.5, None, names=CLI_SETTING_NAMES)
    with pytest.raises(FDIError, match="guidance end nan is outside 0..1"):
        check_settings(2, 2, None, float("nan"))
    check_settings(2, 2, None, None)
    check_settings(2, 2, 0.0, 0.0)  # an empty window: unguided, as guidance_end 0 always was


# ---- the hooks -----------------------------------------------------------------------------------


def test_a_selection_of_guidances_equals_hooks_of_those_alone_whatever_was_cached_before(tiny_pipeline):
    """DiffusersGuidance caches what its hooks add: the cache is kept per selection, so switching the selection
    back and forth gives, bit for bit, what fresh hooks of the selected guidances alone give."""
    p = tiny_pipeline
    x = pad_to_multiple(image())
    ga = p.compute_guidance(AdapterUse(adapter(0), tiny_fdi(0)), x)
    gb = p.compute_guidance(AdapterUse(adapter(5), tiny_fdi(1)), x)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    cond = p.encode_prompt("")

    def unet() -> torch.Tensor:
        with torch.no_grad():
            return p._unet(z, 500, cond)

    def alone(guidances) -> torch.Tensor:
        with DiffusersGuidance(p.unet, guidances, strength=0.8):
            return unet()

    plain = unet()
    want = {(0,): alone([(ga, 0.7)]), (1,): alone([(gb, 1.3)]), (0, 1): alone([(ga, 0.7), (gb, 1.3)])}
    assert not torch.equal(want[(0,)], want[(1,)]) and not torch.equal(want[(0,)], plain)
    with DiffusersGuidance(p.unet, [(ga, 0.7), (gb, 1.3)], strength=0.8) as hooks:
        for chosen in [(0,), (1,), (0, 1), (1,), (0,), (0, 1)]:
            hooks.selected = chosen
            assert torch.equal(unet(), want[chosen]), chosen
        hooks.selected = []
        assert hooks.selected == () and torch.equal(unet(), plain)
        hooks.selected = [1, 0]
        assert hooks.selected is None  # all of them


def test_the_compiled_slot_follows_the_selection():
    """On a UNet with a GuidanceSlot (what compile_unet installs), a selection refills the slot's buffers with the
    selected guidances: the outputs equal the hooks' (float32 rounding of the gate multiply)."""
    from tiny_sd import TINY_TEXT_WIDTH, tiny_unet

    from fdi.guidance_slot import GuidanceSlot

    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ga, gb = adapter(0)(x, tiny_fdi(0)), adapter(5)(x, tiny_fdi(1))
    g = torch.Generator().manual_seed(3)
    z, ctx = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, TINY_TEXT_WIDTH, generator=g)
    hooked_unet, slotted_unet = tiny_unet(), tiny_unet()
    GuidanceSlot(slotted_unet)

    def run(unet) -> torch.Tensor:
        with torch.no_grad():
            return unet(z, torch.tensor([500]), encoder_hidden_states=ctx).sample

    guidances = [(ga, 0.7), (gb, 1.3)]
    with DiffusersGuidance(hooked_unet, guidances) as hooks, DiffusersGuidance(slotted_unet, guidances) as slot:
        assert not slot._handles
        for chosen in [(0,), (1,), (0, 1), (0,)]:
            hooks.selected = slot.selected = chosen
            torch.testing.assert_close(run(slotted_unet), run(hooked_unet), rtol=0, atol=1e-6)
        assert not torch.allclose(run(slotted_unet), run(tiny_unet()), atol=1e-3)  # the guidance is on


# ---- the pipeline --------------------------------------------------------------------------------


def by_hand(p, x: torch.Tensor, per_step, steps: int = STEPS, inversion_steps: int = 3) -> torch.Tensor:
    """Reference restoration: invert, then DDIM with, at step k, fresh hooks of ``per_step(k)`` (a list of
    ``(guidance, weight)``, empty = unguided), decode."""
    cond = p.encode_prompt("")
    padded = pad_to_multiple(x)
    z = p.invert(p.encode_images(padded), cond, steps, inversion_steps)
    ts = p.sampling_timesteps(steps).tolist()
    for k, t in enumerate(ts):
        guidances = per_step(k)
        with torch.no_grad():
            if guidances:
                with DiffusersGuidance(p.unet, guidances):
                    out = p._unet(z, t, cond)
            else:
                out = p._unet(z, t, cond)
        z = ddim_step(z, out, p._alpha(t), p._alpha(ts[k + 1] if k + 1 < len(ts) else None), p.prediction_type)
    return p.decode_latents(z)[..., : x.shape[-2], : x.shape[-1]].cpu()


def test_composite_of_adapters_with_disjoint_windows_guides_each_alone_in_its_window(tiny_pipeline):
    p, x = tiny_pipeline, image()
    early, late = adapter(0, (0.0, 0.333)), adapter(5, LATE)
    uses = [AdapterUse(early, tiny_fdi(0), 0.7), AdapterUse(late, tiny_fdi(1), 1.2)]
    got = p.restore(x, uses, steps=STEPS, inversion_steps=3)
    padded = pad_to_multiple(x)
    ge, gl = (p.compute_guidance(u, padded) for u in uses)
    want = by_hand(p, x, lambda k: [(ge, 0.7)] if k < 2 else ([(gl, 1.2)] if k == 5 else []))
    assert torch.equal(got, want)
    # overlapping windows: both where both hold the step
    mid = adapter(5, (0.0, 0.667))
    both = p.restore(x, [uses[0], AdapterUse(mid, tiny_fdi(1), 1.2)], steps=STEPS, inversion_steps=3)
    want = by_hand(p, x, lambda k: [(ge, 0.7), (gl, 1.2)] if k < 2 else ([(gl, 1.2)] if k < 5 else []))
    assert torch.equal(both, want) and not torch.equal(both, got)


def test_an_old_file_restores_as_before_and_a_recorded_window_moves_the_guided_steps(tiny_pipeline):
    """An adapter without a recorded window guides steps 0, 1 of 6 (the paper's first third), exactly as the explicit
    window (0, 0.333) does and as a file recording (0, 0.333); a file recording (0.667, 1) guides step 5 only."""
    p, x = tiny_pipeline, image()
    old = AdapterUse(adapter(0), tiny_fdi(0))
    default = p.restore(x, [old], steps=STEPS, inversion_steps=3)
    g = p.compute_guidance(old, pad_to_multiple(x))
    assert torch.equal(default, by_hand(p, x, lambda k: [(g, 1.0)] if k < 2 else []))
    explicit = p.restore(x, [old], steps=STEPS, inversion_steps=3, guidance_start=0.0, guidance_end=0.333)
    recorded = p.restore(x, [AdapterUse(adapter(0, (0.0, 0.333)), tiny_fdi(0))], steps=STEPS, inversion_steps=3)
    assert torch.equal(default, explicit) and torch.equal(default, recorded)
    late = p.restore(x, [AdapterUse(adapter(0, LATE), tiny_fdi(0))], steps=STEPS, inversion_steps=3)
    assert torch.equal(late, by_hand(p, x, lambda k: [(g, 1.0)] if k == 5 else []))
    # the user's window applies to every adapter, with a note for one made to leave its trained window
    with pytest.warns(GuidanceWindowNote, match=r"a0 was trained to guide steps 0.667..1 .* guide 0..0.333"):
        moved = p.restore(x, [AdapterUse(adapter(0, LATE), tiny_fdi(0))], steps=STEPS, inversion_steps=3, **_FIRST)
    assert torch.equal(moved, default)


_FIRST = dict(guidance_start=0.0, guidance_end=0.333)


def test_progressive_stages_guide_each_in_its_adapters_window(tiny_pipeline):
    p, x = tiny_pipeline, image()
    late, early = AdapterUse(adapter(0, LATE), tiny_fdi(0)), AdapterUse(adapter(5), tiny_fdi(1), 0.8)
    chained = p.restore(x, [late, early], steps=STEPS, inversion_steps=3, mode="progressive")
    first = p.restore(x, [late], steps=STEPS, inversion_steps=3)
    assert torch.equal(chained, p.restore(first, [early], steps=STEPS, inversion_steps=3))
    gl = p.compute_guidance(late, pad_to_multiple(x))
    assert torch.equal(first, by_hand(p, x, lambda k: [(gl, 1.0)] if k == 5 else []))
    ge = p.compute_guidance(early, pad_to_multiple(first))
    assert torch.equal(chained, by_hand(p, first, lambda k: [(ge, 0.8)] if k < 2 else []))


def test_tiles_follow_the_windows_too(tiny_pipeline):
    """Tiled sampling swaps each tile's crop of the guidance in and out: the selection of adapters survives it (a tile
    as large as the image gives the untiled result)."""
    p, x = tiny_pipeline, torch.rand(1, 3, 100, 120, generator=torch.Generator().manual_seed(2))
    uses = [AdapterUse(adapter(0, (0.0, 0.333)), tiny_fdi(0), 0.7), AdapterUse(adapter(5, LATE), tiny_fdi(1))]
    plain = p.restore(x, uses, steps=STEPS, inversion_steps=3)
    assert torch.equal(plain, p.restore(x, uses, steps=STEPS, inversion_steps=3, tile_size=128, tile_overlap=32))
