"""MixVPR: Feature Mixing for Visual Place Recognition.

A. Ali-bey, B. Chaib-draa, P. Giguère, WACV 2023. The local feature map (B, C, h, w) is read as C
rows of h*w values; L Feature-Mixer blocks (LayerNorm, MLP over the h*w dimension with hidden size
mlp_ratio * h*w, ReLU between, residual) mix each row holistically; then a channel projection
C -> out_channels and a row projection h*w -> out_rows give an out_channels x out_rows matrix,
flattened (channel-major) and L2-normalised. Published: ResNet-50 cropped after layer3
(``resnet50conv4``, 1024 channels) at 320x320, a 20x20 map, out_channels 1024, out_rows 4, depth 4,
mlp_ratio 1: 4096-d.

Its layers are sized for one feature-map size, ``model.mixvpr_map_size``: a config whose backbone
gives another map at ``data.image_size`` is refused at load (:func:`check_mixvpr`). DINOv2 and the
other transformers give their patch grid as the map (fixed by the input size too), so they are
allowed.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from vgray.errors import BadInput
from vgray.models.components import Aggregation
from vgray.registry import AGGREGATIONS, BACKBONES


class FeatureMixer(nn.Module):
    """One Feature-Mixer block: (B, C, n) -> (B, C, n), ``x + MLP(LayerNorm(x))`` over the last dim."""

    def __init__(self, n: int, mlp_ratio: float = 1.0):
        super().__init__()
        hidden = int(n * mlp_ratio)
        # Index layout 0 norm, 1 linear, 2 ReLU, 3 linear: the publisher's (released checkpoints load as they are).
        self.mix = nn.Sequential(nn.LayerNorm(n), nn.Linear(n, hidden), nn.ReLU(), nn.Linear(hidden, n))
        for m in self.mix:
            if isinstance(m, nn.Linear):  # the paper's initialisation
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mix(x)


class MixVPR(Aggregation):
    inputs = frozenset({"feature_map", "tokens"})
    fixed_grid = True

    def __init__(
        self,
        in_channels: int,
        map_size: Tuple[int, int] = (20, 20),
        out_channels: int = 1024,
        out_rows: int = 4,
        depth: int = 4,
        mlp_ratio: float = 1.0,
    ):
        super().__init__(out_channels * out_rows)
        self.map_size = tuple(map_size)
        n = self.map_size[0] * self.map_size[1]
        self.mix = nn.Sequential(*(FeatureMixer(n, mlp_ratio) for _ in range(depth)))
        self.channel_proj = nn.Linear(in_channels, out_channels)
        self.row_proj = nn.Linear(n, out_rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) with (h, w) == map_size -> (B, out_channels * out_rows)."""
        if tuple(x.shape[-2:]) != self.map_size:
            raise ValueError(
                f"MixVPR built for a {self.map_size[0]}x{self.map_size[1]} feature map got {x.shape[-2]}x{x.shape[-1]}"
            )
        x = self.mix(x.flatten(2))  # (B, C, n)
        x = self.channel_proj(x.transpose(1, 2)).transpose(1, 2)  # (B, out_channels, n)
        x = self.row_proj(x)  # (B, out_channels, out_rows)
        return F.normalize(x.flatten(1), p=2, dim=1)


def local_map_size(cfg) -> Tuple[int, int] | None:
    """(h, w) of the local features ``model.backbone`` gives at ``data.image_size``: a transformer's
    patch grid, a CNN's map from a forward pass on the meta device (shapes only, no weights, no
    arithmetic). None when the backbone does not take that size (its own check refuses it) or
    the backbones are not imported."""
    name, size = cfg.model.backbone, tuple(cfg.data.image_size)
    if not BACKBONES.filled():  # the backbones are not imported here: nothing of them will be built
        return None
    info = BACKBONES.info(name)
    sizes = info.get("input_sizes")
    if sizes and size not in sizes:
        return None
    with torch.device("meta"):
        if info["type"].output == "tokens":
            return tuple(BACKBONES.create(name, pretrained="none", image_size=size).grid)
        backbone = BACKBONES.create(name, pretrained="none")
        return tuple(backbone.feature_map(backbone(torch.empty(1, 3, *size))).shape[-2:])


# Test methods that feed queries at another size than data.image_size: single_query (the original size),
# the five-crop methods (squares of side min(H, W), so only when the input is not square).
_QUERY_SIZE_METHODS = {
    "single_query": "always",
    "five_crops": "square",
    "nearest_crop": "square",
    "maj_voting": "square",
}


def check_mixvpr(cfg) -> None:
    """Refuse a config whose backbone gives another feature map at the input size than MixVPR's, or
    whose test method feeds queries at another size."""
    h, w = cfg.data.image_size
    needs = _QUERY_SIZE_METHODS.get(cfg.test.method)
    if needs == "always" or (needs == "square" and h != w):
        raise BadInput(
            f"test.method={cfg.test.method} feeds queries at another size than data.image_size "
            f"{[h, w]}, which model.aggregation=mixvpr cannot take; use hard_resize or central_crop"
            + (", or a square data.resize" if needs == "square" else "")
        )
    want = tuple(cfg.model.mixvpr_map_size)
    got = local_map_size(cfg)
    if got is not None and got != want:
        raise BadInput(
            f"model.mixvpr_map_size={list(want)} but model.backbone={cfg.model.backbone} gives a "
            f"{got[0]}x{got[1]} feature map at data.image_size {list(cfg.data.image_size)}; "
            f"set model.mixvpr_map_size={list(got)} or change data.resize"
        )


@AGGREGATIONS.register("mixvpr", type=MixVPR, check=check_mixvpr)
def build_mixvpr(in_channels: int, cfg) -> MixVPR:
    return MixVPR(
        in_channels,
        map_size=tuple(cfg.mixvpr_map_size),
        out_channels=cfg.mixvpr_out_channels,
        out_rows=cfg.mixvpr_out_rows,
        depth=cfg.mixvpr_depth,
        mlp_ratio=cfg.mixvpr_mlp_ratio,
    )
