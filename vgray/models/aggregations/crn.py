"""CRN: NetVLAD with a Contextual Reweighting Network.

H. J. Kim, E. Dunn, J.-M. Frahm, "Learned Contextual Feature Reweighting for Image
Geo-Localization", CVPR 2017. A small network looks at the (L2-normalised) local features in their
context: the map is average-pooled to half size, filtered by multi-scale context filters (3x3, 5x5
and 7x7 convolutions with 32, 32 and 20 outputs, ReLU), the 84 responses are accumulated into one
map and upsampled back to the feature map's size. That mask weights each local feature's
contribution to the VLAD sums: ``V_k = sum_i m_i a_k(x_i) (x_i - c_k)``.

As in the benchmark's code: the accumulation is a fixed sum (its 1x1 convolution had weight 1, bias 0
and no gradient), the filters start from Xavier-normal weights and zero biases, and training has two
stages: CRN starts from a trained NetVLAD checkpoint of the same backbone (``model.resume_from``,
checked against that checkpoint's config where training starts:
:func:`vgray.models.network.check_start`), whose backbone and NetVLAD layer it loads (k-means does
not run again), and trains the reweighting layer at ``train.lr_crn_layer`` and the rest at
``train.lr_crn_net``. Building, profiling and evaluating a CRN need no checkpoint. Two differences:
the mask is upsampled to the map's exact size (the reference doubled the pooled size, which fails on
odd sizes) and maps thinner than the 3x3 pooling window are pooled with a window that fits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vgray.models.aggregations.netvlad import NetVLAD
from vgray.models.components import fp32_island, under_autocast
from vgray.registry import AGGREGATIONS


class ContextualReweighting(nn.Module):
    """Local features (B, C, h, w) -> reweighting mask (B, 1, h, w), non-negative."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.filters = nn.ModuleList(
            nn.Conv2d(in_channels, out, size, padding=size // 2) for size, out in ((3, 32), (5, 32), (7, 20))
        )
        for f in self.filters:
            assert isinstance(f, nn.Conv2d) and f.bias is not None  # made just above, with a bias
            nn.init.xavier_normal_(f.weight)
            nn.init.zeros_(f.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        context = F.avg_pool2d(x, (min(3, h), min(3, w)), stride=2, ceil_mode=True)
        responses = torch.cat([f(context) for f in self.filters], dim=1).relu()
        mask = responses.sum(dim=1, keepdim=True)
        return F.interpolate(mask, size=(h, w), mode="bilinear", align_corners=False)


class CRN(NetVLAD):
    # Context filters need the 2-D layout of a feature map: a sequence of tokens has none.
    inputs = frozenset({"feature_map"})
    # Training starts from a trained NetVLAD checkpoint of the same backbone (model.resume_from),
    # which holds everything but the reweighting layer: that starts fresh.
    starts_from = "netvlad"
    fresh_on_resume = ("crn.",)

    def __init__(self, in_channels: int, clusters: int = 64):
        super().__init__(in_channels, clusters)
        self.crn = ContextualReweighting(in_channels)

    # CRN computes NetVLAD's weights itself: it takes none.
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        # The normalisation in fp32 under autocast (as NetVLAD's own, :data:`NetVLAD.fp32`); the
        # context filters are convolutions, in autocast's dtype; the mask weights the fp32 sums.
        if self.fp32 and under_autocast(x):
            with fp32_island(x):
                x = F.normalize(x.float(), p=2, dim=1)
        else:
            x = F.normalize(x, p=2, dim=1)
        return super().forward(x, weights=self.crn(x))

    def param_groups(self, model: nn.Module, train_cfg) -> list:
        """The reweighting layer at ``train.lr_crn_layer``; everything else trainable at
        ``train.lr_crn_net``."""
        layer = [p for p in self.crn.parameters() if p.requires_grad]
        ids = {id(p) for p in layer}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        return [
            {"params": layer, "lr": train_cfg.lr_crn_layer, "name": "crn_layer"},
            {"params": rest, "lr": train_cfg.lr_crn_net, "name": "crn_net"},
        ]


@AGGREGATIONS.register("crn", type=CRN)
def build_crn(in_channels: int, cfg) -> CRN:
    return CRN(in_channels, clusters=cfg.netvlad_clusters)
