"""The kNN stage: faiss indexes from index_factory strings, exact streamed search, cost figures.

``test.knn`` is any faiss ``index_factory`` string (L2): ``Flat`` (exhaustive), ``IVFn,Flat``,
``PQm``, ``IVFn,PQm``, ``IMI2xb,PQm``, ``HNSWm``, with ``PCAd,``/``OPQm_d,`` prefixes and the rest
of faiss's syntax (the paper's Fig. 4b study). Indexes that need training are trained on the
database descriptors (a random sample of 200,000 when there are more). Search-time defaults, set by
:func:`fill_index` (faiss's own, nprobe 1 and efSearch 16, trade too much recall for speed):

- IVF and IMI: ``nprobe = clip(nlist // 16, 8, 256)`` lists visited, and never more than ``nlist``
  (IVF1024: 64, IVF4096 and IMI2x8: 256, IVF64: 8);
- HNSW: ``efSearch = 128`` (faiss widens it to k when k is larger).

Names as in faiss: ``xb`` database, ``xq`` queries, ``D`` distances, ``I`` ids, ``k``.
"""

from __future__ import annotations

import re
import time
from typing import Iterable, List, Tuple

import faiss
import numpy as np

from vgray.console import progress_bar, progress_step
from vgray.errors import BadInput, faiss_message

HNSW_EF_SEARCH = 128
#: Descriptors added to an index at a time, so that a bar can follow a large database being added.
ADD_CHUNK = 2**16


def default_nprobe(nlist: int) -> int:
    """IVF/IMI lists visited per query: a sixteenth of them, at least 8 and at most 256."""
    return int(min(nlist, max(8, min(256, nlist // 16))))


def _divisors(n: int) -> List[int]:
    return [m for m in range(1, n + 1) if n % m == 0]


def check_pq(spec: str, d: int) -> None:
    """A PQ (or OPQ) code size ``m`` must divide the dimension it encodes: ``d``, or the output of
    a ``PCAd``/``OPQm_d``/``RRd`` prefix before it (BadInput names the allowed values of ``m``);
    a PCA prefix cannot add dimensions."""
    dim = d
    for token in (t.strip() for t in spec.split(",")):
        transform = re.fullmatch(r"(?:PCAW?R?|RR|OPQ\d+_)(\d+)", token)
        if transform:
            if token.startswith("OPQ"):
                opq = re.match(r"OPQ(\d+)", token)
                assert opq is not None  # the token matched OPQ<m>_<d> above
                m = int(opq.group(1))
                out = int(transform.group(1))
                if out % m:
                    raise BadInput(
                        f"test.knn={spec!r}: {token} splits {out}-d vectors into {m} sub-vectors; "
                        f"{m} must divide {out} (allowed: {', '.join(map(str, _divisors(out)))})"
                    )
            elif token.startswith("PCA") and int(transform.group(1)) > dim:
                raise BadInput(
                    f"test.knn={spec!r}: {token} cannot make {transform.group(1)}-d vectors out of "
                    f"{dim}-d descriptors; use PCA{dim} or less"
                )
            dim = int(transform.group(1))
            continue
        pq = re.match(r"(?:(?:HNSW|IVF)\d+_)?O?PQ(\d+)", token) or re.search(r"(?<=,)PQ(\d+)", token)
        if pq and dim % int(pq.group(1)):
            m = int(pq.group(1))
            raise BadInput(
                f"test.knn={spec!r}: a PQ code of {m} sub-vectors needs m dividing the "
                f"{dim}-d descriptors it encodes; allowed m: {', '.join(map(str, _divisors(dim)))}"
            )


def build_index(spec: str, d: int) -> faiss.Index:
    """``faiss.index_factory(d, spec)`` (L2); a PQ size that does not divide the dimension, or a
    string faiss rejects, is bad input (faiss's message quoted in one line)."""
    check_pq(spec, d)
    try:
        return faiss.index_factory(int(d), spec, faiss.METRIC_L2)
    except RuntimeError as exc:
        raise BadInput(f"test.knn={spec!r} is refused by faiss for {d}-d descriptors: {faiss_message(exc)}")


def fill_index(
    index: faiss.Index,
    xb: np.ndarray,
    train_size: int = 200_000,
    seed: int = 0,
    name: str = "the kNN index",
    progress: bool = False,
) -> float:
    """Train (on a sample of ``xb`` where the index needs it) and add ``xb``; returns seconds.
    ``name`` says the index in the error of one that cannot be trained (too few descriptors) and
    on the console: with ``progress``, the training as one step and a bar over the descriptors
    added (:mod:`vgray.console`)."""
    start = time.perf_counter()
    xb = np.ascontiguousarray(xb, dtype=np.float32)
    skip_polysemous_training(index)
    try:
        if not index.is_trained:
            sample = xb
            if len(xb) > train_size:
                sample = xb[np.sort(np.random.default_rng(seed).choice(len(xb), train_size, replace=False))]
            with progress_step(f"{name}: training on {len(sample):,} descriptors", progress):
                index.train(sample)
        with progress_bar(len(xb), f"{name}: adding", "vec", progress) as bar:
            # In chunks, for the bar: the same index as one add (ids in order; an HNSW graph
            # differs from one add only for databases above ADD_CHUNK).
            for a in range(0, len(xb), ADD_CHUNK):
                chunk = xb[a : a + ADD_CHUNK]
                index.add(chunk)
                bar.update(len(chunk))
    except RuntimeError as exc:
        raise BadInput(f"{name} cannot be built on {len(xb)} x {xb.shape[1]} descriptors: {faiss_message(exc)}")
    set_search_defaults(index)
    return time.perf_counter() - start


def skip_polysemous_training(index: faiss.Index) -> None:
    """faiss's factory turns on polysemous training for ``PQm`` and ``IVFn,PQm`` (a slow annealing
    that reorders codes for Hamming search); a PQ searched with plain PQ distances (the default)
    gains nothing from it, so it is skipped: same results, training minutes faster."""
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    # faiss's stubs lack IndexPQ's search_type, ST_PQ and do_polysemous_training (SWIG attributes).
    if isinstance(inner, faiss.IndexPQ) and inner.search_type == faiss.IndexPQ.ST_PQ:  # type: ignore[attr-defined]
        inner.do_polysemous_training = False  # type: ignore[attr-defined]
    elif isinstance(inner, faiss.IndexIVFPQ) and inner.polysemous_ht == 0:
        inner.do_polysemous_training = False  # type: ignore[attr-defined]


def set_search_defaults(index: faiss.Index) -> None:
    """vgray's nprobe (IVF, IMI) and efSearch (HNSW) defaults, wherever the index holds them."""
    params = faiss.ParameterSpace()
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        ivf = None
    if ivf is not None:
        ivf.nprobe = default_nprobe(ivf.nlist)
    try:
        params.set_index_parameter(index, "efSearch", HNSW_EF_SEARCH)
    except RuntimeError:
        pass  # no HNSW in this index


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
