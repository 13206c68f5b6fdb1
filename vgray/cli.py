"""The ``vgray`` command line.

Exit status: 0 on success, 2 on bad input (one line on stderr naming the culprit and what is
allowed, no traceback), 1 on a failure while running.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, NoReturn, Optional

from vgray import __version__
from vgray.console import Parser, print_figures
from vgray.environment import check_environment
from vgray.errors import BadInput, memory_failure
from vgray.paths import check_input, check_output_dir, check_output_file, check_spelled
from vgray.values import amount, count, count_list, seed

if TYPE_CHECKING:
    from tqdm import tqdm


def _config_args(p: argparse.ArgumentParser, with_file: bool = True) -> None:
    if with_file:
        p.add_argument("--config", help="YAML config file (sections data, model, train, test)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key, value read as YAML (repeatable)",
    )
    p.add_argument("--help-config", action="store_true", help="list every config key and exit")


def _json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", metavar="FILE", help="also write the printed figures to FILE as one JSON object")


def _check_json(args) -> None:
    """``--json FILE`` must be writable before the command runs (not after an hour of evaluation)."""
    if isinstance(getattr(args, "json", None), str):  # "" too: an empty path is refused, not skipped
        check_output_file(args.json, "--json")


def _datasets_parser(sub) -> None:
    """``vgray datasets list|check``."""
    p = sub.add_parser("datasets", help="the known datasets and their published sizes; check a folder against them")
    dsub = p.add_subparsers(dest="datasets_command", required=True, parser_class=Parser)
    q = dsub.add_parser("list", help="the known datasets: layout, published counts per split and role, sources")
    q.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    q = dsub.add_parser(
        "check", help="index a dataset folder and set its counts against the published ones (exit 1 when they disagree)"
    )
    q.add_argument(
        "root",
        metavar="ROOT",
        help="a VG-format folder, ground-truth lists (FOLDER, FOLDER/NAME or "
        "IMAGES::LISTS) or MSLS as Mapillary ships it",
    )
    q.add_argument("--name", help="the known dataset it is (default: guessed from the folder's name or its counts)")
    q.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    q.add_argument("--no-positives", action="store_true", help="skip counting the queries without positives")
    q.add_argument(
        "--positives",
        default="auto",
        choices=["auto", "radius", "frames", "files"],
        help="how positives are decided, as test.positives (frames: Nordland and other sequences)",
    )
    q.add_argument(
        "--positive-frames", type=count(0), default=10, metavar="N", help="with --positives frames: ±N frames"
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``vgray`` parser: one subcommand per entry of :data:`COMMANDS`."""
    parser = Parser(prog="vgray", description="Deep Visual Geo-localization Benchmark on a Ray cluster")
    parser.add_argument("--version", action="version", version=f"vgray {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    _pipeline_parsers(sub)
    _ray_parsers(sub)
    _results_parsers(sub)
    _datasets_parser(sub)

    p = sub.add_parser("bench", help="a benchmark; prints its ratio against a baseline run beside it")
    p.add_argument("name", help="benchmark name (vgray bench list)")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="the benchmark's own options")
    return parser


def _pipeline_parsers(sub) -> None:
    """synth, profile, eval, train: the pipeline's own commands."""
    p = sub.add_parser("synth", help="write a VG-format synthetic dataset")
    p.add_argument("out", help="output folder")
    p.add_argument("--preset", default="tiny", help="tiny, small, large or rsf (R-SF-sized: over a million images)")
    p.add_argument("--seed", type=seed(), default=0, help="seed of the synthetic world, 0 to 2**32-1")
    p.add_argument(
        "--address",
        help="render as Ray tasks on this cluster (auto or HOST:PORT; OUT on a file system every node "
        "sees), resumably: a re-run skips the finished chunks (default: a local Ray for rsf, "
        "else processes on this machine)",
    )
    p.add_argument("--num-cpus", type=count(), help="CPUs of a local Ray (default: all)")
    p.add_argument(
        "--layout",
        default="vg",
        help="vg (the VG format, every split) or gsv_cities (the train "
        "images as GSV-Cities: Dataframes/<city>.csv + Images/<city>/)",
    )

    p = sub.add_parser("profile", help="cost of a model: features_dim, gflops, model_size_mb, params, extraction_ms")
    _config_args(p)
    _json_arg(p)
    p.add_argument("--runs", type=count(), default=10, help="timed forward passes (after 3 warm-up ones)")

    p = sub.add_parser("eval", help="recall@N of a model on a dataset split, with its cost")
    _config_args(p)
    _json_arg(p)
    p.add_argument(
        "--save-descriptors",
        metavar="DIR",
        help="write DIR/database.parquet, DIR/queries.parquet, "
        "DIR/config.yaml and DIR/model.pt (what vgray locate reads)",
    )
    p.add_argument(
        "--save-predictions",
        type=count(),
        metavar="N",
        help="write PNG grids of the first N queries: "
        "the query, then its top-k (k = min(5, max recall value)) database images framed green when within "
        "test.positive_dist_threshold metres, red otherwise, the distance under each; into "
        "PREDICTIONS_DIR/predictions/<rank>_<query-file-stem>.png",
    )
    p.add_argument(
        "--predictions-failures-only",
        action="store_true",
        help="with --save-predictions: the first N queries whose top-1 is wrong",
    )
    p.add_argument(
        "--predictions-dir",
        metavar="PREDICTIONS_DIR",
        help="folder for predictions/ (default: the folder of --json, else the current folder)",
    )
    p.add_argument(
        "--address",
        help="join this Ray cluster (auto or HOST:PORT): a database above data.ray_threshold is extracted "
        "through Ray Data into parquet shards and searched there (Flat: sharded over actors; other test.knn: "
        "an index built from the shards)",
    )
    p.add_argument(
        "--shards",
        metavar="DIR",
        help="with --address: the shards' folder (re-runs skip complete shards; default: in the vgray cache)",
    )
    p.add_argument(
        "--shard-size", type=count(), default=10_000, help="with --address: images per shard (default 10000)"
    )

    p = sub.add_parser("train", help="train a model (the paper's protocol), then test the best one")
    _config_args(p)
    _json_arg(p)
    p.add_argument("--out", default=None, help="run folder (default: runs/<backbone>-<aggregation>-<mining>-s<seed>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument(
        "--address",
        help="join this Ray cluster (auto or HOST:PORT): mining refreshes, validation "
        "and test extract sets above data.ray_threshold through Ray Data (default: all in-process); "
        "with --workers: where the workers run (default: a local Ray)",
    )
    p.add_argument(
        "--workers",
        type=count(),
        default=None,
        help="data-parallel workers (Ray Train, DDP; the same as --set train.workers=N): the global batch "
        "split over them, the same optimisation as one worker with the whole batch",
    )
    p.add_argument(
        "--worker-cpus", type=amount(positive=True), default=1.0, help="with --workers: CPUs of each worker (default 1)"
    )
    p.add_argument(
        "--worker-gpus",
        type=amount(),
        default=None,
        help="with --workers: GPUs of each worker (default: 1 where the cluster has a GPU a worker and "
        "device is not cpu, else 0)",
    )


def _ray_parsers(sub) -> None:
    """sweep and extract: the commands that run on a Ray cluster."""
    p = sub.add_parser("sweep", help="run a sweep file as Ray Tune trials; prints the summary table")
    p.add_argument("sweep", help="sweep YAML (see sweeps/)")
    p.add_argument("--address", help="join this Ray cluster (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--storage", help="results folder shared by all nodes (overrides the file's storage)")
    p.add_argument("--resume", action="store_true", help="continue a sweep whose driver stopped")
    p.add_argument("--dry-run", action="store_true", help="print the expanded trials and run nothing")
    p.add_argument("--num-cpus", type=count(), help="CPUs of the local Ray (default: all)")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="print each trial's config, and Ray's and Tune's log "
        "lines on the console (default: in STORAGE/NAME/logs/ray.log)",
    )

    p = sub.add_parser(
        "extract", help="descriptors of a split through Ray Data, as parquet shards (re-runs skip complete ones)"
    )
    _config_args(p)
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output folder, readable by every node "
        "(DIR/<role>/shard-NNNNN.parquet, DIR/database.parquet, DIR/config.yaml, DIR/model.pt)",
    )
    p.add_argument("--split", default="test", help="dataset split (default test)")
    p.add_argument(
        "--role",
        dest="roles",
        action="append",
        choices=["database", "queries"],
        help="database and/or queries (repeatable; default both)",
    )
    p.add_argument("--shard-size", type=count(), default=1000, help="images per parquet shard (default 1000)")
    p.add_argument("--actors", type=count(), help="model actors (default: one per GPU, else half the CPUs)")
    p.add_argument("--batch-size", type=count(), help="images per batch (default test.batch_size)")
    p.add_argument(
        "--no-concat",
        action="store_true",
        help="write only the shards, not DIR/database.parquet "
        "and DIR/queries.parquet (their concatenation, which vgray locate reads)",
    )
    p.add_argument(
        "--index",
        metavar="SPEC",
        help="also make the database shards into this faiss index "
        "(index_factory string, e.g. IVF1024,PQ32: trained on a sample, filled shard by shard) "
        "in DIR/database.index.faiss",
    )
    p.add_argument("--address", help="join this Ray cluster (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--num-cpus", type=count(), help="CPUs of the local Ray (default: all)")


def _results_parsers(sub) -> None:
    """locate and report: what is made of saved descriptors and a sweep's results."""
    p = sub.add_parser("locate", help="where photos were taken: their top-k database matches and predicted position")
    p.add_argument("photos", nargs="+", metavar="PHOTO", help="image files to locate")
    p.add_argument(
        "--database",
        required=True,
        metavar="DIR",
        help="descriptors saved by vgray eval --save-descriptors DIR (with its config.yaml and model.pt)",
    )
    p.add_argument("--k", type=count(), default=5, help="database matches per photo (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of the table")

    p = sub.add_parser(
        "report",
        help="a sweep's results as the paper's tables (md, csv, tex), figures (png + csv) "
        "and report.html; works on a running sweep's folder",
    )
    p.add_argument(
        "results", metavar="RESULTS_DIR", help="a sweep's results folder (STORAGE/NAME, with results.parquet)"
    )
    p.add_argument("--out", help="where to write (default: RESULTS_DIR/report)")
    p.add_argument("--recall", default="1", help="recall values in the table, comma-separated (default 1; e.g. 1,5)")
    p.add_argument(
        "--figure",
        dest="figures",
        action="append",
        metavar="NAME",
        help="a figure that must be drawn (repeatable; exit 2 when the rows cannot give it): augmentation, "
        "resolution, matching_time, knn, pareto; every figure the rows allow is written anyway",
    )
    p.add_argument(
        "--predictions",
        type=count(),
        metavar="N",
        help="prediction grids of N queries from the best "
        "config's kept model (needs keep_models: true in the sweep YAML), shown in report.html",
    )
    p.add_argument("--failures-only", action="store_true", help="with --predictions: only queries whose top-1 is wrong")


def _load(args):
    from vgray.config import help_text, load_config

    if args.help_config:
        print(help_text())
        raise SystemExit(0)
    if getattr(args, "config", None) is not None:
        check_input(args.config, "--config")
    return load_config(getattr(args, "config", None), args.overrides)


def cmd_synth(args) -> None:
    """``vgray synth OUT``: write a VG-format synthetic dataset."""
    if args.layout not in ("vg", "gsv_cities"):
        raise BadInput(f"--layout {args.layout!r} is not allowed; choose vg or gsv_cities")
    if args.layout == "gsv_cities":
        if args.address:
            raise BadInput("--address renders the vg layout only; leave it out with --layout gsv_cities")
        from vgray.data.synthetic.gsv import generate_gsv_cities

        check_output_dir(args.out, "OUT")
        out = generate_gsv_cities(Path(args.out), preset=args.preset, seed=args.seed, progress=True)
        print(
            f"wrote the train images of synthetic dataset '{args.preset}' (seed {args.seed}) in the "
            f"GSV-Cities layout to {out}"
        )
        return
    from vgray.data.synthetic import PRESETS, check_preset, generate

    check_output_dir(args.out, "OUT")
    check_preset(args.preset, args.seed)
    if args.address or PRESETS[args.preset].ray:  # chunks as Ray tasks, resumable
        from vgray.distributed.synth import generate_on_ray

        out = generate_on_ray(Path(args.out), args.preset, args.seed, args.address, args.num_cpus)
    else:
        out = generate(Path(args.out), preset=args.preset, seed=args.seed, progress=True)
    print(f"wrote synthetic dataset '{args.preset}' (seed {args.seed}) to {out}")


def cmd_profile(args) -> None:
    """``vgray profile``: features_dim, gflops, model_size_mb, params and extraction_ms of a model."""
    cfg = _load(args)  # the checks first: a bad config or path is refused before torch is imported
    _check_json(args)
    from vgray.models.profile import profile

    figures = profile(cfg, runs=args.runs)
    h, w = cfg.data.image_size
    print_figures(figures, f"{cfg.model.backbone} + {cfg.model.aggregation} at {h}x{w}", args.json)


def cmd_eval(args) -> None:
    """``vgray eval``: recall@N of a model on a split with its cost; optionally descriptors and prediction grids."""
    n = args.save_predictions  # at least 1 (its type=)
    if n is None and (args.predictions_failures_only or args.predictions_dir):
        raise BadInput("--predictions-failures-only and --predictions-dir need --save-predictions N")
    _check_json(args)
    if args.save_descriptors:
        check_output_dir(args.save_descriptors, "--save-descriptors")
    if n is not None:
        check_output_dir(
            Path(args.predictions_dir or (Path(args.json).parent if args.json else ".")) / "predictions",
            "--predictions-dir" if args.predictions_dir else "the predictions folder",
        )
    if args.shards and not args.address:
        raise BadInput("--shards: the shards of a sharded evaluation; give --address too (auto or HOST:PORT)")
    if args.address:
        from vgray.distributed.synth import check_address

        check_address(args.address)
    cfg = _load(args)
    keep: Optional[Dict] = {} if n is not None else None
    if args.address:
        figures = _eval_sharded(args, cfg, keep)
    else:
        from vgray.evaluate.evaluate import evaluate  # after the checks: they need no torch

        figures = evaluate(cfg, save_descriptors=args.save_descriptors, keep=keep)
    h, w = cfg.data.image_size
    print_figures(
        figures,
        f"{cfg.model.backbone} + {cfg.model.aggregation} on {cfg.data.root} "
        f"[{cfg.test.split}] at {h}x{w}, kNN {cfg.test.knn}",
        args.json,
    )
    if keep is not None:
        from vgray.report.predictions import save_predictions

        base = Path(args.predictions_dir or (Path(args.json).parent if args.json else "."))
        written = save_predictions(
            keep["split"],
            keep["predictions"],
            keep["positives"],
            cfg.test.positive_dist_threshold,
            base / "predictions",
            n,
            k=min(5, max(cfg.test.recall_values)),
            failures_only=args.predictions_failures_only,
        )
        print(f"{len(written)} prediction grids in {base / 'predictions'}")


def _eval_sharded(args, cfg, keep: Optional[Dict]) -> Dict:
    """``vgray eval --address``: through shards (:mod:`vgray.distributed.sharded_eval`) when the
    database is above ``data.ray_threshold``, else in this process; the Ray cluster joined either way."""
    from vgray.data.dataset import open_split
    from vgray.distributed.sharded_eval import evaluate_sharded, uses_shards
    from vgray.distributed.sweep import init_ray
    from vgray.evaluate.evaluate import dataset_name, evaluate
    from vgray.paths import cache_dir

    split = open_split(cfg.data.root, cfg.test.split, cfg.data.msls_queries)
    split.check_positives(cfg.test.positives)  # before Ray starts and before any shard is written
    if not uses_shards(cfg, len(split.database)):
        init_ray(args.address)
        return evaluate(cfg, save_descriptors=args.save_descriptors, keep=keep)
    if args.save_descriptors:
        raise BadInput("--save-descriptors: a sharded evaluation's descriptors are its shards (--shards DIR)")
    from vgray.distributed.extract import prepare

    shards = Path(args.shards or cache_dir() / "eval-shards" / f"{dataset_name(cfg.data.root)}-{cfg.test.split}")
    check_output_dir(shards, "--shards")
    # Before Ray starts: the request (single-view test method, no PCA), the split, the network.
    prepared = prepare(cfg, cfg.test.split, shards, shard_size=args.shard_size, split=split)  # opened once
    init_ray(args.address)
    return evaluate_sharded(cfg, shards, prepared=prepared, shard_size=args.shard_size, keep=keep)


def cmd_train(args) -> None:
    """``vgray train``: train (or resume) a run in --out, then test its best model."""
    from vgray.config import load_config, read_yaml

    if args.resume and args.out and (Path(args.out) / "config.yaml").is_file() and not args.config:
        # The run's own config, with any --set on top (e.g. a higher train.epochs cap).
        cfg = load_config(base=read_yaml(Path(args.out) / "config.yaml"), overrides=args.overrides)
    else:
        cfg = _load(args)
    if args.workers is not None:  # at least 1 (its type=)
        cfg = cfg.replace(**{"train.workers": args.workers})
    out = Path(args.out or f"runs/{cfg.model.backbone}-{cfg.model.aggregation}-{cfg.train.mining}-s{cfg.seed}")
    check_output_dir(out, "--out")
    _check_json(args)
    if not args.resume and (out / "last.pt").exists():
        raise BadInput(
            f"--out {out} already holds a run (last.pt); pass --resume to continue it or choose another folder"
        )
    if cfg.train.workers > 1:
        figures = _train_group(cfg, out, args)
        print_figures(
            figures,
            f"trained {cfg.model.backbone} + {cfg.model.aggregation} ({cfg.train.mining} mining) "
            f"with {cfg.train.workers} workers in {out}",
            args.json,
        )
        return
    extractor = None
    if args.address:  # only when asked: never join some Ray found running on this machine
        from vgray.distributed.descriptors import RayExtractor
        from vgray.distributed.sweep import init_ray
        from vgray.evaluate.evaluate import check_before_extraction
        from vgray.models import build_model

        extractor = RayExtractor(cfg)  # its checks, and the network's, before Ray is joined
        check_before_extraction(cfg, build_model(cfg.model, load_weights=False, image_size=cfg.data.image_size))
        init_ray(args.address)
    from vgray.train.loop import train  # after the checks: they need no torch

    figures = train(cfg, out, resume=args.resume, extractor=extractor)
    print_figures(
        figures,
        f"trained {cfg.model.backbone} + {cfg.model.aggregation} ({cfg.train.mining} mining) in {out}",
        args.json,
    )


def _train_group(cfg, out: Path, args) -> dict:
    """``vgray train`` with ``train.workers`` > 1: Ray Train's group on a local Ray or ``--address``
    (:mod:`vgray.distributed.ddp`); every check that needs no Ray first, the group's fit to the
    nodes once Ray is up. Each epoch's line is printed as a one-process run prints it."""
    from vgray.distributed.ddp import WorkerShape, backend, run_group
    from vgray.distributed.sweep import alive_shapes, join_ray, local_ray, machine_shape
    from vgray.distributed.synth import check_address

    if args.address:
        check_address(args.address)
    local = local_ray(args.address)
    gpus = args.worker_gpus
    if gpus is None and local:
        gpus = 1.0 if cfg.device != "cpu" and machine_shape()["GPU"] >= cfg.train.workers else 0.0
    if gpus is not None:
        backend(cfg, WorkerShape(args.worker_cpus, gpus))  # NCCL without a GPU a worker: refused now
    if local:
        _check_group(cfg, WorkerShape(args.worker_cpus, gpus or 0.0), [machine_shape()], "this machine")
    join_ray(args.address)
    if gpus is None:  # a cluster: its GPUs decide
        gpus = 1.0 if cfg.device != "cpu" and sum(s["GPU"] for s in alive_shapes()) >= cfg.train.workers else 0.0
        backend(cfg, WorkerShape(args.worker_cpus, gpus))
    shape = WorkerShape(args.worker_cpus, gpus)
    _check_group(cfg, shape, alive_shapes(), "this cluster")

    def report(metrics, _out):
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))

    return run_group(cfg, out, shape, resume=args.resume, report=report)


def _check_group(cfg, shape, shapes, where: str) -> None:
    """The workers' bundles must fit ``shapes`` (the nodes of ``where``) at once."""
    from vgray.distributed.ddp import worker_bundles
    from vgray.distributed.sweep import describe_bundles, placeable, shapes_line

    bundles = worker_bundles(shape, cfg.train.workers)
    if not placeable(bundles, shapes):
        raise BadInput(
            f"train.workers={cfg.train.workers}: the group needs {describe_bundles(bundles)}, more than {where} "
            f"holds ({shapes_line(shapes)}); lower --workers, --worker-cpus or --worker-gpus, or pass --address"
        )


def cmd_sweep(args) -> int:
    """``vgray sweep``: run a sweep file on Ray and print its summary; 1 when a trial failed or storage
    stopped it, 128 + the signal (130, 143) when SIGINT or SIGTERM did; 2 when another run holds its folder."""
    from vgray.distributed.spec import check_dataset_roots, dry_run_table, load_sweep

    spec = load_sweep(check_input(args.sweep, "SWEEP"), storage=args.storage)
    if args.dry_run:  # the plan only: the datasets may live on the cluster it is meant for
        print(dry_run_table(spec))
        return 0
    if not args.address:
        check_dataset_roots(spec)
    from vgray.distributed.sweep import run_sweep

    result = run_sweep(spec, address=args.address, resume=args.resume, num_cpus=args.num_cpus, verbose=args.verbose)
    if result.get("interrupted"):  # stopped by a signal: not finished, no report; 130 (SIGINT), 143 (SIGTERM)
        if result["summary"]:
            print(result["summary"])
        again = f"vgray sweep {args.sweep}" + (" --resume" if result["resumable"] else "")
        print(
            f"vgray: sweep {spec.name} interrupted by {result['interrupted']}: {result['rows']} of "
            f"{result['planned']} rows kept in {result['directory']}; carry on with: {again}",
            file=sys.stderr,
        )
        return int(result["exit"])
    if result.get("storage"):  # stopped scheduling: the rows so far, then where and why on stderr
        print(result["summary"])
        print(
            f"vgray: sweep {spec.name} stopped: {result['storage']}; free space or fix the storage, "
            f"then run the same command with --resume",
            file=sys.stderr,
        )
        return 1
    print(f"\nsweep {spec.name}: {result['trials']} trials, results in {result['directory']}")
    print(result["summary"])
    from vgray.distributed.tracking import follow_lines

    for line in follow_lines(spec):  # TensorBoard on the sweep's folder; the MLflow UI on its store
        print(line)
    _sweep_report(spec.name, result["directory"])
    if result["failed"]:
        print(f"vgray: sweep {spec.name} finished with {result['failed']} failed trial(s)", file=sys.stderr)
        return 1
    return 0


def _sweep_report(name: str, directory: str) -> None:
    """A finished sweep's report (tables and figures, no prediction grids: ``vgray report`` draws
    those on demand): ``report: PATH/report.html``, or one stderr line saying why there is none,
    which does not fail the sweep."""
    from vgray.report import make_report

    try:
        page = make_report(directory).page
    except Exception as exc:  # the results are written; the report can be drawn again with vgray report
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        print(f"vgray: sweep {name}: report not written ({why}); try: vgray report {directory}", file=sys.stderr)
        return
    print(f"report: {page}")


def cmd_extract(args) -> None:
    """``vgray extract``: descriptors of a split through Ray Data, as parquet shards."""
    from vgray.distributed.extract import ROLES, extract, prepare
    from vgray.distributed.sweep import init_ray

    cfg = _load(args)
    check_output_dir(args.out, "--out")
    # Before Ray starts: the request, the dataset (a missing, empty or unnamed one; its index is
    # cached), the network built with its weights, the --index string; nothing written yet.
    prepared = prepare(
        cfg,
        args.split,
        args.out,
        roles=args.roles or ROLES,
        shard_size=args.shard_size,
        actors=args.actors,
        index=args.index,
        concat=not args.no_concat,
    )
    init_ray(args.address, num_cpus=args.num_cpus)
    figures = extract(
        cfg,
        args.split,
        args.out,
        roles=args.roles or ROLES,
        shard_size=args.shard_size,
        actors=args.actors,
        batch_size=args.batch_size,
        concat=not args.no_concat,
        index=args.index,
        prepared=prepared,
    )
    print_figures(
        figures, f"{cfg.model.backbone} + {cfg.model.aggregation} on {cfg.data.root} [{args.split}] -> {args.out}"
    )


def cmd_locate(args) -> None:
    """``vgray locate``: where photos were taken, from descriptors saved by ``vgray eval``."""
    from vgray.locate import format_table, locate

    check_input(args.database, "--database", "in_dir")
    for photo in args.photos:
        check_input(photo, "PHOTO")
    answer = locate(args.photos, args.database, k=args.k)
    print(json.dumps(answer, indent=2) if args.json else format_table(answer))


def cmd_report(args) -> None:
    """``vgray report``: a sweep's tables, figures and report.html."""
    from vgray.report import make_report

    try:
        recalls = count_list(args.recall, "--recall")  # the number door: integers of at most a C int
    except BadInput:
        recalls = []
    if not recalls or any(n < 1 for n in recalls):
        raise BadInput(f"--recall {args.recall!r} must be positive integers separated by commas, e.g. 1,5")
    check_input(args.results, "RESULTS_DIR", "in_dir")
    check_output_dir(args.out or Path(args.results) / "report", "--out")
    report = make_report(
        args.results,
        out=args.out,
        recalls=recalls,
        required=args.figures or (),
        predictions=args.predictions,
        failures_only=args.failures_only,
    )
    print(report.table_md, end="")
    for path in report.written:
        print(f"wrote {path}")
    for name, why in report.skipped.items():
        print(f"skipped figure {name}: {why}")
    print(report.progress)
    print(f"open {report.page}")


def cmd_datasets(args) -> int:
    """``vgray datasets list|check``: the catalog of known datasets; a folder's counts against it
    (1 when a published count disagrees)."""
    from vgray.data.catalog import catalog_lines, catalog_rows, check, check_lines

    if args.datasets_command == "list":
        rows = catalog_rows()
        print(json.dumps(rows, indent=2) if args.json else "\n".join(catalog_lines(rows)))
        return 0
    from vgray.console import progress_bar

    bars: Dict[str, tqdm[NoReturn]] = {}  # folder -> its progress bar

    def progress(what: str, seen: int) -> None:
        bar = bars.get(what)
        if bar is None:
            for done in bars.values():  # one folder at a time: one bar on the line
                done.close()
            bar = bars[what] = progress_bar(desc=f"indexing {what}", unit=" files")
        bar.update(seen - bar.n)

    check_spelled(args.root, "ROOT")  # a folder, FOLDER/NAME or IMAGES::LISTS: its characters and lengths
    try:
        report = check(
            args.root,
            name=args.name,
            progress=progress,
            positives=not args.no_positives,
            rule=args.positives,
            frames=args.positive_frames,
        )
    finally:
        for bar in bars.values():
            bar.close()
    print(json.dumps(report, indent=2) if args.json else "\n".join(check_lines(report)))
    if not report["agrees"]:
        print(
            f"vgray: {args.root}: counts differ from the published ones: {'; '.join(report['mismatches'])}",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_bench(args) -> None:
    """``vgray bench NAME``: run one benchmark (``vgray bench list`` names them)."""
    from vgray.bench import run_benchmark

    run_benchmark(args.name, args.rest)


COMMANDS = {
    "synth": cmd_synth,
    "profile": cmd_profile,
    "eval": cmd_eval,
    "train": cmd_train,
    "sweep": cmd_sweep,
    "extract": cmd_extract,
    "locate": cmd_locate,
    "report": cmd_report,
    "datasets": cmd_datasets,
    "bench": cmd_bench,
}


# The failures of a disk rather than of the input: full, over quota, turned read-only, refused.
_RUN_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EFBIG, errno.EIO})


def main(argv: Optional[List[str]] = None) -> int:
    """The ``vgray`` entry point: run one command; returns the exit status (0, 1 on a failure, 2 on bad input).
    Library warnings go to a log, not beside the command's output (:class:`~vgray.console.LibraryWarnings`)."""
    from vgray.console import LibraryWarnings

    warned = LibraryWarnings()
    try:
        with warned:
            args = build_parser().parse_args(argv)
            check_environment()  # the variables vgray and Ray read, once, before the command runs
            code = COMMANDS[args.command](args)
    except BadInput as exc:
        print(f"vgray: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head`
        return 0
    except OSError as exc:  # a disk filled or made read-only mid-run: one line, exit 1
        if exc.errno not in _RUN_ERRNOS:
            raise
        where = f"writing {exc.filename}: " if exc.filename else ""
        print(
            f"vgray: error: {where}{exc.strerror or exc}; free space or fix the disk, then run again", file=sys.stderr
        )
        return 1
    except (MemoryError, RuntimeError) as exc:  # the machine's memory ran out mid-run: one line, exit 1
        size = memory_failure(exc)
        if size is None:
            raise
        print(
            f"vgray: error: out of memory{size}; give smaller sizes (data.resize, test.batch_size, "
            f"train.batch_size, train.places_per_batch, data.num_workers) or run where there is more memory",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("vgray: interrupted", file=sys.stderr)
        return 130
    warned.summary()
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
