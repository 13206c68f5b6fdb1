"""BoQ: Bag of Learnable Queries.

A. Ali-bey, B. Chaib-draa, P. Giguère, "BoQ: A Place is Worth a Bag of Learnable Queries", CVPR 2024.
A 3x3 convolution projects the local features to ``proj_channels`` (then LayerNorm over the
positions); each of ``layers`` stacked blocks refines the features with a transformer encoder layer
and lets its own learned queries (after self-attention among themselves) cross-attend to them; the
queries' outputs of all blocks, concatenated, are mixed by a linear layer down to ``row_dim`` rows:
descriptor = proj_channels * row_dim, L2-normalised. Published: ResNet-50 conv4 (1024 channels,
proj 512, 64 queries, 2 blocks, 32 rows) -> 16,384; DINOv2-B (768, proj 384) -> 12,288. Heads =
proj_channels / 64. Layer names and shapes follow the authors' code (amaralibey/Bag-of-Queries).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vgray.errors import BadInput
from vgray.models.components import Aggregation
from vgray.registry import AGGREGATIONS, BACKBONES


class BoQBlock(nn.Module):
    """Features (B, n, D) -> (refined features (B, n, D), query outputs (B, queries, D))."""

    def __init__(self, dim: int, queries: int, heads: int):
        super().__init__()
        self.encoder = nn.TransformerEncoderLayer(
            d_model=dim, nhead=heads, dim_feedforward=4 * dim, batch_first=True, dropout=0.0
        )
        self.queries = nn.Parameter(torch.randn(1, queries, dim))
        self.self_attn = nn.MultiheadAttention(dim, num_heads=heads, batch_first=True)
        self.norm_q = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads=heads, batch_first=True)
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor):
        x = self.encoder(x)
        q = self.queries.repeat(x.shape[0], 1, 1)  # a copy: FlopCounterMode refuses a view of a parameter
        q = self.norm_q(q + self.self_attn(q, q, q, need_weights=False)[0])
        out = self.cross_attn(q, x, x, need_weights=False)[0]
        return x, self.norm_out(out)


def heads_for(proj_channels: int) -> int:
    """Attention heads of 64 channels each (the authors' ``in_dim // 64``), at least one."""
    return max(1, proj_channels // 64)


class BoQ(Aggregation):
    """Local features (B, C, h, w) -> descriptors (B, proj_channels * row_dim)."""

    inputs = frozenset({"feature_map", "tokens"})  # tokens: DINOv2's patch tokens as a grid

    def __init__(self, in_channels: int, proj_channels: int, queries: int = 64, layers: int = 2, row_dim: int = 32):
        super().__init__(proj_channels * row_dim)
        self.proj_c = nn.Conv2d(in_channels, proj_channels, kernel_size=3, padding=1)
        self.norm_input = nn.LayerNorm(proj_channels)
        self.boqs = nn.ModuleList([BoQBlock(proj_channels, queries, heads_for(proj_channels)) for _ in range(layers)])
        self.fc = nn.Linear(layers * queries, row_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm_input(self.proj_c(x).flatten(2).transpose(1, 2))
        outs = []
        for block in self.boqs:
            x, out = block(x)
            outs.append(out)
        out = self.fc(torch.cat(outs, dim=1).transpose(1, 2))  # (B, proj_channels, row_dim)
        return F.normalize(out.flatten(1), p=2, dim=-1)


def proj_channels(in_channels: int, cfg) -> int:
    """``model.boq_proj_channels``, or half the backbone's channels (the published 512 and 384)."""
    return cfg.boq_proj_channels or max(1, in_channels // 2)


def _check_boq(cfg) -> None:
    proj = proj_channels(BACKBONES.info(cfg.model.backbone)["out_channels"], cfg.model)
    if proj % heads_for(proj):
        raise BadInput(
            f"model.boq_proj_channels={proj} must split into {heads_for(proj)} attention heads of "
            f"equal size (proj_channels // 64 of them): use a multiple of 64, e.g. "
            f"{max(64, proj // 64 * 64)}"
        )


@AGGREGATIONS.register("boq", type=BoQ, check=_check_boq)
def build_boq(in_channels: int, cfg) -> BoQ:
    return BoQ(in_channels, proj_channels(in_channels, cfg), cfg.boq_queries, cfg.boq_layers, cfg.boq_row_dim)
