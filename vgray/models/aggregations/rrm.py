"""RRM: the Residual Retrieval Module.

G. Kordopatis-Zilos, P. Galopoulos, S. Papadopoulos, I. Kompatsiaris, "Leveraging EfficientNet and
Contrastive Learning for Accurate Global-scale Location Estimation", ICMR 2021. As the benchmark
defines it: average pooling, LayerNorm, a residual block of two C x C linear layers with a ReLU
between them, LayerNorm again, then L2 normalisation. It normalises on its own, so ``model.l2`` does
not wrap it (the benchmark's code applies l2 to gem, spoc, mac and rmac only).
"""

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from vgray.models.components import Aggregation
from vgray.registry import AGGREGATIONS

if TYPE_CHECKING:
    from vgray.config import ModelConfig


class RRM(Aggregation):
    # A transformer's patch tokens arrive as their grid: averaged like positions.
    inputs = frozenset({"feature_map", "tokens"})

    def __init__(self, in_channels: int):
        super().__init__(in_channels)
        self.norm_in = nn.LayerNorm(in_channels)
        self.fc1 = nn.Linear(in_channels, in_channels)
        self.fc2 = nn.Linear(in_channels, in_channels)
        self.norm_out = nn.LayerNorm(in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, C)."""
        x = self.norm_in(F.adaptive_avg_pool2d(x, 1).flatten(1))
        x = x + self.fc2(F.relu(self.fc1(x)))
        return F.normalize(self.norm_out(x), p=2, dim=1)


@AGGREGATIONS.register("rrm", type=RRM)
def build_rrm(in_channels: int, cfg: "ModelConfig") -> RRM:
    return RRM(in_channels)
