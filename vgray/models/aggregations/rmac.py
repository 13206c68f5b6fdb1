"""R-MAC: Regional Maximum Activations of Convolutions.

G. Tolias, R. Sicre, H. Jégou, "Particular object retrieval with integral max-pooling of CNN
activations", ICLR 2016. Square regions at L = 3 scales are laid over the feature map (scale l has
regions of side ``floor(2 min(h, w) / (l + 1))``, about 40% overlap between neighbours, and extra
regions along the longer side); each region is max-pooled (MAC), L2-normalised, and the vectors are
summed. The layout is the one of the benchmark's code (from cirtorch), which also adds the MAC of the
whole map as a first region. ``model.l2`` wraps it (before_pool, after_pool, none) as it does GeM.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, List, Tuple

import numpy as np
import torch

from vgray.models.components import Aggregation
from vgray.registry import AGGREGATIONS

if TYPE_CHECKING:
    from vgray.config import ModelConfig

Region = Tuple[int, int, int, int]  # (top, left, height, width) in feature-map cells


def rmac_regions(h: int, w: int, levels: int = 3, overlap: float = 0.4) -> List[Region]:
    """The regions R-MAC pools on an ``h`` x ``w`` map: the whole map, then each scale's squares."""
    side = min(h, w)
    # How many extra regions the longer side gets: the count (1..6) whose step between regions of
    # side ``side`` comes closest to the wanted overlap. In float32, as the reference code, so that
    # near-ties (e.g. a 5 x 9 map) resolve the same way.
    steps = np.arange(2, 8, dtype=np.float32)
    step = np.float32(max(h, w) - side) / (steps - 1)
    extra = int(np.argmin(np.abs((side**2 - side * step) / np.float32(side**2) - np.float32(overlap)))) + 1
    extra_w, extra_h = (extra, 0) if h < w else (0, extra) if h > w else (0, 0)
    regions: List[Region] = [(0, 0, h, w)]
    for level in range(1, levels + 1):
        size = math.floor(2 * side / (level + 1))
        if size == 0:
            continue
        tops = _starts(h, size, level + extra_h)
        lefts = _starts(w, size, level + extra_w)
        regions += [(t, l, size, size) for t in tops for l in lefts]
    return regions


def _starts(length: int, size: int, count: int) -> List[int]:
    """``count`` start positions of windows of ``size`` spread evenly from 0 to ``length - size``."""
    if count == 1:
        return [0]
    gap = (length - size) / (count - 1)
    # float32, as the reference code: i * gap can land just below an integer there (a 10 x 18 map).
    return [int(v) for v in np.floor(np.arange(count, dtype=np.float32) * np.float32(gap))]


def rmac(x: torch.Tensor, levels: int = 3, eps: float = 1e-6) -> torch.Tensor:
    """(B, C, h, w) -> (B, C): the sum of the L2-normalised MACs of :func:`rmac_regions`."""
    out = x.new_zeros(x.shape[:2])
    for t, l, rh, rw in rmac_regions(x.size(-2), x.size(-1), levels):
        v = x[..., t : t + rh, l : l + rw].amax(dim=(-2, -1))
        out = out + v / (v.norm(p=2, dim=1, keepdim=True) + eps)
    return out


class RMAC(Aggregation):
    # Regions need the 2-D layout of a feature map: a sequence of tokens has none.
    inputs = frozenset({"feature_map"})
    pooling = True

    def __init__(self, in_channels: int, levels: int = 3, eps: float = 1e-6):
        super().__init__(in_channels)
        self.levels, self.eps = levels, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rmac(x, self.levels, self.eps)


@AGGREGATIONS.register("rmac", type=RMAC)
def build_rmac(in_channels: int, cfg: ModelConfig) -> RMAC:
    return RMAC(in_channels)
