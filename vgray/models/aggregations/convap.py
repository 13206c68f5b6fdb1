"""Conv-AP: convolutional aggregation with adaptive average pooling.

A. Ali-bey, B. Chaib-draa, P. Giguère, "GSV-Cities: Toward appropriate supervised visual place
recognition", Neurocomputing 2022. A 1x1 convolution (with bias) reduces the local features
(B, C, h, w) to out_channels, adaptive average pooling brings the map to s1 x s2, and the result is
flattened (channel-major) and L2-normalised: out_channels * s1 * s2. Published: ResNet-50 at
320x320, out_channels 512 and s1 = s2 = 2 (2048-d; the released models: 128, 512, 1024 and 2048
channels, 512- to 8192-d, on the full ResNet-50, vgray's ``resnet50conv5``). It takes any map size,
so transformers' patch grids too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence, Tuple, cast

import torch
import torch.nn.functional as F
from torch import nn

from vgray.models.components import Aggregation
from vgray.registry import AGGREGATIONS

if TYPE_CHECKING:
    from vgray.config import ModelConfig


class ConvAP(Aggregation):
    inputs = frozenset({"feature_map", "tokens"})

    def __init__(self, in_channels: int, out_channels: int = 512, pool_size: Sequence[int] = (2, 2)):
        super().__init__(out_channels * pool_size[0] * pool_size[1])
        self.pool_size = cast(Tuple[int, int], tuple(pool_size))
        self.channel_pool = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, out_channels * s1 * s2)."""
        x = F.adaptive_avg_pool2d(self.channel_pool(x), self.pool_size)
        return F.normalize(x.flatten(1), p=2, dim=1)


@AGGREGATIONS.register("convap", type=ConvAP)
def build_convap(in_channels: int, cfg: ModelConfig) -> ConvAP:
    return ConvAP(in_channels, out_channels=cfg.convap_out_channels, pool_size=tuple(cfg.convap_pool_size))
