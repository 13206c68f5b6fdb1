"""Losses over triplets of descriptors (the paper's ``train.criterion``).

Every loss takes the query descriptors ``q`` (B, D), their positives ``p`` (B, D) and negatives
``n`` (B, N, D), and returns the sum over the batch divided by B x N, as the paper's protocol does.
"""

from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F

from vgray.registry import LOSSES


@LOSSES.register("triplet")
def triplet(q: torch.Tensor, p: torch.Tensor, n: torch.Tensor, margin: float = 0.1) -> torch.Tensor:
    """Triplet margin loss (L2 distance), one triplet per (query, negative) pair."""
    b, k, d = n.shape
    loss = F.triplet_margin_loss(
        q.unsqueeze(1).expand(b, k, d).reshape(-1, d),
        p.unsqueeze(1).expand(b, k, d).reshape(-1, d),
        n.reshape(-1, d),
        margin=margin,
        p=2,
        reduction="sum",
    )
    return loss / (b * k)


def _squared(q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return ((q.unsqueeze(1) - x) ** 2).sum(-1) if x.dim() == 3 else ((q - x) ** 2).sum(-1)


@LOSSES.register("sare_joint")
def sare_joint(q: torch.Tensor, p: torch.Tensor, n: torch.Tensor, margin: float = 0.1) -> torch.Tensor:
    """SARE, joint form (Liu et al., ICCV 2019): for each query, the negative log-likelihood of the
    positive under a softmax over -squared distances to the positive and all N negatives."""
    b, k, _ = n.shape
    logits = -torch.cat([_squared(q, p).unsqueeze(1), _squared(q, n)], dim=1)  # (B, 1 + N)
    return -F.log_softmax(logits, dim=1)[:, 0].sum() / (b * k)


@LOSSES.register("sare_ind")
def sare_ind(q: torch.Tensor, p: torch.Tensor, n: torch.Tensor, margin: float = 0.1) -> torch.Tensor:
    """SARE, individual form: the same likelihood for each (positive, negative) pair separately."""
    b, k, _ = n.shape
    dp = _squared(q, p).unsqueeze(1).expand(b, k)
    logits = -torch.stack([dp, _squared(q, n)], dim=-1)  # (B, N, 2)
    return -F.log_softmax(logits, dim=-1)[..., 0].sum() / (b * k)


def read_losses(losses: List[torch.Tensor], group=None) -> List[float]:
    """The step losses of an epoch (0-d tensors, on the device) as floats, in one host sync: the
    training step never waits for the device to read its loss (the values are those ``float(loss)``
    gave at each step). In a group (:class:`vgray.train.parallel.Group`) each worker holds its part
    of every step's loss; the parts are summed across the workers, once an epoch."""
    if not losses:
        return []
    stacked = torch.stack(losses).float()
    if group is not None:
        stacked = group.sum(stacked)
    return stacked.cpu().tolist()
