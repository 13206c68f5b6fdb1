"""Recall@N: a query is right at N when one of its N nearest database images is a positive.

Queries without any positive stay in the denominator (they are misses) and are counted apart.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np


def first_correct_rank(I: np.ndarray, positives: List[np.ndarray]) -> np.ndarray:
    """Per query, the rank (0-based) of the first positive among its predictions ``I`` (m, k);
    ``k`` when none of them is a positive."""
    m, k = I.shape
    ranks = np.full(m, k, dtype=np.int64)
    for q in range(m):
        hits = np.flatnonzero(np.isin(I[q], positives[q]))
        if len(hits):
            ranks[q] = hits[0]
    return ranks


def recall_at_n(I: np.ndarray, positives: List[np.ndarray], recall_values: Sequence[int]) -> Dict[str, float]:
    """``{"R@N": percent}`` for every N in ``recall_values``, over all queries."""
    ranks = first_correct_rank(np.asarray(I), positives)
    m = max(len(ranks), 1)
    return {f"R@{n}": float(100.0 * np.count_nonzero(ranks < n) / m) for n in recall_values}
