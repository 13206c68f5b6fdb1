"""SALAD: Sinkhorn Algorithm for Locally Aggregated Descriptors.

S. Izquierdo, J. Civera, "Optimal Transport Aggregation for Visual Place Recognition", CVPR 2024.
From the patch tokens, two small MLPs (1x1 convolutions) give each token a score for each of m
clusters and an l-channel feature; the scores plus a learned dustbin row are turned into an optimal
transport plan by a few log-domain Sinkhorn iterations (every token has mass 1; the clusters 1 each,
the dustbin the n - m left over), and each cluster sums the features weighted by its row of the plan.
The class token goes through its own MLP to g channels. The descriptor is [L2(token), L2 of each
cluster's features over its channels, flattened channel-major], L2-normalised as a whole:
m * l + g = 64 * 128 + 256 = 8,448 at the published settings. Layer names and shapes follow the
authors' code (serizba/salad), so that their checkpoints map onto it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vgray.errors import BadInput
from vgray.models.components import Aggregation, fp32_island, under_autocast
from vgray.registry import AGGREGATIONS, BACKBONES

HIDDEN = 512  # hidden channels of the three MLPs (the authors' code)
SINKHORN_ITERS = 3  # the authors' code


def log_sinkhorn(scores: torch.Tensor, log_a: torch.Tensor, log_b: torch.Tensor, iters: int) -> torch.Tensor:
    """Log-domain Sinkhorn: ``scores`` (B, M, N) and log marginals ``log_a`` (M,), ``log_b`` (N,) ->
    the log transport plan (B, M, N), ``scores + u_i + v_j``, whose columns sum to ``exp(log_b)``
    exactly and whose rows approach ``exp(log_a)`` as ``iters`` grows."""
    u = scores.new_zeros(scores.shape[0], scores.shape[1])
    v = scores.new_zeros(scores.shape[0], scores.shape[2])
    for _ in range(iters):
        u = log_a - torch.logsumexp(scores + v.unsqueeze(1), dim=2)
        v = log_b - torch.logsumexp(scores + u.unsqueeze(2), dim=1)
    return scores + u.unsqueeze(2) + v.unsqueeze(1)


def assignment(scores: torch.Tensor, dustbin: torch.Tensor, iters: int = SINKHORN_ITERS) -> torch.Tensor:
    """Cluster scores (B, m, n) and the dustbin score -> the transport plan (B, m + 1, n), the dustbin
    last, scaled so each token's column sums to 1, each cluster's row to 1 and the dustbin's to n - m
    (at convergence). Needs n > m tokens."""
    b, m, n = scores.shape
    scores = scores.float()  # in fp32 under bf16 autocast too: logsumexp of few iterations, cheap
    augmented = torch.cat([scores, dustbin.float().expand(b, 1, n)], dim=1)
    norm = -math.log(n + m)
    log_a = scores.new_full((m + 1,), norm)
    log_a[-1] = norm + math.log(n - m)
    log_b = scores.new_full((n,), norm)
    return torch.exp(log_sinkhorn(augmented, log_a, log_b, iters) - norm)


def _mlp(in_channels: int, out_channels: int, dropout: float) -> nn.Sequential:
    """1x1 conv, dropout, ReLU, 1x1 conv (the authors' order)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, HIDDEN, 1),
        nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
        nn.ReLU(),
        nn.Conv2d(HIDDEN, out_channels, 1),
    )


class SALAD(Aggregation):
    """Tokens (B, 1 + n, C), the class token first -> descriptors (B, clusters * cluster_dim + token_dim)."""

    inputs = frozenset({"tokens"})
    takes_tokens = True  # it needs the class token beside the patch tokens
    needs = (("class_token", "a class token beside the patch tokens"),)

    def __init__(
        self, in_channels: int, clusters: int = 64, cluster_dim: int = 128, token_dim: int = 256, dropout: float = 0.3
    ):
        super().__init__(clusters * cluster_dim + token_dim)
        self.clusters, self.cluster_dim = clusters, cluster_dim
        self.token_features = nn.Sequential(nn.Linear(in_channels, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, token_dim))
        self.cluster_features = _mlp(in_channels, cluster_dim, dropout)
        self.score = _mlp(in_channels, clusters, dropout)
        self.dust_bin = nn.Parameter(torch.tensor(1.0))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Under autocast, the MLPs run in its dtype and the Sinkhorn plan, the weighted sums and the
        normalisations in fp32 (:func:`vgray.models.components.fp32_island`)."""
        patches = tokens[:, 1:].transpose(1, 2).unsqueeze(-1)  # a (B, C, n, 1) map: 1x1 convs need no grid
        parts = (self.cluster_features(patches), self.score(patches), self.token_features(tokens[:, 0]))
        if not under_autocast(tokens):
            return self._combine(*parts)
        with fp32_island(tokens):
            return self._combine(*(part.float() for part in parts))

    def _combine(self, features: torch.Tensor, scores: torch.Tensor, global_token: torch.Tensor) -> torch.Tensor:
        """Cluster features (B, l, n, 1), scores (B, m, n, 1), the projected class token (B, g) -> descriptor."""
        features = features.flatten(2)  # (B, l, n)
        plan = assignment(scores.flatten(2), self.dust_bin)[:, :-1]  # (B, m, n), dustbin dropped
        aggregated = torch.einsum("bln,bmn->blm", features, plan)  # (B, l, m)
        out = torch.cat(
            [F.normalize(global_token, p=2, dim=-1), F.normalize(aggregated, p=2, dim=1).flatten(1)], dim=-1
        )
        return F.normalize(out, p=2, dim=-1)


def _check_salad(cfg) -> None:
    """More patch tokens than clusters (the dustbin's mass is n - m)."""
    m = cfg.model
    info = BACKBONES.info(m.backbone)
    h, w = (s // info["patch"] for s in cfg.data.image_size)
    if h * w <= m.salad_clusters:
        raise BadInput(
            f"model.salad_clusters={m.salad_clusters} needs more patch tokens than clusters; "
            f"data.resize {list(cfg.data.image_size)} gives {h}x{w}={h * w}: use a larger input or "
            f"fewer clusters (at most {h * w - 1})"
        )


@AGGREGATIONS.register("salad", type=SALAD, check=_check_salad)
def build_salad(in_channels: int, cfg) -> SALAD:
    return SALAD(in_channels, cfg.salad_clusters, cfg.salad_cluster_dim, cfg.salad_token_dim, cfg.salad_dropout)
