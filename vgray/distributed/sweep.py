"""``vgray sweep``: a sweep file run as Ray Tune trials, rows gathered by the results actor.

The trainable turns Tune's dict into the validated config and calls the library: ``train`` (with a
``report`` callback that forwards each epoch's metrics and the run folder as a Tune checkpoint) or
``evaluate``. The training loop and evaluation know nothing of Ray.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

from vgray.distributed.spec import SweepSpec, trial_name
from vgray.errors import BadInput

COST_KEYS = ("features_dim", "gflops", "model_size_mb", "params", "extraction_ms", "matching_ms",
             "index_memory_mb", "train_time_s", "epochs", "database", "queries")  # sizes: Fig. 4a's x axis


# -- inside a trial ------------------------------------------------------------------------------

def make_row(cfg, trial_id: str, name: str, result: Dict[str, Any], status: str = "ok", error: str = "") -> Dict:
    """One results row: the flattened config, ids, status and the metrics."""
    row: Dict[str, Any] = {k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v))
                           for k, v in cfg.flat().items()}
    row.update({"trial_id": trial_id, "trial_name": name, "config_key": cfg.key(), "seed": cfg.seed,
                "status": status, "error": error})
    for k, v in result.items():
        if k.startswith(("val/", "test/")) or k in COST_KEYS:
            row[k] = v
    return row


def _eval_result(cfg) -> Dict[str, Any]:
    """task: eval: recall on the test split(s) and the whole cost profile."""
    from vgray.distributed.descriptors import trial_extractor
    from vgray.evaluate.evaluate import evaluate
    from vgray.evaluate.extract import Runtime
    from vgray.models.profile import extraction_ms
    from vgray.train.loop import dataset_name

    sets = cfg.test.datasets or {dataset_name(cfg.data.root): cfg.data.root}
    out: Dict[str, Any] = {}
    model = None
    out["ray_data_images"] = 0
    for name, root in sets.items():
        one = cfg.replace(**{"data.root": root})
        # Test sets above data.ray_threshold go through Ray Data in the trial's placement group.
        extractor = trial_extractor(one, log=lambda *a: None)
        if model is None:
            from vgray.models import build_model
            from vgray.seeding import seed_everything
            seed_everything(cfg.seed)
            model = build_model(cfg.model, image_size=cfg.data.image_size)
        figures = evaluate(one, progress=False, model=model, extractor=extractor)
        out["ray_data_images"] += extractor.images_through_ray if extractor is not None else 0
        out.update({f"test/{name}/{k}": v for k, v in figures.items() if k.startswith("R@")})
        out.update({k: v for k, v in figures.items() if k in COST_KEYS and k not in out})
    out["extraction_ms"] = extraction_ms(model, cfg.data.image_size, Runtime.from_config(cfg, progress=False))
    return out


def run_trial(config: Dict[str, Any]) -> None:
    """The Tune trainable: ``config`` holds the sweep's base config, this trial's dotted overrides
    and its seeds. Each seed runs in turn; its row goes to the results actor before the next."""
    import numpy as np
    import ray
    from ray import tune

    from vgray.config import load_config
    from vgray.distributed.results import ACTOR_NAMESPACE, actor_name

    ctx = tune.get_context()
    trial_id = ctx.get_trial_id()
    overrides = {k: v for k, v in config["overrides"].items()}
    overrides.update({k: (int(v) if isinstance(v, np.integer) else float(v) if isinstance(v, np.floating) else v)
                      for k, v in config.items() if "." in k})  # search-space keys sampled by Tune
    seeds: List[int] = list(config["seeds"])
    work = Path(tempfile.mkdtemp(prefix=f"vgray-{trial_id}-"))
    done: Dict[int, Dict[str, Any]] = {}
    resume_seed = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # a retry or a resumed sweep: continue from the last epoch
        with checkpoint.as_directory() as d:
            shutil.copytree(d, work, dirs_exist_ok=True)
        state = _read_json(work / "trial.json")
        done = {int(k): v for k, v in state.get("done", {}).items()}
        resume_seed = state.get("running")
    actor = ray.get_actor(actor_name(config["sweep"]), namespace=ACTOR_NAMESPACE)
    if config.get("after"):  # the second stage: start from the model a first-stage trial left
        overrides["model.resume_from"] = _fetch_model(config["directory"], config["after"], work)
    name = config.get("name") or trial_name({k: overrides[k] for k in config.get("varied", []) if k in overrides}, None)

    through_ray = 0
    for seed in seeds:
        if seed in done:
            continue
        cfg = load_config(base=config["base"], overrides=[*overrides.items(), ("seed", seed)])
        run_dir = work / f"s{seed}"
        row_id = trial_id if len(seeds) == 1 else f"{trial_id}-s{seed}"

        def report(metrics, out_dir, seed=seed):
            _write_json(work / "trial.json", {"done": done, "running": seed})
            through_ray = {"ray_data_images": extractor.images_through_ray} if extractor is not None else {}
            tune.report({**metrics, **through_ray, "seed": seed}, checkpoint=tune.Checkpoint.from_directory(str(work)))

        if config["task"] == "train":
            from vgray.distributed.descriptors import trial_extractor
            from vgray.train.loop import train
            resume = resume_seed == seed and (run_dir / "last.pt").is_file()
            # Mining refreshes, validation and the test of sets above data.ray_threshold go through
            # Ray Data, inside this trial's placement group (its extraction bundle).
            extractor = trial_extractor(cfg, log=lambda *a: None)
            result = train(cfg, run_dir, report=report, resume=resume, progress=False, log=lambda *a: None,
                           extractor=extractor)
        else:
            result = _eval_result(cfg)
            through_ray += result["ray_data_images"]
        row = make_row(cfg, row_id, name if len(seeds) == 1 else f"{name}-s{seed}", result)
        if config.get("keep_model") and config["task"] == "train":
            _keep_model(config["directory"], row["trial_name"], run_dir / "best.pt")
        ray.get(actor.add.remote(row))  # durable on disk before we go on
        done[seed] = {k: v for k, v in row.items() if k.startswith(("val/", "test/"))}
        if config["task"] == "train":
            shutil.rmtree(run_dir, ignore_errors=True)  # the row holds what matters; free the disk
    final = _mean_metrics(done)
    if config["task"] == "eval":
        final["ray_data_images"] = through_ray  # images this run extracted through Ray Data
    final["vgray_finished"] = 1  # (Tune fills a "done" key of its own)
    _write_json(work / "trial.json", {"done": done, "running": None})
    tune.report(final, checkpoint=tune.Checkpoint.from_directory(str(work)))
    shutil.rmtree(work, ignore_errors=True)


def _keep_model(directory: str, name: str, best: Path) -> None:
    """``STORAGE/NAME/models/<trial>.pt``: the best model with its config and scores (no optimizer
    or mining state), written before the trial's row so that a row means its model is there."""
    import io

    import torch

    from vgray.distributed.results import Storage
    from vgray.train.checkpoint import load
    ck = load(best)
    slim = {k: v for k, v in ck.items() if k in ("config", "model", "epoch", "best_r5", "history")}
    buffer = io.BytesIO()
    torch.save(slim, buffer)
    Storage(directory).write_bytes(f"models/{name}.pt", buffer.getvalue())


def _fetch_model(directory: str, name: str, work: Path) -> str:
    """A local path to the model trial ``name`` kept; an error when it left none."""
    from vgray.distributed.results import Storage
    storage = Storage(directory)
    key = f"models/{name}.pt"
    if not storage.exists(key):
        raise RuntimeError(f"model.resume_from: trial {name} left no model in {storage.path('models')} "
                           f"(it failed or was stopped early); this trial starts from it")
    if not storage.uri:
        return storage.path(key)
    local = work / f"from-{name}.pt"
    local.write_bytes(storage.read_bytes(key))
    return str(local)


def _mean_metrics(done: Dict[int, Dict[str, Any]]) -> Dict[str, float]:
    """What the searcher sees: every metric averaged over the trial's seeds."""
    keys = {k for m in done.values() for k in m}
    out = {}
    for k in sorted(keys):
        vals = [m[k] for m in done.values() if isinstance(m.get(k), (int, float))]
        if vals:
            out[k] = sum(vals) / len(vals)
    return out


def _write_json(path: Path, obj) -> None:
    import json

    from vgray.atomic import write_text
    write_text(path, json.dumps(obj))


def _read_json(path: Path):
    import json
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# -- the driver --------------------------------------------------------------------------------

def storage_problem(directory: str) -> Optional[str]:
    """None when a small file can be written (and removed) in ``directory``; else the reason."""
    from vgray.distributed.results import Storage
    probe = f".write-test-{os.getpid()}"
    try:
        storage = Storage(directory)
        storage.write_bytes(probe, b"ok")
        if storage.uri:
            storage.fs.delete_file(storage.path(probe))
        else:
            os.unlink(storage.path(probe))
    except (OSError, ValueError) as exc:  # pyarrow raises OSError subclasses, ValueError for bad URIs
        return getattr(exc, "strerror", None) or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return None


def _check_storage(spec: SweepSpec) -> None:
    """The sweep's folder must be writable before anything launches."""
    reason = storage_problem(spec.directory)
    if reason:
        raise BadInput(f"storage={spec.storage}: {spec.directory} cannot be written ({reason})")


def _check_resources(spec: SweepSpec) -> None:
    import ray
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    need = {"CPU": spec.resources.get("cpu", 1), "GPU": spec.resources.get("gpu", 0),
            "memory": spec.resources.get("memory_gb", 0) * 2**30}
    for node in nodes:
        have = node.get("Resources", {})
        if all(have.get(k, 0) >= v for k, v in need.items() if v):
            return
    biggest = max((n.get("Resources", {}) for n in nodes), key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)), default={})
    raise BadInput(f"resources {spec.resources} fit no node of this cluster (largest: {int(biggest.get('CPU', 0))} CPU, "
                   f"{int(biggest.get('GPU', 0))} GPU); lower resources.cpu/gpu or add bigger nodes")


def _param_space(spec: SweepSpec, stage: Optional[List] = None) -> Dict[str, Any]:
    from ray import tune
    common = {"base": spec.base, "task": spec.task, "sweep": spec.name, "varied": spec.varied,
              "directory": spec.directory}
    if not spec.search:
        trials = [{"overrides": t.overrides, "seeds": t.seeds, "name": t.name, "after": t.after,
                   "keep_model": spec.keeps_model(t)} for t in (spec.trials() if stage is None else stage)]
        return {**common, "trial": tune.grid_search(trials)}
    space: Dict[str, Any] = {**common, "overrides": {}, "seeds": list(range(spec.repeats)), "name": None}
    for key, dim in spec.search["space"].items():
        if dim["type"] == "categorical":
            space[key] = tune.choice(dim["choices"])
        elif dim["type"] == "float":
            space[key] = (tune.loguniform if dim.get("log") else tune.uniform)(dim["low"], dim["high"])
        else:
            space[key] = (tune.lograndint if dim.get("log") else tune.randint)(int(dim["low"]), int(dim["high"]) + 1)
    for key, values in spec.grid.items():  # the grid on top of a search: categorical dimensions
        space[key] = tune.choice(values)
    return space


def _flatten_trial(config: Dict[str, Any]) -> Dict[str, Any]:
    """Grid mode nests the trial under ``trial``; the trainable wants it at the top."""
    if "trial" in config:
        config = {**config, **config["trial"]}
        config.pop("trial")
    return config


def _trainable(config):
    return run_trial(_flatten_trial(config))


def _name_of(trial) -> str:
    config = _flatten_trial(trial.config)
    if config.get("name"):
        return config["name"]
    varied = {k: config[k] for k in config.get("varied", []) if k in config}
    return f"{trial_name(varied, None)}-{trial.trial_id[-5:]}"


def _dirname_of(trial) -> str:
    """The trial's folder: its name and Tune's trial id (so a failed trial's id can be read back)."""
    return f"{_name_of(trial)}_{trial.trial_id}"


def _scheduler(spec: SweepSpec):
    if not spec.scheduler or spec.scheduler["type"] == "fifo":
        return None
    from ray.tune.schedulers import ASHAScheduler
    s = spec.scheduler
    return ASHAScheduler(time_attr="training_iteration", metric=s.get("metric", "val/R@5"), mode=s.get("mode", "max"),
                         grace_period=s.get("grace_period", 1), reduction_factor=s.get("reduction_factor", 2),
                         # one report an epoch, plus the final one with the test figures
                         max_t=s.get("max_t", _max_epochs(spec) + 1))


def _max_epochs(spec: SweepSpec) -> int:
    from vgray.config import load_config
    return max((t.config(spec, 0).train.epochs for t in spec.trials()),
               default=load_config(base=spec.base).train.epochs)


def _searcher(spec: SweepSpec):
    if not spec.search:
        return None
    import optuna
    from ray.tune.search.optuna import OptunaSearch
    s = spec.search
    sampler = (optuna.samplers.RandomSampler(seed=s["seed"]) if s["sampler"] == "random"
               else optuna.samplers.TPESampler(seed=s["seed"]))
    return OptunaSearch(metric=s["metric"], mode=s["mode"], sampler=sampler)


def init_ray(address: Optional[str], num_cpus: Optional[int] = None) -> Optional[str]:
    """Join ``address`` (or ``RAY_ADDRESS``), else start a local Ray with the dashboard on
    127.0.0.1. Token authentication stays as Ray sets it (on by default). Returns the dashboard URL."""
    import ray
    if ray.is_initialized():
        return None
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ctx = ray.init(address=address, namespace="vgray", log_to_driver=False)
    else:
        # address="local": a new Ray of our own, never a `ray start` cluster found on this machine
        ctx = ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                       namespace="vgray", log_to_driver=False)
    url = getattr(ctx, "dashboard_url", None)
    return f"http://{url}" if url and not url.startswith("http") else url


def run_sweep(spec: SweepSpec, address: Optional[str] = None, resume: bool = False,
              num_cpus: Optional[int] = None, out=print) -> Dict[str, Any]:
    """Run (or resume) ``spec`` on Ray; returns ``{"summary": markdown, "failed": n, ...}``."""
    import ray
    from ray import tune

    from vgray.distributed.results import get_results_actor
    from vgray.distributed.storage_watch import STORAGE_TROUBLE

    _check_storage(spec)
    from vgray.distributed.results import Storage
    exists = Storage(spec.directory).exists("tuner.pkl")
    if resume and not exists:
        raise BadInput(f"--resume: no sweep to resume in {spec.directory} (no tuner.pkl)")
    if not resume and exists:
        raise BadInput(f"{spec.directory} already holds sweep '{spec.name}'; pass --resume to continue it, "
                       f"or --storage elsewhere")
    url = init_ray(address, num_cpus)
    _check_resources(spec)
    if url:
        out(f"Ray dashboard: {url}")
    actor = get_results_actor(spec.name, spec.directory, spec.varied)
    ray.get(actor.rows.remote())  # the actor is up (and has reloaded any earlier rows)
    write_plan(spec, url)

    from vgray.distributed.descriptors import trial_resources
    # Per trial: a placement group of the trainer's bundle and, when it may use Ray Data, an
    # extraction bundle that its Ray Data tasks and actors run in.
    trainable = tune.with_resources(_trainable, trial_resources(spec))
    stages = [None] if spec.search else spec.stages()
    failed = trials = 0
    for number, stage in enumerate(stages):
        # The first stage is Tune's experiment STORAGE/NAME; a second one (trials that start from a
        # first-stage model) is STORAGE/NAME/stage2, started once the first has ended.
        storage_path, name = (spec.storage_path, spec.name) if number == 0 else (spec.directory, f"stage{number + 1}")
        if number and len(stages) > 1:
            out(f"sweep {spec.name}: stage {number + 1}, {len(stage)} trials starting from first-stage models")
        if resume and Storage(f"{storage_path.rstrip('/')}/{name}").exists("tuner.pkl"):
            from vgray.distributed.storage_watch import repair_tune_state
            for state in repair_tune_state(f"{storage_path.rstrip('/')}/{name}"):  # cut short by a full disk
                out(f"sweep {spec.name}: {state} was cut short; put back its last whole copy")
            tuner = tune.Tuner.restore(f"{storage_path.rstrip('/')}/{name}", trainable,
                                       resume_unfinished=True, resume_errored=True)
        else:
            tuner = _new_tuner(spec, trainable, stage, storage_path, name)
        try:
            grid = tuner.fit()
        except Exception:  # Tune's own writes of the experiment state may be the first to fail
            reason = storage_problem(spec.directory)
            if not reason:
                raise
            STORAGE_TROUBLE.setdefault(spec.directory, reason)
        if spec.directory in STORAGE_TROUBLE:  # rows for unfinished trials would be wrong: they resume
            rows = ray.get(actor.rows.remote())
            return {"summary": ray.get(actor.summary_markdown.remote()), "failed": 0, "directory": spec.directory,
                    "trials": len(rows), "storage": f"{spec.directory} cannot be written "
                    f"({STORAGE_TROUBLE[spec.directory]}); {len(rows)} row(s) kept in results.parquet"}
        failed += _rows_for_unfinished(grid, actor)
        trials += len(grid)
    summary = ray.get(actor.summary_markdown.remote())
    write_plan(spec, url, finished=True)
    return {"summary": summary, "failed": failed, "directory": spec.directory, "trials": trials}


PLAN = "plan.json"
DEFAULT_DASHBOARD = "http://127.0.0.1:8265"


def write_plan(spec: SweepSpec, dashboard: Optional[str], finished: bool = False) -> None:
    """``STORAGE/NAME/plan.json`` (written atomically): how many rows the sweep will write (one per
    config and seed), the keys it varies, whether its driver has ended, and the Ray dashboard's
    URL; ``vgray report`` reads it to say how far a running sweep has come (and to show the varied
    columns while the rows written so far do not differ in them yet)."""
    import json
    import time

    from vgray.distributed.results import Storage
    storage = Storage(spec.directory)
    old = {}
    if storage.exists(PLAN):
        try:
            old = json.loads(storage.read_bytes(PLAN))
        except ValueError:
            old = {}
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    plan = {"sweep": spec.name, "task": spec.task, "trials": spec.num_trials * (spec.repeats if spec.search else 1),
            "varied": spec.varied,
            "keep_models": spec.keep_models, "dashboard": dashboard or old.get("dashboard") or DEFAULT_DASHBOARD,
            "started": old.get("started", now),
            "finished": now if finished else None}
    storage.write_bytes(PLAN, json.dumps(plan, indent=1).encode())


def _new_tuner(spec: SweepSpec, trainable, stage, storage_path: str, name: str):
    from ray import tune

    from vgray.distributed.storage_watch import StorageWatch
    metric = spec.search["metric"] if spec.search else None
    return tune.Tuner(
        trainable,
        param_space=_param_space(spec, stage),
        tune_config=tune.TuneConfig(
            num_samples=spec.search["num_samples"] if spec.search else 1,
            search_alg=_searcher(spec), scheduler=_scheduler(spec),
            metric=metric if spec.search and not spec.scheduler else None,
            mode=spec.search["mode"] if spec.search and not spec.scheduler else None,
            max_concurrent_trials=spec.max_concurrent_trials,
            reuse_actors=True,  # a worker that imported torch and vgray serves the next trial too
            trial_name_creator=_name_of, trial_dirname_creator=_dirname_of),
        run_config=tune.RunConfig(
            name=name, storage_path=storage_path,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            callbacks=[StorageWatch(spec.directory)],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=1),
    )


def _rows_for_unfinished(grid, actor) -> int:
    """Trials that ended without their rows get one: ``failed`` (after their retries) with the
    first line of the error, ``stopped`` (by ASHA) with their last validation metrics.
    Returns the number of failed trials."""
    import ray

    from vgray.config import load_config
    failed = 0
    for result in grid:
        metrics = result.metrics or {}
        if result.error is None and metrics.get("vgray_finished"):
            continue
        config = _flatten_trial(result.config or {})
        overrides = dict(config.get("overrides", {}))
        overrides.update({k: v for k, v in config.items() if "." in k})
        seeds = config.get("seeds", [0])
        trial_id = metrics.get("trial_id") or Path(result.path).name.rsplit("_", 1)[-1]
        if result.error is not None:
            failed += 1
            lines = [m for m in str(result.error).strip().splitlines() if m.strip()]
            error = next((m for m in reversed(lines) if not m.startswith((" ", "Traceback"))), type(result.error).__name__)
            status, values = "failed", {}
        else:
            status, error, values = "stopped", "", {k: v for k, v in metrics.items() if k.startswith("val/")}
        for seed in seeds:
            cfg = load_config(base=config["base"], overrides=[*overrides.items(), ("seed", seed)])
            row_id = trial_id if len(seeds) == 1 else f"{trial_id}-s{seed}"
            ray.get(actor.add.remote(make_row(cfg, row_id, config.get("name") or trial_id, values,
                                              status=status, error=error[:300])))
    return failed
