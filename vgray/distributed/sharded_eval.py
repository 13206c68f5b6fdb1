"""``vgray eval`` on a Ray cluster, for databases of a million images: nothing whole in one process.

Paper: Berton et al., "Deep Visual Geo-localization Benchmark", CVPR 2022 (its protocol: recall@N
within 25 m; Fig. 4b: exact Flat beside compressed indexes, with their memory).

A split whose database holds more than ``data.ray_threshold`` images (every split when it is 0) is
evaluated in three steps, each holding a part of what grows with the data:

1. **extraction** (:func:`vgray.distributed.extract.extract`): Ray Data decodes in CPU tasks and
   runs the network in an actor pool; the driver writes each parquet shard (``shard_size`` images)
   as it completes, holding the paths once (the split's file index) and the shards in flight. A
   re-run skips complete shards of the same model and images.
2. **search**: ``test.knn=Flat`` is exact search over :class:`~vgray.distributed.search.ShardedFlatSearch`
   actors (each holds its contiguous shards; the driver merges their top-k per query); any other
   index (``IVF4096,PQ16``...) is built from the shards on the driver by
   :func:`~vgray.distributed.search.index_from_shards` (trained on a sample, filled shard by shard:
   one shard and the compressed codes in memory).
3. **recall**: the query descriptors (a few thousand rows) are read back on the driver; predictions
   and positives as :func:`vgray.evaluate.evaluate.evaluate_split` makes them, with the same figures.

Single-view test methods only (``hard_resize``, ``central_crop``) and no PCA: the shards hold one
network descriptor per image, as ``vgray extract`` writes them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, cast

import numpy as np

from vgray.errors import BadInput


def uses_shards(cfg, database: int) -> bool:
    """Whether a split of ``database`` images is evaluated through shards (``data.ray_threshold``)."""
    threshold = cfg.data.ray_threshold
    return threshold == 0 or database > threshold


def _shard_ids(files: Sequence[Path], paths: Sequence[str]) -> np.ndarray:
    """The dataset row of every row of ``files`` (shards in order): a shard's ``start..stop``, or,
    where it skipped unreadable images, its rows found by path among its images."""
    import pyarrow.parquet as pq

    from vgray.distributed.extract import META_KEY

    ids: List[np.ndarray] = []
    for f in files:
        md = pq.read_metadata(f)
        meta = json.loads((md.schema.to_arrow_schema().metadata or {})[META_KEY])
        start, stop = int(meta["start"]), int(meta["stop"])
        if int(meta.get("skipped", 0)) == 0:
            ids.append(np.arange(start, stop, dtype=np.int64))
            continue
        where = {p: start + i for i, p in enumerate(paths[start:stop])}
        ids.append(np.asarray([where[p] for p in pq.read_table(f, columns=["path"]).column("path").to_pylist()]))
    return np.concatenate(ids) if ids else np.zeros(0, np.int64)


def _search(cfg, files: List[str], xq: np.ndarray, k: int, actors: Optional[int]):
    """``(D, I, seconds, index MiB, how)``: ``xq`` searched in the database ``files`` as
    ``test.knn`` says (Flat: sharded over ``actors`` actors, default one per node; else an index
    built from the shards on the driver)."""
    from vgray.distributed.search import ShardedFlatSearch, actor_plan, index_from_shards
    from vgray.evaluate.knn import index_memory_mb, search

    if cfg.test.knn.replace(" ", "") == "Flat":
        actors, cpus = actor_plan(actors)
        sharded = ShardedFlatSearch(files=files, actors=actors, num_cpus=cpus)
        try:
            started = time.perf_counter()
            D, I = sharded.search(xq, k)
            seconds = time.perf_counter() - started
            return D, I, seconds, sum(sharded.actor_bytes()) / 2**20, f"sharded Flat over {len(sharded.actors)} actors"
        finally:
            sharded.close()
    index = index_from_shards(files, cfg.test.knn, seed=cfg.seed)
    D, I, seconds = search(index, xq, k)
    return D, I, seconds, index_memory_mb(index), f"{cfg.test.knn} built from the shards on the driver"


def evaluate_sharded(
    cfg,
    shards: str | Path,
    prepared=None,
    shard_size: int = 10_000,
    extract_actors: Optional[int] = None,
    search_actors: Optional[int] = None,
    progress: bool = True,
    keep: Optional[dict] = None,
    log=None,
) -> Dict[str, Any]:
    """Recall@N of ``cfg``'s model on its test split (``cfg.test.split``) through shards in
    ``shards`` (see the module). Ray must be up; ``prepared`` is what
    :func:`vgray.distributed.extract.prepare` returned for the same arguments before Ray started.
    ``search_actors`` (Flat): default one per node of the cluster. Returns
    :func:`vgray.evaluate.evaluate.evaluate` 's figures, with ``search`` (how), ``shards_written``,
    ``shards_kept`` (``extraction_ms_per_image`` 0 when every shard was kept); ``keep`` receives ``predictions``,
    ``positives`` and ``split`` as there."""
    from vgray.distributed.extract import extract, prepare, shard_path
    from vgray.distributed.search import read_descriptors
    from vgray.evaluate.evaluate import add_cost
    from vgray.evaluate.recall import recall_at_n

    split_name = cfg.test.split
    if prepared is None:
        prepared = prepare(cfg, split_name, shards, shard_size=shard_size, actors=extract_actors, progress=progress)
    split, model = prepared.split, prepared.model
    figures = extract(
        cfg,
        split_name,
        shards,
        shard_size=shard_size,
        actors=extract_actors,
        progress=progress,
        concat=False,
        log=log,
        prepared=prepared,
    )
    out = Path(shards)
    files = {
        role: [shard_path(out, role, k) for k in range(-(-len(getattr(split, role)) // shard_size))]
        for role in ("database", "queries")
    }
    q_ids = _shard_ids(files["queries"], split.queries.paths)
    db_ids = _shard_ids(files["database"], split.database.paths)
    if len(q_ids) == 0:
        raise BadInput(
            f"dataset {split.root} [{split.name}]: none of its {len(split.queries)} query images could be read "
            "(data.skip_corrupt left them all out); there is nothing to evaluate"
        )
    xq = np.concatenate([read_descriptors(str(f)) for f in files["queries"]])
    k = max(cfg.test.recall_values)
    D, I, matching_s, memory_mb, how = _search(cfg, [str(f) for f in files["database"]], xq, k, search_actors)
    predictions = np.full((len(split.queries), I.shape[1]), -1, dtype=np.int64)
    predictions[q_ids] = np.where(I >= 0, db_ids[np.clip(I, 0, None)], -1)
    positives, rule = split.evaluation_positives(
        cfg.test.positives, cfg.test.positive_dist_threshold, cfg.test.positive_frames
    )
    result: Dict[str, Any] = recall_at_n(predictions, positives, cfg.test.recall_values)
    if keep is not None:
        keep.update(predictions=predictions, positives=positives, split=split)
    images = len(split.queries) + len(split.database)
    result.update(
        {
            "queries": len(split.queries),
            "queries_without_positives": int(sum(len(p) == 0 for p in positives)),
            "database": len(split.database),
            "skipped_images": int(images - len(q_ids) - len(db_ids)),
            "features_dim": model.features_dim,
            "matching_ms": 1000.0 * matching_s / max(len(q_ids), 1),
            "index_memory_mb": memory_mb,
            "positives": rule,
            "query_set": split.query_set,
            "search": how,
            "shards": str(out),
            "shards_written": figures["shards_written"],
            "shards_kept": figures["shards_kept"],
            "extraction_ms_per_image": 1000.0 / cast(float, figures["images_per_s"]) if figures["images"] else 0.0,
        }
    )
    return add_cost(result, model, cfg)
