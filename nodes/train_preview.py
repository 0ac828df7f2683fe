"""FDITrainAdapter's live preview: the progress bar's picture and the strip of pairs restored with the adapter being
trained (the rules are :mod:`fdi.training.preview`'s)."""

from __future__ import annotations

import logging

import comfy.model_management as mm
import comfy.utils
import torch

from ..fdi.instruction import FDI
from ..fdi.training.memory import TrainSettings
from ..fdi.training.preview import LivePreview


def progress_with_preview(steps: int, live: LivePreview):
    """``on_step(done, loss)`` for :func:`train_on_pairs`: ComfyUI's progress bar with :class:`LivePreview`'s picture
    (the loss curve about 20 times a run, and the latest preview strip above it) as its preview."""
    bar = comfy.utils.ProgressBar(steps)
    bar.update_absolute(0, steps)

    def on_step(done: int, loss: float) -> None:
        picture = live.show(done, loss)
        preview = None
        if picture is not None:
            from PIL import Image

            preview = ("JPEG", Image.fromarray(picture), 512 if live.latest is None else 1024)
            logging.info("FDITrainAdapter: step %d/%d, loss %.5f", done, steps, loss)
        bar.update_absolute(done, steps, preview)

    return on_step


def preview_strip(model, clip, vae, adapter, fdi: FDI, pairs: tuple, settings: TrainSettings):
    """``strip(step)`` → the preview strip (:func:`fdi.training.preview.strip_maker`) of the first pairs restored with
    the adapter being trained by ``FDIRestore``'s recipe (:func:`.sampling.restore`, the empty prompt, cfg 1, the
    adapter's guidance window), or ``None`` when Cancel came during it (Cancel then ends training at its next step)."""
    from ..fdi.restoration import guidance_windows
    from ..fdi.tiles import DEFAULT_TILE_OVERLAP
    from ..fdi.training import preview
    from .sampling import adapter_guidance, apply_guidance, restore, zeroed

    context, pooled = clip.encode_from_tokens(clip.tokenize(""), return_pooled=True)
    positive = [[context.clone(), {} if pooled is None else {"pooled_output": pooled.clone()}]]
    negative = zeroed(positive)
    device = next(adapter.parameters()).device

    def restore_crops(images: torch.Tensor) -> torch.Tensor:
        ((start, end),) = guidance_windows([adapter])[0]  # the window it is being trained for

        def guide(padded: torch.Tensor):
            return apply_guidance(model, adapter_guidance(adapter, fdi, padded, device), 1.0, start, end)

        steps = preview.PREVIEW_STEPS
        adapter.eval()
        try:
            with torch.no_grad():
                out = restore(
                    model,
                    vae,
                    images,
                    guide,
                    positive,
                    negative,
                    steps,
                    steps,
                    1.0,
                    0,
                    DEFAULT_TILE_OVERLAP,
                    preview=False,
                )
        finally:
            adapter.train()
            mm.load_models_gpu([model], force_full_load=True)  # the VAE may have pushed the UNet out
        return out.permute(0, 3, 1, 2)

    make = preview.strip_maker(restore_crops, *pairs, settings.resolution, settings.steps)

    def strip(step: int):
        try:
            return make(step)
        except mm.InterruptProcessingException:
            mm.interrupt_current_processing(True)  # the restore took the Cancel: hand it back to the training loop
            return None

    return strip
