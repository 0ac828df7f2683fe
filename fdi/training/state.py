"""Training state on disk: resumable checkpoints (adapter, optimizer, RNG, schedule), no pickle.

A checkpoint is a folder ``checkpoint-<step>`` written to ``.checkpoint-<step>.tmp`` and renamed
when complete (docs/design.md, "Training"). ``run`` below is the training run
(:class:`fdi.training.run.TrainRun`): its ``cfg``, ``acc`` (accelerate), ``optimizer``, ``lr_scheduler``,
``signature``, ``fdi``, ``run_dir``, ``main`` and ``raw_adapter()``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch

from ..adapter import FDIAdapter
from ..errors import FDIError
from ..files import PathLike, load_safetensors, save_safetensors

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FORMAT = "fdi_train_state"
STATE_VERSION = 1


def fdi_hash(tokens: torch.Tensor) -> str:
    """Short hash of FDI tokens (part of the run signature)."""
    return hashlib.sha256(tokens.detach().to(torch.float32).cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def list_checkpoints(run_dir: PathLike) -> List[Tuple[int, Path]]:
    """Complete checkpoints of a run folder, ``[(step, path)]`` sorted by step (temp folders ignored)."""
    d = Path(run_dir)
    out = []
    if d.is_dir():
        for p in d.iterdir():
            if (
                p.is_dir()
                and p.name.startswith(CHECKPOINT_PREFIX)
                and p.name[len(CHECKPOINT_PREFIX) :].isdigit()
                and (p / "state.json").is_file()
            ):
                out.append((int(p.name[len(CHECKPOINT_PREFIX) :]), p))
    return sorted(out)


def _optimizer_to_file(optimizer, scaler) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    sd = optimizer.state_dict()
    tensors: Dict[str, torch.Tensor] = {}
    scalars: Dict[str, Dict[str, float]] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{idx}.{k}"] = v.detach().cpu().clone()
            else:
                scalars.setdefault(str(idx), {})[k] = v
    meta = {
        "param_groups": json.dumps(sd["param_groups"]),
        "scalars": json.dumps(scalars),
        "scaler": json.dumps(scaler.state_dict() if scaler is not None else None),
    }
    return tensors, meta


def _optimizer_from_file(path: Path, optimizer, scaler) -> None:
    tensors, meta = load_safetensors(path, what="optimizer checkpoint")
    state: Dict[int, Dict] = {}
    for name, t in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = t
    for idx, kv in json.loads(meta.get("scalars", "{}")).items():
        state.setdefault(int(idx), {}).update(kv)
    groups = json.loads(meta["param_groups"])
    for g in groups:
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    sc = json.loads(meta.get("scaler", "null"))
    if scaler is not None and sc:
        scaler.load_state_dict(sc)


def _rng_to_file() -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    py = random.getstate()
    npst = np.random.get_state()
    meta = {
        "python": json.dumps([py[0], list(py[1]), py[2]]),
        "numpy": json.dumps([npst[0], npst[1].tolist(), int(npst[2]), int(npst[3]), float(npst[4])]),
    }
    return tensors, meta


def _rng_from_file(path: Path) -> None:
    tensors, meta = load_safetensors(path, what="RNG checkpoint")
    torch.set_rng_state(tensors["torch"])
    cuda = [
        tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k.split(".")[1]))
    ]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    py = json.loads(meta["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = json.loads(meta["numpy"])
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))


def _lr_state(scheduler) -> dict:
    sd = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    json.dumps(sd)  # the schedules we build hold numbers only; fail loudly otherwise
    return sd


def save_checkpoint(run, step: int) -> Path:
    """Write ``checkpoint-<step>`` atomically (temp folder + rename); returns its path."""
    final = run.run_dir / f"{CHECKPOINT_PREFIX}{step}"
    tmp = run.run_dir / f".{CHECKPOINT_PREFIX}{step}.tmp"
    if run.main:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    run.acc.wait_for_everyone()
    t, m = _rng_to_file()
    save_safetensors(t, tmp / f"rng-{run.acc.process_index}.safetensors", m)
    run.acc.wait_for_everyone()
    if run.main:
        run.raw_adapter().save(tmp / "adapter.safetensors", fdi=run.fdi)
        t, m = _optimizer_to_file(run.optimizer, run.acc.scaler)
        save_safetensors(t, tmp / "optimizer.safetensors", m)
        state = {
            "format": STATE_FORMAT,
            "format_version": STATE_VERSION,
            "step": step,
            "signature": run.signature,
            "lr_scheduler": _lr_state(run.lr_scheduler),
            "num_processes": run.acc.num_processes,
            "max_steps": run.max_steps,
            "config": asdict(run.cfg),
        }
        (tmp / "state.json").write_text(json.dumps(state, indent=2, default=str))
        if final.exists():  # a re-run over the same step: replace it
            old = run.run_dir / f".{CHECKPOINT_PREFIX}{step}.old"
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
        limit = run.cfg.checkpoints_total_limit
        if limit:
            for _, p in list_checkpoints(run.run_dir)[:-limit]:
                shutil.rmtree(p, ignore_errors=True)
    run.acc.wait_for_everyone()
    return final


def read_state(ckpt: Path) -> dict:
    """The ``state.json`` of a checkpoint folder, refused unless it is one of this format version."""
    try:
        state = json.loads((ckpt / "state.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        raise FDIError(
            f"{ckpt}/state.json is unreadable; the checkpoint is damaged, resume from an earlier one"
        ) from None
    if (
        not isinstance(state, dict)
        or state.get("format") != STATE_FORMAT
        or state.get("format_version") != STATE_VERSION
    ):
        raise FDIError(
            f"{ckpt} is not an FDI training checkpoint of this version; resume from "
            "a checkpoint written by 'python -m fdi train'"
        )
    return state


def check_signature(ckpt: Path, state: dict, ours: dict, keys=None) -> None:
    """Refuse to resume from ``ckpt`` when its run signature differs from ``ours`` (on ``keys``, default all)."""
    theirs = state.get("signature", {})
    names = set(theirs) | set(ours) if keys is None else set(keys)
    diff = sorted(k for k in names if theirs.get(k) != ours.get(k))
    if diff:
        details = "; ".join(f"{k}: checkpoint {theirs.get(k)!r}, this run {ours.get(k)!r}" for k in diff)
        raise FDIError(
            f"cannot resume from {ckpt}: it belongs to a different run ({details}); "
            "use the same settings, or start a new run with another --checkpoint-dir"
        )


def load_checkpoint(run, ckpt: Path) -> None:
    from .checks import with_old_timesteps

    state = with_old_timesteps(read_state(ckpt))
    check_signature(ckpt, state, run.signature)
    saved = FDIAdapter.from_file(ckpt / "adapter.safetensors")
    run.raw_adapter().load_state_dict(saved.state_dict(), strict=True)
    _optimizer_from_file(ckpt / "optimizer.safetensors", run.optimizer, run.acc.scaler)
    # The schedule is a function of the step: restore its saved state, then take this run's --lr
    # and schedule length (both may change on resume) and set the learning rate of the saved step.
    lr_state = dict(state["lr_scheduler"])
    lr_state["lr_lambdas"] = [None] * len(run.lr_scheduler.lr_lambdas)
    run.lr_scheduler.load_state_dict(lr_state)
    run.lr_scheduler.base_lrs = [run.cfg.lr for _ in run.lr_scheduler.base_lrs]
    step = int(state["step"])
    if run.lr_scheduler.last_epoch != step:
        raise FDIError(
            f"{ckpt}/state.json is inconsistent (scheduler at {run.lr_scheduler.last_epoch}, "
            f"step {step}); resume from another checkpoint"
        )
    for g, base, f in zip(run.optimizer.param_groups, run.lr_scheduler.base_lrs, run.lr_scheduler.lr_lambdas):
        g["initial_lr"] = base
        g["lr"] = base * f(step)
    run.lr_scheduler._last_lr = [g["lr"] for g in run.optimizer.param_groups]
    rng = ckpt / f"rng-{run.acc.process_index}.safetensors"
    if rng.is_file():
        _rng_from_file(rng)
    run.start_step = step
