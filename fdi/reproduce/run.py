"""A reproduction from start to end: :func:`plan` checks everything before any model loads or any file is
written, :func:`reproduce` runs the stages of :mod:`.stages` and writes the report (:mod:`.report`)."""

from __future__ import annotations

import os
import platform
import shutil
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from ..errors import FDIError
from .config import ABLATIONS, ReproduceConfig, Variant, check_run_folder, variants, write_settings
from .protocols import DataPlan, resolve

Log = Callable[[str], None]


def describe_device(device: torch.device) -> str:
    """``cuda:0 (NVIDIA H100 80GB HBM3)`` or ``cpu (x86_64, 16 cores)``: where timings were measured."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({platform.machine() or 'unknown'}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


@dataclass
class Plan:
    """A checked reproduction: its config, data sets, run folder, variants, settings, device and log."""

    cfg: ReproduceConfig
    data: DataPlan
    folder: Path
    variants: List[Variant]
    settings: dict
    resumed: bool
    device: torch.device
    log: Log

    @property
    def device_name(self) -> str:
        return describe_device(self.device)

    def load_pipeline(self):
        """The restoration pipeline ``python -m fdi restore`` loads (fp16 on CUDA, fp32 elsewhere, unless
        ``dtype``)."""
        from ..dtypes import parse_dtype
        from ..pipeline import FDIRestorationPipeline

        dtype = parse_dtype(self.cfg.dtype or ("fp16" if self.device.type == "cuda" else "fp32"))
        return FDIRestorationPipeline.from_pretrained(
            Path(self.cfg.sd), device=self.device, dtype=dtype, config=self.cfg.sd_config
        )


@dataclass
class ReproduceResult:
    """What :func:`reproduce` returns: the report (as written to ``report.json``), its files, and what this call
    did (optimizer steps trained and images restored per variant folder; FDIs extracted)."""

    report: dict
    folder: Path
    trained_steps: Dict[str, int] = field(default_factory=dict)
    restored_images: Dict[str, int] = field(default_factory=dict)


def _check_models(cfg: ReproduceConfig, data: DataPlan, folder: Path) -> None:
    """The models' files (configs and headers only), each variant's training options and adapter config."""
    from ..blip2_source import open_blip2
    from ..models import check_sd_source
    from ..training.checks import adapter_config_for, unet_channels
    from ..training.config import check_batch_split, check_config
    from .stages import train_config

    check_sd_source(cfg.sd, cfg.sd_config)
    open_blip2(cfg.blip2)
    from ..adapter_config import FDIAdapterConfig

    known = {f.name for f in fields(FDIAdapterConfig)}
    for ablation in cfg.ablations:
        lacking = [k for k in ABLATIONS[ablation] if k not in known]
        if lacking:
            raise FDIError(
                f"--ablation {ablation} switches the adapter's {', '.join(lacking)} off, and this version's adapter "
                "has no such switch (FDIAdapterConfig); update the pack or leave that ablation out"
            )
    channels = None
    for variant in variants(cfg):
        tc = train_config(cfg, folder, data.task, variant)
        check_config(tc)
        check_batch_split(tc.batch_size, 1, tc.grad_accum)
        channels = channels or unet_channels(tc)
        adapter_config_for(channels, 32, 768, tc.adapter_config)


def plan(cfg: ReproduceConfig, log: Optional[Log] = None) -> Plan:
    """Every check of a reproduction that needs no model weights and writes nothing: task, data sets (names,
    splits, task), ROOT, models, options, adapter configs and the run folder (another task's run, other settings).
    Raises :class:`FDIError` naming the problem."""
    from ..commands.restore import pick_device
    from ..dtypes import parse_dtype
    from ..restoration import CLI_SETTING_NAMES, check_settings
    from ..training.config import check_device

    data = resolve(cfg.task, cfg.datasets, cfg.test_dataset)
    root = Path(cfg.data).expanduser()
    if not root.is_dir():
        raise FDIError(
            f"--data {cfg.data!r} does not exist or is not a folder; give the folder the data sets were unpacked into"
        )
    check_settings(cfg.steps, cfg.inversion_steps, names=CLI_SETTING_NAMES)
    if cfg.dtype is not None:
        parse_dtype(cfg.dtype)
    check_device(cfg.device)
    folder = Path(cfg.output).expanduser()
    _check_models(cfg, data, folder)
    settings = cfg.settings(data.train, data.test)
    resumed = check_run_folder(folder, settings)
    device = pick_device(cfg.device, 1, 0)
    say = log or ((lambda m: None) if cfg.quiet else (lambda m: print(m, file=sys.stderr, flush=True)))
    return Plan(cfg, data, folder, variants(cfg), settings, resumed, device, say)


def _create(folder: Path) -> Optional[Path]:
    """Create ``folder`` (and missing parents); the topmost folder created, ``None`` when it existed."""
    top = None
    for p in [folder, *folder.parents]:
        if p.exists():
            break
        top = p
    folder.mkdir(parents=True, exist_ok=True)
    return top


def reproduce(cfg: ReproduceConfig, log: Optional[Log] = None) -> ReproduceResult:
    """Run (or resume) a reproduction into ``cfg.output`` and write ``report.json`` and ``report.md`` there.

    Stages (:mod:`.stages`): (a) pairs, (b) task FDIs, (c) adapters, (d) restorations, (e) metrics, then the
    report. A ``KeyboardInterrupt`` leaves every finished file in place; the same call resumes. A data tree that
    is not the named layout is refused before anything is kept (a new run folder is removed again).
    """
    from . import stages
    from .report import write_report

    run = plan(cfg, log)
    created = _create(run.folder)
    if not run.resumed:
        write_settings(run.folder, run.settings)
    run.log(f"run folder {run.folder} ({'resumed' if run.resumed else 'new'}); device {run.device_name}")
    try:
        train, test, info = stages.read_pairs(run)
    except FDIError:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
    stages.task_fdis(run, train)
    trained = stages.train_adapters(run)
    restored = stages.restore_test_set(run, test)
    metrics = stages.measure(run, test, info["test"])
    report = write_report(run, info, metrics)
    return ReproduceResult(report, run.folder, trained, restored)
