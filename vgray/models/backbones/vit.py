"""ViT-B/16 (timm's architecture; A. Dosovitskiy et al., "An Image is Worth 16x16 Words:
Transformers for Image Recognition at Scale", ICLR 2021) as a VG backbone (the paper's Table 5):
images at 224 x 224 or 384 x 384 -> the final-norm tokens, the class token first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Tuple, cast

import timm
import torch

from vgray.checkpoint import load_fitting
from vgray.models.backbones.tokens import check_encoder_keys, freeze, kept_blocks
from vgray.models.components import TokenBackbone
from vgray.models.pretrained import record, source_state_dict
from vgray.registry import BACKBONES

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer

VIT_DEPTH = 12
VIT_SIZES = {(224, 224), (384, 384)}


class ViT(TokenBackbone):
    """timm's ViT-B/16, without its classifier head; ``forward`` gives the final-norm tokens
    (B, 1 + h * w, 768), the class token first."""

    def __init__(
        self, image_size: Tuple[int, int], trunc_te: Optional[int], freeze_te: Optional[int], pretrained: str = "none"
    ):
        arch = f"vit_base_patch16_{image_size[0]}"
        rec = record(arch, "imagenet")  # mean/std of the architecture's weights, even untrained
        super().__init__(arch, 768, 1, (image_size[0] // 16, image_size[1] // 16), rec.mean, rec.std)
        self.vit = cast(
            "VisionTransformer",
            timm.create_model(arch, pretrained=False, num_classes=0, depth=kept_blocks(VIT_DEPTH, trunc_te)),
        )
        state = source_state_dict(arch, pretrained)
        if state is not None:
            self.load_source_state_dict(state, f"{arch} {pretrained} weights")
        v = self.vit
        assert v.cls_token is not None and v.pos_embed is not None  # ViT-B/16 has both
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
        load_fitting(self.vit, mapped, f"weights file {origin} does not fit {self.arch}")


def _check_vit(cfg) -> None:
    check_encoder_keys(cfg, VIT_DEPTH)


# Its class token leads the tokens (SALAD takes it beside the 16-pixel patch tokens).
BACKBONES.register(
    "vit", type=ViT, out_channels=768, input_sizes=VIT_SIZES, patch=16, class_token=True, check=_check_vit
)(
    lambda pretrained="none", image_size=(224, 224), trunc_te=None, freeze_te=None: ViT(
        tuple(image_size), trunc_te, freeze_te, pretrained
    )
)
