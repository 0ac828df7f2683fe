"""Write the example workflows of this folder (ComfyUI UI format, schema 0.4) from Python descriptions.

Usage (with a ComfyUI that has this pack loaded; no model files are needed)::

    python workflows/build_workflows.py --object-info http://127.0.0.1:8188/object_info
    python workflows/build_workflows.py --object-info object_info.json      # a saved copy
    python workflows/build_workflows.py --check --object-info URL           # exit 1 if a file would change

Each workflow below is a list of nodes (type, position, title, widget values *by name*), links (by
output and input *name*), notes and groups. The node schemas from ``/object_info`` decide the slot
lists, slot types, widget order and every widget value left out (the node's default), so a
workflow is what the ComfyUI frontend itself would save for those nodes (frontend 1.35: linked
inputs first, then one input entry per widget; an ``INT`` with ``control_after_generate`` is
followed by its control value, an ``image_upload`` combo by the upload widget). The output is
deterministic: the workflow id is a UUID derived from its name, nodes are numbered in description
order, links in link order, and every dict is built in a fixed order.

The descriptions and the writer are the ``builder`` package beside this file (by workflow family); the model
files they name, with their download addresses, come from ``fdi/sources.py``. Only the standard library is
used. Thumbnails (``<name>.jpg``, what ComfyUI's template browser
shows) are screenshots made by the browser test (``tests/comfyui/test_workflows.py``, with
``FDI_UPDATE_THUMBNAILS=1``), not by this script.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # this checkout's workflows.builder and fdi.sources (standard library only)

from workflows.builder.catalog import WORKFLOWS  # noqa: E402
from workflows.builder.graph import Workflow, build  # noqa: E402
from workflows.builder.names import (  # noqa: E402
    ADAPTER_FAMILIES,
    ADAPTERS,
    BLIP2_FOLDER,
    CHECKPOINT,
    CLASSIFIERS,
    DATASETS,
    DOWNLOADS,
    FDI_FILES,
    INPUT_IMAGES,
    ONE_PAIR_IMAGES,
    PAIR_FOLDERS,
    SDXL_CHECKPOINT,
    WORKFLOW_CHECKPOINTS,
)
from workflows.builder.schema import (  # noqa: E402
    combo_options,
    input_specs,
    is_widget,
    load_object_info,
    saved_outputs,
    widget_layout,
)

__all__ = [
    "ADAPTER_FAMILIES",
    "ADAPTERS",
    "BLIP2_FOLDER",
    "CHECKPOINT",
    "CLASSIFIERS",
    "DATASETS",
    "DOWNLOADS",
    "FDI_FILES",
    "INPUT_IMAGES",
    "ONE_PAIR_IMAGES",
    "PAIR_FOLDERS",
    "SDXL_CHECKPOINT",
    "WORKFLOW_CHECKPOINTS",
    "WORKFLOWS",
    "Workflow",
    "build",
    "combo_options",
    "dump",
    "input_specs",
    "is_widget",
    "main",
    "saved_outputs",
    "widget_layout",
]


def dump(workflow: dict) -> str:
    return json.dumps(workflow, indent=2, ensure_ascii=False) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--object-info",
        default="http://127.0.0.1:8188/object_info",
        help="URL of a running ComfyUI's /object_info (with this pack loaded) or a saved JSON copy",
    )
    ap.add_argument("--out", default=str(HERE), help="folder to write to (default: this folder)")
    ap.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a file differs from what would be written"
    )
    args = ap.parse_args(argv)
    info = load_object_info(args.object_info)
    out = Path(args.out)
    stale = []
    for name, (builder, _) in WORKFLOWS.items():
        text = dump(build(builder(), info))
        path = out / f"{name}.json"
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(path.name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        print("out of date: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
