"""SeqPool: sequence pooling, the Compact Convolutional Transformer's classifier pooling.

A. Hassani et al., "Escaping the Big Data Paradigm with Compact Transformers", arXiv:2104.05704,
2021. A linear layer scores each output token, a softmax over the sequence turns the scores into
weights, and the descriptor is the weighted mean of the tokens: softmax(g(x_L))^T x_L. Used as a VG
descriptor by Berton et al. (CVPR 2022, Table 5) on CCT only, unnormalised as in the paper's code;
the layer starts from CCT's ImageNet weights when the backbone was loaded with them.
"""

from typing import TYPE_CHECKING

import torch
from torch import nn

from vgray.errors import BadInput
from vgray.models.components import Aggregation
from vgray.registry import AGGREGATIONS, BACKBONES

if TYPE_CHECKING:
    from vgray.config import Config, ModelConfig


class SeqPool(Aggregation):
    """Tokens (B, T, C) -> attention-weighted mean (B, C), with its own scoring layer C -> 1."""

    inputs = frozenset({"tokens"})
    takes_tokens = True  # the network hands it the token sequence, not the patch grid

    def __init__(self, in_channels: int):
        super().__init__(in_channels)
        self.attention = nn.Linear(in_channels, 1)
        nn.init.trunc_normal_(self.attention.weight, std=0.02)  # as CCT initialises it
        nn.init.zeros_(self.attention.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        weights = self.attention(tokens).softmax(dim=1)  # (B, T, 1)
        return torch.bmm(weights.transpose(1, 2), tokens).squeeze(1)


def _check(cfg: "Config") -> None:
    """Only on a backbone whose trained weights include a SeqPool layer (its ``trained_heads``)."""
    if "seqpool" not in BACKBONES.type_of(cfg.model.backbone).trained_heads:
        with_seqpool = [n for n in BACKBONES.names() if "seqpool" in BACKBONES.type_of(n).trained_heads]
        raise BadInput(
            f"model.aggregation=seqpool pools the tokens of a backbone trained with it "
            f"({', '.join(with_seqpool)}), not model.backbone={cfg.model.backbone}; "
            f"for {cfg.model.backbone} choose cls, gem or netvlad"
        )


@AGGREGATIONS.register("seqpool", type=SeqPool, check=_check)
def build_seqpool(in_channels: int, cfg: "ModelConfig") -> SeqPool:
    return SeqPool(in_channels)
