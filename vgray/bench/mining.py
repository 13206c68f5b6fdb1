"""``vgray bench mining``: the time of one cache refresh for each mining method (the paper's cost
column of Table 6), and how much cheaper partial mining is than full, measured in the same run.

Each refresh runs the real miner with the in-process descriptor source on the same queries and the
same model; what differs is which descriptors a method needs (random: the queries and their
positives; partial: plus ``neg_samples_num`` database images; full: the whole database).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, cast

import numpy as np

from vgray.bench import bench_parser, print_figures
from vgray.config import load_config
from vgray.console import Parser
from vgray.data.dataset import open_split
from vgray.data.transforms import test_transform
from vgray.models import build_model
from vgray.runtime import Runtime
from vgray.seeding import seed_everything
from vgray.train.loop import LocalDescriptors
from vgray.train.mining import TrainingQueries, create_miner

if TYPE_CHECKING:
    import torch


def parser() -> Parser:
    """``vgray bench mining``'s options (read by :func:`main`)."""
    p = bench_parser("mining", "synthetic:large, resnet18conv4 + gem at 60x80, 1000 queries")
    p.add_argument("--split", default="train", help="split whose database is mined")
    p.add_argument("--methods", default="random,partial,full")
    return p


def main(argv) -> None:
    """``vgray bench mining``: the time of one cache refresh per mining method; full mining against
    partial as the ratio."""
    args = parser().parse_args(argv)
    cfg = load_config(
        overrides=[
            "data.root=synthetic:large",
            "model.aggregation=gem",
            "model.pretrained=none",
            "data.resize=[60,80]",
            "test.batch_size=128",
            *args.overrides,
        ]
    )
    seed_everything(cfg.seed)
    split = open_split(cfg.data.root, args.split, cfg.data.msls_queries)
    data = TrainingQueries(split, cfg.train.positive_dist_threshold, cfg.test.positive_dist_threshold)
    model = build_model(cfg.model, image_size=cfg.data.image_size)
    rt = Runtime.from_config(cfg, progress=True)
    cache_transform = test_transform(cfg.data.image_size, model.mean, model.std, cfg.data.resize_order)
    source = LocalDescriptors(model, split, cache_transform, rt)
    if model.needs_init():
        cast("torch.Tensor", model.aggregation.initialized).fill_(True)  # NetVLAD's buffer
    figures = {
        "dataset": cfg.data.root,
        "database": len(split.database),
        "queries_per_refresh": cfg.train.cache_refresh_rate,
        "neg_samples_num": cfg.train.neg_samples_num,
    }
    seconds = {}
    for method in args.methods.split(","):
        miner = create_miner(method, data, cfg.train)
        rng = np.random.default_rng(cfg.seed)
        queries = miner.sample_queries(rng, cfg.train.cache_refresh_rate)
        start = time.perf_counter()
        miner.refresh(source, queries, rng)
        seconds[method] = time.perf_counter() - start
        figures[f"{method}_refresh_s"] = seconds[method]
    if "full" in seconds and "partial" in seconds:
        figures["ratio"] = seconds["full"] / seconds["partial"]  # how many times cheaper partial is
    print_figures(figures, args.json)
