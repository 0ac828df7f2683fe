"""The FDI adapter: image branch, noise decoupling, multi-level guidance and visual modulator.

Inputs: the degraded image ``x`` ``[B, 3, H, W]`` in 0..1 and the FDI tokens ``F`` ``[T, D]`` or
``[B, T, D]`` (``[32, 768]`` for BLIP-2). Output: an :class:`FDIGuidance`, which does not depend on
the timestep: computed once per (image, FDI), reused at every guided step. The stages are methods
that can run one by one:

1. :meth:`FDIAdapter.image_features`: ``c_1..c_4`` ``[B, C_i, ceil(H/8)/2^(i-1), …]`` (the UNet
   encoder's widths and sizes);
2. :meth:`FDIAdapter.decouple`: ``F̂_i = F·P_i + Attn(q = LN(F)·Wq_i, k = LN(c_i)·Wk_i, v = c_i·Wv_i)·Wo_i``
   ``[B, T, C_i]``;
3. :meth:`FDIAdapter.guidance`: residuals ``r_i = Z_i(SE(F̂_i) ⊙ c_i)`` (``Z_i`` zero-initialised, so a
   fresh adapter adds exact zeros) and AdaIN targets ``μ, σ`` of ``F̂_4, F̂_3, F̂_2`` with zero-initialised
   gates for ``up_blocks[0..2]`` (blended in :mod:`fdi.guidance`).

The paper's module ablations are config switches (:class:`FDIAdapterConfig`): ``noise_decoupling=False`` keeps
only ``F̂_i = F·P_i``, ``visual_modulator=False`` creates no gates and hands the UNet no modulations.

Architecture choices, sizes and the file format: docs/design.md, "Adapter and FDI".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .adapter_blocks import GuidanceHead, ImageLevel, NoiseDecoupling, token_stats
from .adapter_config import MODULE_SWITCHES, FDIAdapterConfig
from .errors import FDIError
from .families import canonical_name
from .files import PathLike, check_file_format, check_output_path, load_safetensors, save_safetensors
from .instruction import FDI, same_encoder

ADAPTER_FORMAT = "fdi_adapter"
ADAPTER_FORMAT_VERSION = 1

#: the tensor names an adapter file may hold besides the weights (the embedded FDI)
EMBEDDED_FDI_KEYS = ("fdi", "fdi_pairs")


# --------------------------------------------------------------------------------------------------
# guidance container


class Modulation(NamedTuple):
    """AdaIN target and gate for one decoder point: ``mean``, ``std`` ``[B, C]``, ``gate`` ``[C]``."""

    mean: torch.Tensor
    std: torch.Tensor
    gate: torch.Tensor


def modulation_levels(levels: int) -> Tuple[int, ...]:
    """The 0-based level whose refined tokens drive each decoder point ``up_blocks[0..L-2]``: the level of the same
    width (4 levels: ``(3, 2, 1)``, ``up_blocks[0] ← F̂_4, [1] ← F̂_3, [2] ← F̂_2``; SDXL's 3: ``(2, 1)``)."""
    return tuple(range(levels - 1, 0, -1))


#: decoder points of a four-level (SD 1.5/2.1) adapter and the level driving each
MODULATION_LEVELS = modulation_levels(4)


@dataclass
class FDIGuidance:
    """What an adapter hands to a UNet: timestep-independent, computed once per (image, FDI).

    Attributes:
        residuals: four tensors ``r_i`` ``[B, C_i, h_i, w_i]`` with ``h_1 = ceil(H/8)`` (the latent
            height) and ``h_{i+1} = ceil(h_i / 2)``; added at the end of UNet encoder level ``i``.
        modulations: three :class:`Modulation` for the decoder points ``up_blocks[0], [1], [2]``
            (driven by ``F̂_4, F̂_3, F̂_2``); empty for an adapter without the visual modulator, whose guidance
            leaves the decoder alone (:meth:`modulation`).
        refined: the refined FDI tokens ``F̂_1..F̂_4`` ``[B, T, C_i]`` (for inspection and losses).
    """

    residuals: List[torch.Tensor]
    modulations: List[Modulation]
    refined: List[torch.Tensor] = field(default_factory=list)

    @property
    def batch_size(self) -> int:
        return int(self.residuals[0].shape[0])

    def modulation(self, point: int) -> Optional[Modulation]:
        """The AdaIN targets of decoder point ``point``, or ``None`` when the guidance has no visual modulator."""
        return self.modulations[point] if self.modulations else None

    def to(self, device: Union[str, torch.device, None] = None, dtype: Optional[torch.dtype] = None) -> "FDIGuidance":
        """A copy on ``device`` and/or in floating ``dtype`` (no copy when nothing changes)."""

        def mv(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype)

        return FDIGuidance(
            residuals=[mv(r) for r in self.residuals],
            modulations=[Modulation(mv(m.mean), mv(m.std), mv(m.gate)) for m in self.modulations],
            refined=[mv(f) for f in self.refined],
        )

    def weighted(self, weight: float) -> "FDIGuidance":
        """The guidance scaled by ``weight``: residuals ``w·r_i`` and gates ``w·g``.

        Both enter the UNet linearly (``h + r``, ``D + g ⊙ (AdaIN(D) − D)``), so this is the same as
        passing ``(self, weight)`` to :mod:`fdi.guidance`. AdaIN targets are unchanged.
        """
        w = float(weight)
        return FDIGuidance(
            residuals=[r * w for r in self.residuals],
            modulations=[Modulation(m.mean, m.std, m.gate * w) for m in self.modulations],
            refined=list(self.refined),
        )

    def detach(self) -> "FDIGuidance":
        return FDIGuidance(
            [r.detach() for r in self.residuals],
            [Modulation(m.mean.detach(), m.std.detach(), m.gate.detach()) for m in self.modulations],
            [f.detach() for f in self.refined],
        )


# --------------------------------------------------------------------------------------------------
# the adapter


class FDIAdapter(nn.Module):
    """The FDI adapter (stages and formulas: the module doc; choices: docs/design.md, "Adapter and FDI").

    Args:
        config: the architecture (defaults = SD 2.1 / BLIP-2, 47.3 M parameters).
        base_family: the diffusion model it is (to be) trained for: ``sd2.1-base``, ``sd2.1-v``, …
        encoder: fingerprint of the Q-Former whose FDIs it takes (``""`` until known; set from the
            embedded FDI when saved with one).
        label: free text for people (``"derain"``…).
        guidance_window: ``(start, end)``, the fractions of the sampling steps it was trained to guide
            (``None``: not recorded, files from before 2026-12; restoration then guides the paper's first third).
        timestep_sampling: how its training drew timesteps (:data:`fdi.sampling.TIMESTEP_SAMPLINGS`; ``None``:
            not recorded).

    Attributes set by :meth:`from_file`: ``fdi`` (the embedded :class:`~fdi.instruction.FDI` or
    ``None``), ``source`` (file name).
    """

    def __init__(
        self,
        config: Optional[FDIAdapterConfig] = None,
        base_family: str = "sd2.1-base",
        encoder: str = "",
        label: str = "",
        guidance_window: Optional[Tuple[float, float]] = None,
        timestep_sampling: Optional[str] = None,
    ):
        super().__init__()
        self.config = config = config or FDIAdapterConfig()
        self.base_family = canonical_name(base_family)
        self.encoder = encoder
        self.label = label
        self.guidance_window = None if guidance_window is None else tuple(float(v) for v in guidance_window)
        self.timestep_sampling = timestep_sampling
        self.fdi: Optional[FDI] = None
        self.source = ""
        ch = config.channels
        u = config.unshuffle
        self.conv_in = nn.Conv2d(3 * u * u, ch[0], 3, padding=1)
        self.levels = nn.ModuleList(
            ImageLevel(ch[max(i - 1, 0)], ch[i], config.res_blocks, config.bottleneck, downsample=i > 0)
            for i in range(config.levels)
        )
        self.decouple_levels = nn.ModuleList(
            NoiseDecoupling(config.token_width, c, config.heads, attention=config.noise_decoupling) for c in ch
        )
        self.guidance_heads = nn.ModuleList(GuidanceHead(c, config.se_reduction) for c in ch)
        #: per-channel gates of the visual modulator, for up_blocks[0..L-2] (zero = no-op); none without it
        points = modulation_levels(config.levels) if config.visual_modulator else ()
        self.gates = nn.ParameterList(nn.Parameter(torch.zeros(ch[level])) for level in points)

    # ---- stages ----------------------------------------------------------------------------------

    def image_features(self, images: torch.Tensor) -> List[torch.Tensor]:
        """Image branch: ``[B, 3, H, W]`` in 0..1 → ``c_1..c_4``, ``[B, C_i, ceil(H/8)/2^(i-1), …]``."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise FDIError(f"the adapter takes images [B, 3, H, W], got {tuple(images.shape)}; give an RGB batch")
        u = self.config.unshuffle
        h, w = images.shape[-2:]
        if h < u or w < u:
            raise FDIError(f"image is {w}x{h} pixels; the adapter needs at least {u} pixels a side, use a larger image")
        x = images.to(self.conv_in.weight.dtype) * 2 - 1
        ph, pw = (-h) % u, (-w) % u
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect")
        x = self.conv_in(F.pixel_unshuffle(x, u))
        feats = []
        for level in self.levels:
            x = level(x)
            feats.append(x)
        return feats

    def tokens_for(self, fdi: Union[FDI, torch.Tensor], batch: int) -> torch.Tensor:
        """FDI tokens as ``[B, T, D]`` in the adapter's dtype, after checking width/count/encoder."""
        if isinstance(fdi, FDI):
            if self.encoder and fdi.encoder and not same_encoder(self.encoder, fdi.encoder):
                raise FDIError(
                    f"FDI {fdi.label or '(unlabelled)'} comes from encoder {fdi.encoder} but adapter "
                    f"{self.display_name} was trained with FDIs of encoder {self.encoder}; "
                    "extract the FDI with that Q-Former"
                )
            tokens = fdi.tokens
        else:
            tokens = fdi
        if not isinstance(tokens, torch.Tensor) or tokens.ndim not in (2, 3):
            raise FDIError(f"FDI tokens must be [T, D] or [B, T, D], got {getattr(tokens, 'shape', type(tokens))}")
        t, d = tokens.shape[-2:]
        if d != self.config.token_width:
            raise FDIError(
                f"FDI token width {d} does not match the adapter's token width {self.config.token_width}; "
                "use an FDI extracted with the Q-Former this adapter was trained with"
            )
        if t != self.config.num_tokens:
            raise FDIError(
                f"FDI has {t} tokens but the adapter expects {self.config.num_tokens}; "
                "use an FDI extracted with the Q-Former this adapter was trained with"
            )
        if tokens.ndim == 2:
            tokens = tokens.unsqueeze(0)
        if tokens.shape[0] == 1 and batch > 1:
            tokens = tokens.expand(batch, -1, -1)
        elif tokens.shape[0] != batch:
            raise FDIError(f"{tokens.shape[0]} FDIs for {batch} images; give one FDI, or one per image")
        return tokens.to(device=self.conv_in.weight.device, dtype=self.conv_in.weight.dtype)

    def decouple(self, tokens: torch.Tensor, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Noise decoupling: tokens ``[B, T, D]`` and ``c_1..c_4`` → ``F̂_1..F̂_4`` ``[B, T, C_i]``."""
        return [m(tokens, c) for m, c in zip(self.decouple_levels, features)]

    def guidance(self, features: Sequence[torch.Tensor], refined: Sequence[torch.Tensor]) -> FDIGuidance:
        """Multi-level guidance residuals and visual-modulator targets from ``c_i`` and ``F̂_i`` (no targets without
        the visual modulator)."""
        residuals = [head(f, c) for head, f, c in zip(self.guidance_heads, refined, features)]
        modulations = []
        for gate, level in zip(self.gates, modulation_levels(self.config.levels)):
            mean, std = token_stats(refined[level])
            modulations.append(Modulation(mean, std, gate))
        return FDIGuidance(residuals=residuals, modulations=modulations, refined=list(refined))

    def forward(self, images: torch.Tensor, fdi: Union[FDI, torch.Tensor]) -> FDIGuidance:
        """``images`` ``[B, 3, H, W]`` in 0..1 and the FDI (``[T, D]``/``[B, T, D]`` or an FDI) → guidance."""
        feats = self.image_features(images)
        tokens = self.tokens_for(fdi, images.shape[0])
        return self.guidance(feats, self.decouple(tokens, feats))

    # ---- info ------------------------------------------------------------------------------------

    @property
    def display_name(self) -> str:
        """How messages name the adapter: ``label (file)``, whichever of the two it has, or ``(unnamed)``."""
        if self.label and self.source and self.label != self.source:
            return f"{self.label} ({self.source})"
        return self.label or self.source or "(unnamed)"

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def parameter_counts(self) -> Dict[str, int]:
        """Parameters per part: ``image_branch`` (``conv_in`` + levels), ``noise_decoupling`` (projections and
        attention), ``guidance_heads``, ``visual_modulator`` (the gates); they sum to :meth:`num_parameters`."""
        parts = {
            "image_branch": (self.conv_in, self.levels),
            "noise_decoupling": (self.decouple_levels,),
            "guidance_heads": (self.guidance_heads,),
            "visual_modulator": (self.gates,),
        }
        return {k: sum(p.numel() for m in ms for p in m.parameters()) for k, ms in parts.items()}

    def ablations(self) -> List[str]:
        """The paper's modules this adapter was built without (``[]`` for a full adapter)."""
        return [name for name in MODULE_SWITCHES if not getattr(self.config, name)]

    def describe(self) -> str:
        without = "".join(f", without {name.replace('_', ' ')}" for name in self.ablations())
        return (
            f"FDI adapter {self.display_name}: {self.num_parameters() / 1e6:.2f} M parameters, "
            f"base {self.base_family}, channels {self.config.channels}, "
            f"FDI {self.config.num_tokens}x{self.config.token_width}, encoder {self.encoder or '(unknown)'}{without}"
        )

    def check_fdi(self, fdi: FDI) -> None:
        """Raise :class:`FDIError` when ``fdi`` cannot drive this adapter (width, count, encoder)."""
        self.tokens_for(fdi, 1)

    # ---- file ------------------------------------------------------------------------------------

    def file_metadata(self) -> Dict[str, str]:
        return {
            "format": ADAPTER_FORMAT,
            "format_version": str(ADAPTER_FORMAT_VERSION),
            "config": self.config.to_json(),
            "base_family": self.base_family,
            "encoder": self.encoder,
            "label": self.label,
            "parameters": str(self.num_parameters()),
            **self.training_metadata(),
        }

    def training_metadata(self) -> Dict[str, str]:
        """The recorded guidance window and timestep sampling as file metadata (none when not recorded)."""
        meta = {}
        if self.guidance_window is not None:
            meta["guidance_window"] = json.dumps(list(self.guidance_window))
        if self.timestep_sampling is not None:
            meta["timestep_sampling"] = self.timestep_sampling
        return meta

    def save(self, path: PathLike, fdi: Optional[FDI] = None) -> Path:
        """Write the adapter (and optionally its training FDI) to a ``.safetensors`` file, atomically.

        The weights are written in their current dtype. With ``fdi``, the FDI is checked against the
        adapter (width, token count, encoder) and embedded, and an adapter without a recorded
        encoder takes the FDI's.
        """
        p = check_output_path(path, suffix=".safetensors")
        tensors = {k: v for k, v in self.state_dict().items()}
        meta = self.file_metadata()
        if fdi is not None:
            self.check_fdi(fdi)
            if not meta["encoder"]:
                meta["encoder"] = fdi.encoder
            fdi_tensors, fdi_meta = fdi.to_embedded()
            tensors.update(fdi_tensors)
            meta.update(fdi_meta)
        save_safetensors(tensors, p, meta)
        return p

    @classmethod
    def from_file(
        cls,
        path: PathLike,
        base_family: Optional[str] = None,
        device: Union[str, torch.device] = "cpu",
        dtype: Optional[torch.dtype] = None,
    ) -> "FDIAdapter":
        """Load an adapter file (format: docs/design.md, "Adapter and FDI").

        ``adapter.fdi`` is its embedded FDI or ``None``.

        Raises :class:`FDIError` for pickle or non-safetensors files, another file format or
        version, a base family other than ``base_family`` (when given), and weights whose names or
        shapes do not match the config.
        """
        p = Path(path)
        tensors, meta = load_safetensors(p, what="adapter file")  # refuses pickle, validates the header
        src = p.name
        check_file_format(
            meta,
            ADAPTER_FORMAT,
            ADAPTER_FORMAT_VERSION,
            src,
            "FDI adapter file",
            "FDI training ('python -m fdi train')",
            "Update the pack",
        )
        if "config" not in meta:
            raise FDIError(f"{src!r} has no adapter config in its metadata; the file is incomplete, re-save it")
        config = FDIAdapterConfig.from_json(meta["config"], src)
        family = canonical_name(meta.get("base_family", ""))
        if base_family is not None and family != base_family:
            raise FDIError(
                f"adapter {src!r} was trained for {family or 'an unknown model'}, not {base_family}; "
                f"use an adapter trained for {base_family} (or load the {family} model)"
            )
        adapter = cls(
            config,
            base_family=family,
            encoder=meta.get("encoder", ""),
            label=meta.get("label", ""),
            guidance_window=read_window(meta, src),
            timestep_sampling=meta.get("timestep_sampling") or None,
        )
        expected = adapter.state_dict()
        weights = {k: v for k, v in tensors.items() if k not in EMBEDDED_FDI_KEYS}
        missing = sorted(set(expected) - set(weights))
        extra = sorted(set(weights) - set(expected))
        if missing or extra:
            raise FDIError(
                f"adapter {src!r} does not match its config ({len(missing)} weights missing e.g. {missing[:2]}, "
                f"{len(extra)} unexpected e.g. {extra[:2]}); the file is corrupt or from another version, re-save it"
            )
        for k, v in expected.items():
            if tuple(weights[k].shape) != tuple(v.shape):
                raise FDIError(
                    f"adapter {src!r}: weight {k!r} has shape {tuple(weights[k].shape)}, "
                    f"its config needs {tuple(v.shape)}; the file is corrupt, re-save it"
                )
            if not weights[k].dtype.is_floating_point or not torch.isfinite(weights[k]).all():
                raise FDIError(
                    f"adapter {src!r}: weight {k!r} is not a finite float tensor; the file is corrupt, re-save it"
                )
        adapter.load_state_dict(weights, strict=True)
        adapter.fdi = FDI.from_embedded(tensors, meta, src)
        if adapter.fdi is not None:
            adapter.check_fdi(adapter.fdi)
        adapter.source = src
        return adapter.to(device=device, dtype=dtype).eval() if dtype is not None else adapter.to(device).eval()


def count_parameters(config: Optional[FDIAdapterConfig] = None) -> int:
    """Parameter count of an adapter with ``config`` (built on the meta device: no memory used)."""
    with torch.device("meta"):
        return FDIAdapter(config).num_parameters()


def read_window(meta: Dict[str, str], src: str) -> Optional[Tuple[float, float]]:
    """The ``guidance_window`` of an adapter file's metadata (``None`` when not recorded), checked."""
    from .sampling import check_window

    if "guidance_window" not in meta:
        return None
    try:
        start, end = (float(v) for v in json.loads(meta["guidance_window"]))
    except (TypeError, ValueError):
        raise FDIError(
            f"{src!r}: its guidance_window metadata {meta['guidance_window']!r} is not [start, end]; "
            "the file is corrupt, re-save it"
        ) from None
    check_window(start, end, names=(f"{src}: recorded guidance start", "end"))
    return start, end
