"""Evaluation of a model on one split: extract, index, search, recall@N, with the cost figures.

:func:`evaluate_split` is what training and sweeps call (model and split already built, descriptors
from an injectable ``extractor``); :func:`evaluate` is ``vgray eval``: it builds both from a config.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from vgray.atomic import commit, temp_name
from vgray.data.dataset import ImageSet, Split, open_split
from vgray.evaluate.extract import Runtime, extract_descriptors, initialize_aggregation, iter_descriptors
from vgray.evaluate.knn import StreamedFlatSearch, build_index, fill_index, index_memory_mb, search
from vgray.evaluate.methods import TEST_METHODS, create_method
from vgray.evaluate.pca import apply_pca, check_pca, pca_from_training, save_pca
from vgray.evaluate.recall import recall_at_n
from vgray.seeding import seed_everything


def descriptor_table(images: ImageSet, rows: np.ndarray, descriptors: np.ndarray,
                     crop: Optional[np.ndarray] = None) -> pa.Table:
    """The ``--save-descriptors`` schema: path, utm_east, utm_north (float64), descriptor (float32
    list); with ``crop`` (multi-crop test methods), a ``crop`` column (int8) after ``path``."""
    d = descriptors.shape[1]
    flat = pa.array(np.ascontiguousarray(descriptors, dtype=np.float32).reshape(-1))
    columns = {"path": pa.array([images.paths[i] for i in rows], pa.string())}
    if crop is not None:
        columns["crop"] = pa.array(crop, pa.int8())
    columns.update({
        "utm_east": pa.array(images.utm[rows, 0], pa.float64()),
        "utm_north": pa.array(images.utm[rows, 1], pa.float64()),
        "descriptor": pa.FixedSizeListArray.from_arrays(flat, d),
    })
    return pa.table(columns)


class _AtomicParquet:
    """A parquet file written in pieces to a temporary name and moved into place when complete."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.tmp = temp_name(self.path)
        self.writer = None
        self.made_dir = False

    def write(self, table: pa.Table) -> None:
        if self.writer is None:
            self.made_dir = not self.path.parent.exists()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(self.tmp, table.schema)
        self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            commit(self.tmp, self.path)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.tmp.unlink(missing_ok=True)
            if self.made_dir and not any(self.path.parent.iterdir()):
                self.path.parent.rmdir()


def evaluate_split(model, split: Split, cfg, rt: Optional[Runtime] = None,
                   save_descriptors: Optional[str | os.PathLike] = None, progress: bool = True,
                   extractor: Optional[Callable] = None, pca=None, keep: Optional[dict] = None) -> Dict[str, float]:
    """Recall@N of ``model`` on ``split`` with the figures of the contract.

    ``extractor(model, paths, transform, rt, features_dim, desc) -> (descriptors, valid)`` supplies
    descriptors, one per path (default: in this process). The database is streamed in chunks when
    its descriptors exceed ``test.memory_budget_mb``. The test method (``test.method``) says how
    images are transformed; a query seen as several crops is extracted once per crop, its views
    searched, and their predictions merged. With ``model.pca_dim``, descriptors are projected by
    ``pca`` (a faiss PCAMatrix; default: fitted here on the train split of ``data.root``).

    ``save_descriptors=DIR`` writes what is searched, so that the recalls can be recomputed:
    ``DIR/database.parquet`` and ``DIR/queries.parquet`` (after PCA, if any) and ``DIR/pca.faiss``
    (with PCA). For ``nearest_crop`` and ``maj_voting``, queries.parquet holds one row per query
    and crop, query-major, with a ``crop`` column (0-4: top-left, top-right, bottom-left,
    bottom-right, centre): search every row for ``max(recall_values)`` (maj_voting: at least 10)
    neighbours and merge each query's rows with :mod:`vgray.evaluate.methods`'s ``merge``.
    ``five_crops`` writes the mean descriptor it searches, one row per query.

    ``keep``, a dict, receives ``predictions`` (database ids per query, ``-1`` for none) and
    ``positives`` (the database ids within ``test.positive_dist_threshold`` of each query).
    """
    rt = rt or Runtime.from_config(cfg, progress=progress)
    extractor = extractor or extract_descriptors
    method = create_method(cfg, model.mean, model.std)
    features_dim = model.features_dim
    if cfg.model.pca_dim is not None:
        if pca is None:
            check_pca(cfg, features_dim)
            pca = pca_from_training(model, cfg, rt, extractor)
        d = pca.d_out
    else:
        pca = None
        d = features_dim
    k = max(cfg.test.recall_values)
    k_search = method.search_k(k)
    database_mb = len(split.database) * d * 4 / 2**20
    budget = cfg.test.memory_budget_mb
    streamed = budget is not None and database_mb > budget  # load-time checks made this Flat
    index = build_index(cfg.test.knn, d)  # a string faiss refuses stops us before any extraction
    project = (lambda x: apply_pca(pca, x)) if pca is not None else (lambda x: x)

    db_file = q_file = None
    if save_descriptors is not None:
        out = Path(save_descriptors)
        db_file, q_file = _AtomicParquet(out / "database.parquet"), _AtomicParquet(out / "queries.parquet")
    try:
        start = time.perf_counter()
        xq, q_valid = query_descriptors(model, split.queries.paths, method, rt, features_dim, extractor)
        queries_s = time.perf_counter() - start
        q_rows = np.flatnonzero(q_valid)
        m = len(q_rows)
        xq = method.pool(xq[q_rows])  # (m, views, d_model)
        views = xq.shape[1]
        xq = project(xq.reshape(m * views, features_dim))  # view-major within each query

        start = time.perf_counter()
        if streamed:
            db_ids, D, I, matching_s, memory_mb = _streamed(model, split, method, rt, xq, k_search, budget,
                                                            db_file, project)
        else:
            xb, db_valid = extractor(model, split.database.paths, method.database_transform, rt, features_dim,
                                     "database")
            db_ids = np.flatnonzero(db_valid)
            xb = project(xb[db_ids])
            if db_file is not None:
                db_file.write(descriptor_table(split.database, db_ids, xb))
            fill_index(index, xb, seed=cfg.seed, name=f"test.knn={cfg.test.knn!r}")
            D, I, matching_s = search(index, xq, k_search)
            memory_mb = index_memory_mb(index)
        database_s = time.perf_counter() - start - matching_s
        if q_file is not None:
            crop = np.tile(np.arange(views), m) if views > 1 else None
            q_file.write(descriptor_table(split.queries, np.repeat(q_rows, views), xq, crop))
            if pca is not None:
                save_pca(pca, Path(save_descriptors) / "pca.faiss")
            db_file.close()
            q_file.close()
    except BaseException:
        for f in (db_file, q_file):
            if f is not None:
                f.abort()
        raise

    # Predictions back to dataset ids (increasing with the search ids, so ties still go to the
    # lower id), the views of each query merged; a skipped (unreadable) query is a miss.
    start = time.perf_counter()
    I = np.where(I >= 0, db_ids[np.clip(I, 0, None)], -1)
    merged = method.merge(D.reshape(m, views, -1), I.reshape(m, views, -1), k)
    matching_s += time.perf_counter() - start
    predictions = np.full((len(split.queries), k), -1, dtype=np.int64)
    predictions[q_rows, :merged.shape[1]] = merged
    positives = split.soft_positives(cfg.test.positive_dist_threshold)
    result: Dict[str, float] = recall_at_n(predictions, positives, cfg.test.recall_values)
    if keep is not None:
        keep.update(predictions=predictions, positives=positives)
    images = len(split.queries) + len(split.database)
    result.update({
        "queries": len(split.queries),
        "queries_without_positives": int(sum(len(p) == 0 for p in positives)),
        "database": len(split.database),
        "skipped_images": int(images - len(q_rows) - len(db_ids)),
        "features_dim": d,
        "matching_ms": 1000.0 * matching_s / max(m, 1),
        "index_memory_mb": memory_mb,
        "extraction_ms_per_image": 1000.0 * (queries_s + database_s) / max(images, 1),
    })
    return result


def check_before_extraction(cfg, model) -> None:
    """The refusals that need the network's descriptor size, made before any image is read:
    ``test.knn`` against the size searched (``model.pca_dim`` when set), and the PCA's."""
    check_pca(cfg, model.features_dim)
    build_index(cfg.test.knn, cfg.model.pca_dim or model.features_dim)


def query_descriptors(model, paths: Sequence[str], method, rt: Runtime, features_dim: int,
                      extractor: Callable) -> Tuple[np.ndarray, np.ndarray]:
    """``(m, crops, d)`` descriptors of the queries at ``paths`` and a mask of those read.

    One extraction pass per crop (the extractor's contract is one descriptor per path); a method
    whose queries differ in size (``single_query``) extracts them in groups of equal original size.
    """
    out = np.zeros((len(paths), method.crops, features_dim), dtype=np.float32)
    valid = np.ones(len(paths), dtype=bool)
    for c, transform in enumerate(method.query_transforms):
        desc = "queries" if method.crops == 1 else f"queries, crop {c + 1}/{method.crops}"
        for group in (same_size_groups(paths) if not method.batched else [np.arange(len(paths))]):
            x, ok = extractor(model, [paths[i] for i in group], transform, rt, features_dim, desc)
            out[group, c] = x
            valid[group] &= ok
    return out, valid


def same_size_groups(paths: Sequence[str]) -> List[np.ndarray]:
    """Indices of ``paths`` grouped by image size (read from the file headers); a file whose header
    cannot be read goes alone, for the extractor to report or skip."""
    groups: Dict[object, List[int]] = {}
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                key = image.size
        except Exception:
            key = ("unreadable", i)
        groups.setdefault(key, []).append(i)
    return [np.asarray(g, dtype=np.int64) for g in groups.values()]


def _streamed(model, split, method, rt, xq, k, budget_mb, db_file, project):
    """Database descriptors in chunks of at most ``budget_mb``, each folded into an exact top-k."""
    d = xq.shape[1]
    rows_per_chunk = max(1, int(budget_mb * 2**20 // (d * 4)))
    search_state = StreamedFlatSearch(xq, k)
    kept = []
    pending_ids, pending = [], []
    offset = 0

    def flush():
        nonlocal offset, pending_ids, pending
        if not pending:
            return
        ids, xb = np.concatenate(pending_ids), project(np.concatenate(pending))
        search_state.add_chunk(offset, xb)
        if db_file is not None:
            db_file.write(descriptor_table(split.database, ids, xb))
        kept.append(ids)
        offset += len(ids)
        pending_ids, pending = [], []

    buffered = 0
    for indices, descriptors in iter_descriptors(model, split.database.paths, method.database_transform,
                                                 rt, "database"):
        pending_ids.append(indices)
        pending.append(descriptors)
        buffered += len(indices)
        if buffered >= rows_per_chunk:
            flush()
            buffered = 0
    flush()
    D, I = search_state.result()
    db_ids = np.concatenate(kept) if kept else np.empty(0, dtype=np.int64)
    return db_ids, D, I, search_state.seconds, search_state.peak_mb


def evaluate(cfg, save_descriptors=None, progress: bool = True, model=None,
             keep: Optional[dict] = None, extractor: Optional[Callable] = None) -> Dict[str, float]:
    """``vgray eval``: build the model and the split from ``cfg``, evaluate, add the model's cost.
    ``keep`` receives what :func:`evaluate_split` keeps, and the ``split``; ``extractor`` is
    :func:`evaluate_split`'s (in-process by default)."""
    from vgray.models import build_model
    from vgray.models.profile import model_cost

    split = open_split(cfg.data.root, cfg.test.split)
    rt = Runtime.from_config(cfg, progress=progress)
    seed_everything(cfg.seed)
    if model is None:
        model = build_model(cfg.model, image_size=cfg.data.image_size)
    check_before_extraction(cfg, model)
    if model.needs_init():
        # Evaluating only: the aggregation's clusters come from the database being searched.
        method = TEST_METHODS.create(cfg.test.method, cfg.data.image_size, model.mean, model.std)
        initialize_aggregation(model, split.database.paths, method.database_transform, rt, seed=cfg.seed)
    result = evaluate_split(model, split, cfg, rt=rt, save_descriptors=save_descriptors, keep=keep,
                            extractor=extractor)
    if keep is not None:
        keep["split"] = split
    if save_descriptors is not None:
        # What vgray locate needs to recompute these descriptors for new photos.
        from vgray.locate import write_model
        write_model(save_descriptors, cfg, model)
    result.update(model_cost(model, cfg.data.image_size))
    result["features_dim"] = cfg.model.pca_dim or result["features_dim"]  # the size searched
    return result
