"""Validation during training: restore held-out pairs with the current adapter, log PSNR/SSIM."""

from __future__ import annotations

from typing import Dict, Optional

import torch

VAL_FIELDS = ("step", "psnr", "ssim", "psnr_y", "ssim_y")


def validate(run) -> Optional[Dict[str, float]]:
    """Restore the held-out pairs (centre crops at the training resolution); their mean PSNR/SSIM (main process).

    Uses the restoration pipeline as a user would (DDIM inversion + guided sampling, ``val_steps``
    steps each, seed = ``--seed``), with the adapter's current weights; ``None`` on the other processes.
    """
    metrics = None
    if run.main:
        from ..data import transform_pair
        from ..images import load_image
        from ..metrics import evaluate_tensors
        from ..pipeline import AdapterUse

        adapter = run.raw_adapter()
        degs, cleans, names = [], [], []
        for pr in run.val_pairs[: run.cfg.val_max_images]:
            d, c = transform_pair(load_image(pr.degraded), load_image(pr.clean), run.cfg.resolution, None)
            degs.append(d), cleans.append(c), names.append(pr.name)
        restored = []
        try:
            for i in range(0, len(degs), run.micro):
                out = run.pipe.restore(
                    torch.stack(degs[i : i + run.micro]),
                    [AdapterUse(adapter, run.fdi, 1.0)],
                    steps=run.cfg.val_steps,
                    inversion_steps=run.cfg.val_steps,
                    prompt=run.cfg.prompt,
                )
                restored.extend(out)
        finally:
            adapter.train()
        res = evaluate_tensors([r.float() for r in restored], cleans, names)
        metrics = {k: res.mean[k] for k in VAL_FIELDS[1:]}
    run.acc.wait_for_everyone()
    return metrics
