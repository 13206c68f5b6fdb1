"""Transformer backbones (the paper's Table 5): images -> a sequence of tokens (B, T, C).

What ViT and CCT share: the token interface the network relies on, ``model.trunc_te`` (keep the
first N encoder blocks) and ``model.freeze_te`` (freeze the patch embedding and the blocks before
N), and their load-time checks. 0 means 0 for both (the paper's code read 0 as "not set"): trunc_te=0
keeps no encoder block, freeze_te=0 freezes the embedding only; null keeps all / freezes none. The
paper's code froze blocks 0..N (N + 1 blocks) and the final norm; here freeze_te=N freezes N blocks.

The sequence keeps any prefix token (ViT's class token) first; :meth:`TokenBackbone.feature_map`
turns the patch tokens into a (B, C, h, w) grid for the aggregations that pool local features
(GeM, NetVLAD and its k-means initialisation), while ``cls`` and ``seqpool`` take the sequence.

This file holds ViT-B/16 (timm's architecture, Dosovitskiy et al., ICLR 2021); CCT is in
:mod:`vgray.models.cct`.
"""
from __future__ import annotations

from typing import Iterable, Optional, Tuple

import timm
import torch
from torch import nn

from vgray.errors import BadInput
from vgray.models.backbones import BACKBONES
from vgray.models.pretrained import record, source_state_dict


class TokenBackbone(nn.Module):
    """Images (B, 3, H, W) -> tokens (B, prefix_tokens + h * w, out_channels)."""

    output = "tokens"

    def __init__(self, arch: str, out_channels: int, prefix_tokens: int, grid: Tuple[int, int], mean, std):
        super().__init__()
        self.arch = arch
        self.out_channels = out_channels
        self.prefix_tokens = prefix_tokens
        self.grid = tuple(grid)
        self.mean, self.std = tuple(mean), tuple(std)

    def feature_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """The patch tokens (prefix tokens dropped) as a local feature map (B, C, h, w)."""
        patches = tokens[:, self.prefix_tokens:]
        return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], *self.grid)


def kept_blocks(depth: int, trunc_te: Optional[int]) -> int:
    """How many encoder blocks ``model.trunc_te`` keeps (None: all of them)."""
    return depth if trunc_te is None else trunc_te


def freeze(embedding: Iterable[nn.Parameter], blocks: Iterable[nn.Module], freeze_te: Optional[int]) -> None:
    """``model.freeze_te``: None freezes nothing; N freezes the embedding and the first N blocks."""
    if freeze_te is None:
        return
    for p in embedding:
        p.requires_grad_(False)
    for block in list(blocks)[:freeze_te]:
        for p in block.parameters():
            p.requires_grad_(False)


def check_encoder_keys(cfg, depth: int) -> None:
    """trunc_te and freeze_te within the backbone's depth."""
    for key in ("trunc_te", "freeze_te"):
        value = getattr(cfg.model, key)
        if value is not None and value > depth:
            raise BadInput(f"model.{key}={value} is more than the {depth} encoder blocks of "
                           f"model.backbone={cfg.model.backbone}; allowed: null or 0..{depth}")


def load_checked(module: nn.Module, state: dict, origin: str, arch: str) -> None:
    """``module.load_state_dict(state)``, refusing a file that does not fit with one line."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        culprit = f"key {missing[0]} missing" if missing else f"unexpected key {unexpected[0]}"
        raise BadInput(f"weights file {origin} does not fit {arch}: {culprit}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise BadInput(f"weights file {origin} does not fit {arch}: {key} has shape "
                           f"{tuple(value.shape)}, expected {tuple(own[key].shape)}")
    module.load_state_dict(state)


# -- ViT ---------------------------------------------------------------------------------------

VIT_DEPTH = 12
VIT_SIZES = {(224, 224), (384, 384)}


class ViT(TokenBackbone):
    """timm's ViT-B/16, without its classifier head; ``forward`` gives the final-norm tokens
    (B, 1 + h * w, 768), the class token first."""

    def __init__(self, image_size: Tuple[int, int], trunc_te: Optional[int], freeze_te: Optional[int],
                 pretrained: str = "none"):
        arch = f"vit_base_patch16_{image_size[0]}"
        rec = record(arch, "imagenet")  # mean/std of the architecture's weights, even untrained
        super().__init__(arch, 768, 1, (image_size[0] // 16, image_size[1] // 16), rec.mean, rec.std)
        self.vit = timm.create_model(arch, pretrained=False, num_classes=0,
                                     depth=kept_blocks(VIT_DEPTH, trunc_te))
        state = source_state_dict(arch, pretrained)
        if state is not None:
            self.load_source_state_dict(state, f"{arch} {pretrained} weights")
        v = self.vit
        freeze([v.cls_token, v.pos_embed, *v.patch_embed.parameters()], v.blocks, freeze_te)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit.forward_features(x)

    def load_source_state_dict(self, state: dict, origin: str) -> None:
        """A timm ViT-B/16 state dict (head, pre-logits and blocks beyond trunc_te dropped)."""
        kept = len(self.vit.blocks)
        mapped = {}
        for key, value in state.items():
            if key.startswith(("head.", "pre_logits.", "fc_norm.")):
                continue
            if key.startswith("blocks.") and int(key.split(".")[1]) >= kept:
                continue
            mapped[key] = value
        load_checked(self.vit, mapped, origin, self.arch)


def _check_vit(cfg) -> None:
    check_encoder_keys(cfg, VIT_DEPTH)


BACKBONES.register("vit", output="tokens", out_channels=768, input_sizes=VIT_SIZES, check=_check_vit)(
    lambda pretrained="none", image_size=(224, 224), trunc_te=None, freeze_te=None:
    ViT(tuple(image_size), trunc_te, freeze_te, pretrained))
