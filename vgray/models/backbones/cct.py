"""CCT-14/7x2: the Compact Convolutional Transformer at 384 x 384 (``cct384``).

A. Hassani, S. Walton, N. Shah, A. Abuduweili, J. Li, H. Shi, "Escaping the Big Data Paradigm with
Compact Transformers", arXiv:2104.05704, 2021. Used for VG by Berton et al., CVPR 2022 (Table 5).

A convolutional tokenizer (two 7x7 stride-2 convolutions without bias, each followed by ReLU and a
3x3 stride-2 max-pool: 384 x 384 -> 24 x 24 = 576 tokens of 384 channels), a learnable positional
embedding, 14 encoder blocks (6 heads, MLP ratio 3, attention dropout 0.1, stochastic depth rising
linearly to 0.1) and a final LayerNorm. CCT has no class token: its classifier pools the sequence
with SeqPool, which lives in :mod:`vgray.models.aggregations.seqpool`; the ImageNet weights of that
pooling layer are handed to it when ``model.aggregation=seqpool`` (``trained_heads``). ``cls`` on CCT takes the first
output token, as the paper's code did.
"""

from __future__ import annotations

from typing import Dict, Optional, cast

import torch
from timm.layers import Attention, DropPath, Mlp
from torch import nn

from vgray.checkpoint import load_fitting
from vgray.models.backbones.tokens import check_encoder_keys, freeze, kept_blocks
from vgray.models.components import Aggregation, TokenBackbone
from vgray.models.pretrained import IMAGENET_MEAN, IMAGENET_STD, source_state_dict
from vgray.registry import BACKBONES

ARCH = "cct_14_7x2_384"
DEPTH, DIM, HEADS, MLP_RATIO = 14, 384, 6, 3.0
SIZE = (384, 384)


class EncoderBlock(nn.Module):
    """CCT's encoder layer. Unlike ViT's block, the LayerNorm before the MLP normalises the residual
    stream itself: x = x + attn(LN1(x)); x = LN2(x); x = x + mlp(x)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, attn_drop: float, drop_path: float):
        super().__init__()
        self.norm_attn = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads=heads, qkv_bias=False, attn_drop=attn_drop)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))  # GELU
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm_attn(x)))
        x = self.norm_mlp(x)
        return x + self.drop_path(self.mlp(x))


def _tokenizer() -> nn.Sequential:
    layers = []
    for c_in, c_out in ((3, 64), (64, DIM)):
        layers += [
            nn.Conv2d(c_in, c_out, 7, stride=2, padding=3, bias=False),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        ]
    return nn.Sequential(*layers)


class CCT(TokenBackbone):
    """Images (B, 3, 384, 384) -> final-norm tokens (B, 576, 384)."""

    trained_heads = frozenset({"seqpool"})  # its ImageNet classifier pools with SeqPool

    def __init__(self, trunc_te: Optional[int] = None, freeze_te: Optional[int] = None, pretrained: str = "none"):
        grid = (SIZE[0] // 16, SIZE[1] // 16)  # four stride-2 stages
        super().__init__(ARCH, DIM, 0, grid, IMAGENET_MEAN, IMAGENET_STD)
        self.tokenizer = _tokenizer()
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1], DIM))
        # The stochastic-depth schedule of the full 14 blocks; truncation keeps its first rates.
        rates = [0.1 * i / (DEPTH - 1) for i in range(DEPTH)]
        self.blocks = nn.Sequential(
            *(EncoderBlock(DIM, HEADS, MLP_RATIO, 0.1, rates[i]) for i in range(kept_blocks(DEPTH, trunc_te)))
        )
        self.norm = nn.LayerNorm(DIM)
        self._init_weights()
        # SeqPool's layer from the ImageNet classifier, for a seqpool aggregation (not a parameter here).
        self.pretrained_pool: Optional[Dict[str, torch.Tensor]] = None
        state = source_state_dict(ARCH, pretrained)
        if state is not None:
            self.load_source_state_dict(state, f"({pretrained} weights of {ARCH})")
        freeze([self.pos_embed, *self.tokenizer.parameters()], self.blocks, freeze_te)

    def _init_weights(self) -> None:
        # As the CCT paper's code: Kaiming for the convolutions, truncated normal for the rest.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.pos_embed, std=0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.tokenizer(x).flatten(2).transpose(1, 2)  # (B, h*w, C), row-major as the grid
        x = self.blocks(x + self.pos_embed)
        return self.norm(x)

    def load_source_state_dict(self, state: dict, origin: str) -> None:
        """A state dict in the layout of the CCT authors' checkpoints (``cct_14_7x2_384_imagenet.pth``):
        the ImageNet classifier is dropped, its SeqPool layer kept for a seqpool aggregation."""
        kept = len(self.blocks)
        mapped = {}
        for key, value in state.items():
            own = _own_key(key)
            if own is None or (own.startswith("blocks.") and int(own.split(".")[1]) >= kept):
                continue
            mapped[own] = value
        load_fitting(self, mapped, f"weights file {origin} does not fit {ARCH}")
        pool = {k.rsplit(".", 1)[1]: v for k, v in state.items() if k.startswith("classifier.attention_pool.")}
        self.pretrained_pool = pool or None

    def init_aggregation(self, aggregation: Aggregation, name: str) -> None:
        """Hand the ImageNet SeqPool layer (its scoring layer ``attention``) to a seqpool aggregation."""
        if self.pretrained_pool is not None and name == "seqpool":
            cast(nn.Module, aggregation.attention).load_state_dict(self.pretrained_pool)  # a SeqPool's


# Parameter names in the CCT authors' checkpoints -> names here (a fact of their file layout).
_BLOCK_NAMES = {
    "pre_norm": "norm_attn",
    "self_attn.qkv": "attn.qkv",
    "self_attn.proj": "attn.proj",
    "linear1": "mlp.fc1",
    "norm1": "norm_mlp",
    "linear2": "mlp.fc2",
}
_TOP_NAMES = {
    "tokenizer.conv_layers.0.0.weight": "tokenizer.0.weight",
    "tokenizer.conv_layers.1.0.weight": "tokenizer.3.weight",
    "classifier.positional_emb": "pos_embed",
    "classifier.norm.weight": "norm.weight",
    "classifier.norm.bias": "norm.bias",
}


def _own_key(source: str) -> Optional[str]:
    """The parameter here that a checkpoint key fills; None for the classifier head and SeqPool."""
    if source in _TOP_NAMES:
        return _TOP_NAMES[source]
    if source.startswith("classifier.blocks."):
        _, _, index, rest = source.split(".", 3)
        module, param = rest.rsplit(".", 1)
        if module in _BLOCK_NAMES:
            return f"blocks.{index}.{_BLOCK_NAMES[module]}.{param}"
        return f"blocks.{index}.{rest}"  # unknown: reported as unexpected by the fit check
    if source.startswith(("classifier.fc.", "classifier.attention_pool.")):
        return None
    return source  # unknown: reported as unexpected


def source_key(own: str) -> str:
    """The checkpoint key of a parameter here (the inverse of the mapping above)."""
    top = {v: k for k, v in _TOP_NAMES.items()}
    if own in top:
        return top[own]
    _, index, rest = own.split(".", 2)
    module, param = rest.rsplit(".", 1)
    block = {v: k for k, v in _BLOCK_NAMES.items()}
    return f"classifier.blocks.{index}.{block[module]}.{param}"


def _check_cct(cfg) -> None:
    check_encoder_keys(cfg, DEPTH)


BACKBONES.register("cct384", type=CCT, out_channels=DIM, input_sizes={SIZE}, check=_check_cct)(
    lambda pretrained="none", image_size=SIZE, trunc_te=None, freeze_te=None: CCT(trunc_te, freeze_te, pretrained)
)
