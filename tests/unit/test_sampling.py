"""The shared sampling rules (:mod:`fdi.sampling`) and both DDIM doors checked against a model whose right answer is
known.

The *exact-denoiser* tests use data drawn from a Gaussian mixture (per latent pixel, over its 4
channels): its optimal noise prediction is analytic and nonlinear in the latent, so a sampler that
feeds the model the wrong input (the old ComfyUI inversion fed ``x·sqrt(ᾱ_next/ᾱ_cur)``) gives a
measurably different result — constant or linear stand-ins cannot see that.
"""

from __future__ import annotations

import math

import pytest
import torch

from fdi.comfy_backend import ddim_inversion_sampler
from fdi.errors import FDIError
from fdi.sampling import (
    ddim_step,
    ddim_timesteps,
    diffusion_target,
    guided_step_count,
    guided_step_range,
    inversion_sigmas,
    inversion_timesteps,
    pad_to_multiple,
    predict_x0,
    predict_x0_eps,
    sampling_sigmas,
    sigma_to_alpha,
)

# ------------------------------------------------------------------------------------------------ rules


SCHEDULES = [("leading", 1), ("leading", 0), ("trailing", 0), ("trailing", 1), ("linspace", 0)]


@pytest.mark.parametrize("spacing,offset", SCHEDULES)
def test_ddim_timesteps_equal_diffusers_scheduler_for_every_step_count(spacing, offset):
    """Every count 1…bound equals ``DDIMScheduler.set_timesteps`` (torch's arange/linspace rounded x.5 differently:
    trailing 48 steps gave 937 where diffusers has 936). Where diffusers' float ``arange`` overshoots (trailing 61,
    103, …) it returns one timestep more, −1, which no table has: the first N are the same."""
    from diffusers import DDIMScheduler

    s = DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing, steps_offset=offset)
    overshoots, refused = [], []
    for steps in range(1, 1001):
        s.set_timesteps(steps)
        want = s.timesteps.long()
        if int(want.max()) > 999:  # diffusers' own edge (leading, offset 1, 1000 steps): past its table
            with pytest.raises(FDIError, match="use at most"):
                ddim_timesteps(steps, 1000, spacing, offset)
            refused.append(steps)
            continue
        got = ddim_timesteps(steps, 1000, spacing, offset)
        assert got.shape == (steps,) and torch.equal(got, want[:steps]), (steps, got.tolist(), want.tolist())
        assert int(got.min()) >= 0 and int(got.max()) <= 999 and bool((got[1:] < got[:-1]).all())
        if want.numel() > steps:
            assert want[steps:].tolist() == [-1], (steps, want[steps:].tolist())
            overshoots.append(steps)
    assert (len(overshoots) == 62 and overshoots[:3] == [61, 103, 121]) if spacing == "trailing" else not overshoots
    assert refused == ([1000] if (spacing, offset) == ("leading", 1) else [])


def test_step_bound_of_each_schedule_and_the_refusal_names_it():
    from diffusers import DDIMScheduler

    from fdi.sampling import check_steps, max_ddim_steps

    assert max_ddim_steps(1000, "leading", 1) == 999  # SD 1.5 / 2.x / SDXL
    assert max_ddim_steps(1000, "leading", 0) == 1000
    assert max_ddim_steps(1000, "trailing", 1) == 1000 and max_ddim_steps(1000, "linspace", 1) == 1000
    assert max_ddim_steps(1000, "leading", 1000) == 0 and max_ddim_steps(1000, "leading", -1) == 0
    s = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="leading", steps_offset=1)
    s.set_timesteps(1000)
    assert int(s.timesteps.max()) == 1000  # diffusers' own edge: t = 1000 is past its 1000-entry table
    assert ddim_timesteps(999).tolist() == list(range(999, 0, -1))
    for steps in (1000, 1001):
        with pytest.raises(FDIError, match=r"more than this model's schedule allows: use at most 999 "):
            ddim_timesteps(steps)
    with pytest.raises(FDIError, match="use at most 1000"):
        check_steps(1001, 1000, "trailing", 0)
    with pytest.raises(FDIError, match="steps offset 1000 puts every leading timestep outside 0..999"):
        check_steps(1, 1000, "leading", 1000)
    check_steps(1000, 1000, "leading", 0)


def alpha_to_sigma(alpha_bar: torch.Tensor) -> torch.Tensor:
    """ComfyUI/k-diffusion noise level ``σ = sqrt((1 − ᾱ)/ᾱ)`` of ᾱ (0 at ᾱ = 1): the inverse of ``sigma_to_alpha``."""
    a = torch.as_tensor(alpha_bar, dtype=torch.float64)
    return ((1 - a) / a).sqrt()


def test_ddim_timesteps_refuse_bad_counts():
    with pytest.raises(FDIError, match="at least 1"):
        ddim_timesteps(0)
    with pytest.raises(FDIError, match="use at most 999"):
        ddim_timesteps(1001)
    with pytest.raises(FDIError, match="unknown timestep spacing"):
        ddim_timesteps(5, spacing="karras")


def test_inversion_timesteps_reverse_sampling_and_end_where_it_starts():
    ts = ddim_timesteps(50)
    assert torch.equal(inversion_timesteps(ts, 50), ts.flip(0))
    more = inversion_timesteps(ts, 99)
    assert int(more[0]) == 1 and int(more[-1]) == 981 and bool((more[1:] >= more[:-1]).all())
    assert inversion_timesteps(ts, 1).tolist() == [981]


def test_guided_steps_follow_k_below_end_times_n():
    assert guided_step_count(50, 0.333) == 17  # steps 0..16
    assert guided_step_count(6, 0.333) == 2 and guided_step_count(6, 0.34) == 3
    assert guided_step_range(50, 0.0, 1.0) == (0, 50) and guided_step_range(50, 0.0, 0.0) == (0, 0)
    assert guided_step_range(8, 0.25, 0.75) == (2, 6)
    assert guided_step_range(8, 0.8, 0.5) == (7, 7)  # empty, never negative
    with pytest.raises(FDIError, match="between 0 and 1"):
        guided_step_range(8, 0.0, 1.5)


def test_pad_to_multiple_mirrors_and_crops_back():
    x = torch.rand(2, 3, 5, 70)
    y = pad_to_multiple(x)
    assert y.shape == (2, 3, 64, 128) and torch.equal(y[..., :5, :70], x)
    assert torch.equal(y[..., 5, :70], x[..., 3, :])  # reflection, not replication
    assert pad_to_multiple(torch.rand(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_pad_to_multiple_ends_on_one_pixel_sides(monkeypatch):
    """A 1-pixel side has nothing to mirror: it used to pad by min(need, side − 1) = 0 forever (FDIRestore hung)."""
    import fdi.sampling as sampling

    pad, calls = sampling.F.pad, []

    def counted(*args, **kwargs):
        calls.append(kwargs.get("mode"))
        if len(calls) > 20:
            raise AssertionError("pad_to_multiple does not end")
        return pad(*args, **kwargs)

    monkeypatch.setattr(sampling.F, "pad", counted)
    for h, w in ((1, 1), (1, 70), (5, 1), (2, 2), (1, 64), (64, 1), (2, 130)):
        calls.clear()
        x = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(h * 1000 + w))
        y = pad_to_multiple(x)
        assert y.shape == (2, 3, -(-h // 64) * 64, -(-w // 64) * 64) and torch.equal(y[..., :h, :w], x)
        assert len(calls) <= 8, (h, w, calls)
        if h == 1:
            assert torch.equal(y, y[..., :1, :].expand_as(y))  # the one row, repeated
        if w == 1:
            assert torch.equal(y, y[..., :1].expand_as(y))
    assert torch.equal(pad_to_multiple(torch.full((1, 3, 1, 1), 0.25)), torch.full((1, 3, 64, 64), 0.25))


def test_restoration_refuses_images_under_the_minimum_side():
    from fdi.restoration import MIN_SIDE, check_image_size

    assert MIN_SIDE == 8
    check_image_size(8, 8)
    for h, w in ((1, 1), (1, 100), (100, 7), (0, 64)):
        with pytest.raises(FDIError, match=rf"'x.png' is {w}x{h} pixels; restoration needs at least 8 pixels a side"):
            check_image_size(h, w, "'x.png'")


def test_sigma_alpha_conversions_and_prediction_types_round_trip():
    a = torch.tensor([0.999, 0.5, 0.02])
    torch.testing.assert_close(sigma_to_alpha(alpha_to_sigma(a)), a.double())
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    xt = a.sqrt().view(-1, 1, 1, 1) * x0 + (1 - a).sqrt().view(-1, 1, 1, 1) * eps
    for kind in ("epsilon", "v_prediction", "sample"):
        out = diffusion_target(x0, eps, a, kind)
        x0_hat, eps_hat = predict_x0_eps(xt, out, a, kind)
        torch.testing.assert_close(x0_hat, x0, atol=1e-4, rtol=0)
        torch.testing.assert_close(eps_hat, eps, atol=2e-3, rtol=0)
        torch.testing.assert_close(predict_x0(xt, out, a, kind), x0, atol=1e-4, rtol=0)
    # a DDIM move with the true ε lands exactly on the other level's point of the same trajectory
    moved = ddim_step(xt, eps, a, torch.tensor([0.9, 0.9, 0.9]), "epsilon")
    torch.testing.assert_close(moved, math.sqrt(0.9) * x0 + math.sqrt(0.1) * eps, atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------------------ exact denoiser


class GaussianMixture:
    """Latent pixels whose 4 channels come from a 3-component isotropic Gaussian mixture: E[x_0 | x_t] in closed
    form."""

    def __init__(self, seed: int = 0, std: float = 0.3):
        g = torch.Generator().manual_seed(seed)
        self.means = torch.randn(3, 4, generator=g, dtype=torch.float64) * 1.5
        self.logw = torch.log(torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64))
        self.var = std**2

    def sample(self, b: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        k = torch.multinomial(self.logw.exp(), b * h * w, replacement=True, generator=g)
        x = self.means[k] + math.sqrt(self.var) * torch.randn(b * h * w, 4, generator=g, dtype=torch.float64)
        return x.view(b, h, w, 4).permute(0, 3, 1, 2).float()

    def eps(self, x: torch.Tensor, alpha_bar: float) -> torch.Tensor:
        """The optimal ε prediction for the VP latent ``x`` ``[B, 4, h, w]`` at level ᾱ."""
        a = float(alpha_bar)
        p = x.double().permute(0, 2, 3, 1).reshape(-1, 1, 4)  # [P, 1, 4]
        mu = math.sqrt(a) * self.means[None]  # [1, K, 4]
        var = a * self.var + 1 - a
        logp = self.logw[None] - ((p - mu) ** 2).sum(-1) / (2 * var)
        r = torch.softmax(logp, dim=1)[..., None]  # [P, K, 1]
        x0 = (r * (self.means[None] + math.sqrt(a) * self.var / var * (p - mu))).sum(1)
        e = (p[:, 0] - math.sqrt(a) * x0) / math.sqrt(1 - a)
        return e.view(x.shape[0], x.shape[2], x.shape[3], 4).permute(0, 3, 1, 2).to(x.dtype)

    def output(self, x: torch.Tensor, alpha_bar: float, prediction_type: str) -> torch.Tensor:
        """The optimal model output at level ᾱ: ε, or ``v = sqrt(ᾱ)ε − sqrt(1−ᾱ)x̂_0`` of the same posterior mean."""
        eps = self.eps(x, alpha_bar)
        if prediction_type == "epsilon":
            return eps
        a = float(alpha_bar)
        x0 = (x.double() - math.sqrt(1 - a) * eps.double()) / math.sqrt(a)
        return (math.sqrt(a) * eps.double() - math.sqrt(1 - a) * x0).to(x.dtype)


class ComfyLikeModel:
    """ComfyUI's EPS / V_PREDICTION model wrapper around the exact denoiser: the UNet sees ``x/sqrt(1+σ²)`` at
    timestep t(σ); ``calculate_denoised`` is ``x − σ·ε`` or ``x/(σ²+1) − v·σ/sqrt(σ²+1)`` (σ_data = 1)."""

    def __init__(self, mixture: GaussianMixture, alphas: torch.Tensor, prediction_type: str = "epsilon"):
        self.mixture, self.alphas, self.prediction_type = mixture, alphas, prediction_type
        self.table = alpha_to_sigma(alphas).float()

    def sigma(self, t):
        return self.table[torch.as_tensor(t).long()]

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **kw) -> torch.Tensor:
        s = float(sigma.reshape(-1)[0])
        t = int((self.table - s).abs().argmin())
        out = self.mixture.output(x / math.sqrt(1 + s * s), float(self.alphas[t]), self.prediction_type)
        if self.prediction_type == "v_prediction":
            return x / (s * s + 1) - out * s / math.sqrt(s * s + 1)
        return x - s * out


def euler(model, x, sigmas):
    """ComfyUI's 'ddim' sampler: Euler in sigma space."""
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        d = (x - model(x, sigmas[i : i + 1])) / s
        x = x + d * (s_next - s)
    return x


def comfy_round_trip(model: ComfyLikeModel, z0: torch.Tensor, steps: int, inversion_steps: int, rescale: bool = True):
    ts = ddim_timesteps(steps)
    sampling = sampling_sigmas(ts, model.sigma)
    inv = inversion_sigmas(sampling, inversion_timesteps(ts, inversion_steps), model.sigma)
    if rescale:
        xt = ddim_inversion_sampler(model, z0.clone(), inv)
    else:  # the pre-fix sampler: the model called on the current latent at the next level, unscaled
        xt = z0.clone()
        for i in range(len(inv) - 1):
            s_cur, s_next = float(inv[i]), float(inv[i + 1])
            xt = xt + (xt - model(xt, inv[i + 1 : i + 2])) / s_next * (s_next - s_cur)
    return xt, euler(model, xt, sampling)


def pipeline_round_trip(
    pipe,
    mixture: GaussianMixture,
    z0: torch.Tensor,
    steps: int,
    inversion_steps: int,
    monkeypatch,
    prediction_type: str = "epsilon",
):
    from diffusers import DDIMScheduler

    if pipe.prediction_type != prediction_type:
        monkeypatch.setattr(
            pipe, "scheduler", DDIMScheduler.from_config(pipe.scheduler.config, prediction_type=prediction_type)
        )
    alphas = pipe.scheduler.alphas_cumprod
    monkeypatch.setattr(pipe, "_unet", lambda x, t, cond: mixture.output(x, float(alphas[int(t)]), prediction_type))
    cond = torch.zeros(1, 1, 1)
    xt = pipe.invert(z0, cond, steps, inversion_steps)
    return xt, pipe.sample(xt, cond, steps)


@pytest.mark.parametrize("steps,inversion_steps", [(50, 50), (6, 6), (6, 10)])
def test_exact_denoiser_round_trip_is_the_same_in_both_doors(tiny_pipeline, monkeypatch, steps, inversion_steps):
    mixture = GaussianMixture()
    z0 = mixture.sample(2, 6, 6)
    alphas = tiny_pipeline.scheduler.alphas_cumprod
    model = ComfyLikeModel(mixture, alphas)
    xt_c, out_c = comfy_round_trip(model, z0, steps, inversion_steps)
    xt_d, out_d = pipeline_round_trip(tiny_pipeline, mixture, z0, steps, inversion_steps, monkeypatch)
    t0 = int(ddim_timesteps(steps)[0])
    # the inverted latents agree (ComfyUI's sigma-space latent is the VP latent / sqrt(ᾱ_t0))
    torch.testing.assert_close(xt_c * math.sqrt(float(alphas[t0])), xt_d, rtol=0, atol=1e-4 * float(xt_d.abs().max()))
    err_c, err_d = (out_c - z0).abs().mean(), (out_d - z0).abs().mean()
    assert abs(float(err_c - err_d)) <= 0.01 * float(err_d) + 1e-6, (float(err_c), float(err_d))
    diff = float((out_c - out_d).abs().max())
    assert diff <= 1e-3 * float(z0.abs().max()), diff
    # and the test can see the old bug: without the rescale the doors part by far more than that
    _, out_old = comfy_round_trip(model, z0, steps, inversion_steps, rescale=False)
    assert float((out_old - out_d).abs().max()) > 50 * max(diff, 1e-5)


def old_v_inversion(pipe, mixture: GaussianMixture, z0: torch.Tensor, steps: int, inversion_steps: int):
    """The pre-fix CLI inversion of a v model: ε read off the output with ᾱ of the *current* level."""
    alphas = pipe.scheduler.alphas_cumprod
    x, a_cur = z0.clone(), 1.0
    for t in inversion_timesteps(ddim_timesteps(steps), inversion_steps).tolist():
        a = float(alphas[t])
        x = ddim_step(x, mixture.output(x, a, "v_prediction"), a_cur, a, "v_prediction")
        a_cur = a
    return x


@pytest.mark.parametrize("steps,inversion_steps", [(50, 50), (6, 6), (4, 4), (6, 10)])
def test_exact_v_denoiser_round_trip_is_the_same_in_both_doors(tiny_pipeline, monkeypatch, steps, inversion_steps):
    """A v-prediction model through ComfyUI's V_PREDICTION denoiser and through the pipeline: the same inverted
    latent and the same round trip; the old rule (ε read at the current level) parts from ComfyUI by far more."""
    mixture = GaussianMixture(seed=5)
    z0 = mixture.sample(2, 6, 6, seed=6)
    alphas = tiny_pipeline.scheduler.alphas_cumprod
    model = ComfyLikeModel(mixture, alphas, "v_prediction")
    xt_c, out_c = comfy_round_trip(model, z0, steps, inversion_steps)
    xt_d, out_d = pipeline_round_trip(tiny_pipeline, mixture, z0, steps, inversion_steps, monkeypatch, "v_prediction")
    t0 = int(ddim_timesteps(steps)[0])
    scale = float(xt_d.abs().max())
    inv_diff = float((xt_c * math.sqrt(float(alphas[t0])) - xt_d).abs().max())
    assert inv_diff <= 1e-4 * scale, inv_diff
    diff = float((out_c - out_d).abs().max())
    assert diff <= 1e-3 * float(z0.abs().max()), diff
    # the round trip responds to the model: it is not the identity, and the two doors' errors agree
    err_c, err_d = float((out_c - z0).abs().mean()), float((out_d - z0).abs().mean())
    assert abs(err_c - err_d) <= 0.01 * err_d + 1e-6, (err_c, err_d)
    # the pre-fix CLI rule: its inverted latent is far from ComfyUI's
    old = old_v_inversion(tiny_pipeline, mixture, z0, steps, inversion_steps)
    old_diff = float((old - xt_d).abs().max())
    print(
        f"v, {steps}/{inversion_steps} steps: inverted max diff {inv_diff:.2e} (old rule {old_diff:.3f}), "
        f"round trip max diff {diff:.2e}, scale {scale:.2f}"
    )
    assert old_diff > 50 * max(inv_diff, 1e-4 * scale), (old_diff, inv_diff)


def test_ddim_step_reads_eps_at_the_evaluation_level():
    """``alpha_eval``: ε̂ of a v output is read at the level the model saw; for an ε model nothing changes."""
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    a_from, a_eval = 0.9, 0.6
    x = math.sqrt(a_from) * x0 + math.sqrt(1 - a_from) * eps
    # a v model evaluated at level a_eval on x: v = sqrt(a)ε − sqrt(1−a)x̂_0 with x = sqrt(a)x̂_0 + sqrt(1−a)ε
    v = diffusion_target((x - math.sqrt(1 - a_eval) * eps) / math.sqrt(a_eval), eps, a_eval, "v_prediction")
    moved = ddim_step(x, v, a_from, 0.3, "v_prediction", alpha_eval=a_eval)
    torch.testing.assert_close(moved, math.sqrt(0.3) * x0 + math.sqrt(0.7) * eps, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        ddim_step(x, eps, a_from, 0.3, "epsilon", alpha_eval=a_eval), ddim_step(x, eps, a_from, 0.3, "epsilon")
    )


def test_exact_denoiser_round_trip_reconstructs_with_many_steps(tiny_pipeline, monkeypatch):
    """DDIM inversion is an approximation that vanishes as steps grow: the round trip error falls with N."""
    mixture = GaussianMixture(seed=3)
    z0 = mixture.sample(1, 6, 6, seed=4)
    errors = []
    for n in (10, 50, 250):
        _, out = pipeline_round_trip(tiny_pipeline, mixture, z0, n, n, monkeypatch)
        errors.append(float((out - z0).abs().mean()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.05 * float(z0.abs().mean()), errors
