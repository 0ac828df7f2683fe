"""The small world's recipes (``bench/smallworld/world.py``): cache names, the shared VAE, the UNet's target."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench" / "smallworld"))

world = pytest.importorskip("world")


def test_worlds_that_differ_in_the_unet_share_one_vae_and_keep_their_cache_names():
    vae_keys = {cfg.vae_key() for cfg in world.WORLDS.values()}
    assert len(vae_keys) == 1  # every named world trains its UNet on the same cached VAE
    keys = {cfg.key() for cfg in world.WORLDS.values()}
    assert len(keys) == len(world.WORLDS)
    base = world.WORLDS["v-v4"]
    assert replace(base, vae_steps=800).vae_key() != base.vae_key()
    assert replace(base, unet_layers=1).key() != base.key()
    # fields added later, at their defaults, leave the names (and caches) of older worlds as docs/design.md cites them
    assert world.WORLDS["eps-v2"].key() == "e81394d298"
    assert world.WORLDS["eps-v3"].key() == "e3f93b62f1"
    assert base.key() == "f51ee7b019"


@pytest.mark.parametrize("name", ["eps-v2", "v-v5"])
def test_the_world_unet_learns_its_own_target(name, monkeypatch):
    """A few steps on two latents: the loss train_unet minimises is the MSE to ε (eps) or to v (v-*)."""
    cfg = replace(world.WORLDS[name], unet_steps=6, unet_batch=2, latent_channels=4)

    class FakeVAE:
        def register_to_config(self, **kw):
            self.config = kw

    g = torch.Generator().manual_seed(0)
    means = torch.randn(2, 4, 8, 8, generator=g) * 3
    monkeypatch.setattr(world, "_latents", lambda vae, images: (means, torch.ones_like(means)))
    seen = []
    real = world.F.mse_loss

    def spy(pred, target):
        seen.append(target.detach().clone())
        return real(pred, target)

    monkeypatch.setattr(world.F, "mse_loss", spy)
    context = torch.zeros(1, 77, cfg.text_width)
    world.train_unet(cfg, FakeVAE(), torch.zeros(1, 3, 64, 64), context)
    assert len(seen) == cfg.unet_steps
    # the same seeded batches as train_unet draws them
    g = torch.Generator().manual_seed(cfg.seed + 2)
    abar = world._scheduler(cfg.prediction_type).alphas_cumprod
    scale = float(1.0 / means.std())
    off_eps = 0.0
    for target in seen:
        idx = torch.randint(0, len(means), (cfg.unet_batch,), generator=g)
        t = torch.randint(0, 1000, (cfg.unet_batch,), generator=g)
        eps = torch.randn((cfg.unet_batch, 4, 8, 8), generator=g)
        a = abar[t].view(-1, 1, 1, 1)
        z0 = means[idx] * scale
        want = eps if cfg.prediction_type == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * z0
        torch.testing.assert_close(target, want)
        off_eps = max(off_eps, float((target - eps).abs().max()))
    # v differs from ε by the clean latent's share (large here), ε from itself by nothing
    assert (off_eps > 0.5) == (cfg.prediction_type == "v_prediction"), off_eps


def test_the_world_trains_the_same_bits_whatever_the_callers_thread_count():
    """A float sum's order depends on the thread count, so a world trained in 2 threads differs from one trained in
    1 (measured: a 40-step VAE 15.5787 vs 15.5835 dB); the world pins its own (BUILD_THREADS) and hands the caller's
    back."""
    cfg = replace(world.WORLDS["v-v5"], vae_steps=20, vae_batch=4, latent_channels=8)
    train = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    before = torch.get_num_threads()
    weights = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            weights.append(world.train_vae(cfg, train).state_dict())
            assert torch.get_num_threads() == n
    finally:
        torch.set_num_threads(before)
    assert weights[0].keys() == weights[1].keys()
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[1][k]), k
