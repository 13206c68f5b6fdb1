"""``vgray bench ddp``: N data-parallel workers against one worker with the whole batch.

Two questions, answered in one run on this machine's CPUs (gloo; the workers are processes of one
``torch.distributed`` group started here, the group Ray Train sets up for ``train.workers``):

* **the same optimisation?** One training step on a fixed batch (fixed seed, same initial
  weights), in both regimes (triplets: the paper's 1 + 1 + N triplets; places: P x K images with
  the multi-similarity loss and miner), by one worker with the whole batch and by ``--workers``
  workers with a part each (:mod:`vgray.train.parallel`): the relative difference of the loss and
  the largest difference of the parameter update relative to the largest update (SGD's first update,
  -lr x the averaged gradient, read before it is added to the weights). BatchNorm runs in
  eval mode for this check (its running statistics): in train mode each worker would normalise its
  part with that part's statistics (SyncBatchNorm removes that, on GPUs only); the train-mode
  difference is printed too, for what it is. SGD, so that the update is the gradient itself (Adam's
  first step divides the gradient by its own size).
* **how fast?** Training images a second of the triplet step, one worker with every core against
  ``--workers`` workers with their share of the cores, on the same global batch. On two cores the
  ratio may be near 1: the workers share the cores one worker would use.

The ratio printed last is the speed ratio (workers over one).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import torch

from vgray.bench import bench_parser, print_figures
from vgray.config import load_config
from vgray.console import Parser
from vgray.values import count

DEFAULTS = [
    "model.backbone=resnet18conv4",
    "model.aggregation=gem",
    "model.pretrained=none",
    "data.resize=[48,64]",
    "train.optimizer=sgd",
    "train.lr=0.01",
    "train.batch_size=4",
    "train.negs_num_per_query=10",
    "train.places_per_batch=8",
    "train.images_per_place=4",
    "device=cpu",
]


def _started(cfg):
    """What a step needs in this process's group: ``(group, runtime, network, optimizer, the module
    the steps run)``, the network built from the seed and in train mode."""
    from vgray.models import build_model
    from vgray.runtime import Runtime
    from vgray.seeding import seed_everything
    from vgray.train.parallel import Group, wrap
    from vgray.train.schedule import make_optimizer

    group = Group.current()
    seed_everything(cfg.seed)
    rt = Runtime.from_config(cfg, progress=False)
    model = build_model(cfg.model, image_size=cfg.data.image_size).to(rt.device)
    optimizer = make_optimizer(model, cfg.train)
    net = wrap(model, group)
    model.train()
    return group, rt, model, optimizer, net


def step(cfg, regime: str, bn: str, batch: torch.Tensor, labels: torch.Tensor) -> Tuple[float, Dict[str, torch.Tensor]]:
    """One optimizer step of ``regime`` on the fixed ``batch`` (``labels``: the places') by this
    process, one worker or one of a ``torch.distributed`` group: the whole batch's loss (summed over
    the workers' parts) and each parameter's update."""
    from vgray.train.loop import train_step
    from vgray.train.losses import read_losses
    from vgray.train.parallel import split_batches
    from vgray.train.places import loss_and_miner, place_step

    group, rt, model, optimizer, net = _started(cfg)
    if bn == "eval":
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
    if regime == "triplets":
        ((mine, weight),) = split_batches(len(batch), len(batch), group, np.arange(len(batch)))
        loss = train_step(net, batch[mine], optimizer, rt, cfg, weight, group.world)
    else:
        part = group.part(len(batch))
        loss_fn, miner = loss_and_miner(cfg.train, group)
        loss = place_step(net, batch[part], labels[part], loss_fn, miner, optimizer, rt, None, group.world)
    total = read_losses([loss], group)[0]
    # SGD's first update is -lr x the (averaged) gradient: read from the gradient, not as the weights'
    # difference, whose float32 rounding (about 1e-7 of a weight) would swamp a 1e-3 update.
    lr = cfg.train.lr
    return total, {k: -lr * v.grad.detach().clone() for k, v in model.named_parameters() if v.grad is not None}


def speed(cfg, batch: torch.Tensor, steps: int) -> float:
    """Seconds of ``steps`` triplet steps on the global ``batch`` by this process's group (after one
    warm-up step), the workers synchronised before and after."""
    from vgray.train.loop import train_step
    from vgray.train.parallel import split_batches

    group, rt, model, optimizer, net = _started(cfg)
    ((mine, weight),) = split_batches(len(batch), len(batch), group, np.arange(len(batch)))
    part = batch[mine]
    train_step(net, part, optimizer, rt, cfg, weight, group.world)
    group.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        train_step(net, part, optimizer, rt, cfg, weight, group.world)
    group.barrier()
    return time.perf_counter() - start


def steps(cfg, cases: List[Tuple[str, str]]) -> List[Tuple[float, Dict[str, torch.Tensor]]]:
    """:func:`step` of each ``(regime, bn)`` of ``cases`` on its fixed batch, in this process's group
    (one group start for all of them)."""
    return [step(cfg, regime, bn, *fixed_batch(cfg, regime)) for regime, bn in cases]


def train_run(cfg, out: str, resume: bool) -> Dict[str, Any]:
    """:func:`vgray.train.loop.train` by this process's group into ``out`` (rank 0 writes there; the
    others read its ``last.pt`` when resuming: one machine); the figures as plain numbers and text."""
    from vgray.train.loop import train

    result = train(cfg, out, resume=resume, progress=False, log=lambda *a: None)
    return {k: v if isinstance(v, (str, int)) else float(v) for k, v in result.items()}


def _member(rank: int, world: int, folder: str, threads: int, task: str, args: Tuple) -> None:
    """One process of a group (torch.multiprocessing): gloo over a file in ``folder``; rank 0 saves
    what ``task`` returns into ``folder/result.pt``."""
    import torch.distributed as dist

    torch.set_num_threads(threads)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        tasks: Dict[str, Callable[..., Any]] = {"steps": steps, "speed": speed, "train": train_run}
        result = tasks[task](*args)
        if rank == 0:
            torch.save(result, f"{folder}/result.pt")
    finally:
        if world > 1:
            dist.destroy_process_group()


def in_group(world: int, threads: int, task: str, *args) -> Any:
    """``task`` ("steps", "speed" or "train") run by a group of ``world`` fresh processes of ``threads`` torch
    threads each (one process for a world of 1: the same start-up as the group's); rank 0's result."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="vgray-ddp-") as folder:
        mp.spawn(_member, args=(world, folder, threads, task, args), nprocs=world, join=True)
        return torch.load(Path(folder) / "result.pt", weights_only=True)


def differences(one: Tuple[float, Dict[str, torch.Tensor]], many: Tuple[float, Dict[str, torch.Tensor]]) -> Dict:
    """``loss_rel_diff`` (|loss_N - loss_1| / |loss_1|) and ``update_rel_diff`` (largest difference
    of a parameter's update over the largest update)."""
    (loss_1, up_1), (loss_n, up_n) = one, many
    biggest = max(float(u.abs().max()) for u in up_1.values())
    worst = max(float((up_n[k] - u).abs().max()) for k, u in up_1.items())
    return {"loss_rel_diff": abs(loss_n - loss_1) / max(abs(loss_1), 1e-30), "update_rel_diff": worst / biggest}


def fixed_batch(cfg, regime: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """The fixed batch of ``regime``: random images (seeded), and for places their labels."""
    g = torch.Generator().manual_seed(cfg.seed)
    h, w = cfg.data.image_size
    if regime == "triplets":
        per = 2 + cfg.train.negs_num_per_query
        return torch.rand(cfg.train.batch_size, per, 3, h, w, generator=g), torch.zeros(0)
    p, k = cfg.train.places_per_batch, cfg.train.images_per_place
    return torch.rand(p, k, 3, h, w, generator=g), torch.arange(p)


def compare(cfg, workers: int, threads: int, cases: List[Tuple[str, str]]) -> Dict[Tuple[str, str], Dict[str, float]]:
    """One step of each ``(regime, bn)`` of ``cases`` by one worker and by ``workers`` workers on the
    same fixed batch: :func:`differences` and the loss, by case."""
    one = in_group(1, threads, "steps", cfg, cases)
    many = in_group(workers, max(1, threads // workers), "steps", cfg, cases)
    return {case: {**differences(a, b), "loss": a[0]} for case, a, b in zip(cases, one, many)}


def parser() -> Parser:
    """``vgray bench ddp``'s options (read by :func:`main`)."""
    p = bench_parser("ddp", "resnet18conv4 + gem at 48x64, 4 triplets of 1+1+10, 8 places x 4, SGD, CPU")
    p.add_argument("--workers", type=count(), default=2, help="workers of the group (default 2)")
    p.add_argument("--steps", type=count(), default=5, help="timed triplet steps of each group (default 5)")
    return p


def main(argv: List[str]) -> None:
    args = parser().parse_args(argv)
    cfg = load_config(overrides=[*DEFAULTS, *args.overrides, f"train.workers={args.workers}"])
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    figures: Dict[str, Any] = {
        "model": f"{cfg.model.backbone}+{cfg.model.aggregation}",
        "image_size": "x".join(map(str, cfg.data.image_size)),
        "workers": args.workers,
        "cores": threads,
    }
    cases = [(regime, bn) for regime in ("triplets", "places") for bn in ("eval", "train")]
    for (regime, bn), got in compare(cfg, args.workers, threads, cases).items():
        figures[f"{regime}_bn_{bn}_loss_rel_diff"] = got["loss_rel_diff"]
        figures[f"{regime}_bn_{bn}_update_rel_diff"] = got["update_rel_diff"]
    batch, _ = fixed_batch(cfg, "triplets")
    images = args.steps * batch.shape[0] * batch.shape[1]
    one_s = in_group(1, threads, "speed", cfg, batch, args.steps)
    many_s = in_group(args.workers, max(1, threads // args.workers), "speed", cfg, batch, args.steps)
    figures["one_worker_images_per_s"] = images / one_s
    figures[f"{args.workers}_workers_images_per_s"] = images / many_s
    figures["ratio"] = one_s / many_s
    print_figures(figures, args.json)
