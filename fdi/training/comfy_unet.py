"""A ComfyUI UNet made trainable through (no ComfyUI import): autograd-safe weights, weights cast to the compute dtype.

The node's door (:mod:`.memory`) backpropagates to the adapter through ComfyUI's ``openaimodel`` UNet;
docs/design.md ("Training") has why each is needed.
"""

from __future__ import annotations

import torch


def autograd_safe(module: torch.nn.Module) -> int:
    """Re-create ``module``'s inference-mode parameters and buffers as normal tensors (same values), in place.

    Hosts that load models under ``torch.inference_mode`` (ComfyUI) give tensors that cannot be saved for
    backward, and the UNet's weights must be to backpropagate to the adapter through it. One tensor at a
    time, so memory grows by one tensor at most. Returns how many were re-created."""
    n = 0
    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if p is not None and p.is_inference():
                m._parameters[name] = torch.nn.Parameter(p.detach().clone(), requires_grad=False)
                n += 1
        for name, b in list(m._buffers.items()):
            if b is not None and b.is_inference():
                m._buffers[name] = b.clone()
                n += 1
    return n


class cast_weights_to_compute:
    """Context manager: the UNet's ComfyUI ops cast their weights to the input's dtype (``comfy_cast_weights``)
    while training computes in ``dtype`` and the weights are stored in ``storage`` (fp16 weights with fp32
    chosen; fp8 storage without manual cast), the way ComfyUI's manual-cast ops do. Restored on exit."""

    def __init__(self, unet: torch.nn.Module, storage: torch.dtype, dtype: torch.dtype):
        need = storage != dtype
        self.mods = [m for m in unet.modules() if hasattr(m, "comfy_cast_weights")] if need else []
        self.old = [m.comfy_cast_weights for m in self.mods]

    def __enter__(self) -> "cast_weights_to_compute":
        for m in self.mods:
            m.comfy_cast_weights = True
        return self

    def __exit__(self, *exc) -> None:
        for m, v in zip(self.mods, self.old):
            m.comfy_cast_weights = v
