"""DINOv2 ViT-S/B/L/G with 14-pixel patches (timm's architectures; M. Oquab et al., "DINOv2: Learning
Robust Visual Features without Supervision", TMLR 2024) as VG backbones, as SALAD (Izquierdo &
Civera, CVPR 2024) and BoQ (Ali-bey et al., CVPR 2024) use them: images whose sides are multiples of
14 -> the final-norm tokens, the class token first, then the patch tokens row-major.
``model.dinov2_final_norm: false`` leaves DINOv2's final LayerNorm out (the network then has no
``vit.norm``): the tokens of the last block as they are, as BoQ's DINOv2 backbone gives them
(amaralibey/Bag-of-Queries, src/backbones.py; SALAD's applies the norm).

``model.train_blocks`` = how many of the last encoder blocks train; the patch embedding, class token,
positional embedding and the blocks before them are frozen (SALAD trains the last 4, BoQ the last 2;
null trains all). ``model.trunc_te`` keeps the first N blocks (for small tests and studies). The
positional embedding is built for the input's patch grid; weights made at another size (the
official ones: 518 x 518, a 37 x 37 grid) are resampled to it when loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Tuple, cast

import timm
import torch
import torch.nn.functional as F
from torch import nn

from vgray.checkpoint import load_fitting
from vgray.errors import BadInput
from vgray.models.backbones.tokens import kept_blocks
from vgray.models.components import TokenBackbone
from vgray.models.pretrained import dinov2_to_timm, record, source_state_dict
from vgray.registry import BACKBONES, add_config_check

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer

PATCH = 14
# registry name -> (timm architecture, embedding channels, encoder depth)
VARIANTS = {
    "dinov2_vits14": ("vit_small_patch14_dinov2", 384, 12),
    "dinov2_vitb14": ("vit_base_patch14_dinov2", 768, 12),
    "dinov2_vitl14": ("vit_large_patch14_dinov2", 1024, 24),
    "dinov2_vitg14": ("vit_giant_patch14_dinov2", 1536, 40),
}


class DINOv2(TokenBackbone):
    """timm's DINOv2 ViT without a classifier; ``forward`` gives the final-norm tokens
    (B, 1 + h * w, C), the class token first, on the grid (H / 14, W / 14); without ``final_norm``
    the last block's tokens (``vit.norm`` is then an Identity, without weights)."""

    def __init__(
        self,
        name: str,
        image_size: Tuple[int, int],
        trunc_te: Optional[int],
        train_blocks: Optional[int],
        pretrained: str = "none",
        final_norm: bool = True,
    ):
        arch, channels, depth = VARIANTS[name]
        rec = record(arch, "dinov2")  # mean/std of the official weights, even untrained
        super().__init__(arch, channels, 1, (image_size[0] // PATCH, image_size[1] // PATCH), rec.mean, rec.std)
        self.vit = cast(
            "VisionTransformer",
            timm.create_model(
                arch, pretrained=False, num_classes=0, img_size=tuple(image_size), depth=kept_blocks(depth, trunc_te)
            ),
        )
        self.final_norm = final_norm
        if not final_norm:
            self.vit.norm = nn.Identity()
        state = source_state_dict(arch, pretrained)
        if state is not None:
            self.load_source_state_dict(state, f"{arch} {pretrained} weights")
        self.freeze(train_blocks)

    def freeze(self, train_blocks: Optional[int]) -> None:
        """Freeze the embeddings and every block but the last ``train_blocks`` (None: all train)."""
        if train_blocks is None:
            return
        v = self.vit
        frozen = [v.cls_token, v.pos_embed, *v.patch_embed.parameters()]
        for block in list(v.blocks)[: max(0, len(v.blocks) - train_blocks)]:
            frozen += list(block.parameters())
        for p in frozen:
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit.forward_features(x)

    def load_source_state_dict(self, state: dict, origin: str) -> None:
        """A DINOv2 state dict in the official layout (facebookresearch/dinov2's hub files) or timm's;
        blocks beyond trunc_te are dropped and the positional embedding resampled to the input grid."""
        kept = len(self.vit.blocks)
        mapped = {
            k: v
            for k, v in dinov2_to_timm(state).items()
            if not (k.startswith("blocks.") and int(k.split(".")[1]) >= kept)
            and not (k.startswith("norm.") and not self.final_norm)
        }
        own = self.vit.pos_embed
        assert own is not None  # timm's DINOv2 has a positional embedding
        pos = mapped.get("pos_embed")
        if (
            isinstance(pos, torch.Tensor)
            and pos.ndim == 3
            and pos.shape[-1] == own.shape[-1]
            and pos.shape != own.shape
        ):
            side = int(round((pos.shape[1] - 1) ** 0.5))
            if side * side + 1 != pos.shape[1]:
                raise BadInput(
                    f"weights file {origin}: pos_embed of {pos.shape[1]} tokens is not a class token plus a square grid"
                )
            mapped["pos_embed"] = resample_like_dinov2(pos, side, self.grid)
        load_fitting(self.vit, mapped, f"weights file {origin} does not fit {self.arch}")

    def adapt_network_state(self, state: dict, prefix: str) -> dict:
        """A whole network's state dict with this backbone under ``prefix``: a positional embedding
        made for another square grid (a released network's, 37 x 37 at 518 x 518) resampled to this
        input's grid as DINOv2 does at every forward pass (:func:`resample_like_dinov2`)."""
        pos, own = state.get(prefix + "vit.pos_embed"), self.vit.pos_embed
        assert own is not None  # timm's DINOv2 has a positional embedding
        if not (
            isinstance(pos, torch.Tensor)
            and pos.ndim == 3
            and pos.shape[-1] == own.shape[-1]
            and pos.shape != own.shape
        ):
            return state
        side = int(round((pos.shape[1] - 1) ** 0.5))
        if side * side + 1 != pos.shape[1]:
            return state  # not a class token plus a square grid: refused as a misfit by the caller
        return {**state, prefix + "vit.pos_embed": resample_like_dinov2(pos, side, self.grid)}


def resample_like_dinov2(pos: torch.Tensor, side: int, grid: Tuple[int, ...]) -> torch.Tensor:
    """A positional embedding (1, 1 + side^2, C) resampled to ``grid`` (h, w) the way DINOv2's own
    ``interpolate_pos_encoding`` does at every forward pass (bicubic, no antialiasing, scale factors
    (h + 0.1) / side and (w + 0.1) / side), so the tokens equal the official model's at that size."""
    patches = pos[:, 1:].float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
    scale = tuple((g + 0.1) / side for g in grid)
    patches = F.interpolate(patches, scale_factor=scale, mode="bicubic", antialias=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)
    return torch.cat([pos[:, :1].float(), patches], dim=1).to(pos.dtype)


# Test methods whose crops are squares of side min(H, W) (vgray.evaluate.methods).
_SQUARE_CROP_METHODS = ("five_crops", "nearest_crop", "maj_voting")


def nearest_multiples(side: int, step: int = PATCH) -> str:
    """The multiples of ``step`` nearest to ``side`` (``320 -> "308 or 322"``)."""
    low = side // step * step
    return f"{low + step}" if low == 0 else f"{low} or {low + step}"


def _check_dinov2(cfg) -> None:
    """Sides multiples of 14, trunc_te within depth, train_blocks within the kept blocks, no freeze_te."""
    m = cfg.model
    depth = VARIANTS[m.backbone][2]
    size = list(cfg.data.image_size)
    bad = [(axis, s) for axis, s in zip("HW", size) if s % PATCH]
    if bad:
        nearest = "; ".join(f"{axis} {s}: {nearest_multiples(s)}" for axis, s in bad)
        raise BadInput(
            f"data.resize {size} (times resize_fraction) must have sides that are multiples of "
            f"{PATCH} for model.backbone={m.backbone}; nearest valid sizes {nearest}"
        )
    if m.trunc_te is not None and m.trunc_te > depth:
        raise BadInput(
            f"model.trunc_te={m.trunc_te} is more than the {depth} encoder blocks of "
            f"model.backbone={m.backbone}; allowed: null or 0..{depth}"
        )
    kept = kept_blocks(depth, m.trunc_te)
    if m.train_blocks is not None and m.train_blocks > kept:
        raise BadInput(
            f"model.train_blocks={m.train_blocks} is more than the {kept} encoder blocks of "
            f"model.backbone={m.backbone}; allowed: null or 0..{kept}"
        )
    # The positional embedding is built for data.image_size: queries fed at another size are refused.
    h, w = size
    if cfg.test.method == "single_query" or (cfg.test.method in _SQUARE_CROP_METHODS and h != w):
        raise BadInput(
            f"test.method={cfg.test.method} feeds queries at another size than data.resize {size}, "
            f"which model.backbone={m.backbone} is built for; use hard_resize or central_crop"
            + ("" if cfg.test.method == "single_query" else ", or a square data.resize")
        )
    if m.freeze_te is not None:
        raise BadInput(
            f"model.freeze_te is for vit and cct; model.backbone={m.backbone} freezes with "
            f"model.train_blocks (how many of the last blocks train)"
        )


@add_config_check
def check_train_blocks(cfg) -> None:
    """``model.train_blocks`` and ``model.dinov2_final_norm`` apply to the DINOv2 backbones only."""
    if cfg.model.train_blocks is not None and cfg.model.backbone not in VARIANTS:
        raise BadInput(
            f"model.train_blocks is for the backbones {', '.join(VARIANTS)}, not "
            f"model.backbone={cfg.model.backbone}; set it to null"
        )
    if not cfg.model.dinov2_final_norm and cfg.model.backbone not in VARIANTS:
        raise BadInput(
            f"model.dinov2_final_norm=false is for the backbones {', '.join(VARIANTS)}, not "
            f"model.backbone={cfg.model.backbone}; set it to true"
        )


def _register(name: str) -> None:
    _, channels, _ = VARIANTS[name]
    BACKBONES.register(
        name,
        type=DINOv2,
        out_channels=channels,
        patch=PATCH,
        class_token=True,
        model_keys=("train_blocks", "dinov2_final_norm"),
        check=_check_dinov2,
    )(
        lambda pretrained="none", image_size=(224, 224), trunc_te=None, freeze_te=None, train_blocks=None, dinov2_final_norm=True: (
            DINOv2(name, tuple(image_size), trunc_te, train_blocks, pretrained, dinov2_final_norm)
        )
    )


for _name in VARIANTS:
    _register(_name)
