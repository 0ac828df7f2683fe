"""The architecture of an FDI adapter (:class:`FDIAdapterConfig`), stored as JSON in the adapter file.

Sizes and choices: docs/design.md, "Adapter and FDI".
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Tuple

from .errors import FDIError

#: the paper's ablated modules: boolean fields, ``True`` by default and then absent from the JSON
MODULE_SWITCHES = ("noise_decoupling", "visual_modulator")


@dataclass
class FDIAdapterConfig:
    """Architecture of an :class:`FDIAdapter` (stored as JSON in the adapter file).

    Attributes:
        channels: UNet encoder level widths ``C_1..C_L``: four for SD 1.5/2.1 (320, 640, 1280, 1280), three
            for SDXL (320, 640, 1280); :meth:`for_family` gives a family's.
        token_width: FDI token width ``D`` (BLIP-2 Q-Former: 768).
        num_tokens: FDI token count ``T`` (BLIP-2: 32).
        res_blocks: residual blocks per level of the image branch.
        bottleneck: inner width of a residual block is ``C_i // bottleneck``.
        heads: attention heads of the noise decoupling (must divide every ``C_i``).
        se_reduction: squeeze-excitation reduction (``W1: C → C // se_reduction``).
        unshuffle: pixel-unshuffle factor (8 = the SD VAE's downsampling).
        noise_decoupling: the attention of the noise decoupling; ``False`` (the paper's ablation) keeps only the
            projection, ``F̂_i = F·P_i``.
        visual_modulator: the AdaIN modulation of the UNet decoder; ``False`` (the paper's ablation) creates no
            gates and the guidance carries no modulations (the decoder is left alone).

    The two module switches are written to the JSON only when ``False`` (:data:`MODULE_SWITCHES`), so a default
    config's JSON is the one earlier versions wrote and read (docs/design.md, "Adapter ablations").
    """

    channels: Tuple[int, int, int, int] = (320, 640, 1280, 1280)
    token_width: int = 768
    num_tokens: int = 32
    res_blocks: int = 2
    bottleneck: int = 2
    heads: int = 8
    se_reduction: int = 16
    unshuffle: int = 8
    noise_decoupling: bool = True
    visual_modulator: bool = True

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        if len(self.channels) not in (3, 4):
            raise FDIError(
                f"an FDI adapter has one level per UNet encoder level, three (SDXL) or four (SD 1.5/2.1), "
                f"got channels {self.channels}; give widths such as (320, 640, 1280, 1280) or (320, 640, 1280)"
            )
        for name in ("token_width", "num_tokens", "res_blocks", "bottleneck", "heads", "se_reduction", "unshuffle"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if name == "res_blocks" else 1):
                raise FDIError(f"adapter config {name}={v!r} is invalid; use a positive integer")
        for name in MODULE_SWITCHES:
            v = getattr(self, name)
            if not isinstance(v, bool):
                raise FDIError(f"adapter config {name}={v!r} is invalid; use true or false")
        for c in self.channels:
            if c < 1 or c % self.heads or c // self.bottleneck < 1 or c // self.se_reduction < 1:
                raise FDIError(
                    f"adapter width {c} must be positive and divisible by heads={self.heads}; change channels or heads"
                )

    @property
    def levels(self) -> int:
        """Number of levels ``L`` (UNet encoder levels: 4 for SD 1.5/2.1, 3 for SDXL)."""
        return len(self.channels)

    @classmethod
    def for_family(cls, family: str, **overrides) -> "FDIAdapterConfig":
        """The default architecture for a base family (``sd1.5``, ``sd2.1-base``, ``sd2.1-v``, ``sdxl``)."""
        from .families import FAMILIES, get_family

        f = get_family(family)
        if f is None:
            raise FDIError(f"unknown base family {family!r}; use one of {', '.join(FAMILIES)}")
        return cls(**{"channels": f.channels, **overrides})

    def as_dict(self) -> Dict[str, Any]:
        """Every field (``channels`` as a list), the module switches included."""
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    def to_json(self) -> str:
        """The JSON stored in the adapter file: every field but the module switches left at their default."""
        d = {k: v for k, v in self.as_dict().items() if not (k in MODULE_SWITCHES and v is True)}
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "adapter file") -> "FDIAdapterConfig":
        try:
            d = json.loads(text)
        except (json.JSONDecodeError, TypeError):
            raise FDIError(
                f"{source}: the adapter config in its metadata is not JSON; the file is corrupt, re-save it"
            ) from None
        if not isinstance(d, dict):
            raise FDIError(
                f"{source}: the adapter config in its metadata is not a JSON object; the file is corrupt, re-save it"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise FDIError(
                f"{source}: unknown adapter config keys {unknown}; "
                "the file was written by a newer version of the pack, update it"
            )
        return cls(**d)
