"""SPoC: Sum-Pooled Convolutional features.

A. Babenko, V. Lempitsky, "Aggregating Deep Convolutional Features for Image Retrieval", ICCV 2015:
each channel summed over the spatial positions. As in the benchmark's code, the sum is taken as a
mean (a constant factor that any L2 normalisation removes) and without the paper's centre prior and
PCA whitening. ``model.l2`` wraps it (before_pool, after_pool, none).
"""

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from vgray.models.components import Aggregation
from vgray.registry import AGGREGATIONS

if TYPE_CHECKING:
    from vgray.config import ModelConfig


def spoc(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, C): the mean of each channel."""
    return F.adaptive_avg_pool2d(x, 1).flatten(1)


class SPoC(Aggregation):
    # A transformer's patch tokens arrive as their grid: the mean over patches.
    inputs = frozenset({"feature_map", "tokens"})
    pooling = True

    def __init__(self, in_channels: int):
        super().__init__(in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return spoc(x)


@AGGREGATIONS.register("spoc", type=SPoC)
def build_spoc(in_channels: int, cfg: "ModelConfig") -> SPoC:
    return SPoC(in_channels)
