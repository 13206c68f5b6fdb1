"""``vgray bench search``: sharded exact search over Ray actors against one in-process Flat index.

A synthetic database (``--database`` x ``--dim`` float32, default 1M x 256, 1 GB) and ``--queries``
queries (database descriptors plus noise, so every query has a true nearest neighbour) are searched
for their ``--k`` nearest neighbours by one faiss ``IndexFlatL2`` in this process (the baseline),
then by :class:`vgray.distributed.search.ShardedFlatSearch` with each count of ``--actors``. Each
actor reserves the cluster's CPUs divided by the actor count, at most one node's (faiss threads:
that, rounded down).
Printed per actor count: the database MiB each actor holds (the largest), queries/s (best of
``--repeats`` searches of the whole batch), speed-up against Flat, and ``exact``: the fraction of
queries whose top-k equals Flat's (the same ids in the same order, up to equal distances; 1.0 is
the contract). Last, ``ratio``: the speed-up of the largest actor count.

Ray: ``--address`` joins a running cluster (``auto`` or ``HOST:PORT``); without it a Ray already
initialised in this process is used, else a local one is started and shut down at the end.
"""

from __future__ import annotations

import math
import time
from typing import Dict

import faiss
import numpy as np

from vgray.bench import actor_counts, bench_parser, print_figures
from vgray.console import Parser
from vgray.errors import BadInput
from vgray.evaluate.knn import search
from vgray.values import count, seed


def synthetic_database(database: int, queries: int, dim: int, seed: int = 0):
    """``(xb, xq)``: Gaussian database descriptors, and queries that are random database rows plus
    noise of a tenth of their spread."""
    rng = np.random.default_rng(seed)
    xb = rng.standard_normal((database, dim), dtype=np.float32)
    xq = xb[rng.integers(0, database, size=queries)] + 0.1 * rng.standard_normal((queries, dim), dtype=np.float32)
    return xb, xq


def best_seconds(fn, repeats: int) -> float:
    """The shortest of ``repeats`` wall-clock timings of ``fn()``, in seconds."""
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def parser() -> Parser:
    """``vgray bench search``'s options (read by :func:`main`)."""
    p = bench_parser("search", "not used by this benchmark")
    p.add_argument("--database", type=count(), default=1_000_000, help="database descriptors (default 1,000,000)")
    p.add_argument("--dim", type=count(), default=256, help="descriptor size (default 256)")
    p.add_argument("--queries", type=count(), default=1_000, help="queries per search batch (default 1,000)")
    p.add_argument("--actors", default="1,2,4", help="comma-separated actor counts (default 1,2,4)")
    p.add_argument("--k", type=count(), default=20, help="neighbours per query (default 20)")
    p.add_argument("--repeats", type=count(), default=3, help="timed searches per setting; the best is kept")
    p.add_argument("--address", default=None, help="a running Ray cluster (auto or HOST:PORT)")
    p.add_argument("--seed", type=seed(), default=0, help="seed of the synthetic set")
    return p


def main(argv) -> None:
    """``vgray bench search``: sharded exact search on Ray actors against one Flat index: QPS and
    exactness per actor count, the speed-up of the most actors last."""
    args = parser().parse_args(argv)
    counts = actor_counts(args.actors)
    if max(counts) > args.database:
        raise BadInput(f"--actors={args.actors}: more actors than the {args.database} database descriptors")

    from vgray.distributed.cluster import cluster_summary, ray_session
    from vgray.distributed.search import ShardedFlatSearch, same_as_flat

    with ray_session(args.address):
        xb, xq = synthetic_database(args.database, args.queries, args.dim, args.seed)
        flat = faiss.IndexFlatL2(args.dim)
        flat.add(xb)
        D0, I0, _ = search(flat, xq, args.k)
        flat_s = best_seconds(lambda: search(flat, xq, args.k), args.repeats)
        cluster = cluster_summary()
        cpus, node_cpus = cluster["cpus"], cluster["node_cpus"]
        figures: Dict[str, object] = {
            "database": args.database,
            "dim": args.dim,
            "queries": args.queries,
            "k": args.k,
            "nodes": cluster["nodes"],
            "cluster_cpus": cpus,
            "flat_threads": faiss.omp_get_max_threads(),
            "flat_memory_mb": xb.nbytes / 2**20,
            "flat_qps": args.queries / flat_s,
        }
        speedups = {}
        for n in counts:
            # the cluster's CPUs shared out, but no more than one node has: an actor lives on one node
            sharded = ShardedFlatSearch(xb, actors=n, num_cpus=min(cpus / n, node_cpus))
            try:
                D, I = sharded.search(xq, args.k)
                seconds = best_seconds(lambda sharded=sharded: sharded.search(xq, args.k), args.repeats)
                speedups[n] = flat_s / seconds
                figures.update(
                    {
                        f"actors={n} nodes_used": len({s["node_id"] for s in sharded.shards}),
                        f"actors={n} actor_memory_mb": max(sharded.actor_bytes()) / 2**20,
                        f"actors={n} qps": args.queries / seconds,
                        f"actors={n} speedup_vs_flat": speedups[n],
                        f"actors={n} exact": float(same_as_flat(D0, I0, D, I).mean()),
                    }
                )
            finally:
                sharded.close()
        figures["ratio"] = speedups[counts[-1]]
    print_figures(figures, args.json)
