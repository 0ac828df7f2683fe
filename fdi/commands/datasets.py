"""``python -m fdi datasets list|pairs``: the data set readers (docs/datasets.md)."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(sub) -> None:
    p = sub.add_parser(
        "datasets",
        help="list the data set readers, or write the pairs of a downloaded data set as a CSV",
        description="Read restoration data sets as their downloads unpack (docs/datasets.md): "
        "'list' shows each reader's task, layout and the supplement's counts; "
        "'pairs NAME ROOT --split S -o pairs.csv' writes the name,degraded,clean list that "
        "extract, train and eval read with --pairs-file.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    ls = actions.add_parser("list", help="every data set: name, task, splits, published counts, layout")
    ls.add_argument("--json", action="store_true", help="print JSON instead of text")
    ls.add_argument("--layouts", action="store_true", help="also print each reader's expected folder layout")
    ls.set_defaults(func=run_list)
    pr = actions.add_parser(
        "pairs",
        help="write the pairs of one split of a data set as a CSV",
        description="Find the data set NAME under ROOT (the folder you unpacked it into, or its own folder), pair "
        "its images by the set's name rule and write name,degraded,clean (absolute paths). A tree that is not "
        "the named layout is an error (exit 2) and nothing is written. Clean-only sets (cbsd68, live1, div2k, "
        "flickr2k) get their degraded images synthesized once into fdi-datasets/ beside the CSV.",
    )
    pr.add_argument("name", metavar="NAME", help="data set name ('python -m fdi datasets list')")
    pr.add_argument("root", metavar="ROOT", help="the folder the data set was unpacked into")
    pr.add_argument("--split", choices=("train", "test"), required=True, help="which split")
    pr.add_argument("-o", "--output", required=True, metavar="PAIRS.csv", help="CSV file to write")
    pr.add_argument(
        "--task",
        dest="dataset_task",
        metavar="TASK",
        default=None,
        help="the data set's task where it has several (daclip's degradations, div2k's noise or jpeg)",
    )
    pr.add_argument(
        "--data-seed", type=int, default=0, metavar="N", help="seed of synthesized degradations (clean-only sets)"
    )
    pr.add_argument("--quiet", action="store_true", help="no progress bar")
    pr.set_defaults(func=run_pairs)


def describe(reader) -> dict:
    """One reader as JSON-ready data."""
    return {
        "name": reader.name,
        "title": reader.title,
        "tasks": list(reader.tasks),
        "splits": list(reader.splits),
        "published": dict(reader.published),
        "metric": reader.metric,
        "releases": [{"name": r.name, "layout": r.layout} for r in reader.releases],
        "source": reader.source,
        "note": reader.note,
    }


def run_list(args: argparse.Namespace) -> int:
    from ..datasets import DATASETS

    if args.json:
        print(json.dumps([describe(r) for r in DATASETS.values()], indent=2))
        return 0
    rows = [("name", "task(s)", "splits (supplement's pairs)", "metric", "note")]
    for r in DATASETS.values():
        splits = ", ".join(f"{s} {r.published[s]}" if s in r.published else s for s in r.splits)
        tasks = ",".join(r.tasks) if len(r.tasks) <= 3 else f"{r.tasks[0]} (+{len(r.tasks) - 1}, see --layouts)"
        rows.append((r.name, tasks, splits, r.metric if r.reference else "none", r.note))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[4])
        if args.layouts and row is not rows[0]:
            reader = DATASETS[row[0]]
            print("\n".join("    " + line for line in reader.layout.splitlines()))
            print(f"    tasks: {', '.join(reader.tasks)}; download: {reader.source}")
    if not args.layouts:
        print("\n--layouts shows each reader's folder layout; docs/datasets.md has the details.")
    return 0


def run_pairs(args: argparse.Namespace) -> int:
    from ..datasets import DatasetSource, cache_beside, get_dataset, write_pairs_csv
    from ..files import check_output_path
    from ..progress import tqdm_progress

    out = check_output_path(args.output, suffix=".csv")
    get_dataset(args.name).check(args.split, args.dataset_task)
    source = DatasetSource(args.name, args.root, args.split, args.dataset_task, str(cache_beside(out)), args.data_seed)
    with tqdm_progress(f"synthesizing {args.name}", 0, "img", not args.quiet, lazy=True) as cb:
        split = source.read(progress=cb)
    write_pairs_csv(split.pairs, out)
    print(
        f"wrote {out}: {len(split.pairs)} {args.split} pairs of {split.dataset} ({split.release}; "
        f"task {split.task}, metric {split.metric.upper() if split.metric == 'y' else 'RGB'})",
        file=sys.stdout,
    )
    return 0
