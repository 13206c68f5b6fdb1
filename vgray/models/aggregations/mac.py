"""MAC: Maximum Activations of Convolutions.

G. Tolias, R. Sicre, H. Jégou, "Particular object retrieval with integral max-pooling of CNN
activations", ICLR 2016 (after A. S. Razavian, J. Sullivan, S. Carlsson, A. Maki, "Visual instance
retrieval with deep convolutional networks", ITE Trans. MTA 2016): each channel's maximum over the
spatial positions. ``model.l2`` wraps it as in the benchmark's code (before_pool, after_pool, none).
"""
import torch
import torch.nn.functional as F
from torch import nn

from vgray.models.aggregations import AGGREGATIONS


def mac(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, C): the maximum of each channel."""
    return F.adaptive_max_pool2d(x, 1).flatten(1)


class MAC(nn.Module):
    def __init__(self, in_channels: int):
        super().__init__()
        self.output_dim = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mac(x)


# Tokens arrive as a (B, C, N, 1) map: the maximum over patch tokens is as meaningful as over positions.
@AGGREGATIONS.register("mac", inputs={"feature_map", "tokens"}, pooling=True)
def build_mac(in_channels: int, cfg) -> MAC:
    return MAC(in_channels)
