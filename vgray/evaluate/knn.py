"""The kNN stage: faiss indexes from index_factory strings, exact streamed search, cost figures.

Names as in faiss: ``xb`` database, ``xq`` queries, ``D`` distances, ``I`` ids, ``k``.
"""
from __future__ import annotations

import time
from typing import Iterable, Tuple

import faiss
import numpy as np

from vgray.errors import BadInput


def build_index(spec: str, d: int) -> faiss.Index:
    """``faiss.index_factory(d, spec)`` (L2); a string faiss rejects is bad input, its message quoted."""
    try:
        return faiss.index_factory(int(d), spec, faiss.METRIC_L2)
    except RuntimeError as exc:
        raise BadInput(f"test.knn={spec!r} is refused by faiss for {d}-d descriptors: {faiss_message(exc)}")


def faiss_message(exc: Exception) -> str:
    """The useful line of a faiss C++ error (they come with file, line and function)."""
    text = str(exc)
    if "Error:" in text:
        text = text.split("Error:", 1)[1]
    return " ".join(text.split()).strip(" '\"")[:300]


def fill_index(index: faiss.Index, xb: np.ndarray, train_size: int = 200_000, seed: int = 0) -> float:
    """Train (on a sample of ``xb`` where the index needs it) and add ``xb``; returns seconds."""
    start = time.perf_counter()
    xb = np.ascontiguousarray(xb, dtype=np.float32)
    try:
        if not index.is_trained:
            sample = xb
            if len(xb) > train_size:
                sample = xb[np.sort(np.random.default_rng(seed).choice(len(xb), train_size, replace=False))]
            index.train(sample)
        index.add(xb)
    except RuntimeError as exc:
        raise BadInput(f"the kNN index cannot be built on {len(xb)} x {xb.shape[1]} descriptors: {faiss_message(exc)}")
    return time.perf_counter() - start


def search(index: faiss.Index, xq: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray, float]:
    """``(D, I, seconds)``: the ``k`` nearest database ids of every query (ties by lower id)."""
    k = min(k, index.ntotal)
    start = time.perf_counter()
    D, I = index.search(np.ascontiguousarray(xq, dtype=np.float32), k)
    return D, I, time.perf_counter() - start


def index_memory_mb(index: faiss.Index) -> float:
    """MiB the index holds: the descriptors for Flat, the codes and trained structures otherwise."""
    if isinstance(index, faiss.IndexFlat):
        return index.ntotal * index.d * 4 / 2**20
    return faiss.serialize_index(index).nbytes / 2**20


def merge_topk(D: np.ndarray, I: np.ndarray, D2: np.ndarray, I2: np.ndarray, k: int):
    """Merge two ``(m, *)`` top-k lists into one, ordered by (distance, id) as faiss orders ties."""
    Dc = np.concatenate([D, D2], axis=1)
    Ic = np.concatenate([I, I2], axis=1)
    Ic_key = np.where(Ic < 0, np.iinfo(np.int64).max, Ic)  # faiss pads missing results with -1
    order = np.lexsort((Ic_key, Dc), axis=1)[:, :k]
    return np.take_along_axis(Dc, order, 1), np.take_along_axis(Ic, order, 1)


class StreamedFlatSearch:
    """Exact search over a database that arrives in chunks (the paper's efficient-RAM testing):
    each chunk is searched with a Flat index and folded into the running top-k, so only one chunk
    of database descriptors is in memory at a time. The result equals one Flat index over all."""

    def __init__(self, xq: np.ndarray, k: int):
        self.xq = np.ascontiguousarray(xq, dtype=np.float32)
        self.k = k
        m = len(xq)
        self.D = np.full((m, 0), np.inf, dtype=np.float32)
        self.I = np.full((m, 0), -1, dtype=np.int64)
        self.seconds = 0.0
        self.ntotal = 0
        self.peak_mb = 0.0

    def add_chunk(self, offset: int, xb: np.ndarray) -> None:
        index = faiss.IndexFlatL2(self.xq.shape[1])
        index.add(np.ascontiguousarray(xb, dtype=np.float32))
        D, I, seconds = search(index, self.xq, self.k)
        start = time.perf_counter()
        self.D, self.I = merge_topk(self.D, self.I, D, I + offset, self.k)
        self.seconds += seconds + time.perf_counter() - start
        self.ntotal += len(xb)
        self.peak_mb = max(self.peak_mb, index_memory_mb(index))

    def result(self):
        return self.D, self.I


def exact_search_chunks(chunks: Iterable[Tuple[int, np.ndarray]], xq: np.ndarray, k: int):
    """``(D, I)`` of an exact search over database chunks ``(offset, xb)``."""
    streamed = StreamedFlatSearch(xq, k)
    for offset, xb in chunks:
        streamed.add_chunk(offset, xb)
    return streamed.result()
