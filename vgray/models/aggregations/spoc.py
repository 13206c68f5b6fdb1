"""SPoC: Sum-Pooled Convolutional features.

A. Babenko, V. Lempitsky, "Aggregating Deep Convolutional Features for Image Retrieval", ICCV 2015:
each channel summed over the spatial positions. As in the benchmark's code, the sum is taken as a
mean (a constant factor that any L2 normalisation removes) and without the paper's centre prior and
PCA whitening. ``model.l2`` wraps it (before_pool, after_pool, none).
"""
import torch
import torch.nn.functional as F
from torch import nn

from vgray.models.aggregations import AGGREGATIONS


def spoc(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, C): the mean of each channel."""
    return F.adaptive_avg_pool2d(x, 1).flatten(1)


class SPoC(nn.Module):
    def __init__(self, in_channels: int):
        super().__init__()
        self.output_dim = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return spoc(x)


# Tokens arrive as a (B, C, N, 1) map: the mean over patch tokens.
@AGGREGATIONS.register("spoc", inputs={"feature_map", "tokens"}, pooling=True)
def build_spoc(in_channels: int, cfg) -> SPoC:
    return SPoC(in_channels)
