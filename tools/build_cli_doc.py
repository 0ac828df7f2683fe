"""Write ``docs/cli.md``, the reference of every ``python -m fdi`` command and flag, from the argparse parser.

Every row comes from ``fdi.cli.build_parser()`` (flags, metavar or choices, default, help), so the page
cannot drift from the code: ``tests/comfyui/test_help_and_locales.py`` renders it again and compares.
The rows are read from the parser's actions, not from ``--help`` output, so the page does not depend
on the Python version's help layout.

    python tools/build_cli_doc.py           # write docs/cli.md
    python tools/build_cli_doc.py --check   # exit 1 when docs/cli.md is stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI_MD = ROOT / "docs" / "cli.md"

HEAD = """# Command line reference

`python -m fdi COMMAND …`; every command also has `--help`. User errors end with exit code 2 and one line
on stderr; Ctrl-C ends with 130; no command leaves a half-written file behind (every write is a temporary
file + rename). This page is written by `tools/build_cli_doc.py` from the parser (do not edit it by hand):
the examples first, then every command and flag.

## Examples

```bash
# BLIP-2's vision model + Q-Former from its 15 GB folder into one 2.2 GB file (--blip2 takes either)
python -m fdi pack-blip2 models/blip2/blip2-opt-2.7b -o models/blip2/blip2-opt-2.7b-fp16.safetensors
# FDI from paired folders (rain_001.png pairs with rain_001.jpg); any size, RGB/RGBA/gray/16-bit
python -m fdi extract --blip2 models/blip2/blip2-opt-2.7b --degraded rainy/ --clean clean/ -o rain.fdi.safetensors \\
    --keep-pairs
# combine: sum (Σ w·F), mean (Σ w·F / Σ w) or difference (w1·F1 − w2·F2); cosine matrix + PCA map of FDIs
python -m fdi combine denoise.fdi.safetensors desnow.fdi.safetensors --weights 0.5 0.5 -o mix.fdi.safetensors
python -m fdi inspect rain.fdi.safetensors haze.fdi.safetensors snow.fdi.safetensors -o fdis.png

# restore: one adapter (its file embeds its FDI); two adapters combined (composite) or chained (progressive)
python -m fdi restore --sd models/stable-diffusion-2-1-base --adapter derain.safetensors --image rainy/ -o out/
python -m fdi restore --sd models/stable-diffusion-2-1-base --adapter derain.safetensors --weight 1.0 \\
    --adapter desnow.safetensors --weight 0.5 --fdi rain.fdi.safetensors --fdi snow.fdi.safetensors \\
    --image photo.jpg -o out/
python -m fdi restore --sd v2-1_512-ema-pruned.safetensors --adapter dehaze.safetensors --adapter derain.safetensors \\
    --mode progressive --image in.png -o out/
# a large photo in 512 px tiles, colours pulled back to the input's; a folder, resumable; 4 GPUs
python -m fdi restore --sd … --adapter denoise.safetensors --image big.jpg -o out/ --tile-size 512 --color-fix wavelet
python -m fdi restore --sd … --adapter derain.safetensors --image photos/ -o out/ --batch-size 4 --skip-existing
accelerate launch --multi_gpu --num_processes 4 -m fdi restore --sd … --adapter … --image photos/ -o out/
python -m fdi adapter-info derain.safetensors        # config, parameters, base model, embedded FDI

# train with the paper's settings on Rain100H (a pairs list with columns degraded,clean), on 4 GPUs
accelerate launch --multi_gpu --num_processes 4 -m fdi train \\
    --sd models/stable-diffusion-2-1-base --blip2 models/blip2/blip2-opt-2.7b \\
    --pairs-file data/RainTrainH/pairs.csv -o derain.safetensors --mixed-precision bf16 \\
    --checkpoint-every 250 --resume latest \\
    --validate-every 500 --val-degraded data/Rain100H/rain --val-clean data/Rain100H/norain
# score restorations (PSNR/SSIM on RGB and BT.601 Y; --lpips needs the lpips package)
python -m fdi eval --pred results/derain --gt data/Rain100H/norain --y-channel --report derain_eval.json

# the paper's protocol for one task, from the data set as downloaded to a report beside the paper's figures
python -m fdi reproduce --task rainstreak --data data/ --sd models/stable-diffusion-2-1-base \\
    --blip2 models/blip2/blip2-opt-2.7b -o runs/rainstreak --proportions 0.3,0.6,1 --mixed-precision bf16
```

`--sd` is a diffusers folder or a single-file `.safetensors` checkpoint (its configs ship with the package;
`--sd-config` names a diffusers folder instead); epsilon vs v-prediction is read from the weights. `--color-fix`
defaults to `none` because dehazing, low-light and style adapters change colours on purpose; use `wavelet` for
rain, snow, noise, blur or JPEG. A training run writes resumable checkpoints (safetensors + JSON), `train_log.csv`,
`val_log.csv` and TensorBoard logs (when `tensorboard` is installed) to `<output>-run/`; the task FDI is embedded
in the adapter file, so that one file is all restoration needs. The reasons: [design.md](design.md).

**Reproducing the paper.**

`reproduce` runs the paper's protocol for one task: the training and test pairs read from the data sets as
they unpack (their readers: [datasets.md](datasets.md)), the task FDI, the adapter trained with the paper's
settings, the test set restored with its sampler, PSNR/SSIM (Y and RGB; LPIPS when installed) and
`report.md` with the paper's published figures beside ours. Each stage resumes after Ctrl-C: run the same
command again. Tasks, stages, the report and the figures it quotes: [reproduce.md](reproduce.md).
"""


def _cell(text) -> str:
    return " ".join(str(text).replace("|", "\\|").split())


def _subparsers(parser: argparse.ArgumentParser) -> dict:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _help_text(action: argparse.Action, prog: str) -> str:
    if not action.help:
        return ""
    params = {k: v for k, v in vars(action).items() if v is not argparse.SUPPRESS}
    params["prog"] = prog
    if params.get("choices") is not None:
        params["choices"] = ", ".join(str(c) for c in params["choices"])
    try:
        return action.help % params
    except (KeyError, TypeError, ValueError):
        return action.help


def _value_text(action: argparse.Action) -> str:
    if action.nargs == 0:
        return "switch"
    if action.choices is not None:
        shown = "`, `".join(str(c) for c in action.choices)
        text = f"one of `{shown}`"
    else:
        metavar = action.metavar or (action.dest if not action.option_strings else action.dest.upper())
        text = f"`{_cell(' '.join(metavar) if isinstance(metavar, tuple) else metavar)}`"
    if action.nargs in ("+", "*"):
        text += " (one or more)" if action.nargs == "+" else " (any number)"
    elif isinstance(action, argparse._AppendAction):
        text += " (repeatable)"
    return text


def _default_text(action: argparse.Action) -> str:
    if action.required:
        return "required"
    d = action.default
    if d is None or d is argparse.SUPPRESS or d is False or d in ([], ""):
        return ""
    if isinstance(d, (list, tuple)):
        return " ".join(f"`{x}`" for x in d)
    return f"`{d}`"


def render(parser: argparse.ArgumentParser) -> str:
    """The Markdown reference of ``parser``'s commands: one section a command, one table an argument group."""
    out = [HEAD.rstrip(), "", "## Commands", "", "| command | what it does |", "|---|---|"]
    commands = _subparsers(parser)
    helps = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
    out += [f"| [`{name}`](#{name}) | {_cell(helps.get(name, ''))} |" for name in commands]
    for name, sub in commands.items():
        out += ["", f"### {name}", "", f"`{sub.prog}`", ""]
        if sub.description:
            out += [_cell(sub.description), ""]
        for group in sub._action_groups:
            actions = [a for a in group._group_actions if a.help is not argparse.SUPPRESS and a.dest != "help"]
            if not actions:
                continue
            title = {"positional arguments": "Arguments", "options": "Options"}.get(group.title, group.title)
            out += [
                f"**{title[0].upper() + title[1:]}**",
                "",
                "| flag | value | default | what it does |",
                "|---|---|---|---|",
            ]
            for a in actions:
                flags = ", ".join(f"`{s}`" for s in a.option_strings) or f"`{a.metavar or a.dest}`"
                out.append(f"| {flags} | {_value_text(a)} | {_default_text(a)} | {_cell(_help_text(a, sub.prog))} |")
            out.append("")
        if out[-1] == "":
            out.pop()
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 when docs/cli.md is stale")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from fdi.cli import build_parser

    text = render(build_parser())
    if args.check:
        fresh = CLI_MD.is_file() and CLI_MD.read_text(encoding="utf-8") == text
        print("docs/cli.md is up to date" if fresh else "docs/cli.md is stale: run python tools/build_cli_doc.py")
        return 0 if fresh else 1
    CLI_MD.write_text(text, encoding="utf-8")
    print(f"wrote {CLI_MD.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
