"""What the transformer backbones (the paper's Table 5) share: ``model.trunc_te`` and
``model.freeze_te`` and their load-time checks.

``model.trunc_te`` keeps the first N encoder blocks, ``model.freeze_te`` freezes the patch embedding
and the blocks before N. 0 means 0 for both (the paper's code read 0 as "not set"): trunc_te=0
keeps no encoder block, freeze_te=0 freezes the embedding only; null keeps all / freezes none. The
paper's code froze blocks 0..N (N + 1 blocks) and the final norm; here freeze_te=N freezes N blocks.

Their output, a sequence of tokens, is the interface of
:class:`vgray.models.components.TokenBackbone`: ``cls`` and ``seqpool`` take the sequence, the
other aggregations (GeM, NetVLAD and its k-means initialisation) the patch tokens as a grid.
"""

from __future__ import annotations

from typing import Iterable, Optional

from torch import nn

from vgray.errors import BadInput


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
            raise BadInput(
                f"model.{key}={value} is more than the {depth} encoder blocks of "
                f"model.backbone={cfg.model.backbone}; allowed: null or 0..{depth}"
            )
