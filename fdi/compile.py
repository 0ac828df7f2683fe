"""``torch.compile`` for the restoration pipeline: the UNet once per shape, with an eager fallback.

:func:`compile_unet` puts the UNet in ``channels_last``, installs a
:class:`fdi.guidance_slot.GuidanceSlot` (guidance as gated buffers, so neither a new image nor the
guidance window's end recompiles) and returns a :class:`CompiledCall` around
``torch.compile(unet, dynamic=False)``: CUDA graphs (``mode="reduce-overhead"``) on CUDA, inductor's
default on the CPU. Where compilation is unavailable (:func:`compile_unavailable_reason`) or fails on
its first call, a one-line warning is given and the module runs eagerly.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import warnings
from typing import Callable, Optional

import torch
from torch import nn

from .errors import FDIError
from .guidance_slot import SLOT_ATTRIBUTE, GuidanceSlot


def default_mode(device: torch.device) -> Optional[str]:
    """``"reduce-overhead"`` (CUDA graphs) on CUDA, ``None`` (inductor's default) elsewhere."""
    return "reduce-overhead" if torch.device(device).type == "cuda" else None


def compile_unavailable_reason(device: torch.device, backend: object = "inductor") -> Optional[str]:
    """Why ``torch.compile`` with ``backend`` cannot run on ``device`` here, or ``None`` when it can (as far as
    can be told before compiling: a failing first call is caught by :class:`CompiledCall`)."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    if backend != "inductor":
        return None
    kind = torch.device(device).type
    if kind == "cuda":
        if importlib.util.find_spec("triton") is None:
            return "Triton is not installed (pip install triton; on Windows: triton-windows)"
    elif kind == "cpu":
        if not any(shutil.which(c) for c in ("g++", "c++", "clang++", "cl")):
            return "no C++ compiler found (install g++ or clang)"
    else:
        return f"inductor does not support the {kind} device"
    return None


class CompiledCall:
    """A compiled callable that falls back to the eager one, with a one-line warning, when compiling fails.

    Library errors (:class:`FDIError`) and errors the eager callable would raise too are not hidden: after a
    fallback the eager call runs and raises them itself.
    """

    def __init__(
        self,
        eager: Callable,
        compiled: Optional[Callable],
        what: str,
        mark_steps: bool = False,
        before: Optional[Callable] = None,
    ):
        self.eager = eager
        self.compiled = compiled
        self.what = what
        self.mark_steps = mark_steps
        self.before = before  # eager work before each compiled call, given the same arguments

    @property
    def is_compiled(self) -> bool:
        return self.compiled is not None

    def __call__(self, *args, **kwargs):
        if self.compiled is None:
            return self.eager(*args, **kwargs)
        if self.before is not None:
            self.before(*args, **kwargs)
        if self.mark_steps:
            torch.compiler.cudagraph_mark_step_begin()  # outputs of the previous call are consumed
        try:
            return self.compiled(*args, **kwargs)
        except FDIError:
            raise
        except Exception as exc:  # compiler missing or failing: Triton, C++ toolchain, unsupported op
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            warnings.warn(
                f"torch.compile of the {self.what} failed ({type(exc).__name__}: {first}); running it eagerly",
                RuntimeWarning,
                stacklevel=2,
            )
            self.compiled = None
            return self.eager(*args, **kwargs)


class _Call:
    """``module(*args, **kwargs)`` as the frame to compile, so its hooks are traced into the same graph as its
    forward (``torch.compile(module)`` compiles a forward pre-hook as a graph of its own)."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def compile_module(
    module: nn.Module,
    device: torch.device,
    what: str,
    mode: Optional[str] = None,
    backend: object = "inductor",
    channels_last: bool = True,
    before: Optional[Callable] = None,
) -> CompiledCall:
    """``module`` in ``channels_last`` and compiled (``dynamic=False``: one graph per input shape), or eager with
    a one-line warning where compilation is unavailable."""
    if channels_last:
        module.to(memory_format=torch.channels_last)
    reason = compile_unavailable_reason(device, backend)
    if reason is not None:
        warnings.warn(
            f"torch.compile is unavailable for the {what} ({reason}); running it eagerly", RuntimeWarning, stacklevel=2
        )
        return CompiledCall(module, None, what)
    if sys.platform == "win32" and torch.device(device).type == "cpu" and backend == "inductor":
        warnings.warn(
            f"torch.compile on the CPU under Windows needs MSVC in the environment; the {what} may fall back to eager",
            RuntimeWarning,
            stacklevel=2,
        )
    compiled = torch.compile(_Call(module), mode=mode, backend=backend, dynamic=False)
    return CompiledCall(module, compiled, what, mark_steps=mode == "reduce-overhead", before=before)


def compile_unet(
    unet: nn.Module, device: torch.device, mode: Optional[str] = None, backend: object = "inductor"
) -> CompiledCall:
    """The diffusers UNet compiled for restoration: a :class:`GuidanceSlot` installed (once), ``channels_last``,
    ``torch.compile(dynamic=False)``. Call it like the UNet; :class:`fdi.diffusers_backend.DiffusersGuidance`
    on ``unet`` then drives the slot."""
    slot = getattr(unet, SLOT_ATTRIBUTE, None) or GuidanceSlot(unet)
    return compile_module(unet, device, "UNet", mode, backend, before=lambda sample, *a, **k: slot.prepare(sample))


def compile_vae(vae: nn.Module, device: torch.device, backend: object = "inductor") -> None:
    """Compile the VAE's encoder and decoder in place (inductor's default mode: they run once per image, so
    CUDA graphs would buy nothing), ``channels_last``; eager with a warning where unavailable."""
    vae.to(memory_format=torch.channels_last)
    reason = compile_unavailable_reason(device, backend)
    if reason is not None:
        warnings.warn(
            f"torch.compile is unavailable for the VAE ({reason}); running it eagerly", RuntimeWarning, stacklevel=2
        )
        return
    for part in (vae.encoder, vae.decoder):
        if isinstance(part.forward, CompiledCall):
            continue
        eager = part.forward
        part.forward = CompiledCall(eager, torch.compile(eager, backend=backend, dynamic=False), "VAE")
