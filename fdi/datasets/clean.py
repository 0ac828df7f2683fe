"""Clean-only sets whose degraded images the protocol synthesizes: CBSD68 (σ = 50 noise).

Layouts and levels: docs/datasets.md, "Clean-only sets".
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .core import Context, Dataset, Found, Release, find_dir, image_files
from .synth import synthesize


def _scan_cbsd68(root: Path, split: str, ctx: Context) -> Optional[Found]:
    top = find_dir(root, "CBSD68/original_png", "CBSD68/original", "CBSD68")
    if top is None:
        return None
    clean = image_files(top)
    if not clean:
        return None
    names = [p.stem for p in clean]
    return Found(synthesize("cbsd68", split, names, clean, ctx), [], top)


READERS = (
    Dataset(
        name="cbsd68",
        title="CBSD68",
        tasks=("noise",),
        splits=("test",),
        releases=(
            Release(
                "CBSD68 (68 colour BSD images)",
                "CBSD68/original_png/*.png (the CBSD68-dataset repository; its noisyN folders are ignored)\n"
                "or CBSD68/*.png (KAIR, Restormer test sets)",
                _scan_cbsd68,
            ),
        ),
        published={"test": 68},
        metric="rgb",
        source="https://github.com/clausmichele/CBSD68-dataset",
        note="clean only: Gaussian noise σ = 50 (8-bit levels) is synthesized, seeded per image name",
    ),
)
