"""The options of a reproduction (:class:`ReproduceConfig`), its variants and its run folder's settings file.

A run folder holds ``settings.json``: every option that changes a result. A later run in the same folder must
give the same ones (it resumes); another task's run or other settings are refused, naming the difference.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..errors import FDIError
from ..files import atomic_write

#: the module ablations of the paper, as adapter config overrides (the fields of FDIAdapterConfig)
ABLATIONS: Dict[str, Dict[str, bool]] = {
    "full": {},
    "no-noise-decoupling": {"noise_decoupling": False},
    "no-visual-modulator": {"visual_modulator": False},
}
SETTINGS_FILE = "settings.json"
SETTINGS_FORMAT = "fdi_reproduce"
#: options that change no result (how and where it runs): a resumed run may change them
RUNTIME_FIELDS = ("output", "device", "num_workers", "checkpoint_every", "blip2_batch_size", "quiet")
#: the sampler of the paper (DESIGN.md §3): DDIM steps and inversion steps
PAPER_STEPS = 50


@dataclass
class ReproduceConfig:
    """Everything a reproduction needs (``python -m fdi reproduce`` maps onto it one to one, by field name).

    Paths: ``data`` (ROOT the data sets were unpacked into), ``sd``, ``blip2``, ``output`` (the run folder).
    ``datasets``/``test_dataset`` replace the protocol's sets; ``proportions`` of the training set (0 < p ≤ 1) and
    ``ablations`` (:data:`ABLATIONS`) each give one FDI + adapter + restoration. ``seed`` seeds the subsets and
    the training, ``data_seed`` the synthesized degradations of clean-only sets. Training options are
    ``fdi train``'s (the paper's defaults); ``steps``/``inversion_steps`` and ``dtype`` are restoration's.
    """

    task: str
    data: str
    sd: str
    blip2: str
    output: str
    datasets: Optional[List[str]] = None
    test_dataset: Optional[str] = None
    proportions: Tuple[float, ...] = (1.0,)
    ablations: Tuple[str, ...] = ("full",)
    seed: int = 0
    data_seed: int = 0
    sd_config: Optional[str] = None
    resolution: int = 512
    batch_size: int = 32
    max_steps: Optional[int] = None
    epochs: Optional[float] = None
    lr: float = 1e-5
    grad_accum: int = 1
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    adapter_config: Dict = field(default_factory=dict)
    steps: int = PAPER_STEPS
    inversion_steps: int = PAPER_STEPS
    dtype: Optional[str] = None
    device: Optional[str] = None
    num_workers: int = 4
    checkpoint_every: int = 500
    blip2_batch_size: int = 8
    quiet: bool = False

    def settings(self, train: Tuple[str, ...], test: str) -> dict:
        """What ``settings.json`` holds: every result-changing option, paths resolved, the data sets read."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in RUNTIME_FIELDS}
        for key in ("data", "sd", "blip2", "sd_config"):
            if out[key]:
                out[key] = str(Path(out[key]).expanduser().resolve())
        out.update(datasets=list(train), test_dataset=test, proportions=list(self.proportions))
        out["ablations"] = list(self.ablations)
        return json.loads(json.dumps(out))


@dataclass(frozen=True)
class Variant:
    """One FDI + adapter + restoration: an ablation trained on a proportion of the training set.

    Folders: ``<run>/p<percent>/`` holds the subset's pairs and FDI (shared by ablations),
    ``<run>/p<percent>/<ablation>/`` the adapter, its training run, the restored images and the metrics.
    """

    proportion: float
    ablation: str

    @property
    def subset_dir(self) -> str:
        return f"p{round(self.proportion * 100):03d}"

    @property
    def folder(self) -> str:
        return f"{self.subset_dir}/{self.ablation}"


def parse_proportions(text: str) -> Tuple[float, ...]:
    """``"0.3,0.6,1"`` → ``(0.3, 0.6, 1.0)``: each in (0, 1], distinct as whole percents."""
    try:
        values = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise FDIError(f"--proportions {text!r} is not a comma-separated list of numbers such as 0.3,0.6,1") from None
    if not values or any(not (math.isfinite(v) and 0 < v <= 1) for v in values):
        raise FDIError(f"--proportions {text!r}: give fractions of the training set in (0, 1], e.g. 0.3,0.6,1")
    percents = [round(v * 100) for v in values]
    if len(set(percents)) != len(percents) or 0 in percents:
        raise FDIError(f"--proportions {text!r}: give distinct proportions of at least 0.01 (whole percents)")
    return values


def parse_ablations(text: str) -> Tuple[str, ...]:
    """``"full,no-visual-modulator"`` → the names, each one of :data:`ABLATIONS`, distinct."""
    names = tuple(t.strip().lower() for t in text.split(",") if t.strip())
    unknown = [n for n in names if n not in ABLATIONS]
    if not names or unknown:
        raise FDIError(f"--ablation {text!r}: use one or more of {', '.join(ABLATIONS)}, separated by commas")
    if len(set(names)) != len(names):
        raise FDIError(f"--ablation {text!r} names an ablation twice; give each once")
    return names


def adapter_overrides(cfg: ReproduceConfig, ablation: str) -> dict:
    """The adapter config overrides of one ablation: ``--adapter-config``'s, then the ablation's switches."""
    return {**cfg.adapter_config, **ABLATIONS[ablation]}


def variants(cfg: ReproduceConfig) -> List[Variant]:
    """Every (proportion, ablation) of the run, proportions in the given order."""
    return [Variant(p, a) for p in cfg.proportions for a in cfg.ablations]


def check_run_folder(run: Path, settings: dict) -> bool:
    """Refuse a run folder that holds another task's run, a run with other settings, or files that are not a
    reproduction; returns whether it holds this run already (a resume)."""
    if run.exists() and not run.is_dir():
        raise FDIError(f"output {str(run)!r} is a file; give a folder for the run (-o runs/TASK)")
    if not run.is_dir() or not any(run.iterdir()):
        return False
    file = run / SETTINGS_FILE
    if not file.is_file():
        raise FDIError(
            f"output folder {str(run)!r} holds files but no {SETTINGS_FILE}: it is not a reproduction run; "
            "give a new or empty folder"
        )
    try:
        old = json.loads(file.read_text())["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        raise FDIError(f"{file} is unreadable; the folder is not a complete run, give another -o") from None
    if old.get("task") != settings["task"]:
        raise FDIError(
            f"output folder {str(run)!r} holds a run of task {old.get('task')!r}, not {settings['task']!r}; "
            "give another -o"
        )
    diff = [k for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
    if diff:
        said = "; ".join(f"{k}: {old.get(k)!r} then, {settings.get(k)!r} now" for k in diff)
        raise FDIError(
            f"output folder {str(run)!r} holds this task's run with other settings ({said}); resume it with the "
            "same options, or give another -o"
        )
    return True


def write_settings(run: Path, settings: dict) -> None:
    """Write ``settings.json`` (atomically)."""
    with atomic_write(run / SETTINGS_FILE, "w") as fh:
        json.dump({"format": SETTINGS_FORMAT, "settings": settings}, fh, indent=2, sort_keys=True)
        fh.write("\n")


def as_dict(cfg: ReproduceConfig) -> dict:
    """Every field of ``cfg`` (JSON-safe)."""
    return json.loads(json.dumps(asdict(cfg)))
