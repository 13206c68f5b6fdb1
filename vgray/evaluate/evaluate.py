"""Evaluation of a model on one split: extract, index, search, recall@N, with the cost figures.

:func:`evaluate_split` is what training and sweeps call (model and split already built, descriptors
from an injectable ``extractor``); :func:`evaluate` is ``vgray eval``: it builds both from a config.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vgray.data.dataset import ImageSet, Split, open_split
from vgray.evaluate.extract import Runtime, extract_descriptors, initialize_aggregation, iter_descriptors
from vgray.evaluate.knn import StreamedFlatSearch, build_index, fill_index, index_memory_mb, search
from vgray.evaluate.methods import TEST_METHODS
from vgray.evaluate.recall import recall_at_n
from vgray.seeding import seed_everything


def descriptor_table(images: ImageSet, rows: np.ndarray, descriptors: np.ndarray) -> pa.Table:
    """The ``--save-descriptors`` schema: path, utm_east, utm_north (float64), descriptor (float32 list)."""
    d = descriptors.shape[1]
    flat = pa.array(np.ascontiguousarray(descriptors, dtype=np.float32).reshape(-1))
    return pa.table({
        "path": pa.array([images.paths[i] for i in rows], pa.string()),
        "utm_east": pa.array(images.utm[rows, 0], pa.float64()),
        "utm_north": pa.array(images.utm[rows, 1], pa.float64()),
        "descriptor": pa.FixedSizeListArray.from_arrays(flat, d),
    })


class _AtomicParquet:
    """A parquet file written in pieces to a temporary name and moved into place when complete."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
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
            os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.tmp.unlink(missing_ok=True)
            if self.made_dir and not any(self.path.parent.iterdir()):
                self.path.parent.rmdir()


def evaluate_split(model, split: Split, cfg, rt: Optional[Runtime] = None,
                   save_descriptors: Optional[str | os.PathLike] = None, progress: bool = True,
                   extractor: Optional[Callable] = None) -> Dict[str, float]:
    """Recall@N of ``model`` on ``split`` with the figures of the contract.

    ``extractor(model, paths, transform, rt, features_dim, desc) -> (descriptors, valid)`` supplies
    descriptors (default: in this process). The database is streamed in chunks when its descriptors
    exceed ``test.memory_budget_mb``.
    """
    rt = rt or Runtime.from_config(cfg, progress=progress)
    extractor = extractor or extract_descriptors
    method = TEST_METHODS.create(cfg.test.method, cfg.data.image_size, model.mean, model.std)
    d = model.features_dim
    k = max(cfg.test.recall_values)
    database_mb = len(split.database) * d * 4 / 2**20
    budget = cfg.test.memory_budget_mb
    streamed = budget is not None and database_mb > budget  # load-time checks made this Flat
    index = build_index(cfg.test.knn, d)  # a string faiss refuses stops us before any extraction

    db_file = q_file = None
    if save_descriptors is not None:
        out = Path(save_descriptors)
        db_file, q_file = _AtomicParquet(out / "database.parquet"), _AtomicParquet(out / "queries.parquet")
    try:
        start = time.perf_counter()
        xq, q_valid = extractor(model, split.queries.paths, method.query_transform, rt, d, "queries")
        queries_s = time.perf_counter() - start
        q_rows = np.flatnonzero(q_valid)
        xq = xq[q_rows]

        start = time.perf_counter()
        if streamed:
            db_ids, I, matching_s, memory_mb = _streamed(model, split, method, rt, xq, k, budget, d, db_file)
        else:
            xb, db_valid = extractor(model, split.database.paths, method.database_transform, rt, d, "database")
            db_ids = np.flatnonzero(db_valid)
            xb = xb[db_ids]
            if db_file is not None:
                db_file.write(descriptor_table(split.database, db_ids, xb))
            fill_index(index, xb, seed=cfg.seed)
            _, I, matching_s = search(index, xq, k)
            memory_mb = index_memory_mb(index)
        database_s = time.perf_counter() - start - matching_s
        if q_file is not None:
            q_file.write(descriptor_table(split.queries, q_rows, xq))
            db_file.close()
            q_file.close()
    except BaseException:
        for f in (db_file, q_file):
            if f is not None:
                f.abort()
        raise

    # Predictions back to dataset ids; a skipped (unreadable) query is a miss.
    I = np.where(I >= 0, db_ids[np.clip(I, 0, None)], -1)
    predictions = np.full((len(split.queries), I.shape[1]), -1, dtype=np.int64)
    predictions[q_rows] = I
    positives = split.soft_positives(cfg.test.positive_dist_threshold)
    result: Dict[str, float] = recall_at_n(predictions, positives, cfg.test.recall_values)
    images = len(split.queries) + len(split.database)
    result.update({
        "queries": len(split.queries),
        "queries_without_positives": int(sum(len(p) == 0 for p in positives)),
        "database": len(split.database),
        "skipped_images": int(images - len(q_rows) - len(db_ids)),
        "features_dim": d,
        "matching_ms": 1000.0 * matching_s / max(len(xq), 1),
        "index_memory_mb": memory_mb,
        "extraction_ms_per_image": 1000.0 * (queries_s + database_s) / max(images, 1),
    })
    return result


def _streamed(model, split, method, rt, xq, k, budget_mb, d, db_file):
    """Database descriptors in chunks of at most ``budget_mb``, each folded into an exact top-k."""
    rows_per_chunk = max(1, int(budget_mb * 2**20 // (d * 4)))
    search_state = StreamedFlatSearch(xq, k)
    kept = []
    pending_ids, pending = [], []
    offset = 0

    def flush():
        nonlocal offset, pending_ids, pending
        if not pending:
            return
        ids, xb = np.concatenate(pending_ids), np.concatenate(pending)
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
    _, I = search_state.result()
    db_ids = np.concatenate(kept) if kept else np.empty(0, dtype=np.int64)
    return db_ids, I, search_state.seconds, search_state.peak_mb


def evaluate(cfg, save_descriptors=None, progress: bool = True, model=None) -> Dict[str, float]:
    """``vgray eval``: build the model and the split from ``cfg``, evaluate, add the model's cost."""
    from vgray.models import build_model
    from vgray.models.profile import model_cost

    split = open_split(cfg.data.root, cfg.test.split)
    rt = Runtime.from_config(cfg, progress=progress)
    seed_everything(cfg.seed)
    if model is None:
        model = build_model(cfg.model, image_size=cfg.data.image_size)
    if model.needs_init():
        # Evaluating only: the aggregation's clusters come from the database being searched.
        method = TEST_METHODS.create(cfg.test.method, cfg.data.image_size, model.mean, model.std)
        initialize_aggregation(model, split.database.paths, method.database_transform, rt, seed=cfg.seed)
    result = evaluate_split(model, split, cfg, rt=rt, save_descriptors=save_descriptors)
    result.update(model_cost(model, cfg.data.image_size))
    return result
