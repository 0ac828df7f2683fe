"""The paper's protocol per task: training and test data sets (supplement §1) and its published figures.

Only the figures the supplement prints are here (Table 6: Rain100H and LOL-v1 at 30 %, 60 % and the whole
training set; Table 7: the adapter's size and time per image); every other cell of a report stays empty.
The data set names are :mod:`fdi.datasets` reader names, checked when a run starts (:func:`resolve`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

from ..errors import FDIError

#: where the figures below are printed
TABLE6 = "supplement Table 6 (SD 2.1 base; proportions of the training set)"
TABLE7 = "supplement Table 7 (single-type degradation efficiency; environment not stated)"
#: the adapter's size (millions of parameters) and time per image (seconds), Table 7
PAPER_PARAMS_M = 45.10
PAPER_SECONDS_PER_IMAGE = 3.04


@dataclass(frozen=True)
class PaperFigures:
    """One published result: PSNR in dB, LPIPS (AlexNet, lower is better), where it is printed."""

    psnr: float
    lpips: float
    source: str = TABLE6


@dataclass(frozen=True)
class Protocol:
    """A task's protocol: ``train`` data sets (their pairs concatenated), the ``test`` set, the task the readers
    are asked for, and the paper's figures by proportion of the training set (``1.0`` = whole)."""

    task: str
    train: Tuple[str, ...]
    test: str
    figures: Mapping[float, PaperFigures] = field(default_factory=dict)
    note: str = ""


PROTOCOLS: Dict[str, Protocol] = {
    p.task: p
    for p in (
        Protocol(
            "rainstreak",
            ("rain100h",),
            "rain100h",
            {0.3: PaperFigures(29.57, 0.176), 0.6: PaperFigures(31.88, 0.045), 1.0: PaperFigures(34.55, 0.023)},
            "Rain100H: 1800 training, 100 test pairs (the 2017 release)",
        ),
        Protocol("raindrop", ("raindrop",), "raindrop", note="RainDrop: 861 / 58"),
        Protocol("haze", ("reside6k",), "reside6k", note="RESIDE-6k: 6000 / 1000"),
        Protocol("snow", ("snow100k",), "snow100k", note="Snow100K, DA-CLIP's subset: 1872 / 601"),
        Protocol(
            "lowlight",
            ("lol",),
            "lol",
            {0.3: PaperFigures(23.19, 0.158), 0.6: PaperFigures(24.28, 0.091), 1.0: PaperFigures(24.55, 0.075)},
            "LOL-v1: 485 / 15",
        ),
        Protocol("noise", ("div2k", "flickr2k"), "cbsd68", note="DIV2K + Flickr2K (3440) / CBSD68 (68), σ = 50"),
        Protocol("motion-blur", ("gopro",), "gopro", note="GoPro: 2103 / 1111"),
        Protocol("defocus-blur", ("dpdd",), "dpdd", note="DPDD: 350 / 150"),
        Protocol("shadow", ("srd",), "srd", note="SRD: 2680 / 408"),
        Protocol("jpeg", ("div2k", "flickr2k"), "live1", note="DIV2K + Flickr2K / LIVE1 (29), quality 10"),
        Protocol("rainstreak+raindrop", ("rainds-syn",), "rainds-syn", note="RainDS: 1000 / 200"),
        Protocol("rainstreak+haze", ("outdoor-rain",), "outdoor-rain", note="Outdoor-Rain: 750 / 50"),
    )
}


@dataclass(frozen=True)
class DataPlan:
    """The data sets a run reads: ``train`` names, ``test`` name, the task the readers are asked for, and
    whether they are the protocol's own (then the paper's figures apply)."""

    task: str
    train: Tuple[str, ...]
    test: str
    is_protocol: bool

    def figures(self, proportion: float) -> Optional[PaperFigures]:
        """The paper's figures for a run on ``proportion`` of the training set, when it printed any."""
        if not self.is_protocol:
            return None
        for p, fig in PROTOCOLS[self.task].figures.items():
            if abs(p - proportion) < 1e-9:
                return fig
        return None


def get_protocol(task: str) -> Protocol:
    """The protocol of ``task``; an unknown task is an error listing the known ones."""
    p = PROTOCOLS.get(task.strip().lower())
    if p is None:
        raise FDIError(f"unknown task {task!r}; use one of: {', '.join(PROTOCOLS)}")
    return p


def resolve(task: str, datasets: Optional[List[str]] = None, test_dataset: Optional[str] = None) -> DataPlan:
    """The data sets of a run: the protocol's, or ``datasets`` (training) and ``test_dataset`` given instead.

    Given training sets without a test set: the test set is the single given set when it has a test split,
    else the protocol's. Every name must be a registered reader with the split it is used for and the task;
    a protocol set whose reader is not in this version of the pack is an error saying so.
    """
    from ..datasets import DATASETS, get_dataset

    protocol = get_protocol(task)
    train = tuple(n.strip().lower() for n in (datasets or protocol.train) if n.strip())
    if not train:
        raise FDIError("--dataset is empty; give one or more data set names separated by commas")
    if len(set(train)) != len(train):
        raise FDIError(f"--dataset names a data set twice ({', '.join(train)}); give each once")
    test = (test_dataset or "").strip().lower()
    if not test:
        only = DATASETS.get(train[0]) if datasets and len(train) == 1 else None
        test = train[0] if only is not None and "test" in only.splits else protocol.test
    defaults = ([] if datasets else list(train)) + ([test] if test == protocol.test and not test_dataset else [])
    missing = [n for n in dict.fromkeys(defaults) if n not in DATASETS]
    if missing:
        raise FDIError(
            f"the {protocol.task} protocol reads {', '.join(missing)}, whose reader is not in this version of the "
            f"pack yet (readers: {', '.join(DATASETS)}); give --dataset/--test-dataset with one of them"
        )
    for name, split in [*((n, "train") for n in train), (test, "test")]:
        get_dataset(name).check(split, protocol.task)  # unknown name, split or task: an error naming it
    return DataPlan(protocol.task, train, test, train == protocol.train and test == protocol.test)
