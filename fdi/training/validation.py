"""Restorations during a CLI training run: validation (PSNR/SSIM of the held-out pairs) and preview strips.

Both restore pairs with the current adapter the way a user would (:meth:`fdi.pipeline.FDIRestorationPipeline.restore`:
DDIM inversion + guided sampling, ``--val-steps`` steps each), on centre crops at the training resolution
(:func:`.preview.centre_crops`), on the main process only; at a step that has both, a pair is restored once.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from .preview import centre_crops, preview_due, render_strip, strip_path, write_picture

VAL_FIELDS = ("step", "psnr", "ssim", "psnr_y", "ssim_y")

#: a pair's ``(degraded, restored, clean)`` crops ``[3, R, R]``, by pair, for one step
Restored = Dict[object, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def restore_pairs(run, pairs: List, done: Restored) -> List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(degraded, restored, clean)`` of each pair (main process), restoring in micro-batches those not in ``done``
    (which gets them): the current adapter, ``--val-steps`` steps, the run's prompt."""
    from ..images import load_image
    from ..pipeline import AdapterUse

    todo = [p for p in dict.fromkeys(pairs) if p not in done]
    if todo:
        degs, cleans = centre_crops(
            [load_image(p.degraded) for p in todo], [load_image(p.clean) for p in todo], run.cfg.resolution
        )
        adapter = run.raw_adapter()
        try:
            for i in range(0, len(todo), run.micro):
                out = run.pipe.restore(
                    degs[i : i + run.micro],
                    [AdapterUse(adapter, run.fdi, 1.0)],
                    steps=run.cfg.val_steps,
                    inversion_steps=run.cfg.val_steps,
                    prompt=run.cfg.prompt,
                )
                for j, r in enumerate(out):
                    done[todo[i + j]] = (degs[i + j], r.float(), cleans[i + j])
        finally:
            adapter.train()
    return [done[p] for p in pairs]


def validate(run, done: Optional[Restored] = None) -> Optional[Dict[str, float]]:
    """Restore the held-out pairs (centre crops at the training resolution); their mean PSNR/SSIM (main process).

    Uses the restoration pipeline as a user would (DDIM inversion + guided sampling, ``val_steps``
    steps each, seed = ``--seed``), with the adapter's current weights; ``None`` on the other processes.
    """
    metrics = None
    if run.main:
        from ..metrics import evaluate_tensors

        pairs = run.val_pairs[: run.cfg.val_max_images]
        rows = restore_pairs(run, pairs, {} if done is None else done)
        res = evaluate_tensors([r for _, r, _ in rows], [c for _, _, c in rows], [p.name for p in pairs])
        metrics = {k: res.mean[k] for k in VAL_FIELDS[1:]}
    run.acc.wait_for_everyone()
    return metrics


def preview_pairs(run) -> List:
    """The pairs a strip shows: the first ``--preview-images`` held-out pairs when given, else training pairs."""
    return (run.val_pairs or run.pairs)[: run.cfg.preview_images]


def write_preview(run, step: int, done: Optional[Restored] = None) -> Optional[str]:
    """The strip of step ``step`` written to ``previews/step-<step>.jpg`` (main process); a line for the progress
    display, or ``None``. A failure is reported and training goes on (the checkpoints are not touched)."""
    message = None
    if run.main:
        t0 = time.perf_counter()
        path = strip_path(run.run_dir, step)
        try:
            pairs = preview_pairs(run)
            rows = restore_pairs(run, pairs, {} if done is None else done)
            stacks = [torch.stack(r) for r in zip(*rows)]
            picture = render_strip(*stacks, [p.name for p in pairs], f"step {step} of {run.max_steps}")
            write_picture(picture, path)
            message = f"step {step}: preview {_shown(path)} ({time.perf_counter() - t0:.1f} s)"
        except Exception as exc:  # a preview never stops a run: the next checkpoint and the adapter still come
            print(f"step {step}: no preview ({type(exc).__name__}: {exc}); training goes on", file=sys.stderr)
    run.acc.wait_for_everyone()
    return message


def _shown(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def restore_at(run, step: int) -> Tuple[Optional[Dict[str, float]], Optional[str]]:
    """Validation and preview of optimizer step ``step`` as the options ask: ``(metrics or None, preview line or
    None)``; a pair both show is restored once."""
    cfg = run.cfg
    done: Restored = {}
    metrics = validate(run, done) if cfg.validate_every and step % cfg.validate_every == 0 else None
    line = write_preview(run, step, done) if preview_due(step, cfg.preview_every, run.max_steps) else None
    return metrics, line
