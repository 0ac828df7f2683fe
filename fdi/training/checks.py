"""The checks of a training run's inputs that need no model (``python -m fdi train`` runs them first,
:meth:`fdi.training.run.TrainRun.check_inputs`): pairs, run folder, resume point, the task FDI's source and the
adapter config against the UNet's level widths (read from configs, no weights)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, List, Optional, Tuple

from ..errors import FDIError
from ..files import read_header
from .config import TrainConfig, has_val_pairs
from .state import check_signature, list_checkpoints, read_state


def read_pairs(cfg: TrainConfig) -> Tuple[List, List]:
    """The training and validation pairs (read for ``--validate-every``, and for ``--preview-every`` when given),
    each image's header read (a broken file fails now, not later)."""
    from ..data import collect_pairs
    from ..datasets import dataset_source
    from ..images import probe_image

    source = dataset_source(cfg.dataset, cfg.data, "train", cfg.dataset_task, cfg.output, cfg.data_seed)
    pairs = collect_pairs(cfg.degraded, cfg.clean, cfg.pairs_file, dataset=source)
    val_pairs: List = []
    if cfg.validate_every or (cfg.preview_every and has_val_pairs(cfg)):  # previews show held-out pairs when given
        val_pairs = collect_pairs(cfg.val_degraded, cfg.val_clean, cfg.val_pairs_file, what="validation")
    for pair in (*pairs, *val_pairs[: max(cfg.val_max_images, cfg.preview_images)]):
        probe_image(pair.degraded)
        probe_image(pair.clean)
    return pairs, val_pairs


def run_folder(cfg: TrainConfig, output: Path) -> Tuple[Path, bool]:
    """The run folder (``--checkpoint-dir`` or ``<output stem>-run``), checked writable, and whether it is new."""
    default = output.with_name(output.name[: -len(".safetensors")] + "-run")
    run_dir = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else default
    if run_dir.exists() and not run_dir.is_dir():
        raise FDIError(f"checkpoint folder {str(run_dir)!r} is a file; give a folder with --checkpoint-dir")
    parent = run_dir if run_dir.exists() else run_dir.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise FDIError(
            f"checkpoint folder {str(run_dir)!r} cannot be created or written; "
            "choose another --checkpoint-dir or fix the permissions"
        )
    return run_dir, not run_dir.exists()


def resume_point(cfg: TrainConfig, run_dir: Path, n_pairs: int) -> Optional[Path]:
    """The checkpoint folder ``--resume`` names (``latest``: the run folder's newest, ``None`` when it has none),
    checked against what the run's signature holds before any model is loaded."""
    resume_from = None
    if cfg.resume == "latest":
        found = list_checkpoints(run_dir)
        resume_from = found[-1][1] if found else None
        if resume_from is None and not cfg.quiet and os.environ.get("RANK", "0") == "0":
            print(f"no checkpoint in {run_dir} yet: starting a new run")
    elif cfg.resume:
        if not (Path(cfg.resume) / "state.json").is_file():
            raise FDIError(
                f"--resume {cfg.resume!r} is not a training checkpoint (no state.json); "
                "give a checkpoint-<step> folder or 'latest'"
            )
        resume_from = Path(cfg.resume)
    if resume_from is None and list_checkpoints(run_dir):
        raise FDIError(
            f"{run_dir} already holds checkpoints of another run; continue it with --resume latest, "
            "or start anew with another --checkpoint-dir (or delete that folder)"
        )
    if resume_from is not None:
        early = {"batch_size": cfg.batch_size, "resolution": cfg.resolution, "seed": cfg.seed, "n_pairs": n_pairs}
        early.update(timestep_signature(cfg))
        check_signature(resume_from, with_old_timesteps(read_state(resume_from)), early, keys=early)
        read_header(resume_from / "adapter.safetensors", "checkpoint adapter")
    return resume_from


def check_instruction(cfg: TrainConfig, resume_from: Optional[Path], channels: tuple) -> None:
    """The task FDI's source (``--fdi`` read, or BLIP-2's files checked) and the adapter config's keys and
    values against the UNet's level ``channels``."""
    from ..instruction import FDI

    if resume_from is None and not cfg.fdi and not cfg.blip2:
        raise FDIError(
            "the task FDI is needed: give --blip2 DIR (it is computed from the training pairs) "
            "or --fdi FILE.fdi.safetensors"
        )
    tokens, width = 32, 768
    if cfg.fdi:
        tokens, width = FDI.load(cfg.fdi).shape
    elif resume_from is None:
        from ..blip2_source import open_blip2

        open_blip2(cfg.blip2)  # configs and headers: a folder or a packed file, no weights read
    adapter_config_for(channels, tokens, width, cfg.adapter_config)


def unet_channels(cfg: TrainConfig, given_models: Any = None) -> tuple:
    """The UNet's level widths from its config (no weights read): the given models', the folder's
    ``unet/config.json``, or for a single file its ``--sd-config``'s or its family's shipped config."""
    if given_models is not None:
        return tuple(given_models.unet.config.block_out_channels)
    from ..checkpoints import inspect_single_file
    from ..families import family_for
    from ..models import family_config_dir

    sd = Path(cfg.sd)
    if sd.is_dir():
        folder = sd
    elif cfg.sd_config:
        folder = Path(cfg.sd_config)
    else:
        folder = family_config_dir(family_for(inspect_single_file(sd)["arch"], "epsilon"))
    unet_config = folder / "unet" / "config.json"
    try:
        return tuple(int(c) for c in json.loads(unet_config.read_text())["block_out_channels"])
    except (OSError, ValueError, KeyError, TypeError):
        raise FDIError(f"{unet_config} is missing or unreadable; give a complete diffusers folder") from None


def adapter_config_for(channels: tuple, tokens: int, width: int, overrides: Optional[dict]):
    """The :class:`~fdi.adapter.FDIAdapterConfig` of a UNet's level ``channels`` and an FDI of ``tokens`` ×
    ``width``, with ``--adapter-config``'s ``overrides``; an unknown key or a bad value is an :class:`FDIError`."""
    from ..adapter import FDIAdapterConfig

    conf = {"channels": channels, "token_width": width, "num_tokens": tokens, **(overrides or {})}
    try:
        return FDIAdapterConfig(**conf)
    except TypeError as exc:
        raise FDIError(
            f"--adapter-config has an unknown key ({exc}); use the fields of FDIAdapterConfig "
            "(channels, res_blocks, bottleneck, heads, se_reduction, …)"
        ) from None
    except FDIError as exc:
        raise FDIError(f"--adapter-config: {exc}") from None


def timestep_signature(cfg: TrainConfig) -> dict:
    """The part of a run's signature that says how it draws timesteps (a resume must keep it)."""
    return {"timestep_sampling": cfg.timestep_sampling, "guidance_window": [cfg.guidance_start, cfg.guidance_end]}


def with_old_timesteps(state: dict) -> dict:
    """``state`` with the timestep sampling of checkpoints written before it was recorded: uniform over all t
    (``--timestep-sampling uniform`` resumes them), for the paper's window."""
    from ..sampling import DEFAULT_GUIDANCE_WINDOW

    signature = dict(state.get("signature", {}))
    signature.setdefault("timestep_sampling", "uniform")
    signature.setdefault("guidance_window", list(DEFAULT_GUIDANCE_WINDOW))
    return {**state, "signature": signature}
