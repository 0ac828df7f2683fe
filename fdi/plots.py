"""Pictures of FDIs: the paper's Fig. 11 as a tool.

Left panel: the cosine-similarity matrix between the given FDIs (flattened ``T × D`` tokens).
Right panel (when any FDI stores its per-pair tensors): a 2-D map of the per-pair FDIs, one point
per reference pair, coloured by the FDI it belongs to, with each FDI's mean marked by a star.
The map is a PCA (exact, deterministic: the top two principal axes of all per-pair FDIs together,
computed with an SVD); t-SNE is not used because it is random and slow for a few thousand points
and PCA already separates tasks in practice.

Matplotlib runs with the non-interactive Agg backend, so this works on servers and inside ComfyUI.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import torch

from .errors import FDIError
from .files import PathLike, atomic_write
from .instruction import FDI, cosine_similarity_matrix, same_encoder


def _names(fdis: Sequence[FDI], names: Optional[Sequence[str]]) -> List[str]:
    if names is not None:
        if len(names) != len(fdis):
            raise FDIError(f"{len(names)} names for {len(fdis)} FDIs; give one name per FDI")
        return [str(n) for n in names]
    return [f.label or f"FDI {i + 1}" for i, f in enumerate(fdis)]


def pca_2d(points: torch.Tensor) -> torch.Tensor:
    """Project ``(N, F)`` points on their top two principal axes → ``(N, 2)`` float64.

    The sign of each axis is fixed (largest-magnitude loading positive), so the map is
    deterministic. With fewer than two distinct directions the missing axis is zero.
    """
    x = points.to(torch.float64)
    x = x - x.mean(0, keepdim=True)
    if x.shape[0] < 2:
        return torch.zeros(x.shape[0], 2, dtype=torch.float64)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    axes = vh[:2]
    signs = torch.sign(axes.gather(1, axes.abs().argmax(1, keepdim=True)))
    axes = axes * torch.where(signs == 0, torch.ones_like(signs), signs)
    out = x @ axes.T
    if out.shape[1] < 2:
        out = torch.cat([out, torch.zeros(out.shape[0], 2 - out.shape[1], dtype=out.dtype)], 1)
    return out


def inspection_figure(fdis: Sequence[FDI], names: Optional[Sequence[str]] = None):
    """Build the figure (similarity matrix, and the per-pair PCA map where pairs are stored)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fdis = list(fdis)
    if not fdis:
        raise FDIError("no FDIs to inspect; give at least one")
    for f in fdis[1:]:
        if f.shape != fdis[0].shape:
            raise FDIError(
                f"FDIs of shapes {fdis[0].shape} and {f.shape} cannot be compared; inspect FDIs of one encoder together"
            )
        if not same_encoder(f.encoder, fdis[0].encoder):
            raise FDIError(
                f"FDIs from encoders {fdis[0].encoder} and {f.encoder} cannot be compared; "
                "inspect FDIs of one encoder together"
            )
    labels = _names(fdis, names)
    with_pairs = [(i, f) for i, f in enumerate(fdis) if f.pairs is not None and f.pairs.shape[0] > 0]
    ncols = 2 if with_pairs else 1
    fig = Figure(figsize=(5.5 * ncols, 4.8), dpi=100, layout="constrained")
    ax = fig.add_subplot(1, ncols, 1)
    sim = cosine_similarity_matrix(fdis).numpy()
    im = ax.imshow(sim, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(fdis)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(fdis)), labels, fontsize=8)
    for r in range(len(fdis)):
        for c in range(len(fdis)):
            ax.text(
                c,
                r,
                f"{sim[r, c]:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if abs(sim[r, c]) > 0.6 else "black",
            )
    ax.set_title("FDI cosine similarity")
    fig.colorbar(im, ax=ax, shrink=0.8)
    if with_pairs:
        ax2 = fig.add_subplot(1, 2, 2)
        stacked = torch.cat(
            [f.pairs.flatten(1) for _, f in with_pairs] + [f.tokens.flatten()[None] for _, f in with_pairs]
        )
        xy = pca_2d(stacked).numpy()
        cmap = matplotlib.colormaps["tab10"]
        start = 0
        n_pairs_total = sum(f.pairs.shape[0] for _, f in with_pairs)
        for k, (i, f) in enumerate(with_pairs):
            n = f.pairs.shape[0]
            pts = xy[start : start + n]
            ax2.scatter(pts[:, 0], pts[:, 1], s=12, alpha=0.7, color=cmap(k % 10), label=f"{labels[i]} ({n} pairs)")
            mean_pt = xy[n_pairs_total + k]
            ax2.scatter([mean_pt[0]], [mean_pt[1]], marker="*", s=160, color=cmap(k % 10), edgecolors="black")
            start += n
        ax2.set_title("per-pair FDIs (PCA)")
        ax2.set_xlabel("PC 1")
        ax2.set_ylabel("PC 2")
        ax2.legend(fontsize=7, loc="best")
    return fig


def render_inspection(fdis: Sequence[FDI], names: Optional[Sequence[str]] = None) -> np.ndarray:
    """The inspection figure as an RGB ``uint8`` array ``[H, W, 3]`` (for ComfyUI's IMAGE)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = inspection_figure(fdis, names)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_inspection(fdis: Sequence[FDI], names: Optional[Sequence[str]], path: PathLike) -> None:
    """Write the inspection figure to ``path`` (PNG, or any format matplotlib knows by suffix), atomically."""
    save_figure(inspection_figure(fdis, names), path)


def _rgb(fig) -> np.ndarray:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _figure(width: float = 6.0, height: float = 3.6):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def render_loss_curve(losses: Sequence[float], title: str = "training loss") -> np.ndarray:
    """Loss per step (and a moving mean over ~5 % of the steps) as an RGB ``uint8`` array ``[H, W, 3]``."""
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    y = np.asarray(list(losses), dtype=np.float64)
    if y.size:
        x = np.arange(1, y.size + 1)
        ax.plot(x, y, lw=0.8, alpha=0.5, label="loss")
        w = max(1, y.size // 20)
        if w > 1:
            ax.plot(x[w - 1 :], np.convolve(y, np.ones(w) / w, mode="valid"), lw=1.6, label=f"mean of {w}")
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no step finished", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _rgb(fig)


def stability_figure(
    ks: Sequence[int], mean: Sequence[float], low: Sequence[float], high: Sequence[float], label: str = ""
):
    """The pair-stability curve: agreement (cosine) of the FDI of ``k`` pairs with the FDI of all pairs."""
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    ax.fill_between(list(ks), list(low), list(high), alpha=0.25, label="10th–90th percentile")
    ax.plot(list(ks), list(mean), marker="o", ms=3, label="mean over resamples")
    ax.set_xlabel("pairs used (k)")
    ax.set_ylabel("cosine similarity to the FDI of all pairs")
    ax.set_ylim(min(0.0, float(np.min(low))), 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(f"How many pairs are enough{': ' + label if label else ''}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def render_stability(ks, mean, low, high, label: str = "") -> np.ndarray:
    """:func:`stability_figure` as an RGB ``uint8`` array ``[H, W, 3]``."""
    return _rgb(stability_figure(ks, mean, low, high, label))


def save_figure(fig, path: PathLike) -> None:
    """Write a figure atomically (format from the suffix: png, pdf, svg)."""
    from pathlib import Path

    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    with atomic_write(path) as fh:
        try:
            fig.savefig(fh, format=fmt)
        except ValueError as exc:
            raise FDIError(f"cannot write a plot as {fmt!r} ({exc}); use a .png, .pdf or .svg file name") from None
