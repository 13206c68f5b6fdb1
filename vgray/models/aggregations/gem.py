"""GeM: Generalized-mean pooling.

F. Radenović, G. Tolias, O. Chum, "Fine-tuning CNN Image Retrieval with No Human Annotation",
TPAMI 2018. The power p is learnable, initialised to 3.
"""

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from vgray.models.components import Aggregation
from vgray.registry import AGGREGATIONS

if TYPE_CHECKING:
    from vgray.config import ModelConfig


def gem(x: torch.Tensor, p: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(B, C, h, w) -> (B, C): ``mean(x.clamp(eps) ** p) ** (1 / p)`` over the spatial positions."""
    return F.avg_pool2d(x.clamp(min=eps).pow(p), (x.size(-2), x.size(-1))).pow(1.0 / p).flatten(1)


class GeM(Aggregation):
    inputs = frozenset({"feature_map", "tokens"})
    pooling = True

    def __init__(self, in_channels: int, p: float = 3.0, eps: float = 1e-6):
        super().__init__(in_channels)
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gem(x, self.p, self.eps)


@AGGREGATIONS.register("gem", type=GeM)
def build_gem(in_channels: int, cfg: "ModelConfig") -> GeM:
    return GeM(in_channels, p=cfg.gem_p)
