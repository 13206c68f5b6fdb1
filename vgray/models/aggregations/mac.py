"""MAC: Maximum Activations of Convolutions.

G. Tolias, R. Sicre, H. Jégou, "Particular object retrieval with integral max-pooling of CNN
activations", ICLR 2016 (after A. S. Razavian, J. Sullivan, S. Carlsson, A. Maki, "Visual instance
retrieval with deep convolutional networks", ITE Trans. MTA 2016): each channel's maximum over the
spatial positions. ``model.l2`` wraps it as in the benchmark's code (before_pool, after_pool, none).
"""

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from vgray.models.components import Aggregation
from vgray.registry import AGGREGATIONS

if TYPE_CHECKING:
    from vgray.config import ModelConfig


def mac(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, C): the maximum of each channel."""
    return F.adaptive_max_pool2d(x, 1).flatten(1)


class MAC(Aggregation):
    # A transformer's patch tokens arrive as their grid: the maximum over patches is as meaningful.
    inputs = frozenset({"feature_map", "tokens"})
    pooling = True

    def __init__(self, in_channels: int):
        super().__init__(in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mac(x)


@AGGREGATIONS.register("mac", type=MAC)
def build_mac(in_channels: int, cfg: "ModelConfig") -> MAC:
    return MAC(in_channels)
