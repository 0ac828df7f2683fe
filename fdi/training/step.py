"""One training step of an FDI adapter — the loss and the step every door shares (CLI, ComfyUI node).

A step on a batch of clean latents ``z0 [b, 4, h, w]`` and degraded images ``[b, 3, 8h, 8w]``::

    ε ~ N(0, 1),  t ~ the guidance window's timesteps (:class:`TimestepSampling`),  z_t = sqrt(ᾱ_t)·z0 + sqrt(1−ᾱ_t)·ε
    pred = UNet(z_t, t, prompt; guidance = adapter(degraded, F))
    L    = MSE(pred, target) + λ · mean|ẑ0 − z0|

The backend only provides ``predict(z_t, t, guidance) → UNet output`` (diffusers hooks or ComfyUI's
UNet patches); targets and ẑ0 are :mod:`fdi.sampling`'s. docs/design.md ("Training") has the decisions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..adapter import FDIGuidance
from ..conditioning import Conditioning
from ..errors import FDIError
from ..sampling import (
    DEFAULT_GUIDANCE_WINDOW,
    DEFAULT_TIMESTEP_SAMPLING,
    TIMESTEP_SAMPLINGS,
    check_window,
    diffusion_target,
    predict_x0,
    window_timesteps,
)
from ..seeds import seeded_generator

#: ``predict(z_t [b,4,h,w] float32, t [b] int64, guidance) → model output [b,4,h,w]`` (epsilon or v)
Predictor = Callable[[torch.Tensor, torch.Tensor, FDIGuidance], torch.Tensor]


@dataclass
class StepLoss:
    """The loss of one step (float32 scalars; ``loss`` carries the graph)."""

    loss: torch.Tensor
    diffusion: torch.Tensor
    recon: torch.Tensor


def fdi_loss(
    pred: torch.Tensor,
    z_t: torch.Tensor,
    z0: torch.Tensor,
    noise: torch.Tensor,
    alpha_bar: torch.Tensor,
    prediction_type: str,
    recon_weight: float,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(L, L_diffusion, L_recon)`` with ``L = MSE(pred, target) + λ·mean|ẑ_0 − z_0|`` (float32 scalars)."""
    pred = pred.float()
    target = diffusion_target(z0, noise, alpha_bar, prediction_type)
    l_diff = F.mse_loss(pred, target)
    l_rec = F.l1_loss(predict_x0(z_t, pred, alpha_bar, prediction_type), z0) if recon_weight else pred.new_zeros(())
    return l_diff + recon_weight * l_rec, l_diff, l_rec


def step_generator(seed: int, micro_batch: int, process_index: int = 0) -> torch.Generator:
    """CPU generator for the noise and timesteps of one micro-batch on one process."""
    return seeded_generator("noise", seed, micro_batch, process_index)


@dataclass(frozen=True)
class TimestepSampling:
    """How training draws ``t`` for the guidance window ``(start, end)`` (fractions of the sampling steps, as
    restoration's window): ``window`` uniformly in :func:`fdi.sampling.window_timesteps`, ``cubic``
    ``t = ⌊(1 − u³)·T⌋`` over all timesteps (T2I-Adapter's; windows that start at 0 only), ``uniform`` over
    ``[0, T)``."""

    rule: str = DEFAULT_TIMESTEP_SAMPLING
    window: Tuple[float, float] = DEFAULT_GUIDANCE_WINDOW

    def check(self, names: Tuple[str, str, str] = ("timestep sampling", "guidance start", "guidance end")) -> None:
        """Raise :class:`FDIError` for an unknown rule, a window outside ``0 ≤ start < end ≤ 1``, or ``cubic``
        with a window that does not start at the first step (``names``: how messages name the three settings)."""
        if self.rule not in TIMESTEP_SAMPLINGS:
            raise FDIError(f"{names[0]} must be one of {', '.join(TIMESTEP_SAMPLINGS)}, got {self.rule!r}")
        check_window(*self.window, names=names[1:])
        if self.rule == "cubic" and self.window[0] > 0:
            raise FDIError(
                f"{names[0]} cubic weights the first, noisiest steps, but the window starts at {names[1]} "
                f"{self.window[0]}; use window (or uniform) for a window that starts later"
            )

    def bounds(self, num_train_timesteps: int) -> Tuple[int, int]:
        """``[lo, hi)``: the timesteps this rule can draw (``cubic``, ``uniform``: all of ``[0, T)``)."""
        if self.rule == "window":
            return window_timesteps(*self.window, num_train_timesteps)
        return 0, int(num_train_timesteps)

    def draw(self, n: int, num_train_timesteps: int, gen: torch.Generator) -> torch.Tensor:
        """``t [n]`` int64 on the CPU."""
        lo, hi = self.bounds(num_train_timesteps)
        if self.rule == "cubic":
            u = torch.rand((n,), generator=gen, dtype=torch.float64)
            return ((1 - u**3) * hi).long().clamp_(lo, hi - 1)
        return torch.randint(lo, hi, (n,), generator=gen)


def sample_noise(
    z0: torch.Tensor, num_train_timesteps: int, gen: torch.Generator, sampling: TimestepSampling = TimestepSampling()
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(ε, t)`` for a batch of latents: ε like ``z0`` (float32, on its device), ``t [b]`` int64 by ``sampling``."""
    noise = torch.randn(z0.shape, generator=gen, dtype=torch.float32).to(z0.device)
    t = sampling.draw(z0.shape[0], num_train_timesteps, gen).to(z0.device)
    return noise, t


def training_step(
    adapter,
    predict: Predictor,
    degraded: torch.Tensor,
    z0: torch.Tensor,
    fdi_tokens: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str,
    recon_weight: float,
    gen: torch.Generator,
    sampling: TimestepSampling = TimestepSampling(),
) -> StepLoss:
    """The loss of one step (forward only; the caller backpropagates).

    ``degraded [b, 3, H, W]`` in 0..1 on the adapter's device; ``z0 [b, 4, H/8, W/8]`` scaled clean
    latents (float32); ``alphas_cumprod [T]`` float32 on ``z0``'s device; ``t`` drawn by ``sampling``."""
    z0 = z0.float()
    noise, t = sample_noise(z0, alphas_cumprod.shape[0], gen, sampling)
    a = alphas_cumprod[t]
    with torch.no_grad():
        z_t = a.sqrt().view(-1, 1, 1, 1) * z0 + (1 - a).sqrt().view(-1, 1, 1, 1) * noise
    guidance = adapter(degraded, fdi_tokens)
    pred = predict(z_t, t, guidance)
    loss, l_diff, l_rec = fdi_loss(pred.float(), z_t, z0, noise, a, prediction_type, recon_weight)
    return StepLoss(loss, l_diff, l_rec)


# ---- backends ---------------------------------------------------------------------------------------


def diffusers_predictor(unet, prompt: Conditioning, dtype: torch.dtype) -> Predictor:
    """A diffusers ``UNet2DConditionModel`` guided through :func:`fdi.diffusers_backend.guide_unet`; ``prompt``: the
    prompt's ``[1, L, D]`` embedding or :class:`~fdi.conditioning.TextConditioning` (SDXL: with the pooled embedding;
    the size conditioning is the crop's, :func:`fdi.conditioning.unet_kwargs`)."""
    from ..conditioning import unet_kwargs
    from ..diffusers_backend import guide_unet

    def predict(z_t: torch.Tensor, t: torch.Tensor, guidance: FDIGuidance) -> torch.Tensor:
        size = (z_t.shape[-2] * 8, z_t.shape[-1] * 8)
        with guide_unet(unet, guidance):
            return unet(z_t.to(dtype), t, **unet_kwargs(prompt, z_t.shape[0], size, dtype, z_t.device)).sample

    return predict


def comfy_predictor(
    diffusion_model,
    context: torch.Tensor,
    input_blocks: Sequence[int],
    output_blocks: Sequence[int],
    dtype: torch.dtype,
    y: Optional[torch.Tensor] = None,
) -> Predictor:
    """A ComfyUI ``openaimodel`` UNet (``model.model.diffusion_model``) guided by the pack's UNet patches.

    ``context [1, 77, D]``: the prompt's cross-attention conditioning; ``y [1, adm]`` (SDXL: ``[1, 2816]``):
    the UNet's class/size vector, ComfyUI's ``model.model.encode_adm(...)`` of the pooled prompt (``None`` for
    SD 1.x/2.x, whose UNets take none). Both are repeated over the batch.

    ``dtype``: the UNet's compute dtype (ComfyUI's ``manual_cast_dtype`` or the weights' dtype, or
    the training dtype with the weights cast to it), never a storage-only dtype such as fp8: the
    inputs, the context and ``y`` are cast to it, as ComfyUI's ``_apply_model`` does.

    Every call is guided (an entry with the whole step and sigma window open); ``z_t`` is the UNet's
    input in VP form, which is ComfyUI's ``calculate_input`` of the sigma-space latent."""
    from ..comfy_backend import INPUT_PATCH_KEY, OUTPUT_PATCH_KEY, FDIInputPatch, FDIOutputPatch, GuidanceEntry

    def predict(z_t: torch.Tensor, t: torch.Tensor, guidance: FDIGuidance) -> torch.Tensor:
        entry = GuidanceEntry(guidance, 1.0, 0.0, 1.0, float("inf"), 0.0)
        options = {
            "patches": {
                INPUT_PATCH_KEY: [FDIInputPatch([entry], input_blocks, output_blocks)],
                OUTPUT_PATCH_KEY: [FDIOutputPatch([entry], input_blocks, output_blocks)],
            }
        }
        b = z_t.shape[0]
        cond = context.to(dtype).expand(b, -1, -1)
        extra = {} if y is None else {"y": y.to(dtype).expand(b, -1)}
        return diffusion_model(z_t.to(dtype), t.float(), context=cond, transformer_options=options, **extra)

    return predict


_CONTAINERS = (torch.nn.Sequential, torch.nn.ModuleList, torch.nn.ModuleDict)


def unet_blocks(unet: torch.nn.Module) -> List[torch.nn.Module]:
    """The blocks of a UNet in forward order: a diffusers ``UNet2DConditionModel``'s down, mid and up
    blocks, or a ComfyUI ``openaimodel`` UNet's input, middle and output blocks."""
    if hasattr(unet, "down_blocks"):
        return [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    if hasattr(unet, "input_blocks"):
        return [*unet.input_blocks, unet.middle_block, *unet.output_blocks]
    raise TypeError(f"{type(unet).__name__} is neither a diffusers nor a ComfyUI SD UNet")


def unet_checkpointing(unet: torch.nn.Module, enabled: bool = True) -> "checkpointed":
    """:class:`checkpointed` over :func:`checkpoint_units` of :func:`unet_blocks` (both doors' gradient
    checkpointing of a frozen UNet; a context manager)."""
    return checkpointed(checkpoint_units(unet_blocks(unet)), enabled)


def checkpoint_units(blocks: Sequence[torch.nn.Module]) -> List[torch.nn.Module]:
    """The modules to checkpoint in a UNet's ``blocks``: each block's children, containers
    (``Sequential``/``ModuleList``/``ModuleDict``) opened down to the modules inside.

    ComfyUI's ``openaimodel`` UNet runs a ``TimestepEmbedSequential`` by looping over its children
    (``forward_timestep_embed``), never through its ``forward``: its ResBlocks, SpatialTransformers and
    samplers are what runs. diffusers' blocks give their ``resnets``/``attentions``/samplers."""
    units: List[torch.nn.Module] = []

    def add(m: torch.nn.Module) -> None:
        if isinstance(m, _CONTAINERS):
            for c in m.children():
                add(c)
        else:
            units.append(m)

    for b in blocks:
        for c in b.children():
            add(c)
    return units


def _snapshot(args: tuple, kwargs: dict) -> Tuple[tuple, dict]:
    """Shallow copies of the ``dict`` arguments (``transformer_options``), the rest as is."""
    return (
        tuple(dict(a) if isinstance(a, dict) else a for a in args),
        {k: dict(v) if isinstance(v, dict) else v for k, v in kwargs.items()},
    )


class checkpointed:
    """Context manager: ``modules``' forwards recompute their activations in the backward pass
    (``torch.utils.checkpoint``, non-reentrant); restored on exit.

    The recompute sees its ``dict`` arguments as they were in the forward: ComfyUI passes one
    ``transformer_options`` through the whole UNet and moves ``block``/``transformer_index`` on, and
    attention patches read them."""

    def __init__(self, modules: Sequence[torch.nn.Module], enabled: bool = True):
        self.modules = list(modules) if enabled else []
        self._saved: list = []

    def __enter__(self) -> "checkpointed":
        import torch.utils.checkpoint as cp

        for m in self.modules:
            fwd = m.forward

            def wrapped(*args, _fwd=fwd, **kwargs):
                if not torch.is_grad_enabled():
                    return _fwd(*args, **kwargs)
                frozen = _snapshot(args, kwargs)
                calls = [0]

                def run(*a, **k):
                    calls[0] += 1
                    if calls[0] == 1:  # the forward: the live options, side effects as without checkpointing
                        return _fwd(*a, **k)
                    a2, k2 = _snapshot(*frozen)
                    return _fwd(*a2, **k2)

                return cp.checkpoint(run, *args, use_reentrant=False, **kwargs)

            self._saved.append((m, "forward" in m.__dict__, m.__dict__.get("forward")))
            m.forward = wrapped
        return self

    def __exit__(self, *exc) -> None:
        for m, had, fwd in reversed(self._saved):
            if had:
                m.forward = fwd
            else:
                del m.forward
        self._saved = []
