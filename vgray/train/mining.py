"""Negative mining (the paper's Table 6): which triplets a cache refresh hands to training.

A refresh takes ``cache_refresh_rate`` training queries and returns, for each, one positive (the
hard positive, within ``train.positive_dist_threshold`` = 10 m, nearest in feature space) and
``negs_num_per_query`` negatives (never within the 25 m soft threshold). Methods differ in the
negatives and in which descriptors a refresh needs:

- ``random``: random negatives; descriptors of the queries and their hard positives only.
- ``partial``: a sample of ``neg_samples_num`` database images shared by the refresh; each query
  takes the hardest of them (descriptors of the sample, the positives and the queries).
- ``full``: NetVLAD's mining, as in the paper's code: descriptors of the whole database; each query
  takes the hardest among ``neg_samples_num`` random database images and its own previous
  hardest negatives, which are cached per query across refreshes.
- ``msls_weighted``: ``partial`` with queries drawn with weights favouring night and sideways views,
  read from the file-name note (``night|day_<view>_<city>``, as MSLS), or, for MSLS's raw layout,
  from its ``postprocessed.csv`` (``night``, ``view_direction``: :mod:`vgray.data.msls`).

Mining is written against :class:`DescriptorSource`: "descriptors of these database / query
indices", so that the descriptors can come from this process or from a Ray Data pipeline.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Dict, List, Protocol

import numpy as np

from vgray.data.dataset import Split
from vgray.errors import BadInput
from vgray.registry import MINING


class DescriptorSource(Protocol):
    def __call__(self, role: str, indices: np.ndarray) -> np.ndarray:
        """Descriptors (len(indices), D) float32 of ``role`` ("database" or "queries") images."""


@dataclass
class Triplet:
    query: int
    positive: int
    negatives: np.ndarray  # (negs_num_per_query,) database indices


class TrainingQueries:
    """The training split with its positives; queries without a hard positive are dropped."""

    def __init__(self, split: Split, hard_threshold: float = 10.0, soft_threshold: float = 25.0):
        self.split = split
        hard = split.hard_positives(hard_threshold)
        self.soft_positives = split.soft_positives(soft_threshold)
        self.usable = np.array([i for i, h in enumerate(hard) if len(h)], dtype=np.int64)
        self.hard_positives = hard
        self.dropped = len(split.queries) - len(self.usable)
        if len(self.usable) == 0:
            raise BadInput(
                f"dataset {split.root}: no training query has a database image within "
                f"{hard_threshold} m (train.positive_dist_threshold)"
            )
        # A query whose soft positives are the whole database has no negative: refused here, from
        # the index, before anything is written (not at the mining refresh that would draw one).
        crowded = [int(q) for q in self.usable if len(self.soft_positives[q]) >= len(split.database)]
        if crowded:
            raise BadInput(
                f"dataset {split.root}: training query {split.queries.paths[crowded[0]]} has every database image "
                f"within {soft_threshold:g} m (test.positive_dist_threshold), so it has no negative"
                f"{f' ({len(crowded)} such queries)' if len(crowded) > 1 else ''}; a training split needs database "
                f"images farther than that from each query"
            )

    @property
    def database_size(self) -> int:
        return len(self.split.database)


def _nearest(xq: np.ndarray, xb: np.ndarray, k: int) -> np.ndarray:
    """Indices into ``xb`` of the ``k`` nearest rows to the vector ``xq`` (ties by position)."""
    d = ((xb - xq) ** 2).sum(1)
    k = min(k, len(d))
    part = np.argpartition(d, k - 1)[:k] if k < len(d) else np.arange(len(d))
    return part[np.lexsort((part, d[part]))]


class _Lookup:
    """Descriptors fetched once for a refresh, addressed by dataset index."""

    def __init__(self, source: DescriptorSource, role: str, indices: np.ndarray):
        self.indices = np.unique(np.asarray(indices, dtype=np.int64))
        self.x = source(role, self.indices) if len(self.indices) else np.zeros((0, 1), np.float32)

    def __getitem__(self, ids) -> np.ndarray:
        # The rows of ``ids`` in the sorted indices: no Python object per fetched image (a full
        # refresh fetches the whole database).
        ids = np.atleast_1d(np.asarray(ids, dtype=np.int64))
        rows = np.searchsorted(self.indices, ids)
        found = rows < len(self.indices)
        found[found] = self.indices[rows[found]] == ids[found]
        if not found.all():
            raise KeyError(int(ids[~found][0]))
        return self.x[rows]


class Miner(abc.ABC):
    """Base: uniform query sampling and the best-positive rule; subclasses choose negatives."""

    def __init__(self, data: TrainingQueries, train_cfg):
        self.data = data
        self.cfg = train_cfg

    # -- what every method shares ------------------------------------------------------------
    def sample_queries(self, rng: np.random.Generator, count: int) -> np.ndarray:
        usable = self.data.usable
        return rng.choice(usable, size=count, replace=count > len(usable))

    def best_positive(self, q: int, xq: np.ndarray, db: _Lookup) -> int:
        hard = self.data.hard_positives[q]
        return int(hard[_nearest(xq, db[hard], 1)[0]])

    def not_soft(self, q: int, candidates: np.ndarray) -> np.ndarray:
        return np.setdiff1d(candidates, self.data.soft_positives[q])

    def random_negatives(self, q: int, rng: np.random.Generator) -> np.ndarray:
        n, soft = self.cfg.negs_num_per_query, self.data.soft_positives[q]
        pool = self.data.database_size - len(soft)
        if pool <= 0:
            raise BadInput(
                f"dataset {self.data.split.root}: a training query has every database image "
                f"within 25 m, so it has no negative"
            )
        draw = rng.choice(self.data.database_size, size=min(self.data.database_size, n + len(soft)), replace=False)
        negs = self.not_soft(q, draw)
        negs = negs[rng.permutation(len(negs))][:n]
        return negs if len(negs) == n else np.concatenate([negs, rng.choice(negs, n - len(negs))])

    def hardest(self, q: int, xq: np.ndarray, candidates: np.ndarray, db: _Lookup, rng) -> np.ndarray:
        candidates = self.not_soft(q, candidates)
        if len(candidates) == 0:
            return self.random_negatives(q, rng)
        order = _nearest(xq, db[candidates], self.cfg.negs_num_per_query)
        negs = candidates[order]
        n = self.cfg.negs_num_per_query
        return negs if len(negs) == n else np.concatenate([negs, rng.choice(negs, n - len(negs))])

    # -- per method ----------------------------------------------------------------------------
    @abc.abstractmethod
    def refresh(self, source: DescriptorSource, queries: np.ndarray, rng: np.random.Generator) -> List[Triplet]:
        """The triplets of ``queries``, computing only the descriptors this method needs."""

    def needed_database(self, queries: np.ndarray) -> np.ndarray:
        return np.unique(np.concatenate([self.data.hard_positives[q] for q in queries]))

    def state_dict(self) -> Dict:
        return {}

    def load_state_dict(self, state: Dict) -> None:  # noqa: B027  (stateless miners keep nothing)
        pass


@MINING.register("random")
class RandomMining(Miner):
    """Random negatives; descriptors of the queries and their hard positives only."""

    def refresh(self, source, queries, rng):
        db = _Lookup(source, "database", self.needed_database(queries))
        xq = _Lookup(source, "queries", queries)
        return [Triplet(int(q), self.best_positive(q, xq[q][0], db), self.random_negatives(q, rng)) for q in queries]


@MINING.register("partial")
class PartialMining(Miner):
    """The hardest negatives among ``neg_samples_num`` database images sampled once per refresh."""

    def refresh(self, source, queries, rng):
        size = min(self.cfg.neg_samples_num, self.data.database_size)
        sample = np.sort(rng.choice(self.data.database_size, size=size, replace=False))
        db = _Lookup(source, "database", np.concatenate([sample, self.needed_database(queries)]))
        xq = _Lookup(source, "queries", queries)
        return [
            Triplet(int(q), self.best_positive(q, xq[q][0], db), self.hardest(q, xq[q][0], sample, db, rng))
            for q in queries
        ]


@MINING.register("full")
class FullMining(Miner):
    """NetVLAD's mining: the whole database's descriptors; each query's hardest among a random sample
    and its own previous hardest negatives, cached across refreshes."""

    def __init__(self, data, train_cfg) -> None:
        super().__init__(data, train_cfg)
        self.neg_cache: Dict[int, np.ndarray] = {}

    def refresh(self, source, queries, rng):
        db = _Lookup(source, "database", np.arange(self.data.database_size))
        xq = _Lookup(source, "queries", queries)
        size = min(self.cfg.neg_samples_num, self.data.database_size)
        out = []
        for q in queries:
            q = int(q)
            sample = rng.choice(self.data.database_size, size=size, replace=False)
            candidates = np.unique(np.concatenate([self.neg_cache.get(q, np.empty(0, np.int64)), sample]))
            negs = self.hardest(q, xq[q][0], candidates, db, rng)
            self.neg_cache[q] = negs
            out.append(Triplet(q, self.best_positive(q, xq[q][0], db), negs))
        return out

    def state_dict(self):
        keys = sorted(self.neg_cache)
        return {"queries": keys, "negatives": [self.neg_cache[k].tolist() for k in keys]}

    def load_state_dict(self, state):
        self.neg_cache = {int(k): np.asarray(v, dtype=np.int64) for k, v in zip(state["queries"], state["negatives"])}


def msls_weights(notes: List[str], where: str) -> np.ndarray:
    """Sampling weights of MSLS-weighted mining: 1, plus n/n_night for night queries, plus
    n/n_sideways for sideways ones, normalised (the paper's code)."""
    parts = [n.split("_") for n in notes]
    night = np.array([len(p) > 1 and p[0] == "night" for p in parts])
    side = np.array([len(p) > 1 and p[1] == "sideways" for p in parts])
    if not night.any() or not side.any():
        raise BadInput(
            f"train.mining=msls_weighted needs night and sideways training queries, named in the "
            f"file-name note as night|day_<view>_<city> (VG format) or in MSLS's raw layout by "
            f"postprocessed.csv's night and view_direction; {where} has "
            f"{int(night.sum())} night and {int(side.sum())} sideways queries"
        )
    n = len(notes)
    w = np.ones(n) + night * (n / night.sum()) + side * (n / side.sum())
    return w / w.sum()


@MINING.register("msls_weighted")
class MSLSWeightedMining(PartialMining):
    """Partial mining with queries drawn with weights favouring night and sideways views (MSLS)."""

    def __init__(self, data, train_cfg):
        super().__init__(data, train_cfg)
        notes = [data.split.queries.notes[i] for i in data.usable]
        self.weights = msls_weights(notes, f"dataset {data.split.root}")

    def sample_queries(self, rng, count):
        usable = self.data.usable
        return rng.choice(usable, size=count, replace=count > len(usable), p=self.weights)


def create_miner(name: str, data: TrainingQueries, train_cfg) -> Miner:
    return MINING.create(name, data, train_cfg)
