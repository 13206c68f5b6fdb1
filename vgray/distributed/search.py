"""Sharded exact search: the database descriptors split over Ray actors, one Flat index each.

A database too large for one machine (R-SF NetVLAD descriptors: 1.05M x 65,536 x 4 B = 256 GB,
the paper's Sec. 4.4) is cut into contiguous parts, each held by a search actor in a faiss
``IndexFlatL2`` of its own; actors are spread over the nodes (``SPREAD`` scheduling). A query
batch is put in the object store once and sent to every actor; each returns its top-k with global
ids (its offset added), and :func:`vgray.evaluate.knn.merge_topk` folds them, ordered by (distance,
id) as faiss orders ties. The result is what one Flat index over the whole database returns: the
same ids in the same order, up to equal distances. Memory per actor is the database over the number
of actors.

The database comes as a numpy array or as parquet shard files with the columns that
``vgray eval --save-descriptors`` writes (``path``, ``utm_east``, ``utm_north``, ``descriptor``);
each actor reads only its own files. Names as in faiss: ``xb`` database, ``xq`` queries, ``D``
distances, ``I`` ids, ``k``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from vgray.errors import BadInput


def read_descriptors(path: str) -> np.ndarray:
    """The ``descriptor`` column of one parquet shard as a ``(n, d)`` float32 array."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        column = pq.read_table(path, columns=["descriptor"]).column("descriptor").combine_chunks()
    except Exception as exc:
        raise BadInput(f"{path}: not a descriptor shard with a 'descriptor' column ({exc})")
    if not pa.types.is_fixed_size_list(column.type):
        raise BadInput(f"{path}: column 'descriptor' must be a fixed-size list of float32, not {column.type}")
    d = column.type.list_size
    return column.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, d)


def shard_rows(path: str) -> Tuple[int, int]:
    """``(rows, d)`` of a parquet shard, read from its footer and schema (no data loaded)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path)
    except Exception as exc:
        raise BadInput(f"{path}: not a parquet file ({exc})")
    schema = meta.schema_arrow
    if "descriptor" not in schema.names or not pa.types.is_fixed_size_list(schema.field("descriptor").type):
        raise BadInput(
            f"{path}: needs a 'descriptor' column (fixed-size list of float32), as "
            f"vgray eval --save-descriptors writes it"
        )
    return meta.metadata.num_rows, schema.field("descriptor").type.list_size


class _SearchShard:
    """One contiguous part of the database, ids ``offset .. offset + ntotal - 1``, in a Flat index."""

    def __init__(self, offset: int, d: int, threads: int, xb: Optional[np.ndarray] = None, files: Sequence[str] = ()):
        import faiss

        faiss.omp_set_num_threads(threads)
        self.offset = offset
        self.index = faiss.IndexFlatL2(d)
        parts = [xb] if xb is not None else [read_descriptors(f) for f in files]
        for part in parts:  # faiss copies into its own storage; the inputs can go
            self.index.add(np.ascontiguousarray(part, dtype=np.float32))

    def search(self, xq: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        from vgray.evaluate.knn import search

        D, I, _ = search(self.index, xq, k)
        return D, np.where(I < 0, -1, I + self.offset)  # faiss pads missing results with -1

    def info(self) -> Dict[str, Union[int, str]]:
        import ray

        return {
            "offset": self.offset,
            "ntotal": int(self.index.ntotal),
            "bytes": int(self.index.ntotal) * self.index.d * 4,
            "node_id": ray.get_runtime_context().get_node_id(),
        }


class ShardedFlatSearch:
    """Exact L2 search over a database split between ``actors`` Ray actors.

    Give the database either as ``xb`` (an ``(n, d)`` array, cut into ``actors`` contiguous parts,
    or into parts of ``sizes`` rows) or as ``files`` (parquet shards in database order; whole files
    go to actors, contiguous groups of about equal rows). ``num_cpus`` is each actor's Ray
    reservation, ``threads`` its faiss threads (default: ``num_cpus`` rounded down, at least 1).
    Actors that cannot all start (load their part) within ``start_timeout_s`` are ended and a
    RuntimeError says so. Needs ``ray.init`` first; :meth:`close` ends the actors.
    """

    def __init__(
        self,
        xb: Optional[np.ndarray] = None,
        *,
        files: Sequence[str] = (),
        actors: int = 2,
        sizes: Optional[Sequence[int]] = None,
        num_cpus: float = 1.0,
        threads: Optional[int] = None,
        start_timeout_s: float = 300.0,
    ):
        import ray

        if (xb is None) == (not files):
            raise BadInput("give the database either as an array (xb) or as parquet shard files, not both or neither")
        if actors < 1:
            raise BadInput(f"actors={actors}: need at least 1 search actor")
        threads = threads or max(1, int(num_cpus))
        remote = ray.remote(_SearchShard).options(num_cpus=num_cpus, scheduling_strategy="SPREAD")
        # Actor handles: Ray's types give an actor's methods no .remote.
        self.actors: List[Any] = []
        if xb is not None:
            xb = np.asarray(xb)
            if xb.ndim != 2 or len(xb) == 0:
                raise BadInput(f"xb: need a non-empty (n, d) array of descriptors, not shape {xb.shape}")
            sizes = list(sizes) if sizes is not None else [len(a) for a in np.array_split(np.arange(len(xb)), actors)]
            if sum(sizes) != len(xb) or min(sizes) < 1:
                raise BadInput(f"sizes={sizes}: every part needs at least 1 row and together {len(xb)} (the database)")
            self.d = int(xb.shape[1])
            offset = 0
            for n in sizes:  # each part goes through the object store once, as its own object
                self.actors.append(remote.remote(offset, self.d, threads, xb=ray.put(xb[offset : offset + n])))
                offset += n
        else:
            rows = [shard_rows(str(f)) for f in files]
            dims = {d for _, d in rows}
            if len(dims) != 1:
                bad = next(str(f) for f, (_, d) in zip(files, rows) if d != rows[0][1])
                raise BadInput(
                    f"{bad}: descriptors of {dims - {rows[0][1]}} dimensions, but {files[0]} has "
                    f"{rows[0][1]}; all shards of a database must come from one model"
                )
            self.d = rows[0][1]
            counts = [n for n, _ in rows]
            groups = _contiguous_groups(counts, min(actors, len(files)))
            offset = 0
            for lo, hi in groups:
                self.actors.append(remote.remote(offset, self.d, threads, files=[str(f) for f in files[lo:hi]]))
                offset += sum(counts[lo:hi])
        try:
            self.shards: List[Dict[str, Union[int, str]]] = ray.get(
                [a.info.remote() for a in self.actors], timeout=start_timeout_s
            )
        except ray.exceptions.GetTimeoutError:
            self.close()
            raise RuntimeError(
                f"{actors} search actors of {num_cpus} CPUs each did not start within "
                f"{start_timeout_s} s; does the cluster have room for them?"
            ) from None
        self.ntotal = sum(int(s["ntotal"]) for s in self.shards)

    def search(self, xq: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """``(D, I)``: the ``min(k, ntotal)`` nearest database ids of every query, as one Flat index gives."""
        import ray

        from vgray.evaluate.knn import merge_topk

        xq = np.ascontiguousarray(xq, dtype=np.float32)
        if xq.ndim != 2 or xq.shape[1] != self.d:
            raise BadInput(f"queries of shape {xq.shape}: need (m, {self.d}) to match the database descriptors")
        ref = ray.put(xq)  # once, read by every actor
        parts = ray.get([a.search.remote(ref, k) for a in self.actors])
        D, I = parts[0]
        for D2, I2 in parts[1:]:
            D, I = merge_topk(D, I, D2, I2, k)
        return D, I

    def actor_bytes(self) -> List[int]:
        """Bytes of database descriptors each actor holds."""
        return [int(s["bytes"]) for s in self.shards]

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []


def actor_plan(actors: Optional[int] = None) -> Tuple[int, float]:
    """``(actors, CPUs each)`` of a :class:`ShardedFlatSearch` on the connected cluster: by default
    one actor a node with CPUs, each asking for what the smallest such node has, so that every
    actor fits wherever SPREAD puts it (nodes of 1 and 2 CPUs: 1 each, not 1.5); ``actors`` given,
    each asks for no more than the cluster's CPUs over them, nor than the smallest node has."""
    import ray

    nodes = [n["Resources"]["CPU"] for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) > 0]
    if not nodes:
        raise RuntimeError("sharded Flat search: the Ray cluster has no node with a CPU")
    actors = actors or len(nodes)
    return actors, min(min(nodes), sum(nodes) / actors)


def _contiguous_groups(counts: Sequence[int], groups: int) -> List[Tuple[int, int]]:
    """Cut ``counts`` (rows per file) into ``groups`` non-empty runs ``[lo, hi)`` of about equal rows."""
    total = sum(counts)
    bounds: List[Tuple[int, int]] = []
    acc, lo = 0, 0
    for i, n in enumerate(counts):
        acc += n
        left_files, left_groups = len(counts) - i - 1, groups - len(bounds) - 1
        if left_groups > 0 and (acc >= total * (len(bounds) + 1) / groups or left_files == left_groups):
            bounds.append((lo, i + 1))
            lo = i + 1
    bounds.append((lo, len(counts)))
    return bounds


def same_as_flat(
    D0: np.ndarray, I0: np.ndarray, D: np.ndarray, I: np.ndarray, rtol: float = 1e-5, atol: float = 1e-5
) -> np.ndarray:
    """Per query, True when ``(D, I)`` is the Flat result ``(D0, I0)``: the same distances, and the
    same id at every rank except where Flat's distance there ties with a neighbouring rank (equal
    distances may come in either order once float rounding differs; the last rank may tie with the
    first one not shown). ``atol``: faiss computes L2 distances as ``|x|^2 + |y|^2 - 2 x.y`` in
    float32, whose rounding depends on how the database is cut into blocks; on unit-norm
    descriptors it moves a distance by up to about 2e-6 whatever its size (measured on 100,000
    near-identical descriptors, as an untrained network gives), so two exact searches agree to
    1e-5, not to 1e-6."""
    if D.shape != D0.shape:
        return np.zeros(len(D0), dtype=bool)
    close = np.isclose(D, D0, rtol=rtol, atol=atol)
    tie = np.zeros_like(close)
    neighbours = np.isclose(D0[:, 1:], D0[:, :-1], rtol=rtol, atol=atol)
    tie[:, 1:] |= neighbours
    tie[:, :-1] |= neighbours
    tie[:, -1] = True
    return np.all(close & ((I == I0) | tie), axis=1)


def index_from_shards(files: Sequence[str], spec: str, train_size: int = 200_000, seed: int = 0):
    """A faiss ``index_factory`` index (``spec``: ``IVF1024,PQ32``, ``OPQ16_64,IVF256,PQ16``,
    ``Flat``, ...) of the descriptors in parquet ``files`` (database order), never holding more
    than one shard and the training sample: trained on ``train_size`` random rows (all when
    fewer), gathered shard by shard, then filled shard by shard. The sample is the one
    :func:`vgray.evaluate.knn.fill_index` draws from the concatenated descriptors for the same
    ``seed``, so the index is the one it builds from them (the same ids for every query)."""
    from vgray.errors import faiss_message
    from vgray.evaluate.knn import build_index, set_search_defaults, skip_polysemous_training

    if not files:
        raise BadInput("index_from_shards: no descriptor shards given")
    rows = [shard_rows(str(f)) for f in files]
    d = rows[0][1]
    for f, (_, d2) in zip(files, rows):
        if d2 != d:
            raise BadInput(
                f"{f}: descriptors of {d2} dimensions, but {files[0]} has {d}; "
                f"all shards of a database must come from one model"
            )
    counts = np.asarray([n for n, _ in rows], dtype=np.int64)
    total = int(counts.sum())
    index = build_index(spec, d)
    skip_polysemous_training(index)
    try:
        if not index.is_trained:
            chosen = (
                np.arange(total)
                if total <= train_size
                else np.sort(np.random.default_rng(seed).choice(total, train_size, replace=False))
            )
            starts = np.concatenate([[0], np.cumsum(counts)])
            sample = []
            for k, f in enumerate(files):
                lo, hi = np.searchsorted(chosen, [starts[k], starts[k + 1]])
                if hi > lo:
                    sample.append(read_descriptors(str(f))[chosen[lo:hi] - starts[k]])
            index.train(np.ascontiguousarray(np.concatenate(sample), dtype=np.float32))
        for f in files:
            index.add(np.ascontiguousarray(read_descriptors(str(f)), dtype=np.float32))
    except RuntimeError as exc:
        raise BadInput(f"index {spec!r} cannot be built on {total} x {d} descriptors: {faiss_message(exc)}")
    set_search_defaults(index)
    return index
