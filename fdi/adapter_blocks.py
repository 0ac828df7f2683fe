"""The adapter's building blocks: residual blocks and levels of the image branch, noise decoupling, guidance heads.

Shapes: image features ``[B, C, h, w]``, FDI tokens ``[B, T, D]``; :mod:`fdi.adapter` assembles them.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

#: the variance floor of the AdaIN statistics (token targets and features alike)
STAT_EPS = 1e-5


class ResidualBlock(nn.Module):
    """Bottleneck residual block ``x + conv1×1(relu(conv3×3(relu(conv1×1(x)))))``; shape-preserving."""

    def __init__(self, channels: int, bottleneck: int):
        super().__init__()
        mid = channels // bottleneck
        self.reduce = nn.Conv2d(channels, mid, 1)
        self.conv = nn.Conv2d(mid, mid, 3, padding=1)
        self.expand = nn.Conv2d(mid, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.expand(F.relu(self.conv(F.relu(self.reduce(x)))))


class ImageLevel(nn.Module):
    """One level of the image branch: [downsample 2×] → [1×1 conv to the new width] → residual blocks."""

    def __init__(self, in_channels: int, channels: int, res_blocks: int, bottleneck: int, downsample: bool):
        super().__init__()
        self.down = nn.AvgPool2d(2, ceil_mode=True) if downsample else nn.Identity()
        self.in_conv = nn.Conv2d(in_channels, channels, 1) if in_channels != channels else nn.Identity()
        self.blocks = nn.Sequential(*[ResidualBlock(channels, bottleneck) for _ in range(res_blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.in_conv(self.down(x)))


class NoiseDecoupling(nn.Module):
    """``F̂ = F·P + Attn(q=LN(F)Wq, k=LN(c)Wk, v=c·Wv)·Wo``: FDI tokens ``[B,T,D]`` × features → ``[B,T,C]``.

    ``attention=False`` (the paper's ablation without noise decoupling): ``F̂ = F·P``, no attention parameters."""

    def __init__(self, token_width: int, channels: int, heads: int, attention: bool = True):
        super().__init__()
        self.heads = heads
        self.attention = attention
        self.proj = nn.Linear(token_width, channels)
        if attention:
            self.norm_tokens = nn.LayerNorm(token_width)
            self.norm_features = nn.LayerNorm(channels)
            self.to_q = nn.Linear(token_width, channels)
            self.to_k = nn.Linear(channels, channels)
            self.to_v = nn.Linear(channels, channels)
            self.to_out = nn.Linear(channels, channels)

    def forward(self, tokens: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        if not self.attention:
            return self.proj(tokens)
        b, c = features.shape[:2]
        kv = features.flatten(2).transpose(1, 2)  # [B, h·w, C]
        q = self.to_q(self.norm_tokens(tokens))
        k = self.to_k(self.norm_features(kv))
        v = self.to_v(kv)

        def split(t: torch.Tensor) -> torch.Tensor:  # [B, N, C] → [B, heads, N, C/heads]
            return t.reshape(t.shape[0], t.shape[1], self.heads, -1).transpose(1, 2)

        attn = F.scaled_dot_product_attention(split(q), split(k), split(v))
        attn = attn.transpose(1, 2).reshape(b, tokens.shape[1], c)
        return self.proj(tokens) + self.to_out(attn)


class GuidanceHead(nn.Module):
    """Multi-level guidance for one level: ``r = Z(sigmoid(W2 relu(W1 mean_tokens(F̂))) ⊙ c)``, ``Z`` zero-init."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        self.squeeze = nn.Linear(channels, channels // reduction)
        self.excite = nn.Linear(channels // reduction, channels)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, refined: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.excite(F.relu(self.squeeze(refined.mean(1)))))  # [B, C]
        return self.out(features * s[:, :, None, None])


def token_stats(refined: torch.Tensor, eps: float = STAT_EPS) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std over the tokens of ``[B, T, C]`` → two ``[B, C]`` (std = sqrt(var+eps))."""
    var, mean = torch.var_mean(refined, dim=1, unbiased=False)
    return mean, torch.sqrt(var + eps)
