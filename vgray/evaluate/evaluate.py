"""Evaluation of a model on one split: extract, index, search, recall@N, with the cost figures.

:func:`evaluate_split` is what training and sweeps call (model and split already built, descriptors
from an injectable ``extractor``); :func:`evaluate` is ``vgray eval``: it builds both from a config;
:func:`final_test` is the test after training and a sweep's eval trial: every test set
(``test.datasets``), one PCA, the model's cost.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from vgray.data.dataset import ImageSet, Split, open_split
from vgray.data.ground_truth import LIST_SUFFIXES
from vgray.errors import BadInput
from vgray.evaluate.extract import extract_descriptors, initialize_aggregation, iter_descriptors
from vgray.evaluate.knn import StreamedFlatSearch, build_index, fill_index, index_memory_mb, search
from vgray.evaluate.methods import create_method
from vgray.evaluate.pca import apply_pca, check_pca, pca_from_training
from vgray.evaluate.recall import recall_at_n
from vgray.runtime import Runtime
from vgray.saved_descriptors import DescriptorWriter, write_model
from vgray.seeding import seed_everything


def evaluate_split(
    model,
    split: Split,
    cfg,
    rt: Optional[Runtime] = None,
    save_descriptors: Optional[str | os.PathLike] = None,
    progress: bool = True,
    extractor: Optional[Callable] = None,
    pca=None,
    keep: Optional[dict] = None,
) -> Dict[str, float]:
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
    ``positives`` (the database ids that are right for each query, by ``test.positives``: within
    ``test.positive_dist_threshold`` metres, within ``test.positive_frames`` frames, or from the
    layout's ground-truth files). The figures' ``positives`` says which rule was used, and
    ``query_set`` which queries of the split were scored and how many (``Split.query_set``: MSLS's
    ``im2im 740 of N`` or ``all N``, a ground-truth list's ``qIdx 740 of 747``).
    """
    rt = rt or Runtime.from_config(cfg, progress=progress)
    extractor = extractor or extract_descriptors
    method = create_method(cfg, model.mean, model.std)
    if cfg.model.pca_dim is None:
        pca = None
    elif pca is None:
        check_pca(cfg, model.features_dim)
        pca = pca_from_training(model, cfg, rt, extractor)
    k = max(cfg.test.recall_values)
    writer = DescriptorWriter(save_descriptors) if save_descriptors is not None else None
    try:
        found = _extract_and_search(model, split, cfg, method, rt, extractor, pca, method.search_k(k), writer)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise

    # Predictions back to dataset ids (increasing with the search ids, so ties still go to the
    # lower id), the views of each query merged; a skipped (unreadable) query is a miss.
    start = time.perf_counter()
    m = len(found.q_rows)
    I = np.where(found.I >= 0, found.db_ids[np.clip(found.I, 0, None)], -1)
    merged = method.merge(found.D.reshape(m, found.views, -1), I.reshape(m, found.views, -1), k)
    found.matching_s += time.perf_counter() - start
    predictions = np.full((len(split.queries), k), -1, dtype=np.int64)
    predictions[found.q_rows, : merged.shape[1]] = merged
    positives, rule = split.evaluation_positives(
        cfg.test.positives, cfg.test.positive_dist_threshold, cfg.test.positive_frames
    )
    result: Dict[str, Any] = recall_at_n(predictions, positives, cfg.test.recall_values)
    if keep is not None:
        keep.update(predictions=predictions, positives=positives)
    images = len(split.queries) + len(split.database)
    result.update(
        {
            "queries": len(split.queries),
            "queries_without_positives": int(sum(len(p) == 0 for p in positives)),
            "database": len(split.database),
            "skipped_images": int(images - m - len(found.db_ids)),
            "features_dim": pca.d_out if pca is not None else model.features_dim,
            "matching_ms": 1000.0 * found.matching_s / max(m, 1),
            "index_memory_mb": found.memory_mb,
            "extraction_ms_per_image": 1000.0 * found.extraction_s / max(images, 1),
            "positives": rule,
            "query_set": split.query_set,
        }
    )
    return result


@dataclass
class _Found:
    """What one search found: the rows of the queries read and of the database searched, the
    ``views`` rows per query searched, their distances ``D`` and search ids ``I``, and the times."""

    q_rows: np.ndarray
    views: int
    db_ids: np.ndarray
    D: np.ndarray
    I: np.ndarray
    matching_s: float
    memory_mb: float
    extraction_s: float


def _extract_and_search(
    model, split: Split, cfg, method, rt: Runtime, extractor: Callable, pca, k: int, writer: Optional[DescriptorWriter]
) -> _Found:
    """Query descriptors, then the database's (whole, or streamed in chunks above
    ``test.memory_budget_mb``) searched for the ``k`` nearest of every query view; with ``writer``,
    both written as they are searched."""
    features_dim = model.features_dim
    d = pca.d_out if pca is not None else features_dim
    budget = cfg.test.memory_budget_mb
    streamed = budget is not None and len(split.database) * d * 4 / 2**20 > budget  # load-time checks made this Flat
    index = build_index(cfg.test.knn, d)  # a string faiss refuses stops us before any extraction
    project = (lambda x: apply_pca(pca, x)) if pca is not None else (lambda x: x)

    start = time.perf_counter()
    xq, q_valid = query_descriptors(model, split.queries.paths, method, rt, features_dim, extractor)
    queries_s = time.perf_counter() - start
    q_rows = np.flatnonzero(q_valid)
    m = len(q_rows)
    if m == 0:
        raise BadInput(
            f"dataset {split.root} [{split.name}]: none of its {len(split.queries)} query images could be "
            f"read (data.skip_corrupt left them all out); there is nothing to evaluate"
        )
    xq = method.pool(xq[q_rows])  # (m, views, d_model)
    views = xq.shape[1]
    xq = project(xq.reshape(m * views, features_dim))  # view-major within each query

    start = time.perf_counter()
    if streamed:
        db_ids, D, I, matching_s, memory_mb = _streamed(model, split, method, rt, xq, k, budget, writer, project)
        _check_read(split, db_ids)
    else:
        xb, db_valid = extractor(model, split.database.paths, method.database_transform, rt, features_dim, "database")
        db_ids = np.flatnonzero(db_valid)
        _check_read(split, db_ids)
        xb = project(xb[db_ids])
        if writer is not None:
            writer.add_database(split.database, db_ids, xb)
        fill_index(index, xb, seed=cfg.seed, name=f"test.knn={cfg.test.knn!r}", progress=rt.progress)
        D, I, matching_s = search(index, xq, k)
        memory_mb = index_memory_mb(index)
    database_s = time.perf_counter() - start - matching_s
    if writer is not None:
        writer.finish(split.queries, q_rows, xq, views, pca)
    return _Found(q_rows, views, db_ids, D, I, matching_s, memory_mb, queries_s + database_s)


def _check_read(split: Split, db_ids: np.ndarray) -> None:
    if len(db_ids) == 0:
        raise BadInput(
            f"dataset {split.root} [{split.name}]: none of its {len(split.database)} database images could "
            f"be read (data.skip_corrupt left them all out); there is nothing to search"
        )


def check_before_extraction(cfg, model) -> None:
    """The refusals that need the network's descriptor size, made before any image is read:
    ``test.knn`` against the size searched (``model.pca_dim`` when set), and the PCA's."""
    check_pca(cfg, model.features_dim)
    build_index(cfg.test.knn, cfg.model.pca_dim or model.features_dim)


def query_descriptors(
    model, paths: Sequence[str], method, rt: Runtime, features_dim: int, extractor: Callable
) -> Tuple[np.ndarray, np.ndarray]:
    """``(m, crops, d)`` descriptors of the queries at ``paths`` and a mask of those read.

    One extraction pass per crop (the extractor's contract is one descriptor per path); a method
    whose queries differ in size (``single_query``) extracts them in groups of equal original size.
    """
    out = np.zeros((len(paths), method.crops, features_dim), dtype=np.float32)
    valid = np.ones(len(paths), dtype=bool)
    for c, transform in enumerate(method.query_transforms):
        desc = "queries" if method.crops == 1 else f"queries, crop {c + 1}/{method.crops}"
        for group in same_size_groups(paths) if not method.batched else [np.arange(len(paths))]:
            x, ok = extractor(model, [paths[int(i)] for i in group], transform, rt, features_dim, desc)
            out[group, c] = x
            valid[group] &= ok
    return out, valid


def same_size_groups(paths: Sequence[str]) -> List[np.ndarray]:
    """Indices of ``paths`` grouped by image size (read from the file headers); a file whose header
    cannot be read goes alone, for the extractor to report or skip."""
    groups: Dict[object, List[int]] = {}
    for i, path in enumerate(paths):
        try:
            if not os.path.isfile(path):  # a FIFO would block open(); the extractor names it
                raise OSError("not a regular file")
            with Image.open(path) as image:
                key = image.size
        except Exception:
            key = ("unreadable", i)
        groups.setdefault(key, []).append(i)
    return [np.asarray(g, dtype=np.int64) for g in groups.values()]


def _streamed(model, split, method, rt, xq, k, budget_mb, writer, project):
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
        if writer is not None:
            writer.add_database(split.database, ids, xb)
        kept.append(ids)
        offset += len(ids)
        pending_ids, pending = [], []

    buffered = 0
    for indices, descriptors in iter_descriptors(
        model, split.database.paths, method.database_transform, rt, "database"
    ):
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


def initialize_on_database(model, cfg, database: ImageSet, rt: Runtime) -> None:
    """Evaluating only: an aggregation that still needs initialising (an untrained NetVLAD) takes
    its clusters from the ``database`` being searched, through the test method's database transform."""
    if model.needs_init():
        method = create_method(cfg, model.mean, model.std)
        initialize_aggregation(model, database.paths, method.database_transform, rt, seed=cfg.seed)


def add_cost(result: Dict[str, Any], model, cfg) -> Dict[str, Any]:
    """``result`` with the model's cost (:func:`~vgray.models.profile.model_cost`) added; its
    ``features_dim`` is the size searched (``model.pca_dim`` when set)."""
    from vgray.models.profile import model_cost

    result.update(model_cost(model, cfg.data.image_size))
    result["features_dim"] = cfg.model.pca_dim or result["features_dim"]
    return result


def evaluate(
    cfg,
    save_descriptors=None,
    progress: bool = True,
    model=None,
    keep: Optional[dict] = None,
    extractor: Optional[Callable] = None,
) -> Dict[str, float]:
    """``vgray eval``: build the model and the split from ``cfg``, evaluate, add the model's cost.
    ``keep`` receives what :func:`evaluate_split` keeps, and the ``split``; ``extractor`` is
    :func:`evaluate_split`'s (in-process by default); ``model``: a network to use instead of the
    one ``cfg.model`` describes.

    Returns the figures ``vgray eval`` prints: ``R@N`` for each of ``test.recall_values``
    (percent), ``queries``, ``queries_without_positives``, ``database``, ``features_dim``,
    ``matching_ms``, ``index_memory_mb`` and the model's cost."""
    from vgray.models import build_model

    split = open_split(cfg.data.root, cfg.test.split, cfg.data.msls_queries)
    split.check_positives(cfg.test.positives)  # a rule the split cannot decide: refused before any effect
    rt = Runtime.from_config(cfg, progress=progress)
    seed_everything(cfg.seed)
    if model is None:
        model = build_model(cfg.model, image_size=cfg.data.image_size)
    check_before_extraction(cfg, model)
    initialize_on_database(model, cfg, split.database, rt)
    result = evaluate_split(model, split, cfg, rt=rt, save_descriptors=save_descriptors, keep=keep, extractor=extractor)
    if keep is not None:
        keep["split"] = split
    if save_descriptors is not None:
        write_model(save_descriptors, cfg, model)  # what vgray locate needs for new photos
    return add_cost(result, model, cfg)


def dataset_name(root: str) -> str:
    """A short name of a dataset root for result columns: ``synthetic_small``, ``pitts30k``; a root
    naming ground-truth lists, the list set's (``IMAGES::LISTS/pitts30k_test`` -> ``pitts30k_test``)."""
    if root.startswith("synthetic:"):
        return "synthetic_" + root.split(":", 1)[1]
    if "::" in root:  # ground-truth lists apart from their images: named after the lists
        root = root.split("::", 1)[1]
    name = Path(root.rstrip("/")).name
    for suffix in LIST_SUFFIXES:  # a root naming one file of a list set: the set's name
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name or "dataset"


def test_sets(cfg) -> Dict[str, str]:
    """``{name: root}`` of the sets a final test scores: ``test.datasets``, else ``data.root``'s own."""
    return dict(cfg.test.datasets) if cfg.test.datasets else {dataset_name(cfg.data.root): cfg.data.root}


def set_key(cfg, name: str) -> str:
    """The config key that names the test set ``name`` of :func:`test_sets`, for a refusal."""
    return f"test.datasets.{name}" if cfg.test.datasets else "data.root"


test_sets.__test__ = False  # type: ignore[attr-defined]  # not a test, for pytest, wherever a test module imports it


#: The figures a final test takes from its first test set.
FIRST_SET_FIGURES = ("matching_ms", "index_memory_mb", "database", "queries")


def final_test(
    cfg, model, rt: Runtime, sets: Dict[str, str], extractor_for: Optional[Callable] = None, log=None
) -> Dict[str, Any]:
    """The test of a finished model on every set of ``sets`` (``{name: root}``, see :func:`test_sets`):
    ``test/<name>/R@N`` for ``test.recall_values`` on each root's test split and
    ``test/<name>/positives`` (the rule that decided them, as :func:`evaluate_split` says it) and
    ``test/<name>/query_set`` (which queries, and how many); ``matching_ms``,
    ``index_memory_mb``, ``database`` and ``queries`` of the first set; the model's cost
    (``features_dim``: the size searched, ``gflops``, ``model_size_mb``, ``params``).

    With ``model.pca_dim``, one PCA is fitted on ``data.root``'s train split and serves every set.
    An aggregation that still needs initialising (an untrained NetVLAD, evaluated only) takes its
    clusters from the first set's database, as :func:`evaluate` does. ``extractor_for(cfg_of_set)``
    (``cfg`` with ``data.root`` set to that set's root) gives the extractor of a set (None, or no
    ``extractor_for``: in this process). ``log(line)``, when given, receives the test recalls."""
    check_before_extraction(cfg, model)
    extractors: Dict[str, Optional[Callable]] = {}

    def extractor_of(root: str) -> Optional[Callable]:
        if root not in extractors:
            one = cfg if root == cfg.data.root else cfg.replace(**{"data.root": root})
            extractors[root] = extractor_for(one) if extractor_for is not None else None
        return extractors[root]

    splits = {name: open_split(root, "test", cfg.data.msls_queries, set_key(cfg, name)) for name, root in sets.items()}
    for split in splits.values():  # test.positives against every set, before any extraction
        split.check_positives(cfg.test.positives)
    if splits and model.needs_init():
        seed_everything(cfg.seed)
        first = next(iter(sets))
        initialize_on_database(model, cfg, splits[first].database, rt)
    # model.pca_dim: one PCA of this model, fitted on the training dataset, for every test set.
    pca = pca_from_training(model, cfg, rt, extractor_of(cfg.data.root)) if cfg.model.pca_dim is not None else None
    result: Dict[str, Any] = {}
    for name, root in sets.items():
        figures = evaluate_split(model, splits[name], cfg, rt=rt, progress=False, pca=pca, extractor=extractor_of(root))
        result.update({f"test/{name}/{k}": v for k, v in figures.items() if k.startswith("R@")})
        result[f"test/{name}/positives"] = figures["positives"]
        result[f"test/{name}/query_set"] = figures["query_set"]
        for key in FIRST_SET_FIGURES:
            result.setdefault(key, figures[key])
    add_cost(result, model, cfg)
    if log is not None:
        log("test: " + " ".join(f"{k}={v:.2f}" for k, v in result.items() if k.startswith("test/") and "/R@" in k))
    return result
