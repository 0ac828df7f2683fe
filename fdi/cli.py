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
import warnings
from typing import List, Optional

from .errors import FDIError

#: command modules, in the order ``--help`` lists them
COMMANDS = (
    "degrade",
    "datasets",
    "extract",
    "combine",
    "inspect",
    "eval",
    "train",
    "restore",
    "classify",
    "reproduce",
    "adapter-info",
    "pack-blip2",
)


class HelpFormatter(argparse.HelpFormatter):
    """``--help`` with each option's default, "(default: X)", where there is one to show: not for a required
    option, a switch, a ``None`` or empty default, or a help text that already says its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        d = action.default
        if (
            action.required
            or not action.option_strings
            or d is None
            or d is argparse.SUPPRESS
            or isinstance(d, bool)
            or d in ("", [], ())
            or "default" in text.lower()
        ):
            return text
        return f"{text} (default: %(default)s)"


def build_parser(prog: str = "python -m fdi") -> argparse.ArgumentParser:
    """The parser of every command; ``prog`` is how usage lines name the program."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Feature Difference Instruction (FDI): extract, combine and inspect FDIs; "
        "restore and train with FDI adapters.",
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f".commands.{name.replace('-', '_')}", __package__).add_parser(sub)
    for command in sub.choices.values():  # one help layout for every command, whatever its module asked for
        command.formatter_class = HelpFormatter
    return parser


def main(argv: Optional[List[str]] = None, prog: str = "fdi") -> int:
    """The ``fdi`` console script (``python -m fdi`` passes its own ``prog``); returns the exit status."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            show = warnings.showwarning
            warnings.showwarning = lambda m, c, *a, **k: _show_warning(show, m, c, *a, **k)
            return int(args.func(args) or 0)
    except FDIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: no output was written", file=sys.stderr)
        return 130


def _show_warning(default, message, category, *args, **kwargs) -> None:
    """The library's own warnings as one ``warning: …`` line on stderr; others as Python prints them."""
    from .datasets import DatasetWarning

    if issubclass(category, DatasetWarning):
        print(f"warning: {message}", file=sys.stderr)
    else:
        default(message, category, *args, **kwargs)
