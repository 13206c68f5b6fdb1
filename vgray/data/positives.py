"""Positives: database images within a distance of each query on the UTM plane.

Soft positives (25 m) decide whether a retrieval is right; hard positives (10 m) are the training
positives. faiss range search on float32 would lose the last metre at UTM magnitudes (4e6 m), so
coordinates are centred first, the search radius widened by a metre, and the candidates filtered
exactly in float64.
"""
from __future__ import annotations

from typing import List

import faiss
import numpy as np


def positives_within(db_utm: np.ndarray, q_utm: np.ndarray, threshold: float) -> List[np.ndarray]:
    """For each query, the database indices with distance <= ``threshold`` (metres), nearest first
    (ties by index). ``db_utm`` (n, 2) and ``q_utm`` (m, 2) float64 east/north."""
    db = np.asarray(db_utm, dtype=np.float64).reshape(-1, 2)
    q = np.asarray(q_utm, dtype=np.float64).reshape(-1, 2)
    if len(q) == 0:
        return []
    if len(db) == 0:
        return [np.empty(0, dtype=np.int64) for _ in range(len(q))]
    origin = db.mean(axis=0)
    index = faiss.IndexFlatL2(2)
    index.add((db - origin).astype(np.float32))
    # Squared radius with a metre of slack against float32 rounding; exact check below.
    lims, _, ids = index.range_search((q - origin).astype(np.float32), float((threshold + 1.0) ** 2))
    out = []
    for i in range(len(q)):
        cand = ids[lims[i]:lims[i + 1]].astype(np.int64)
        dist = np.hypot(*(db[cand] - q[i]).T) if len(cand) else np.empty(0)
        keep = dist <= threshold
        cand, dist = cand[keep], dist[keep]
        out.append(cand[np.lexsort((cand, dist))])
    return out
