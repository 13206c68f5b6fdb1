"""``vgray bench sweep``: N identical tiny trials run by ``vgray sweep`` on a local Ray against the
same trials run one after another in this process; prints both wall times, the ratio last, and
Ray's overhead per trial. Each trial gets one CPU in the sweep (``resources: {cpu: 1}``, so Ray
gives it one torch thread), and the same one thread in the sequential run: the same work, so on
two cores the sweep should approach 2x.
"""

from __future__ import annotations

import os
import tempfile
import time

from vgray.bench import bench_parser, print_figures
from vgray.config import load_config
from vgray.console import Parser
from vgray.distributed.spec import parse_sweep
from vgray.values import count

BASE = {
    "data": {"root": "synthetic:tiny", "resize": [48, 64], "num_workers": 0},
    "model": {"pretrained": "none", "aggregation": "gem"},
    "train": {
        "queries_per_epoch": 20,
        "cache_refresh_rate": 20,
        "negs_num_per_query": 2,
        "neg_samples_num": 60,
        "epochs": 1,
        "lr": 0.001,
    },
    "test": {"recall_values": [1, 5]},
}


def parser() -> Parser:
    """``vgray bench sweep``'s options (read by :func:`main`)."""
    p = bench_parser("sweep", "the tiny synthetic world, ResNet-18 conv4 + GeM, one short epoch a trial")
    p.add_argument("--trials", type=count(), default=8)
    p.add_argument("--cpus", type=count(), default=os.cpu_count() or 2, help="CPUs of the local Ray (one per trial)")
    return p


def main(argv) -> None:
    """``vgray bench sweep``: N tiny trials as a sweep on a local Ray against the same trials one
    after another; prints both wall times, Ray's overhead per trial and the ratio last."""
    args = parser().parse_args(argv)
    base = load_config(base=BASE, overrides=args.overrides).to_dict()
    from vgray.data.dataset import open_split

    open_split(base["data"]["root"], "train")  # generate the dataset before anything is timed

    import torch

    from vgray.train.loop import train

    with tempfile.TemporaryDirectory() as tmp:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # what each trial has in the sweep
        start = time.perf_counter()
        for seed in range(args.trials):
            train(
                load_config(base=base, overrides=[("seed", seed)]),
                os.path.join(tmp, f"s{seed}"),
                progress=False,
                log=lambda *a: None,
            )
        sequential_s = time.perf_counter() - start
        torch.set_num_threads(threads)

        from vgray.distributed.cluster import shutdown_ray
        from vgray.distributed.sweep import init_ray, run_sweep

        start = time.perf_counter()
        init_ray(None, num_cpus=args.cpus)
        ray_start_s = time.perf_counter() - start
        spec = parse_sweep(
            {
                "name": "bench",
                "base": base,
                "repeats": args.trials,
                "resources": {"cpu": 1},
                "storage": os.path.join(tmp, "store"),
            }
        )
        start = time.perf_counter()
        result = run_sweep(spec, out=lambda *a: None)
        if result.get("interrupted"):  # stopped by SIGINT or SIGTERM: no figures of a partial sweep
            raise KeyboardInterrupt
        sweep_s = time.perf_counter() - start
        shutdown_ray()
    concurrency = min(args.cpus, args.trials)
    figures = {
        "trials": args.trials,
        "ray_cpus": args.cpus,
        "threads_per_trial": 1,
        "failed": result["failed"],
        "sequential_s": sequential_s,
        "sweep_s": sweep_s,
        "ray_start_s": ray_start_s,
        # what each trial costs on top of its work, when `concurrency` run side by side
        "ray_overhead_per_trial_s": (sweep_s - sequential_s / concurrency) / (args.trials / concurrency),
        "ratio": sequential_s / sweep_s,
    }
    print_figures(figures, args.json)
