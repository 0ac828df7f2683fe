"""``python -m fdi adapter-info``: what an FDI adapter file holds (config, size, base model, FDI)."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "adapter-info",
        help="print an FDI adapter file's config, parameter count, base model family, guidance window and embedded FDI",
        description="Read an FDI adapter file (safetensors only) and print what it holds. "
        "--json prints one JSON object.",
    )
    p.add_argument("adapter", metavar="A.safetensors", help="FDI adapter file")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..adapter import FDIAdapter

    a = FDIAdapter.from_file(args.adapter)
    info = {
        "file": a.source,
        "label": a.label,
        "base_family": a.base_family,
        "encoder": a.encoder,
        "parameters": a.num_parameters(),
        "parameter_counts": a.parameter_counts(),
        "noise_decoupling": a.config.noise_decoupling,
        "visual_modulator": a.config.visual_modulator,
        "config": a.config.as_dict(),
        "guidance_window": None if a.guidance_window is None else list(a.guidance_window),
        "timestep_sampling": a.timestep_sampling,
        "fdi": None
        if a.fdi is None
        else {
            "label": a.fdi.label,
            "tokens": a.fdi.shape[0],
            "width": a.fdi.shape[1],
            "n_pairs": a.fdi.n_pairs,
            "encoder": a.fdi.encoder,
            "norm": round(float(a.fdi.tokens.norm()), 6),
        },
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    c = a.config
    print(f"adapter      {a.source}" + (f"  ({a.label})" if a.label else ""))
    print(f"base model   {a.base_family}")
    parts = ", ".join(f"{k.replace('_', ' ')} {v / 1e6:.2f} M" for k, v in a.parameter_counts().items())
    print(f"parameters   {a.num_parameters():,} ({a.num_parameters() / 1e6:.2f} M: {parts})")
    print(f"modules      {modules_text(c)}")
    print(f"channels     {', '.join(map(str, c.channels))}")
    print(f"FDI tokens   {c.num_tokens} x {c.token_width}")
    print(
        f"architecture res_blocks={c.res_blocks} bottleneck={c.bottleneck} heads={c.heads} "
        f"se_reduction={c.se_reduction} unshuffle={c.unshuffle}"
    )
    print(f"encoder      {a.encoder or '(not recorded)'}")
    print(f"trained for  {window_text(a.guidance_window, a.timestep_sampling)}")
    print(f"embedded FDI {a.fdi.describe() if a.fdi is not None else 'none (pass --fdi to restore)'}")
    return 0


def modules_text(config) -> str:
    """The paper's two ablatable modules, on or off (``noise decoupling on, visual modulator off (ablated)``)."""
    from ..adapter_config import MODULE_SWITCHES

    return ", ".join(
        f"{name.replace('_', ' ')} {'on' if getattr(config, name) else 'off (ablated)'}" for name in MODULE_SWITCHES
    )


def window_text(window, sampling) -> str:
    """The guidance window and timestep sampling an adapter was trained with, for people."""
    from ..sampling import DEFAULT_GUIDANCE_WINDOW

    if window is None:
        start, end = DEFAULT_GUIDANCE_WINDOW
        return f"(not recorded: an older file; restoration guides steps {start:g}..{end:g} of sampling, the paper's)"
    drawn = f", timesteps drawn {sampling}" if sampling else ""
    return f"guidance window {window[0]:g}..{window[1]:g} of the sampling steps{drawn}"
