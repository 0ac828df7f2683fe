"""Reproduce the paper's protocol for one task: ``reproduce(ReproduceConfig(task=…, data=ROOT, sd=…, blip2=…,
output=RUN))`` reads the task's data sets (:mod:`fdi.datasets`), computes the task FDI from the training pairs,
trains the adapter with the paper's settings, restores the test set with the paper's sampler, measures it and
writes ``report.json``/``report.md`` beside the paper's published figures (:data:`PROTOCOLS`). Every stage
resumes after an interruption. How to run each task: docs/reproduce.md.
"""

from __future__ import annotations

from .config import ABLATIONS, ReproduceConfig, Variant, parse_ablations, parse_proportions
from .protocols import PROTOCOLS, DataPlan, PaperFigures, Protocol, get_protocol, resolve
from .run import Plan, ReproduceResult, plan, reproduce

__all__ = [
    "ABLATIONS",
    "PROTOCOLS",
    "DataPlan",
    "PaperFigures",
    "Plan",
    "Protocol",
    "ReproduceConfig",
    "ReproduceResult",
    "Variant",
    "get_protocol",
    "parse_ablations",
    "parse_proportions",
    "plan",
    "reproduce",
    "resolve",
]
