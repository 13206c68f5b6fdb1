"""NetVLAD: CNN architecture for weakly supervised place recognition.

R. Arandjelović, P. Gronat, A. Torii, T. Pajdla, J. Sivic, CVPR 2016. Soft-assignment of each
L2-normalised local feature to K clusters, residuals to the centroids summed per cluster,
intra-normalised, flattened and L2-normalised: a K x C descriptor. The clusters are initialised by
k-means over local features of sampled images (:meth:`NetVLAD.initialize`), with the assignment
sharpness alpha chosen as in the original code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vgray.models.components import Aggregation, fp32_island, under_autocast
from vgray.registry import AGGREGATIONS

if TYPE_CHECKING:
    from vgray.config import ModelConfig


class NetVLAD(Aggregation):
    inputs = frozenset({"feature_map", "tokens"})
    #: Soft-assignment, residual sums and normalisation in fp32 inside autocast (a bf16 network
    #: still feeds it bf16 features; measured: descriptor cosine to fp32 0.99985 mean in bf16).
    fp32 = True
    initialized: torch.Tensor  # a buffer (register_buffer below)

    def __init__(self, in_channels: int, clusters: int = 64):
        super().__init__(clusters * in_channels)
        self.clusters = clusters
        self.conv = nn.Conv2d(in_channels, clusters, kernel_size=1, bias=False)
        self.centroids = nn.Parameter(torch.rand(clusters, in_channels))
        # Saved in checkpoints so that a resumed or loaded model is not initialised again.
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, h, w) -> (B, K * C). ``weights`` (B, 1, h, w), when given, scales each local
        feature's contribution to the sums (CRN's contextual reweighting mask). Runs in fp32
        under autocast (:data:`fp32`); the descriptor is float32 then."""
        if self.fp32 and under_autocast(x):
            with fp32_island(x):
                return self._vlad(x.float(), None if weights is None else weights.float())
        return self._vlad(x, weights)

    def _vlad(self, x: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        x = F.normalize(x, p=2, dim=1)
        soft = self.conv(x).flatten(2).softmax(dim=1)  # (B, K, hw)
        if weights is not None:
            soft = soft * weights.flatten(2)
        local = x.flatten(2)  # (B, C, hw)
        # sum_i a_k(x_i) (x_i - c_k) = (A X^T)_k - (sum_i a_k(x_i)) c_k, without a (B, K, C, hw) tensor
        vlad = torch.bmm(soft, local.transpose(1, 2)) - soft.sum(-1, keepdim=True) * self.centroids
        vlad = F.normalize(vlad, p=2, dim=2)  # intra-normalisation
        return F.normalize(vlad.flatten(1), p=2, dim=1)

    @property
    def needs_init(self) -> bool:
        """True until the clusters come from k-means (or from a checkpoint)."""
        return not bool(self.initialized)

    def initialize(self, local_features: np.ndarray, seed: int = 0, niter: int = 100) -> None:
        """Clusters from k-means over L2-normalised local features ``(n, C)`` float32."""
        x = np.ascontiguousarray(local_features, dtype=np.float32)
        kmeans = faiss.Kmeans(
            x.shape[1], self.clusters, niter=niter, seed=seed, verbose=False, max_points_per_centroid=10_000_000
        )
        kmeans.train(x)
        centroids = kmeans.centroids
        assert centroids is not None  # set by train
        assign = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
        # alpha makes a feature's nearest centroid 100x as likely as its second nearest, on average.
        dots = np.sort(assign @ x.T, axis=0)[::-1]
        alpha = float(-np.log(0.01) / np.mean(dots[0] - dots[1]))
        with torch.no_grad():
            self.centroids.copy_(torch.from_numpy(centroids))
            self.conv.weight.copy_(torch.from_numpy(alpha * assign)[:, :, None, None])
            self.initialized.fill_(True)


@AGGREGATIONS.register("netvlad", type=NetVLAD)
def build_netvlad(in_channels: int, cfg: ModelConfig) -> NetVLAD:
    return NetVLAD(in_channels, clusters=cfg.netvlad_clusters)
