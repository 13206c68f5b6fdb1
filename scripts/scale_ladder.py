#!/usr/bin/env python
"""The million-image ladder of ``vgray bench scale`` on a Ray cluster of several nodes on one machine.

Starts a ``ray.cluster_utils.Cluster``: a head node with no CPU (the driver's own node: it schedules
nothing) and ``--nodes`` worker nodes of ``--node-cpus`` CPUs and ``--store-mb`` of object store
each, then runs ``vgray bench scale --address <the cluster>`` with the remaining arguments, and
shuts the cluster down. The evidence page docs/evidence/scale-ladder.md was made with::

    .venv/bin/python scripts/scale_ladder.py --nodes 2 -- \\
        --sizes 10000,100000,1000000 --set data.root=/root/vgray-data/rsf-s0 \\
        --json scale-rsf.json --figure scale-rsf.png

Everything after ``--`` goes to ``vgray bench scale`` (``vgray bench scale --help``).
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=2, help="worker nodes (default 2)")
    p.add_argument("--node-cpus", type=int, default=1, help="CPUs of each worker node (default 1)")
    p.add_argument("--store-mb", type=int, default=2048, help="object store of each node, MiB (default 2048)")
    p.add_argument("bench", nargs=argparse.REMAINDER, help="-- then the arguments of vgray bench scale")
    args = p.parse_args(argv)
    bench = args.bench[1:] if args.bench[:1] == ["--"] else args.bench
    if args.nodes < 1 or args.node_cpus < 1 or args.store_mb < 100:
        p.error("--nodes and --node-cpus at least 1, --store-mb at least 100")

    from ray.cluster_utils import Cluster

    from vgray.cli import main as vgray

    store = args.store_mb << 20
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "num_gpus": 0, "include_dashboard": False, "object_store_memory": store},
    )
    try:
        for _ in range(args.nodes):
            cluster.add_node(num_cpus=args.node_cpus, num_gpus=0, object_store_memory=store)
        cluster.wait_for_nodes()
        print(
            f"cluster: head (0 CPUs) + {args.nodes} nodes x {args.node_cpus} CPU(s), {args.store_mb} MiB "
            f"object store each, at {cluster.address}; started {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
            flush=True,
        )
        return vgray(["bench", "scale", *bench, "--address", cluster.address])
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    sys.exit(main())
