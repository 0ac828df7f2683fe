"""The CLI training loop: data loading, accumulation, the optimizer step, logs, checkpoints, validation, previews.

``run`` is the :class:`fdi.training.run.TrainRun` being trained (its models, optimizer, accelerator, config).
"""

from __future__ import annotations

import csv
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import List

import torch

from ..progress import report
from .precision import NonFiniteGuard, guarded_update
from .state import save_checkpoint
from .validation import VAL_FIELDS, restore_at

LOG_FIELDS = ("step", "epoch", "loss", "loss_diffusion", "loss_recon", "lr", "grad_norm", "sec_per_step")


def open_logs(run) -> None:
    """The run's ``train_log.csv`` (and ``val_log.csv``) cut back to the checkpoint's step, TensorBoard when
    installed (main process only)."""
    run.tb = None
    if not run.main:
        return
    run.run_dir.mkdir(parents=True, exist_ok=True)
    run.log_path = run.run_dir / "train_log.csv"
    run.val_path = run.run_dir / "val_log.csv"
    for path, fields in ((run.log_path, LOG_FIELDS), (run.val_path, VAL_FIELDS)):
        rows = []
        if path.is_file() and run.start_step > 0:  # keep the rows of the steps that the checkpoint covers
            with open(path, newline="") as fh:
                rows = [
                    r for r in csv.DictReader(fh) if r.get("step", "").isdigit() and int(r["step"]) <= run.start_step
                ]
        if path is run.val_path and not run.cfg.validate_every and not rows:
            continue
        from ..files import atomic_write

        with atomic_write(path, "w") as fh:
            w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        if not run.cfg.quiet:
            print("TensorBoard is not installed: logging to train_log.csv only (pip install tensorboard to get both)")
    else:
        run.tb = SummaryWriter(
            str(run.run_dir / "tensorboard"), purge_step=run.start_step + 1 if run.start_step else None
        )


def log_row(run, path: Path, fields, row: dict) -> None:
    """Append ``row`` to the CSV log ``path`` (and its numbers to TensorBoard)."""
    with open(path, "a", newline="") as fh:
        csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore").writerow(row)
    if run.tb is not None:
        tag = "val" if path == run.val_path else "train"
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                run.tb.add_scalar(f"{tag}/{k}", v, row["step"])


def make_loader(run):
    """The data loader of this process from ``run.start_step`` to ``run.max_steps`` (micro-batches)."""
    from torch.utils.data import DataLoader

    from ..data import PairedImageDataset, PairStream

    cfg, acc = run.cfg, run.acc
    sampler = PairStream(
        len(run.pairs),
        run.micro,
        seed=cfg.seed,
        num_processes=acc.num_processes,
        process_index=acc.process_index,
        start=run.start_step * cfg.grad_accum,
        stop=run.max_steps * cfg.grad_accum,
    )
    return DataLoader(
        PairedImageDataset(run.pairs, cfg.resolution, train=True, seed=cfg.seed),
        batch_size=run.micro,
        sampler=sampler,
        num_workers=cfg.num_workers,
        pin_memory=run.device.type == "cuda",
        drop_last=False,
        persistent_workers=False,
    )


def optimizer_update(run, trainable, loss: float) -> tuple:
    """One optimizer update after the accumulated backward passes; ``(skipped, grad_norm)``.

    accelerate's loss scaler where it made one (fp16 on GPUs), else the run's own
    (:func:`.precision.guarded_update`): the same non-finite rule as the node's loop."""
    cfg, acc = run.cfg, run.acc
    if acc.scaler is None:
        return guarded_update(run.scaler, run.optimizer, trainable, cfg.max_grad_norm, loss)
    grad_norm = float("nan")
    if cfg.max_grad_norm > 0:
        grad_norm = float(acc.clip_grad_norm_(trainable, cfg.max_grad_norm))
    run.optimizer.step()
    return bool(getattr(run.optimizer, "step_was_skipped", False)), grad_norm


def log_step(run, step: int, vals: List[float], lr: float, grad_norm: float, seconds: float) -> None:
    """The ``train_log.csv`` row (and TensorBoard scalars) of optimizer step ``step``."""
    row = {
        "step": step,
        "epoch": round(step * run.cfg.batch_size / len(run.pairs), 4),
        "loss": round(vals[0], 7),
        "loss_diffusion": round(vals[1], 7),
        "loss_recon": round(vals[2], 7),
        "lr": lr,
        "grad_norm": round(grad_norm, 6) if math.isfinite(grad_norm) else "",
        "sec_per_step": round(seconds, 4),
    }
    log_row(run, run.log_path, LOG_FIELDS, row)


def run_loop(run) -> List[float]:
    """Train from ``run.start_step`` to ``run.max_steps``; returns the loss of each optimizer step.

    The non-finite rule (:class:`.precision.NonFiniteGuard`) is checked on the loss reduced over the
    processes, so every process stops together, with an :class:`~fdi.errors.FDIError`."""
    cfg, acc = run.cfg, run.acc
    accum = cfg.grad_accum
    loader = make_loader(run)
    open_logs(run)
    bar = None
    if run.main and not cfg.quiet:
        from tqdm.auto import tqdm

        bar = tqdm(total=run.max_steps, initial=run.start_step, desc="training", unit="step", dynamic_ncols=True)
    losses: List[float] = []
    step = run.start_step
    report(run.progress, step, run.max_steps)
    micro_index = step * accum
    sums = torch.zeros(3, device=run.device)
    t0 = time.perf_counter()
    trainable = [p for p in run.adapter.parameters() if p.requires_grad]
    scaler = run.scaler if acc.scaler is None else acc.scaler
    guard = NonFiniteGuard(scaled=scaler.is_enabled())
    try:
        for batch in loader:
            m = micro_index % accum
            with acc.no_sync(run.adapter) if m < accum - 1 else nullcontext():
                out = run.micro_loss(batch, micro_index)
                loss = out.loss / accum
                acc.backward(run.scaler.scale(loss) if acc.scaler is None else loss)
            sums += torch.stack([out.loss.detach(), out.diffusion.detach(), out.recon.detach()]) / accum
            micro_index += 1
            if m < accum - 1:
                continue
            mean = acc.reduce(sums, reduction="mean") if acc.num_processes > 1 else sums
            sums = torch.zeros(3, device=run.device)
            vals = [float(v) for v in mean.cpu()]
            skipped, grad_norm = optimizer_update(run, trainable, vals[0])
            if guard.record(vals[0], skipped):
                run.optimizer.zero_grad(set_to_none=True)
                raise guard.error(
                    step + 1, "lower --lr, or use --mixed-precision bf16 or no, and resume from the last checkpoint"
                )
            lr = run.optimizer.param_groups[0]["lr"]
            run.lr_scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)
            step += 1
            losses.append(vals[0])
            if run.main and (step % cfg.log_every == 0 or step == run.max_steps):
                log_step(run, step, vals, lr, grad_norm, time.perf_counter() - t0)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{vals[0]:.4f}")
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < run.max_steps:
                save_checkpoint(run, step)
            metrics, preview = restore_at(run, step)  # validation, preview strip: when the options ask
            if metrics is not None:
                log_row(run, run.val_path, VAL_FIELDS, {"step": step, **{k: round(v, 6) for k, v in metrics.items()}})
            if preview is not None and bar is not None:
                bar.write(preview)
            report(run.progress, step, run.max_steps)
            t0 = time.perf_counter()  # checkpoint/validation time is not counted as step time
    finally:
        if bar is not None:
            bar.close()
        if run.tb is not None:
            run.tb.close()
    run.steps_done = step
    return losses
