"""The optimizer and learning-rate schedule of both training regimes.

``train.optimizer``: Adam (the benchmark's default), AdamW (BoQ's and SALAD's) or SGD with momentum
0.9 (the paper's, and MixVPR's); ``train.weight_decay`` (null: each optimizer's default in vgray, 0
for Adam, torch's 0.01 for AdamW, the paper's 0.001 for SGD).

The schedule: a linear warm-up over the first ``train.warmup_steps`` optimizer steps (step s at
``(s + 1) / warmup_steps`` of the rate; MixVPR and BoQ warm up), then the rate multiplied by
``train.lr_gamma`` at each epoch of ``train.lr_milestones`` (as torch's MultiStepLR: from the epoch
after that many have completed). It is a closed form of (step, epoch), set on every parameter group
before each step by an optimizer step pre-hook, so neither regime's step function knows it; each
group's base rate (``initial_lr``, torch's name for it) and its count of steps live in the
optimizer's own param groups, so ``last.pt`` carries them and ``--resume`` continues the schedule
where it stopped. A group's own rate (CRN's layer and network rates) is its base.
"""

from __future__ import annotations

from typing import Sequence

import torch

STEPS = "vgray_steps"  # the param-group key counting the optimizer steps taken


def make_optimizer(model, train_cfg) -> torch.optim.Optimizer:
    """The optimizer of ``train.optimizer`` over the network's parameter groups (its CRN rates kept)."""
    groups, wd = model.param_groups(train_cfg), train_cfg.weight_decay
    if train_cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=train_cfg.lr, weight_decay=0.0 if wd is None else wd)
    if train_cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=train_cfg.lr, weight_decay=0.01 if wd is None else wd)
    # The paper's SGD: momentum 0.9, weight decay 0.001.
    return torch.optim.SGD(groups, lr=train_cfg.lr, momentum=0.9, weight_decay=0.001 if wd is None else wd)


def lr_factor(step: int, epoch: int, warmup_steps: int, milestones: Sequence[int], gamma: float) -> float:
    """The fraction of its base rate a group trains at on optimizer step ``step`` (0-based, counted
    over the whole run) in epoch ``epoch`` (0-based: the epochs completed before it)."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    return warm * gamma ** sum(1 for m in milestones if epoch >= m)


class LrSchedule:
    """Attach to an optimizer (after any ``load_state_dict``: a resumed optimizer brings its own base
    rates and step counts; one saved before the schedule existed trained at a constant rate, so its
    rate is the base and its count starts at 0). Set :attr:`epoch` before each epoch."""

    def __init__(self, optimizer: torch.optim.Optimizer, train_cfg):
        self.warmup_steps, self.gamma = train_cfg.warmup_steps, train_cfg.lr_gamma
        self.milestones = tuple(train_cfg.lr_milestones)
        self.epoch = 0
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group.setdefault(STEPS, 0)
        optimizer.register_step_pre_hook(self._before_step)

    def _before_step(self, optimizer, args, kwargs) -> None:
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * lr_factor(
                group[STEPS], self.epoch, self.warmup_steps, self.milestones, self.gamma
            )
            group[STEPS] += 1
