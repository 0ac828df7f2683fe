"""Clean-only sets whose degraded images the protocol synthesizes: CBSD68 (σ = 50 noise), LIVE1 (JPEG quality 10),
DIV2K and Flickr2K (the noise and JPEG training images).

Layouts and levels: docs/datasets.md, "Clean-only sets" and each set's section.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, Optional

from .core import Context, Dataset, Found, Release, find_dir, image_files
from .synth import synthesize

_DIV2K_NUMBER = re.compile(r"^(\d{4})$")
#: DIV2K's numbering: 0001–0800 train, 0801–0900 validation (the paper's "test" split here), 0901–1000 test
#: (never published with ground truth)
_DIV2K_TRAIN, _DIV2K_VALID = range(1, 801), range(801, 901)


def _found(dataset: str, split: str, top: Path, clean: List[Path], ctx: Context) -> Optional[Found]:
    """Synthesize the degraded images of ``clean`` (named by their stems); ``None`` when there are none."""
    if not clean:
        return None
    return Found(synthesize(dataset, split, [p.stem for p in clean], clean, ctx), [], top)


def _scan_cbsd68(root: Path, split: str, ctx: Context) -> Optional[Found]:
    top = find_dir(root, "CBSD68/original_png", "CBSD68/original", "CBSD68")
    return None if top is None else _found("cbsd68", split, top, image_files(top), ctx)


def _div2k_number(p: Path) -> Optional[int]:
    m = _DIV2K_NUMBER.match(p.stem)
    return int(m.group(1)) if m else None


def _scan_div2k_snu(root: Path, split: str, ctx: Context) -> Optional[Found]:
    """EDSR's DIV2K.tar: all 900 images in ``DIV2K_train_HR``; the split is taken by number."""
    top = find_dir(root, "DIV2K_train_HR")
    if top is None:
        return None
    numbered = [(p, _div2k_number(p)) for p in image_files(top)]
    if not any(n in _DIV2K_VALID for _, n in numbered):
        return None  # the official train folder (0001–0800 only)
    wanted = _DIV2K_TRAIN if split == "train" else _DIV2K_VALID
    return _found("div2k", split, top, [p for p, n in numbered if n in wanted], ctx)


def _scan_div2k_official(root: Path, split: str, ctx: Context) -> Optional[Found]:
    top = find_dir(root, "DIV2K_train_HR" if split == "train" else "DIV2K_valid_HR")
    return None if top is None else _found("div2k", split, top, image_files(top), ctx)


def _scan_flickr2k(root: Path, split: str, ctx: Context) -> Optional[Found]:
    top = find_dir(root, "Flickr2K_HR")
    return None if top is None else _found("flickr2k", split, top, image_files(top), ctx)


def _scan_live1_release(root: Path, split: str, ctx: Context) -> Optional[Found]:
    top = find_dir(root, "databaserelease2/refimgs", "refimgs")
    return None if top is None else _found("live1", split, top, image_files(top), ctx)


def _scan_live1_testset(root: Path, split: str, ctx: Context) -> Optional[Found]:
    top = find_dir(root, "LIVE1_color", "LIVE1")
    return None if top is None else _found("live1", split, top, image_files(top), ctx)


_SYNTH_NOTE = "Gaussian noise σ = 50 (8-bit levels) or JPEG quality 10 is synthesized, seeded per image name"

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
    Dataset(
        name="div2k",
        title="DIV2K",
        tasks=("noise", "jpeg"),
        splits=("train", "test"),
        releases=(
            Release(
                "SNU repack (EDSR's DIV2K.tar, linked by DA-CLIP)",
                "DIV2K/DIV2K_train_HR/0001.png … 0900.png: train 0001–0800, test 0801–0900\n"
                "(DIV2K_train_LR_bicubic/, DIV2K_train_LR_unknown/ ignored)",
                _scan_div2k_snu,
            ),
            Release(
                "official release (ETH DIV2K_train_HR.zip, DIV2K_valid_HR.zip)",
                "DIV2K_train_HR/0001.png … 0800.png (train)\n"
                "DIV2K_valid_HR/0801.png … 0900.png (test)\n"
                "(the *_LR_bicubic/X2/0001x2.png folders are ignored)",
                _scan_div2k_official,
            ),
        ),
        metric="rgb",
        source="https://data.vision.ee.ethz.ch/cvl/DIV2K/ (Agustsson & Timofte, NTIRE 2017)",
        note="clean only: " + _SYNTH_NOTE + "; the supplement's 3,440 counts DIV2K and Flickr2K together",
    ),
    Dataset(
        name="flickr2k",
        title="Flickr2K",
        tasks=("noise", "jpeg"),
        splits=("train",),
        releases=(
            Release(
                "SNU release (Flickr2K.tar)",
                "Flickr2K/Flickr2K_HR/000001.png … 002650.png\n(Flickr2K_LR_bicubic/, Flickr2K_LR_unknown/ ignored)",
                _scan_flickr2k,
            ),
        ),
        metric="rgb",
        source="https://cv.snu.ac.kr/research/EDSR/Flickr2K.tar (Lim et al., EDSR, 2017)",
        note="clean only, train only: " + _SYNTH_NOTE + "; the supplement's 3,440 counts DIV2K and Flickr2K together",
    ),
    Dataset(
        name="live1",
        title="LIVE1",
        tasks=("jpeg",),
        splits=("test",),
        releases=(
            Release(
                "LIVE IQA release 2 (reference images)",
                "databaserelease2/refimgs/*.bmp (29 images: bikes.bmp … womanhat.bmp)\n"
                "(the distorted folders jpeg/, jp2k/, wn/, gblur/, fastfading/ are ignored)",
                _scan_live1_release,
            ),
            Release(
                "test-set folder (DnCNN/KAIR LIVE1, FBCNN LIVE1_color)",
                "LIVE1_color/*.bmp or LIVE1/*.bmp",
                _scan_live1_testset,
            ),
        ),
        published={"test": 29},
        metric="rgb",
        source="https://live.ece.utexas.edu/research/quality/subjective.htm (Sheikh et al., LIVE IQA release 2)",
        note="clean only: JPEG quality 10 is synthesized (Pillow's encoder); the 29 reference images of LIVE",
    ),
)
