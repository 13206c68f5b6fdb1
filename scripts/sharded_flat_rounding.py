#!/usr/bin/env python
"""How far a sharded exact search moves from one Flat index through float32 rounding alone.

faiss computes L2 distances as ``|x|^2 + |y|^2 - 2 x.y`` in float32; how the database is cut into
blocks (one index, or two shards merged) changes the rounding. This draws unit-norm descriptors
around one direction (small noise: near-identical descriptors, as an untrained network gives),
searches them with one ``IndexFlatL2`` and with two halves merged (:func:`vgray.evaluate.knn.merge_topk`),
and prints the largest distance difference, how many queries have identical ids, and how many
:func:`vgray.distributed.search.same_as_flat` accepts at its default tolerance and at 1e-6::

    .venv/bin/python scripts/sharded_flat_rounding.py
"""

from __future__ import annotations

import faiss
import numpy as np

from vgray.distributed.search import same_as_flat
from vgray.evaluate.knn import merge_topk


def main() -> None:
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    n, d, m, k = 100_000, 256, 1000, 20
    base = rng.standard_normal(d).astype(np.float32)

    def draw(count: int, noise: float) -> np.ndarray:
        x = base + noise * rng.standard_normal((count, d)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    print(f"{n:,} database, {m:,} queries, {d}-d unit descriptors, top {k}")
    for noise in (0.05, 0.2, 1.0):
        xb, xq = draw(n, noise), draw(m, noise)
        whole = faiss.IndexFlatL2(d)
        whole.add(xb)
        D0, I0 = whole.search(xq, k)
        parts = []
        for lo, hi in ((0, n // 2), (n // 2, n)):
            half = faiss.IndexFlatL2(d)
            half.add(xb[lo:hi])
            D, I = half.search(xq, k)
            parts.append((D, I + lo))
        D, I = merge_topk(*parts[0], *parts[1], k)
        print(
            f"noise {noise}: mean distance {D0.mean():.4g}, largest |D - D0| {np.abs(D - D0).max():.3g}, "
            f"identical ids {np.mean(np.all(I == I0, axis=1)):.4f}, "
            f"same_as_flat {same_as_flat(D0, I0, D, I).mean():.4f} (atol 1e-5), "
            f"{same_as_flat(D0, I0, D, I, atol=1e-6).mean():.4f} (atol 1e-6)"
        )


if __name__ == "__main__":
    main()
