"""``vgray bench scale``: how each cost of the pipeline grows with the database, over a ladder of sizes.

Each size N is the first N images of the sorted file index of ``data.root``'s test database (the
queries fixed: the first ``--queries``). The ladder's datasets are real VG folders made of hard
links (symbolic links across file systems) to those images: inodes, no bytes, and every stage runs
through its own public entry point unchanged (no config key restricts a split). At each size, timed:

- ``file_index``: :func:`vgray.data.dataset.index_images` on the database folder, cold;
- ``extract``: :func:`vgray.distributed.extract.extract` (Ray Data into parquet shards, no
  concatenation), database and queries, an untrained seeded model at the images' own size;
- ``index_build_ivfpq`` / ``index_build_flat``: :func:`vgray.distributed.search.index_from_shards`
  (``IVF{4 sqrt N},PQ16``; Flat only where its descriptors fit ``--flat-budget-mb``);
- ``search_flat`` (on the driver, where it fits), ``search_sharded_flat``
  (:class:`~vgray.distributed.search.ShardedFlatSearch` over ``--actors`` actors reading the
  shards), ``search_ivfpq`` (vgray's default ``nprobe``, a sixteenth of the lists, which grow
  as sqrt N: the codes scanned grow as N) and ``search_ivfpq_nprobe16`` (the same index, 16 lists
  at every size: the codes scanned grow as sqrt N, the paper's sub-linear curve): seconds per
  query, best of ``--repeats``, with R@1 and R@5;
- ``mining_<method>``: one cache refresh (:mod:`vgray.train.mining`) on the size's training split
  (its database, and the queries with a positive in the smallest size: :func:`make_ladder`), its descriptors through :class:`~vgray.distributed.descriptors.RayExtractor`
  (``data.ray_threshold``, 0 here unless set: always Ray Data), as training asks for them.

Memory (:mod:`vgray.distributed.memory`): the driver's peak RSS within each stage (its kernel peak
reset at the stage's start) and the largest Ray worker's, read inside the cluster by a probe per
node. Printed: a table of seconds per stage and size, each stage's growth exponent ``a``
(seconds ∝ N^a, least squares on log-log), the issue's expected shapes (kept or missed: figures,
not a failure) and, last, the driver's peak at the largest size over the smallest.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from vgray.bench import bench_parser, print_figures
from vgray.bench.search import best_seconds
from vgray.console import Parser, write_json
from vgray.errors import BadInput
from vgray.paths import path_type
from vgray.values import amount, count, count_list

DEFAULT_SIZES = "10000,100000,1000000"
METHODS = ("partial", "full", "random", "msls_weighted")
# (stage, lowest a, highest a): the expected shapes (a ≈ 1 taken as 0.8-1.2 where it gives no range)
SHAPES = (
    ("file_index", 0.9, 1.1),
    ("extract", 0.9, 1.1),
    ("search_flat", 0.8, 1.2),
    ("search_sharded_flat", 0.8, 1.2),
    ("search_ivfpq_nprobe16", -math.inf, 0.7),
    ("mining_partial", -math.inf, 0.2),
    ("mining_msls_weighted", -math.inf, 0.2),
    ("mining_full", 0.8, 1.2),
)
FIXED_NPROBE = 16  # the second IVF-PQ search: lists visited at every size
DRIVER_RATIO_MAX = 1.5
WORKER_MAX_MB = 4096.0


def sizes_of(text: str) -> List[int]:
    """``--sizes 2000,8000`` as a sorted list of distinct sizes of at least 2; else BadInput."""
    try:
        sizes = sorted(set(count_list(text, "--sizes")))  # the number door: integers of at most a C int
    except BadInput:
        sizes = []
    if len(sizes) < 2 or sizes[0] < 2:
        raise BadInput(f"--sizes={text!r}: give two or more database sizes of at least 2, e.g. 10000,100000,1000000")
    return sizes


def ivfpq_spec(n: int) -> str:
    """The compressed index of size ``n``: about 4 sqrt(n) lists (at least 39 training points each),
    PQ16 with 8-bit codes where there are 10,000 points to train them, 4-bit below."""
    lists = max(1, min(int(4 * math.sqrt(n)), n // 39))
    return f"IVF{lists},PQ16" + ("" if n >= 10_000 else "x4")


def growth_exponent(sizes: Sequence[int], seconds: Sequence[float]) -> Optional[float]:
    """``a`` of seconds ∝ N^a by least squares on log-log; None with fewer than two positive points."""
    pts = [(math.log(n), math.log(s)) for n, s in zip(sizes, seconds) if s > 0]
    if len(pts) < 2:
        return None
    x, y = np.array(pts).T
    return float(np.polyfit(x, y, 1)[0])


def _free_mb(folder: Path) -> float:
    return shutil.disk_usage(folder).free / 2**20


def _available_mb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return math.inf


def check_fits(sizes: List[int], available: int, queries: int, dim: int, work: Path, args) -> None:
    """Refuse (BadInput, one line) sizes beyond the dataset, or whose shards and links do not fit the
    disk, or whose largest in-memory holder does not fit the free memory; before anything runs."""
    if sizes[-1] > available:
        raise BadInput(
            f"--sizes: {sizes[-1]:,} database images asked for, but the test database of the data root "
            f"holds {available:,}; choose sizes up to {available:,}"
        )
    row = dim * 4 + 300  # a descriptor and its path and UTM columns in a shard
    disk = (sizes[-1] + queries) * row / 2**20 + sum(sizes) * 4096 / 2**20 / 64  # shards; link inodes' dirents
    if disk > _free_mb(work):
        raise BadInput(
            f"--sizes up to {sizes[-1]:,}: about {disk:,.0f} MiB of shards needed in {work}, "
            f"{_free_mb(work):,.0f} MiB free"
        )
    n = sizes[-1]
    holders = [n * dim * 4 / args.actors]  # a search actor's part
    if "full" in args.methods:
        holders.append(n * dim * 4)  # full mining: the whole database's descriptors on the driver
    if n * dim * 4 / 2**20 <= args.flat_budget_mb:
        holders.append(n * dim * 4)
    need = max(holders) * 1.5 / 2**20 + 1024  # what one process holds at its peak, and the rest
    if need > _available_mb():
        raise BadInput(
            f"--sizes up to {n:,}: about {need:,.0f} MiB of memory needed at the peak, {_available_mb():,.0f} MiB "
            f"available; choose smaller sizes, more --actors, or leave out full mining (--methods)"
        )


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed: a symbolic link
        os.symlink(src, dst)


def training_queries(split, n: int, threshold: float) -> np.ndarray:
    """The queries of ``split`` with a database image within ``threshold`` metres among its first
    ``n``: training queries of every rung at least ``n`` large (the rungs are nested), so that a
    mining refresh handles the same queries at every size and only the database grows."""
    from vgray.data.positives import positives_within

    near = positives_within(split.database.utm[:n], split.queries.utm, threshold)
    return np.array([i for i, p in enumerate(near) if len(p)], dtype=np.int64)


def make_ladder(split, sizes: List[int], queries: int, work: Path, threshold: float) -> Dict[int, Path]:
    """One VG folder per size under ``work``: ``N/images/test/{database,queries}`` holding links to
    the first N database and the first ``queries`` query images of ``split`` (folders kept), and
    the training split the mining stages refresh on, ``N/images/train``: the same database (a link
    to the folder) and the queries with a positive (``threshold``) in the smallest rung
    (:func:`training_queries`)."""
    from vgray.data.dataset import split_dir

    tops = {role: split_dir(Path(split.root), split.name) / role for role in ("database", "queries")}
    train_queries = training_queries(split, min(sizes), threshold)
    if len(train_queries) == 0:
        raise BadInput(
            f"vgray bench scale: no query of {split.root} has a database image within {threshold:g} m among the "
            f"first {min(sizes):,}, so mining has no training query at the smallest size; give a larger first size"
        )
    roots = {}
    for n in sizes:
        root = work / str(n)
        for role, images, chosen in (
            ("database", split.database, range(n)),
            ("queries", split.queries, range(queries)),
            ("train", split.queries, train_queries),
        ):
            folder = root / "images" / ("train/queries" if role == "train" else f"test/{role}")
            top = tops["queries" if role == "train" else role]
            for i in chosen:
                path = Path(images.paths[int(i)])
                link = folder / (path.relative_to(top) if path.is_relative_to(top) else Path(path.name))
                link.parent.mkdir(parents=True, exist_ok=True)
                _link(path, link)
        os.symlink(Path("..") / "test" / "database", root / "images" / "train" / "database", target_is_directory=True)
        roots[n] = root
    return roots


class Stages:
    """The measurements of one ladder: ``stages[stage][N]`` a dict of ``seconds`` (per query for
    searches), ``driver_peak_mb``, ``driver_rise_mb``, ``worker_peak_mb``, ``worker`` and extras."""

    def __init__(self, workers, holder=None, save: Optional[Callable[["Stages"], None]] = None) -> None:
        self.workers = workers
        self.holder = holder  # a HeldWork: the Flat index and the mining caches, in a worker
        self.stages: Dict[str, Dict[int, Dict[str, Any]]] = {}
        self.left_out: Dict[str, str] = {}
        self.save = save or (lambda stages: None)  # after every measurement: what a stopped run keeps

    def run(self, stage: str, n: int, fn: Callable[[], Any], per: int = 1, repeats: int = 1) -> Any:
        """``fn()`` timed (best of ``repeats``; seconds divided by ``per``) with its peaks; its result."""
        from vgray.distributed.memory import DriverPeak

        self.workers.reset()
        out: List[Any] = []
        with DriverPeak() as driver:
            seconds = best_seconds(lambda: out.append(fn()), repeats)
        worker_mb, title = self.workers.largest()
        self.stages.setdefault(stage, {})[n] = {
            "seconds": seconds / per,
            "driver_peak_mb": driver.mb,
            "driver_rise_mb": driver.rise_mb,
            "worker_peak_mb": worker_mb,
            "worker": title,
        }
        self.save(self)
        return out[-1]

    def note(self, stage: str, n: int, **extra: Any) -> None:
        self.stages[stage][n].update(extra)
        self.save(self)


def _configs(args) -> Tuple[Any, List[str]]:
    """The ladder's config (the dataset's own image size unless ``data.resize`` is set) and the
    overrides that make it, ``data.root`` left to each size."""
    from PIL import Image

    from vgray.config import load_config
    from vgray.data.dataset import open_split

    base = [
        "data.root=synthetic:large",
        "model.aggregation=gem",
        "model.pretrained=none",
        "data.num_workers=0",
        "data.ray_threshold=0",
        "test.batch_size=64",
        *args.overrides,
    ]
    cfg = load_config(overrides=base)
    split = open_split(cfg.data.root, cfg.test.split, cfg.data.msls_queries)
    if not any(o.startswith("data.resize=") for o in args.overrides):
        with Image.open(split.database.paths[0]) as image:
            base.append(f"data.resize=[{image.height},{image.width}]")
    return split, base


def parser() -> Parser:
    """``vgray bench scale``'s options (read by :func:`main`)."""
    p = bench_parser("scale", "synthetic:large, resnet18conv4 + gem untrained at the images' own size")
    p.add_argument("--sizes", default=DEFAULT_SIZES, help=f"database sizes of the ladder (default {DEFAULT_SIZES})")
    p.add_argument(
        "--figure",
        metavar="FILE.png",
        type=path_type("--figure", "out_file"),
        help="also draw seconds and peak memory against size (log-log)",
    )
    p.add_argument(
        "--queries", type=count(), default=1000, help="the fixed query set: the first Q queries (default 1000)"
    )
    p.add_argument("--methods", default=",".join(METHODS), help="mining methods refreshed (default: all four)")
    p.add_argument("--actors", type=count(), default=2, help="sharded Flat search actors (default 2)")
    p.add_argument(
        "--extract-actors",
        type=count(),
        default=None,
        help="network actors of each extraction (default: as vgray extract)",
    )
    p.add_argument("--shard-size", type=count(), default=10000, help="images per parquet shard (default 10000)")
    p.add_argument(
        "--flat-budget-mb",
        type=amount(positive=True),
        default=2048,
        help="largest database (MiB of descriptors) Flat on the driver",
    )
    p.add_argument("--repeats", type=count(), default=2, help="timed searches per index; the best is kept")
    p.add_argument(
        "--dir",
        type=path_type("--dir", "in_dir"),
        help="work folder for links and shards (default: a temporary one in the vgray cache)",
    )
    p.add_argument("--address", default=None, help="a running Ray cluster (auto or HOST:PORT)")
    p.add_argument("--num-cpus", type=count(), default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument(
        "--nodes",
        type=count(),
        default=None,
        help="start a cluster of this many nodes on this machine (a head with no CPU; --num-cpus shared between them)",
    )
    p.add_argument(
        "--store-mb", type=count(100), default=1024, help="object store of each --nodes node, MiB (default 1024)"
    )
    p.add_argument(
        "--from-json",
        metavar="FILE",
        type=path_type("--from-json", "in_file"),
        help="run nothing: print, summarise and draw (--figure) the ladder in FILE, a JSON this benchmark wrote",
    )
    return p


def main(argv) -> None:
    """``vgray bench scale``: seconds and peak memory of each stage over a ladder of database sizes,
    the growth exponents and expected shapes, and the driver's peak memory ratio last."""
    args = parser().parse_args(argv)
    if args.from_json:
        return replay(args.from_json, args)
    sizes = sizes_of(args.sizes)
    args.methods = [m for m in args.methods.split(",") if m]
    bad = [m for m in args.methods if m not in METHODS]
    if bad:  # (the counts were read by the number door, at least 1)
        raise BadInput(f"--methods takes {', '.join(METHODS)}; not {', '.join(bad)}")
    if args.nodes is not None and (args.address or not 1 <= args.nodes <= (args.num_cpus or os.cpu_count() or 1)):
        raise BadInput(
            f"--nodes={args.nodes}: from 1 to the CPUs given (--num-cpus, default all: each node has at least "
            "one), and not with --address (a cluster already running)"
        )
    from vgray.config import load_config
    from vgray.models import build_model
    from vgray.paths import cache_dir

    split, base = _configs(args)
    cfg = load_config(overrides=base)
    dim = build_model(cfg.model, load_weights=False, image_size=cfg.data.image_size).features_dim
    queries = min(args.queries, len(split.queries))
    parent = Path(args.dir).expanduser() if args.dir else cache_dir()
    if not parent.is_dir():
        raise BadInput(f"--dir {args.dir}: no such folder")
    check_fits(sizes, len(split.database), queries, dim, parent, args)
    work = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=parent))
    try:
        started = time.perf_counter()
        roots = make_ladder(split, sizes, queries, work, cfg.train.positive_dist_threshold)
        links_s = time.perf_counter() - started
        del split  # the source's file index: the ladder's folders stand for it now
        head = header(cfg, sizes, links_s, queries)
        stages = _ladder(roots, base, args, work, head)
        report(stages.stages, stages.left_out, sizes, head, args, complete=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(
    stages: Dict[str, Dict[int, Dict[str, Any]]],
    left_out: Dict[str, str],
    sizes: List[int],
    head: Dict[str, Any],
    args,
    complete: bool,
) -> None:
    """The table, the figures (:func:`summary`), the figure and the JSON of a ladder."""
    figures = summary(stages, left_out, sizes, head)
    if args.figure:
        draw(stages, sizes, args.figure)
    _print_table(stages, sizes)
    print_figures(figures)
    write_json(args.json, {**figures, "complete": complete, "sizes": sizes, "stages": stages, "left_out": left_out})


def replay(path: str, args) -> None:
    """``--from-json``: a ladder's JSON (finished or not) printed, drawn and summarised again by
    this version, nothing run."""
    import json

    try:
        got = json.loads(Path(path).read_text())
        stages = {stage: {int(n): m for n, m in by.items()} for stage, by in got["stages"].items()}
        sizes = sorted({n for by in stages.values() for n in by})
        head = {k: got[k] for k in ("data", "model", "image_size", "queries", "links_s") if k in got}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BadInput(f"--from-json {path}: not a vgray bench scale JSON ({exc})")
    if not sizes:
        raise BadInput(f"--from-json {path}: no size was measured")
    report(
        stages,
        got.get("left_out", {}),
        sizes,
        {**head, "sizes": ",".join(map(str, sizes))},
        args,
        complete=bool(got.get("complete")),
    )


def _ladder(roots: Dict[int, Path], base: List[str], args, work: Path, head: Dict[str, Any]) -> Stages:
    from vgray.distributed.cluster import ray_session
    from vgray.distributed.held import HeldWork, local_cluster
    from vgray.distributed.memory import WorkerPeaks

    with (
        local_cluster(args.nodes, args.num_cpus, args.store_mb) as address,
        ray_session(address or args.address, args.num_cpus),
    ):
        workers, held = WorkerPeaks(), HeldWork()

        def save(stages: Stages) -> None:  # what is measured so far, should a later stage not finish
            if args.json:
                write_json(args.json, {**head, "complete": False, "stages": stages.stages, "left_out": stages.left_out})

        try:
            stages = Stages(workers, held, save)
            for n, root in roots.items():
                one_size(stages, n, root, base, args, work / f"shards-{n}")
                shutil.rmtree(work / f"shards-{n}", ignore_errors=True)
        finally:
            held.close()
            workers.close()
    return stages


def one_size(stages: Stages, n: int, root: Path, base: List[str], args, out: Path) -> None:
    """Every stage at size ``n`` (dataset ``root``), shards written to ``out``."""
    from vgray.config import load_config
    from vgray.data.dataset import index_cache_path, index_images
    from vgray.distributed.extract import extract, prepare, shard_path

    cfg = load_config(overrides=[*base, f"data.root={root}"])
    top = root / "images" / "test" / "database"
    for folder in (top, top.parent / "queries"):
        index_cache_path(folder).unlink(missing_ok=True)
    images = stages.run("file_index", n, lambda: index_images(top, progress=lambda seen: None))
    if len(images) != n:
        raise RuntimeError(f"vgray bench scale: the file index of {top} holds {len(images)} images, not {n}")
    del images

    def extraction() -> Any:
        prepared = prepare(cfg, "test", out, shard_size=args.shard_size, actors=args.extract_actors, progress=False)
        extract(
            cfg,
            "test",
            out,
            shard_size=args.shard_size,
            actors=args.extract_actors,
            progress=False,
            concat=False,
            prepared=prepared,
        )
        return prepared

    prepared = stages.run("extract", n, extraction)
    split, model = prepared.split, prepared.model
    positives, _ = split.evaluation_positives("auto", cfg.test.positive_dist_threshold, cfg.test.positive_frames)
    files = {
        role: [str(shard_path(out, role, k)) for k in range(-(-count // args.shard_size))]
        for role, count in (("database", n), ("queries", len(split.queries)))
    }
    del prepared, split  # the driver keeps each query's positives, not the split's paths
    search_stages(stages, n, cfg, positives, files, args)
    mining_stages(stages, n, cfg, model, args)
    for folder in (top, top.parent / "queries", root / "images" / "train" / "queries"):
        index_cache_path(folder).unlink(missing_ok=True)


def search_stages(stages: Stages, n: int, cfg, positives, files: Dict[str, List[str]], args) -> None:
    """Index builds and searches at size ``n``; R@1/R@5 of each, and whether sharded Flat is Flat."""
    import faiss

    from vgray.distributed.search import (
        ShardedFlatSearch,
        actor_plan,
        index_from_shards,
        read_descriptors,
        same_as_flat,
    )
    from vgray.evaluate.knn import index_memory_mb, search
    from vgray.evaluate.recall import recall_at_n

    xq = np.concatenate([read_descriptors(f) for f in files["queries"]])
    k, m = max(cfg.test.recall_values), len(xq)

    def recalls(I: np.ndarray) -> Dict[str, float]:
        return recall_at_n(I, positives, (1, 5))

    flat_result = None
    d = xq.shape[1]
    if n * d * 4 / 2**20 <= args.flat_budget_mb:
        held = stages.holder
        mb = stages.run("index_build_flat", n, lambda: held.build_flat(files["database"], cfg.seed))
        D0, I0 = stages.run("search_flat", n, lambda: held.search(xq, k), per=m, repeats=args.repeats)
        held.drop()
        stages.note("search_flat", n, **recalls(I0), index_mb=mb)
        flat_result = (D0, I0)
    else:
        stages.left_out["search_flat"] = f"Flat in one process above --flat-budget-mb={args.flat_budget_mb:g}"
    spec = ivfpq_spec(n)
    ivf = stages.run("index_build_ivfpq", n, lambda: index_from_shards(files["database"], spec, seed=cfg.seed))
    _, I, _ = stages.run("search_ivfpq", n, lambda: search(ivf, xq, k), per=m, repeats=args.repeats)
    lists = faiss.extract_index_ivf(ivf)
    stages.note("search_ivfpq", n, **recalls(I), index=spec, index_mb=index_memory_mb(ivf), nprobe=int(lists.nprobe))
    lists.nprobe = min(FIXED_NPROBE, lists.nlist)
    _, I, _ = stages.run(
        f"search_ivfpq_nprobe{FIXED_NPROBE}", n, lambda: search(ivf, xq, k), per=m, repeats=args.repeats
    )
    stages.note(f"search_ivfpq_nprobe{FIXED_NPROBE}", n, **recalls(I), nprobe=int(lists.nprobe))
    ivf = None  # dropped before the sharded actors load
    started = time.perf_counter()
    actors, cpus = actor_plan(args.actors)
    sharded = ShardedFlatSearch(files=files["database"], actors=actors, num_cpus=cpus)
    load_s = time.perf_counter() - started
    try:
        D, I = stages.run("search_sharded_flat", n, lambda: sharded.search(xq, k), per=m, repeats=args.repeats)
        extra: Dict[str, Any] = {"load_s": load_s, "actor_mb": max(sharded.actor_bytes()) / 2**20}
        if flat_result is not None:
            extra["same_as_flat"] = float(same_as_flat(*flat_result, D, I).mean())
        stages.note("search_sharded_flat", n, **recalls(I), **extra)
    finally:
        sharded.close()


def mining_stages(stages: Stages, n: int, cfg, model, args) -> None:
    """One cache refresh per mining method at size ``n`` on the rung's training split (its
    database, the fixed training queries: :func:`make_ladder`), in a worker
    (:class:`~vgray.distributed.held.HeldWork`, as a trial's trainer), its descriptors through
    the extractor training uses on Ray."""
    why = stages.holder.start_mining(cfg, model, args.extract_actors, split="train")
    for method in args.methods:
        if why is not None:
            stages.left_out[f"mining_{method}"] = f"at {n:,}: {why}"
            continue
        got = stages.run(f"mining_{method}", n, functools.partial(stages.holder.refresh, method))
        if "left_out" in got:
            stages.left_out[f"mining_{method}"] = f"at {n:,}: {got['left_out']}"
            del stages.stages[f"mining_{method}"][n]
            if not stages.stages[f"mining_{method}"]:
                del stages.stages[f"mining_{method}"]
            continue
        stages.note(f"mining_{method}", n, **got)
    stages.holder.drop()


def header(cfg, sizes: List[int], links_s: float, queries: int) -> Dict[str, Any]:
    """What a ladder ran on: its first printed figures, kept in its JSON."""
    return {
        "data": cfg.data.root,
        "model": f"{cfg.model.backbone}+{cfg.model.aggregation} (untrained, seed {cfg.seed})",
        "image_size": "x".join(map(str, cfg.data.image_size)),
        "sizes": ",".join(map(str, sizes)),
        "queries": queries,
        "links_s": links_s,
    }


def summary(
    stages: Dict[str, Dict[int, Dict[str, Any]]], left_out: Dict[str, str], sizes: List[int], head: Dict[str, Any]
) -> Dict[str, Any]:
    """The printed figures: per stage its exponents and peaks, the shapes kept or missed, the
    sharded-Flat check, what was left out, and the driver's peak ratio last.

    ``a`` is fitted over every size; with three sizes or more, ``a_top`` over the two largest as
    well, and the shapes are checked on it: a stage costing ``c0 + c1 N`` (a pipeline's start, an
    actor call) grows as N only where ``c1 N`` outweighs ``c0``, which the top of the ladder shows
    and a fit through the smallest size bends below 1."""
    figures: Dict[str, Any] = dict(head)
    checked: Dict[str, Optional[float]] = {}  # the exponent each shape is checked on: a_top, else a
    for stage, by_size in stages.items():
        ns = sorted(by_size)
        seconds = [by_size[n]["seconds"] for n in ns]
        fits = {"a": growth_exponent(ns, seconds)}
        if len(ns) >= 3:
            fits["a_top"] = growth_exponent(ns[-2:], seconds[-2:])
        for name, a in fits.items():
            figures[f"{stage} {name}"] = "n/a" if a is None else a
        checked[stage] = fits.get("a_top", fits["a"])
        figures[f"{stage} driver_peak_mb"] = max(by_size[n]["driver_peak_mb"] for n in ns)
        figures[f"{stage} worker_peak_mb"] = max(by_size[n]["worker_peak_mb"] for n in ns)
    for stage, low, high in SHAPES:
        a = checked.get(stage)
        want = f"a < {high:g}" if low == -math.inf else f"a in {low:g}-{high:g}"
        which = "a_top" if f"{stage} a_top" in figures else "a"
        if a is None:
            figures[f"shape {stage}"] = f"not measured ({want})"
        else:
            figures[f"shape {stage}"] = f"{'kept' if low <= a <= high else 'MISSED'}: {which}={a:.2f}, expected {want}"
    sharded = stages.get("search_sharded_flat", {})
    same = [v["same_as_flat"] for v in sharded.values() if "same_as_flat" in v]
    if same:
        figures["sharded_flat_same_as_flat"] = min(same)
    largest = sizes[-1]
    for stage in ("search_flat", "search_sharded_flat", "search_ivfpq", f"search_ivfpq_nprobe{FIXED_NPROBE}"):
        at = stages.get(stage, {}).get(largest)
        if at is not None:
            figures[f"{stage} R@1/R@5 at {largest:,}"] = f"{at['R@1']:.2f} / {at['R@5']:.2f}"
    for stage, why in left_out.items():
        figures[f"left out {stage}"] = why
    driver = {n: max(s[n]["driver_peak_mb"] for s in stages.values() if n in s) for n in sizes}
    worker = max((v["worker_peak_mb"] for s in stages.values() for v in s.values()), default=0.0)
    figures["driver_peak_mb_smallest"] = driver[sizes[0]]
    figures["driver_peak_mb_largest"] = driver[sizes[-1]]
    figures["worker_peak_mb_largest"] = worker
    figures["shape worker_peak"] = f"{'kept' if worker <= WORKER_MAX_MB else 'MISSED'}: expected <= {WORKER_MAX_MB:g}"
    ratio = driver[sizes[-1]] / max(driver[sizes[0]], 1e-9)
    figures["shape driver_peak_ratio"] = f"{'kept' if ratio <= DRIVER_RATIO_MAX else 'MISSED'}: expected <= 1.5"
    figures["driver_peak_ratio"] = ratio  # driver peak RSS at the largest size over the smallest
    return figures


def _print_table(stages: Dict[str, Dict[int, Dict[str, Any]]], sizes: List[int]) -> None:
    """Seconds (per query for searches) of each stage at each size, one stage a line."""
    width = max(map(len, stages), default=5)
    print(f"{'stage':<{width}}  " + "  ".join(f"{f'N={n:,}':>12}" for n in sizes) + "   (seconds)")
    for stage, by_size in stages.items():
        cells = [f"{by_size[n]['seconds']:>12.4g}" if n in by_size else f"{'-':>12}" for n in sizes]
        print(f"{stage:<{width}}  " + "  ".join(cells))


def draw(stages: Dict[str, Dict[int, Dict[str, Any]]], sizes: List[int], path: str) -> None:
    """Two log-log panels against the database size: seconds of each stage (per query for the
    searches), and the driver's peak RSS in each stage (solid) with the largest worker's (dashed)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vgray.atomic import write_bytes

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 5))
    palette = plt.get_cmap("tab20")
    for i, (stage, by_size) in enumerate(stages.items()):
        ns = sorted(by_size)
        colour, style = palette(i % 20), "-" if i < 20 else "--"
        left.plot(ns, [by_size[n]["seconds"] for n in ns], style, marker="o", color=colour, label=stage)
        right.plot(ns, [by_size[n]["driver_peak_mb"] for n in ns], "-", marker="o", color=colour, label=stage)
        right.plot(ns, [max(by_size[n]["worker_peak_mb"], 1e-3) for n in ns], ":", marker="x", color=colour)
    for ax, label in ((left, "seconds (searches: per query)"), (right, "peak RSS MiB (driver -, worker ..)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("database images")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    fig.legend(*left.get_legend_handles_labels(), fontsize=7, loc="lower center", ncol=4, frameon=False)
    fig.tight_layout(rect=(0, 0.16, 1, 1))  # the legend under both panels, over no line
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(target, buffer.getvalue())
