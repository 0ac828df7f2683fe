"""Command line: ``python -m fdi COMMAND …`` (``--help`` on every command).

Each command lives in its own module under :mod:`fdi.commands` with two functions:
``add_parser(subparsers)`` (declares its arguments) and ``run(args) -> int``. User errors
(:class:`~fdi.errors.FDIError`) end with exit code 2 and one line on stderr, no traceback;
Ctrl-C ends with 130 and leaves no partial output file (every writer is atomic).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from .errors import FDIError

#: command modules, in the order ``--help`` lists them
COMMANDS = ("degrade", "extract", "combine", "inspect", "eval", "train", "restore", "adapter-info", "pack-blip2")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fdi",
        description="Feature Difference Instruction (FDI): extract, combine and inspect FDIs; "
        "restore and train with FDI adapters.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f".commands.{name.replace('-', '_')}", __package__).add_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FDIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: no output was written", file=sys.stderr)
        return 130
