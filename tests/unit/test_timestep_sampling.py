"""Training draws its timesteps where the adapter guides: the window's timesteps, the cubic and uniform rules."""

from __future__ import annotations

import pytest
import torch

from fdi.errors import FDIError
from fdi.sampling import GUIDANCE_END, ddim_timesteps, guided_step_range, window_timesteps
from fdi.training.step import TimestepSampling, training_step

T = 1000
N = 20000


def _draws(rule: str, window=(0.0, GUIDANCE_END)) -> torch.Tensor:
    return TimestepSampling(rule, window).draw(N, T, torch.Generator().manual_seed(0))


def test_window_timesteps_of_the_papers_window_and_others():
    assert window_timesteps(0.0, GUIDANCE_END, T) == (667, 1000)
    assert window_timesteps(0.667, 1.0, T) == (0, 333)
    assert window_timesteps(0.0, 1.0, T) == (0, 1000)
    assert window_timesteps(0.5, 0.75, 1000) == (250, 500)
    with pytest.raises(FDIError, match="empty"):
        window_timesteps(0.4, 0.4, T)
    with pytest.raises(FDIError, match="in 0..1"):
        window_timesteps(-0.1, 0.3, T)
    with pytest.raises(FDIError, match="holds no timestep"):
        window_timesteps(0.3, 0.3004, T)


def test_the_window_covers_the_timesteps_restoration_guides():
    """The sampler's guided timesteps at the default 50 steps (981 … 661) lie in the window's [667, 1000) but for
    the last, whose level is within one step (20) of the window's edge."""
    ts = ddim_timesteps(50, T, "leading", 1).tolist()
    first, stop = guided_step_range(50, 0.0, GUIDANCE_END)
    guided = ts[first:stop]
    lo, hi = window_timesteps(0.0, GUIDANCE_END, T)
    assert len(guided) == 17 and all(lo <= t < hi for t in guided[:-1]) and lo - 20 < guided[-1] < lo


def test_window_draws_only_inside_and_fills_it():
    t = _draws("window")
    assert int(t.min()) == 667 and int(t.max()) == 999
    # uniform inside: each tenth of the window holds a tenth of the draws (± 1.5 points at N = 20000)
    counts = torch.histc(t.float(), bins=10, min=667, max=1000) / N
    assert (counts - 0.1).abs().max() < 0.015, counts
    last = _draws("window", (0.667, 1.0))
    assert int(last.min()) == 0 and int(last.max()) == 332


def test_uniform_and_cubic_rules():
    u = _draws("uniform")
    assert int(u.min()) < 5 and int(u.max()) > 995 and abs(float(u.float().mean()) - 499.5) < 6
    c = _draws("cubic")
    # t = (1 - u^3)·T: mean 0.75·T, P(t >= 667) = P(u^3 <= 0.333) = 0.693
    assert 0 <= int(c.min()) and int(c.max()) <= 999
    assert abs(float(c.float().mean()) - 749.5) < 5
    assert abs(float((c >= 667).float().mean()) - 0.333 ** (1 / 3)) < 0.01
    with pytest.raises(FDIError, match="cubic weights the first"):
        TimestepSampling("cubic", (0.667, 1.0)).check()
    with pytest.raises(FDIError, match="one of window, cubic, uniform"):
        TimestepSampling("late", (0.0, 0.3)).check()


def test_training_step_draws_t_from_its_sampling():
    """A UNet stand-in that records t: the step's timesteps are the sampling's draws, and the loss is the known
    MSE of a zero ε-prediction (mean of ε²)."""
    seen = []

    def predict(z_t, t, guidance):
        seen.append(t.clone())
        return torch.zeros_like(z_t)

    z0 = torch.randn(64, 4, 2, 2, generator=torch.Generator().manual_seed(1))
    alphas = torch.linspace(0.999, 0.001, T)
    for rule, window in (("window", (0.0, GUIDANCE_END)), ("window", (0.667, 1.0))):
        sampling = TimestepSampling(rule, window)
        gen = torch.Generator().manual_seed(5)
        out = training_step(lambda d, f: None, predict, None, z0, None, alphas, "epsilon", 0.0, gen, sampling)
        lo, hi = sampling.bounds(T)
        assert bool(((seen[-1] >= lo) & (seen[-1] < hi)).all())
        gen = torch.Generator().manual_seed(5)
        noise = torch.randn(z0.shape, generator=gen)
        assert torch.equal(seen[-1], sampling.draw(64, T, gen))
        assert torch.allclose(out.loss, (noise**2).mean())
