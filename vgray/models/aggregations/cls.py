"""CLS: the class token of a Vision Transformer as the global descriptor.

A. Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition at
Scale", ICLR 2021: the encoder output at the class token summarises the image. Berton et al.
(CVPR 2022, Table 5) use it as the VG descriptor of ViT and CCT, as is (no L2): the paper's code
returned it unnormalised. CCT has no class token; there, as in the paper's code, the first output
token stands for it.
"""

from typing import TYPE_CHECKING

import torch

from vgray.models.components import Aggregation
from vgray.registry import AGGREGATIONS

if TYPE_CHECKING:
    from vgray.config import ModelConfig


class ClassToken(Aggregation):
    """Tokens (B, T, C) -> the first token (B, C)."""

    inputs = frozenset({"tokens"})
    takes_tokens = True  # the network hands it the token sequence, not the patch grid

    def __init__(self, in_channels: int):
        super().__init__(in_channels)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, 0]


@AGGREGATIONS.register("cls", type=ClassToken)
def build_cls(in_channels: int, cfg: "ModelConfig") -> ClassToken:
    return ClassToken(in_channels)
