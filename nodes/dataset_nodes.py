"""Nodes that read a downloaded restoration data set (:mod:`fdi.datasets`) into the graph: its pairs as
``FDI_PAIRS`` for 'Train FDI Adapter', and the FDI of such pairs."""

from __future__ import annotations

import logging
import os

from comfy_api.latest import io

from ..fdi.datasets import SPLITS, dataset_names, dataset_source
from ..fdi.errors import FDIError
from ..fdi.extract import extract_fdi_from_sources
from ..fdi.images import load_image
from ..fdi.training.memory import check_pairs
from .common import CATEGORY, FDIPairsType, FDIType, check_inside, input_subfolder, progress_callback
from .fdi_nodes import Blip2QFormer
from .train_nodes import PairList

log = logging.getLogger(__name__)


def evenly_spaced(n: int, k: int) -> list:
    """``k`` indices spread evenly over ``range(n)`` (all of them when ``k`` is 0 or at least ``n``)."""
    if k <= 0 or k >= n:
        return list(range(n))
    return [int(i * n / k) for i in range(k)]


class FDIDatasetPairs(io.ComfyNode):
    """The pairs of one split of a data set unpacked inside ComfyUI's input folder."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        names = dataset_names()
        return io.Schema(
            node_id="FDIDatasetPairs",
            display_name="Load Data Set Pairs (FDI)",
            category=f"{CATEGORY}/training",
            description=(
                "Reads a restoration data set (Rain100H, SOTS, LOL, GoPro, …) as its download unpacks, inside "
                "ComfyUI's input folder, and pairs its images by the set's own name rule, as 'python -m fdi "
                "datasets pairs' does. Junk and side maps are skipped; images without ground truth and counts "
                "unlike the paper's are reported in the console. Clean-only sets (cbsd68, live1, div2k, flickr2k) "
                "get their degraded images synthesized once into input/fdi-datasets. The pairs are loaded into "
                "memory: use max_pairs for large sets."
            ),
            inputs=[
                io.Combo.Input(
                    "dataset",
                    options=names,
                    default="rain100h" if "rain100h" in names else names[0],
                    tooltip="The data set ('python -m fdi datasets list'; docs/datasets.md).",
                ),
                io.String.Input(
                    "folder",
                    default="datasets",
                    tooltip="Folder inside ComfyUI's input folder where the data set was unpacked (or the set's "
                    "own folder).",
                ),
                io.Combo.Input("split", options=list(SPLITS), default="train", tooltip="Which split."),
                io.String.Input(
                    "task",
                    default="",
                    tooltip="The set's task where it has several (daclip: haze, rainstreak…; div2k: noise or "
                    "jpeg); empty = its default.",
                ),
                io.Int.Input(
                    "max_pairs",
                    default=0,
                    min=0,
                    max=100000,
                    tooltip="Load at most this many pairs, spread evenly over the split; 0 = all.",
                ),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=2**31 - 1,
                    tooltip="Seed of synthesized degradations (clean-only sets).",
                ),
            ],
            outputs=[
                FDIPairsType.Output(
                    display_name="pairs", tooltip="The pairs, for 'Train FDI Adapter' or 'Extract FDI (pairs)'."
                ),
                io.String.Output(display_name="summary", tooltip="Data set, release, split, pair count and warnings."),
            ],
        )

    @classmethod
    def execute(cls, dataset: str, folder: str, split: str, task: str, max_pairs: int, seed: int) -> io.NodeOutput:
        import folder_paths

        root = input_subfolder(folder, "data set folder")
        base = folder_paths.get_input_directory()
        # clean-only sets synthesize into input/fdi-datasets (fdi.datasets.cache_beside of a file in input/)
        source = dataset_source(dataset, root, split, task.strip() or None, os.path.join(base, "pairs"), seed)
        found = source.read(progress=progress_callback(1))
        chosen = [found.pairs[i] for i in evenly_spaced(len(found.pairs), max_pairs)]
        check_inside([p.degraded for p in chosen] + [p.clean for p in chosen], base, "data set")
        degraded = [load_image(p.degraded) for p in chosen]
        clean = [load_image(p.clean) for p in chosen]
        check_pairs(degraded, clean)
        summary = (
            f"{found.dataset} {found.split} ({found.release}; task {found.task}, metric {found.metric}): "
            f"{len(chosen)} of {len(found.pairs)} pairs" + "".join(f"\nwarning: {w}" for w in found.warnings)
        )
        log.info(summary)
        return io.NodeOutput(PairList(degraded, clean, [p.name for p in chosen]), summary)


class FDIExtractPairs(io.ComfyNode):
    """The FDI of ``FDI_PAIRS`` (images of any sizes), as the command line computes it from a pairs list."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FDIExtractPairs",
            display_name="Extract FDI (pairs)",
            category=f"{CATEGORY}/instruction",
            description=(
                "Computes an FDI from pairs of any sizes ('Load Data Set Pairs (FDI)', 'Load FDI Training Pairs'): "
                "the mean over pairs of Q(degraded) − Q(clean), a batch at a time, with a progress bar; Cancel "
                "stops it cleanly."
            ),
            inputs=[
                Blip2QFormer.Input("qformer", tooltip="The BLIP-2 Q-Former from 'Load BLIP-2 Q-Former (FDI)'."),
                FDIPairsType.Input("pairs", tooltip="The reference pairs."),
                io.String.Input("label", default="", tooltip="A name for this FDI, stored in the file."),
                io.Int.Input("batch_size", default=8, min=1, max=256, tooltip="Pairs encoded per step."),
                io.Boolean.Input(
                    "keep_pairs", default=True, tooltip="Keep the per-pair FDIs (for FDIInspect's 2-D map)."
                ),
            ],
            outputs=[FDIType.Output(display_name="fdi", tooltip="The FDI of all pairs.")],
        )

    @classmethod
    def execute(cls, qformer, pairs: PairList, label: str, batch_size: int, keep_pairs: bool) -> io.NodeOutput:
        if len(pairs.degraded) != len(pairs.clean) or not pairs.degraded:
            raise FDIError(f"{len(pairs.degraded)} degraded but {len(pairs.clean)} clean images; give whole pairs")
        sources = [((lambda d=d: d), (lambda c=c: c)) for d, c in zip(pairs.degraded, pairs.clean)]
        encoder = qformer.loaded()
        fdi = extract_fdi_from_sources(
            encoder, sources, label, batch_size, keep_pairs, progress=progress_callback(len(sources))
        )
        return io.NodeOutput(fdi)


NODES = [FDIDatasetPairs, FDIExtractPairs]
