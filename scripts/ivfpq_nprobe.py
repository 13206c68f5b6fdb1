#!/usr/bin/env python
"""IVF-PQ search per query against database size, at vgray's default ``nprobe`` and at a fixed one,
on the shards a ``vgray bench scale`` run extracted (kept by hard links: the bench removes its own).

The bench's index at each size is ``ivfpq_spec(N)`` (about 4 sqrt N lists); vgray's default
``nprobe`` is a sixteenth of the lists, so the codes a query scans grow as N; with ``nprobe`` fixed
they grow as sqrt N. This times both (best of ``--repeats`` over the same queries), with Flat's per
query time for reference, and prints each line's growth exponent::

    .venv/bin/python scripts/ivfpq_nprobe.py --data /root/vgray-data/rsf-s0 \\
        --size 10000=DIR_1M --size 100000=DIR_100K --size 1085232=DIR_1M --queries DIR_1M

Each ``--size N=DIR`` reads the first N database rows of ``DIR/database/shard-*.parquet`` (a
prefix of a larger run's shards is the smaller rung: the rungs are prefixes of one sorted index);
``--queries DIR`` the query shards. Recalls are against ``--data``'s test split (25 m).
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from vgray.bench.scale import FIXED_NPROBE, growth_exponent, ivfpq_spec
from vgray.data.dataset import open_split
from vgray.data.positives import positives_within
from vgray.distributed.search import index_from_shards, read_descriptors, shard_rows
from vgray.evaluate.knn import default_nprobe
from vgray.evaluate.recall import recall_at_n


def _prefix(folder: Path, n: int) -> list[str]:
    """The shards of ``folder`` that hold its first ``n`` rows (the last one must end at ``n``)."""
    files, rows = [], 0
    for f in sorted((folder / "database").glob("shard-*.parquet")):
        if rows >= n:
            break
        files.append(str(f))
        rows += shard_rows(str(f))[0]
    if rows != n:
        raise SystemExit(f"{folder}: its shards do not end at row {n:,} ({rows:,})")
    return files


def _best(fn, repeats: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--size", action="append", required=True, metavar="N=DIR")
    p.add_argument("--queries", required=True, metavar="DIR")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json")
    args = p.parse_args()
    split = open_split(args.data, "test")
    xq = np.concatenate([read_descriptors(str(f)) for f in sorted((Path(args.queries) / "queries").glob("*.parquet"))])
    m, k = len(xq), 20
    rows = {}
    for item in args.size:
        n, folder = int(item.split("=", 1)[0]), Path(item.split("=", 1)[1])
        files = _prefix(folder, n)
        positives = positives_within(split.database.utm[:n], split.queries.utm[:m], 25.0)
        spec = ivfpq_spec(n)
        index = index_from_shards(files, spec, seed=0)
        ivf = faiss.extract_index_ivf(index)
        row = {"index": spec}
        for name, nprobe in (("default", default_nprobe(ivf.nlist)), ("fixed", min(FIXED_NPROBE, ivf.nlist))):
            ivf.nprobe = nprobe
            seconds, (_, I) = _best(functools.partial(index.search, xq, k), args.repeats)
            row[name] = {"nprobe": nprobe, "ms_per_query": 1000 * seconds / m, **recall_at_n(I, positives, (1, 5))}
        flat = faiss.IndexFlatL2(xq.shape[1])
        for f in files:
            flat.add(read_descriptors(f))
        seconds, (_, I) = _best(functools.partial(flat.search, xq, k), args.repeats)
        row["flat"] = {"ms_per_query": 1000 * seconds / m, **recall_at_n(I, positives, (1, 5))}
        rows[n] = row
        print(n, json.dumps(row), flush=True)
    sizes = sorted(rows)
    for name in ("default", "fixed", "flat"):
        a = growth_exponent(sizes, [rows[n][name]["ms_per_query"] for n in sizes])
        print(f"{name:8s} a = {a:.3f}" if a is not None else f"{name:8s} a = n/a")
    if args.json:
        Path(args.json).write_text(json.dumps({"sizes": sizes, "rows": rows, "queries": m}, indent=1))


if __name__ == "__main__":
    main()
