"""``vgray bench train``: triplets per second of vgray's training step against a plain fp32 step.

The baseline is the step written the plain way, as the paper's code does it: the model in fp32 and
the default memory format, the triplet loss summed in a Python loop over the batch. vgray's step
(:func:`vgray.train.loop.train_step`) runs channels-last, with bf16 autocast on a GPU and the loss
vectorised. Both train copies of the same model on the same random batches, alternating, each
timed after a warm-up; the ratio is printed last.
"""

from __future__ import annotations

import copy
import time
from typing import cast

import torch

from vgray.bench import bench_parser, print_figures
from vgray.config import load_config
from vgray.console import Parser
from vgray.models import build_model
from vgray.runtime import Runtime
from vgray.seeding import seed_everything
from vgray.train.loop import train_step
from vgray.train.schedule import make_optimizer
from vgray.values import count


def plain_step(model, images, optimizer, negs: int, margin: float) -> float:
    """The paper's training step (the baseline): fp32, the triplet loss summed in a Python loop."""
    b, per, c, h, w = images.shape
    features = model(images.view(b * per, c, h, w)).view(b, per, -1)
    criterion = torch.nn.TripletMarginLoss(margin=margin, p=2, reduction="sum")
    loss = 0.0
    for i in range(b):
        for j in range(negs):
            loss = loss + criterion(features[i, 0:1], features[i, 1:2], features[i, 2 + j : 3 + j])
    loss = loss / (b * negs)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def parser() -> Parser:
    """``vgray bench train``'s options (read by :func:`main`)."""
    p = bench_parser("train", "resnet18conv4 + gem, 4 triplets of 1+1+10 at 120x160")
    p.add_argument("--steps", type=count(), default=5, help="timed steps of each path per round")
    p.add_argument("--rounds", type=count(), default=2, help="alternating rounds; each path's best kept")
    return p


def main(argv) -> None:
    """``vgray bench train``: triplets/s of vgray's training step against the paper's; ratio last."""
    args = parser().parse_args(argv)
    cfg = load_config(
        overrides=["model.aggregation=gem", "model.pretrained=none", "data.resize=[120,160]", *args.overrides]
    )
    seed_everything(cfg.seed)
    rt = Runtime.from_config(cfg, progress=False)
    base = build_model(cfg.model, image_size=cfg.data.image_size)
    if base.needs_init():  # NetVLAD: any clusters do for timing
        cast(torch.Tensor, base.aggregation.initialized).fill_(True)  # NetVLAD's buffer
    ours_model = rt.prepare(copy.deepcopy(base)).train()
    plain_model = copy.deepcopy(base).to(rt.device).train()
    ours_opt, plain_opt = make_optimizer(ours_model, cfg.train), make_optimizer(plain_model, cfg.train)
    b, n = cfg.train.batch_size, cfg.train.negs_num_per_query
    images = torch.rand(b, 2 + n, 3, *cfg.data.image_size)
    sync = torch.cuda.synchronize if rt.device.type == "cuda" else (lambda: None)
    plain_images = images.to(rt.device)

    def time_steps(fn):
        """Seconds per step of ``fn`` over ``--steps`` steps (the device synchronised)."""
        sync()
        start = time.perf_counter()
        for _ in range(args.steps):
            fn()
        sync()
        return (time.perf_counter() - start) / args.steps

    def run_ours():
        return train_step(ours_model, images, ours_opt, rt, cfg)

    def run_plain():
        return plain_step(plain_model, plain_images, plain_opt, n, cfg.train.margin)

    run_ours(), run_plain()  # warm-up
    ours_s = plain_s = float("inf")
    for _ in range(args.rounds):
        plain_s = min(plain_s, time_steps(run_plain))
        ours_s = min(ours_s, time_steps(run_ours))
    h, w = cfg.data.image_size
    figures = {
        "model": f"{cfg.model.backbone}+{cfg.model.aggregation}",
        "image_size": f"{h}x{w}",
        "device": str(rt.device),
        "precision": str(rt.dtype).replace("torch.", ""),
        "triplet": f"1+1+{n}",
        "batch_triplets": b,
        "plain_triplets_per_s": b / plain_s,
        "vgray_triplets_per_s": b / ours_s,
        "ratio": plain_s / ours_s,
    }
    print_figures(figures, args.json)
