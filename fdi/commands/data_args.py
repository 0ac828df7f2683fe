"""``--dataset NAME --data ROOT`` (with ``--split``, ``--task``, ``--data-seed``): the data set shortcut that
``extract``, ``train``, ``restore``, ``eval`` and ``datasets pairs`` share."""

from __future__ import annotations

import argparse
from typing import Optional


def add_dataset_args(g, split: Optional[str] = "train", with_split: bool = True) -> None:
    """Declare the options on parser or group ``g``; ``split`` is ``--split``'s default (``None``: required)."""
    g.add_argument(
        "--dataset",
        metavar="NAME",
        default=None,
        help="read the pairs of a downloaded data set ('python -m fdi datasets list'); with --data",
    )
    g.add_argument(
        "--data", metavar="ROOT", default=None, help="the folder the data set was unpacked into (or its own folder)"
    )
    if with_split:
        g.add_argument(
            "--split",
            choices=("train", "test"),
            default=split,
            required=split is None,
            help=f"which split of --dataset (default: {split})" if split else "which split of the data set",
        )
    g.add_argument(
        "--task",
        dest="dataset_task",
        metavar="TASK",
        default=None,
        help="the data set's task where it has several (daclip's degradations, div2k's noise or jpeg)",
    )
    g.add_argument(
        "--data-seed",
        type=int,
        default=0,
        metavar="N",
        help="seed of the degradations synthesized for clean-only sets (cbsd68, live1, div2k, flickr2k)",
    )


def dataset_source(args: argparse.Namespace, output, split: Optional[str] = None):
    """The :class:`fdi.datasets.DatasetSource` the options name (its cache beside ``output``), or ``None``."""
    from ..datasets import dataset_source as source

    split = split or getattr(args, "split", None) or "train"
    return source(args.dataset, args.data, split, args.dataset_task, output, args.data_seed)
