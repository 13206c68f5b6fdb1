"""Sweep files: one YAML per study, expanded into trials, and the trial codec to and from Tune's
dict. No Ray here: a sweep is checked and expanded (``--dry-run``) before anything starts.

```yaml
name: table3_backbones
base: {data: {...}, model: {...}, train: {...}, test: {...}}   # or base: path/to/config.yaml
task: train                  # or eval: evaluation only (kNN and off-the-shelf studies)
grid: {model.backbone: [vgg16, resnet18conv4], model.aggregation: [gem, netvlad]}
variants:                    # optional: rows that set several keys together, crossed with the grid
  - {model.aggregation: gem, model.fc_output_dim: 2048}
  - {model.aggregation: netvlad, model.pca_dim: 2048}
repeats: 3                   # seeds 0..2 of every grid point
# A trial may start from another trial's trained model (CRN from NetVLAD): model.resume_from:
# trial:NAME (NAME without the seed), or trial:model.aggregation=netvlad (the trial at the same grid
# point with that variant) runs it in a second stage, after the first stage's trials, from that
# trial's model of the same seed, kept in STORAGE/NAME_OF_SWEEP/models/.
keep_models: false           # keep every trial's best model there (those depended on are always kept)
search: {algorithm: optuna, space: {...}, num_samples: 20, metric: val/R@5, mode: max}
scheduler: {type: asha, grace_period: 1}
resources: {cpu: 4, gpu: 1}     # the trainer; plus extract_cpu (default 1) / extract_gpu for Ray Data
storage: ~/vgray_results
max_failures: 2
loggers: [mlflow]            # optional: an MLflow run per trial (TensorBoard and Tune's CSV/JSON are always on)
mlflow: {tracking_uri: sqlite:///path/mlflow.db, experiment: NAME}   # default: STORAGE/NAME/mlflow.db, the name
```

The sections with fixed keys (the options at the top, ``search``, each dimension of its ``space``,
``scheduler``, ``resources``, ``mlflow``) are typed frozen dataclasses, built and checked by the config's own
machinery (:func:`vgray.config.build_checked`); ``base``, ``grid`` and ``variants`` hold config keys
and are checked against the config.

The trial codec: :func:`param_space` writes a sweep's trials into Tune's dict, :func:`decode_trial`
reads one trial back from it (grid trials nested under :data:`GRID_KEY`, sampled search keys at the
top) as a :class:`TrialParams`, whose :meth:`TrialParams.config` is the validated config.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from vgray.config import Config, all_keys, build_checked, load_config, parse_yaml, read_yaml
from vgray.errors import BadInput, shown
from vgray.paths import check_path

MAX_TRIALS = 100_000  # planned trials of one sweep (a grid of 10^5 is a mistake, not a study)
LOGGERS = ("mlflow",)  # trackers a sweep may feed beside Tune's own CSV, JSON and TensorBoard logs
TRIAL_REF = "trial:"  # model.resume_from: trial:NAME, the model another trial of the sweep trains
METRICS_PREFIXES = ("val/R@", "test/")
GRID_KEY = "trial"  # where a grid trial's entry sits in Tune's dict (the key of its grid_search)


def _field(default, help: str, **checks):
    """A field of a sweep section: default, one line of help, and the config's checks
    (``choices``, ``positive``, ``range``)."""
    meta = {"help": help, **checks}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Options:
    """The sweep's top-level keys with fixed types."""

    name: Optional[str] = _field(None, "the study's name: a word of letters, digits, '.', '_' or '-'")
    task: str = _field("train", "train, or eval (evaluation only)", choices=["train", "eval"])
    repeats: int = _field(1, "seeds 0..repeats-1 of every grid point", range=(1, 1000))
    storage: str = _field("~/vgray_results", "folder or URI (s3://..., gs://...) every node reaches")
    max_failures: int = _field(0, "retries of a failed trial (-1: forever)", range=(-1, 2**31 - 1))
    max_concurrent_trials: Optional[int] = _field(
        None, "trials running at once (null: as resources allow)", positive=True
    )
    keep_models: bool = _field(False, "keep every trial's best model in STORAGE/NAME/models/")
    loggers: List[str] = _field([], "experiment trackers fed beside TensorBoard: mlflow")


@dataclass(frozen=True)
class MLflow:
    """``mlflow``: where ``loggers: [mlflow]`` writes its runs (one per trial)."""

    tracking_uri: Optional[str] = _field(None, "MLflow tracking URI (default: sqlite:///STORAGE/NAME/mlflow.db)")
    experiment: Optional[str] = _field(None, "the MLflow experiment (default: the sweep's name)")


@dataclass(frozen=True)
class Dimension:
    """One dimension of a search space: a float or int range, or categorical ``choices``."""

    type: Optional[str] = _field(None, "float, int or categorical", choices=["float", "int", "categorical"])
    low: Optional[float] = _field(None, "lowest value of a float or int range")
    high: Optional[float] = _field(None, "highest value of a float or int range")
    log: bool = _field(False, "sample the range on a log scale")
    choices: Optional[List[Any]] = _field(None, "the values of a categorical dimension")  # any YAML values


@dataclass(frozen=True)
class Search:
    """``search``: an Optuna search instead of (or on top of) the grid."""

    algorithm: str = _field("optuna", "the search algorithm", choices=["optuna"])
    num_samples: int = _field(10, "sampled trials (each runs every seed)", range=(1, 100_000))
    metric: str = _field("val/R@5", "what the search optimises: val/R@N or test/<dataset>/R@N")
    mode: str = _field("max", "max or min", choices=["max", "min"])
    sampler: str = _field("tpe", "Optuna's sampler", choices=["tpe", "random"])
    seed: int = _field(0, "the sampler's seed", range=(0, 2**32 - 1))
    space: Dict[str, Dimension] = _field({}, "dotted config key -> dimension")


@dataclass(frozen=True)
class Scheduler:
    """``scheduler``: FIFO, or ASHA stopping the worse training trials early."""

    type: Optional[str] = _field(None, "asha or fifo", choices=["asha", "fifo"])
    grace_period: int = _field(1, "ASHA: epochs before a trial may be stopped", positive=True)
    reduction_factor: float = _field(2.0, "ASHA: the fraction kept at each rung is 1/reduction_factor", positive=True)
    max_t: Optional[int] = _field(
        None, "ASHA: the last rung (null: the largest train.epochs, plus the test)", positive=True
    )
    metric: str = _field("val/R@5", "ASHA: the metric compared at each rung")
    mode: str = _field("max", "max or min", choices=["max", "min"])


@dataclass(frozen=True)
class Resources:
    """``resources`` of one trial (fractions allowed): its trainer, and its Ray Data extraction
    bundle (``extract_cpu``, default 1, and ``extract_gpu``; see vgray.distributed.descriptors)."""

    cpu: float = _field(1.0, "CPUs of the trainer", range=(0, math.inf))
    gpu: float = _field(0.0, "GPUs of the trainer", range=(0, math.inf))
    memory_gb: Optional[float] = _field(None, "memory of the trainer", range=(0, math.inf))
    extract_cpu: Optional[float] = _field(None, "CPUs of the extraction bundle", range=(0, math.inf))
    extract_gpu: Optional[float] = _field(None, "GPUs of the extraction bundle", range=(0, math.inf))
    workers: Optional[int] = _field(
        None,
        "data-parallel workers of each trial (Ray Train; sets train.workers; cpu, gpu and memory_gb are then "
        "per worker)",
        positive=True,
    )
    strategy: Optional[str] = _field(
        None,
        "with workers > 1: how a trial's workers go on nodes, PACK (default) or SPREAD",
        choices=["PACK", "SPREAD"],
    )

    def as_dict(self) -> Dict[str, float]:
        """The keys that are set (the form :func:`vgray.distributed.descriptors.trial_bundles` takes)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


_OPTION_HELP = {f.name: f.metadata["help"] for f in dataclasses.fields(Options)}
# Every top-level key of a sweep file with one line of help, in the order refusals list them: the
# unknown-key check reads it, and so does the reference page (docs/gen_reference.py).
TOP_KEYS: Dict[str, str] = {
    "name": _OPTION_HELP["name"],
    "base": "the config every trial starts from: config sections, or a config file's path (relative to the sweep file)",
    "task": _OPTION_HELP["task"],
    "grid": "dotted config key -> list of values; one trial per point of their cartesian product",
    "variants": "rows of dotted config keys set together, crossed with the grid",
    "repeats": _OPTION_HELP["repeats"],
    "search": "an Optuna search instead of (or on top of) the grid",
    "scheduler": "FIFO, or ASHA stopping the worse training trials early",
    "resources": "CPUs, GPUs and memory of one trial, and of its Ray Data extraction bundle",
    "storage": _OPTION_HELP["storage"],
    "max_failures": _OPTION_HELP["max_failures"],
    "max_concurrent_trials": _OPTION_HELP["max_concurrent_trials"],
    "keep_models": _OPTION_HELP["keep_models"],
    "loggers": _OPTION_HELP["loggers"],
    "mlflow": "where loggers: [mlflow] writes its runs (one per trial)",
}


@dataclass
class Trial:
    """One trial: dotted overrides on top of the base config, and the seeds it runs."""

    name: str
    overrides: Dict[str, Any]
    seeds: List[int]
    after: Optional[str] = None  # the trial (with its seed) whose model this one starts from

    def config(self, spec: "SweepSpec", seed: int) -> Config:
        """The validated config of this trial's ``seed``; a second-stage trial's ``model.resume_from``
        stays the sweep's ``trial:`` reference (the file exists only once its first stage has run)."""
        return load_config(base=spec.base, overrides=[*self.overrides.items(), ("seed", seed)])


@dataclass
class SweepSpec:
    name: str
    base: Dict[str, Any]
    task: str = "train"
    grid: Dict[str, List[Any]] = field(default_factory=dict)
    variants: List[Dict[str, Any]] = field(default_factory=list)
    repeats: int = 1
    search: Optional[Search] = None
    scheduler: Optional[Scheduler] = None
    resources: Dict[str, float] = field(default_factory=lambda: {"cpu": 1.0, "gpu": 0.0})
    storage: str = "~/vgray_results"
    max_failures: int = 0
    max_concurrent_trials: Optional[int] = None
    keep_models: bool = False
    loggers: List[str] = field(default_factory=list)
    mlflow: Optional[MLflow] = None  # set exactly when loggers holds mlflow
    source: str = "<dict>"
    # Each trial's first-seed config as parsing checked it (trial name -> Config), for the checks
    # that follow (check_dataset_roots) to read rather than rebuild.
    checked: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    # -- derived ---------------------------------------------------------------------------
    @property
    def storage_path(self) -> str:
        return self.storage if "://" in self.storage else str(Path(os.path.expanduser(self.storage)).resolve())

    @property
    def directory(self) -> str:
        """``STORAGE/NAME``: Tune's experiment folder and the results files."""
        return f"{self.storage_path.rstrip('/')}/{self.name}"

    @property
    def varied(self) -> List[str]:
        """The dotted keys the study varies (the columns of its table)."""
        keys = list(self.grid)
        for variant in self.variants:
            keys += [k for k in variant if k not in keys]
        return keys + [k for k in (self.search.space if self.search else {}) if k not in keys]

    def trials(self) -> List[Trial]:
        """Grid mode: one trial per (grid point, seed). Search mode: none here; each sampled trial
        runs every seed, the grid's keys categorical dimensions of the search (:func:`param_space`)."""
        if self.search:
            return []
        keys = list(self.grid)
        points = list(itertools.product(*(self.grid[k] for k in keys))) if keys else [()]
        out = []
        for point, variant in itertools.product(points, self.variants or [{}]):
            overrides = {**dict(zip(keys, point)), **variant}
            target = _target(
                overrides.get("model.resume_from", self.base.get("model", {}).get("resume_from")),
                dict(zip(keys, point)),
            )
            for seed in range(self.repeats):
                out.append(
                    Trial(trial_name(overrides, seed), overrides, [seed], after=f"{target}-s{seed}" if target else None)
                )
        # Trials that start from another's model come last: the second stage.
        return [t for t in out if not t.after] + [t for t in out if t.after]

    def stages(self) -> List[List[Trial]]:
        """The trials in the order they can run: those that start from another trial's model wait
        for the first stage to end."""
        trials = self.trials()
        return [s for s in ([t for t in trials if not t.after], [t for t in trials if t.after]) if s]

    @property
    def num_trials(self) -> int:
        return self.search.num_samples if self.search else len(self.trials())


def _target(ref, point: Dict[str, Any]) -> Optional[str]:
    """The trial (name without seed) that ``model.resume_from: trial:...`` names: ``trial:NAME``, or
    ``trial:KEY=VALUE,...``: the trial at the same grid point whose variant is those keys."""
    if not (isinstance(ref, str) and ref.startswith(TRIAL_REF)):
        return None
    body = ref[len(TRIAL_REF) :].strip()
    if "=" not in body:
        return body
    variant = {}
    for part in body.split(","):
        key, _, raw = part.partition("=")
        variant[key.strip()] = parse_yaml(raw, f"model.resume_from {shown(ref)}: value of {key.strip()}")
    return trial_name({**point, **variant}, None)


def trial_name(overrides: Dict[str, Any], seed: Optional[int]) -> str:
    """A few words that say a trial's config: ``resnet18conv4-gem-s0``."""
    parts = []
    for key, value in overrides.items():
        text = f"{value:g}" if isinstance(value, float) else str(value)
        if key == "data.root":  # the dataset's folder name says it: pitts30k, msls, synthetic:small
            text = text.rstrip("/").rsplit("/", 1)[-1]
        if key == "model.resume_from" and text.startswith(TRIAL_REF):  # from=netvlad
            body = text[len(TRIAL_REF) :]
            key, text = "model.from", "+".join(p.split("=", 1)[-1] for p in body.split(","))
        text = re.sub(r"[^A-Za-z0-9.+=_-]+", "_", text)[:24]
        leaf = key.rsplit(".", 1)[-1]
        bare = ("data.root", "model.backbone", "model.aggregation", "train.mining")
        parts.append(text if key in bare else f"{leaf}={text}")
    if seed is not None:
        parts.append(f"s{seed}")
    return "-".join(parts) or "base"


# -- parsing -------------------------------------------------------------------------------------


def _unknown(what: str, key: str, allowed) -> BadInput:
    near = difflib.get_close_matches(key, list(allowed), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(near)}?" if near else f"; allowed: {', '.join(allowed)}"
    return BadInput(f"{what} '{key}' is unknown{hint}")


def _mapping(where: str, value) -> Dict:
    if not isinstance(value, dict):
        raise BadInput(f"{where} must be a mapping, not {type(value).__name__}")
    return value


def _config_key(where: str, key: str) -> None:
    keys = all_keys()
    if key not in keys:
        raise _unknown(f"{where} key", key, keys)


def fill_registries() -> None:
    """Import the component packages, which fill the registries the config checks names against:
    a backbone that does not exist is refused here, not in a trial."""
    import vgray.evaluate.methods  # noqa: F401
    import vgray.models  # noqa: F401
    import vgray.train.losses  # noqa: F401
    import vgray.train.mining  # noqa: F401
    import vgray.train.places  # noqa: F401


def parse_sweep(raw: Any, source: str = "<dict>", storage: Optional[str] = None) -> SweepSpec:
    """A validated :class:`SweepSpec` from the mapping ``raw`` read from ``source`` (``storage``:
    the ``--storage`` that replaces the file's); every expanded trial config is checked too.
    :class:`BadInput` naming the sweep file and the key at fault."""
    fill_registries()
    try:
        spec = _parse(_mapping("a sweep file", raw), source, storage)
        _check_references(spec)
        _check_trials(spec)
    except BadInput as exc:
        raise BadInput(f"sweep {source}: {exc}") from None
    return spec


def _parse(raw: Dict[str, Any], source: str, storage: Optional[str]) -> SweepSpec:
    for key in raw:
        if key not in TOP_KEYS:
            raise _unknown("key", str(key), TOP_KEYS)
    given = {f.name: raw[f.name] for f in dataclasses.fields(Options) if raw.get(f.name) is not None}
    if storage:
        given["storage"] = storage
    options = build_checked(Options, given, "")
    if not isinstance(options.name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", options.name):
        raise BadInput(f"name={shown(options.name)} must be a word of letters, digits, '.', '_' or '-'")
    if not options.storage.strip():
        raise BadInput(
            "storage='' must name a folder or a URI (s3://..., gs://...); leave the key out for ~/vgray_results"
        )
    if "://" not in options.storage:  # a folder: the one path door (a URI's is its file system's)
        check_path(options.storage, "--storage" if storage else "storage", "out_dir")
    base = _base(raw.get("base"), source)
    grid = _grid(raw)
    variants = _variants(raw, grid)
    planned = math.prod(len(v) for v in grid.values()) * max(1, len(variants)) * options.repeats
    if planned > MAX_TRIALS:
        raise BadInput(
            f"the grid, variants and repeats make {planned:,} trials; a sweep may plan at most "
            f"{MAX_TRIALS:,} (split the study, or use search: with num_samples)"
        )
    search = _search(raw["search"]) if raw.get("search") is not None else None
    if search and variants:
        raise BadInput("variants work with a grid, not with search; make the keys search dimensions")
    scheduler = _scheduler(raw["scheduler"], options.task) if raw.get("scheduler") is not None else None
    resources = build_checked(Resources, raw.get("resources") or {}, "resources.")
    if resources.workers is not None and options.task == "eval" and resources.workers > 1:
        raise BadInput(
            f"resources.workers={resources.workers} trains with several workers; task: eval trains nothing "
            f"(leave workers out)"
        )
    if resources.workers is not None:  # resources.workers: N is train.workers: N in every trial's base
        base = {**base, "train": {**(base.get("train") or {}), "workers": resources.workers}}
        try:
            load_config(base=base)
        except BadInput as exc:
            raise BadInput(f"resources.workers={resources.workers}: {exc}")
    loggers = _loggers(options.loggers)
    mlflow = _mlflow(raw.get("mlflow"), loggers, options.storage)
    return SweepSpec(
        name=options.name,
        base=base,
        task=options.task,
        grid=grid,
        variants=variants,
        repeats=options.repeats,
        search=search,
        scheduler=scheduler,
        resources=resources.as_dict(),
        storage=options.storage,
        max_failures=options.max_failures,
        max_concurrent_trials=options.max_concurrent_trials,
        keep_models=options.keep_models,
        loggers=loggers,
        mlflow=mlflow,
        source=source,
    )


def _base(base, source: str) -> Dict[str, Any]:
    """``base``: a mapping of config sections or the path of a config file (relative to the sweep
    file's folder), a legal config by itself."""
    base = base or {}
    if isinstance(base, str):
        path = Path(os.path.expandvars(os.path.expanduser(base)))
        if not path.is_absolute() and source != "<dict>":
            path = Path(source).parent / path
        base = read_yaml(check_path(path, "base", "in_file")) or {}
    base = _mapping("base", base)
    try:
        load_config(base=base)
    except BadInput as exc:
        raise BadInput(f"base: {exc}")
    return base


def _grid(raw: Dict[str, Any]) -> Dict[str, List[Any]]:
    grid = _mapping("grid", raw.get("grid") or {})
    if "grid" in raw and not grid:
        raise BadInput("grid is empty; give at least one key with a list of values, or leave grid out")
    for key, values in grid.items():
        if key == "seed":
            raise BadInput("grid key 'seed' is not allowed; use repeats: N for seeds 0..N-1")
        _config_key("grid", key)
        if not isinstance(values, list) or not values:
            raise BadInput(f"grid key '{key}' must have a non-empty list of values")
    return grid


def _variants(raw: Dict[str, Any], grid: Dict[str, List[Any]]) -> List[Dict[str, Any]]:
    variants = raw.get("variants") or []
    if not isinstance(variants, list) or ("variants" in raw and not variants):
        raise BadInput("variants must be a non-empty list of mappings of dotted keys, or left out")
    for i, variant in enumerate(variants):
        if not _mapping(f"variants[{i}]", variant):
            raise BadInput(f"variants[{i}] is empty; give at least one dotted key")
        for key in variant:
            _config_key(f"variants[{i}]", key)
            if key in grid:
                raise BadInput(f"variants[{i}] sets {key}, which the grid varies too; keep it in one of them")
    if len({repr(sorted(v.items())) for v in variants}) != len(variants):
        raise BadInput("variants repeat the same row; each must differ")
    return variants


def _loggers(loggers: List[str]) -> List[str]:
    """``loggers``: trackers from :data:`LOGGERS`, each once."""
    for name in loggers:
        if name not in LOGGERS:
            raise BadInput(
                f"loggers: {shown(name)} is unknown; allowed: {', '.join(LOGGERS)} (TensorBoard "
                f"and Tune's CSV/JSON logs are always written)"
            )
    if len(set(loggers)) != len(loggers):
        raise BadInput(f"loggers={loggers} names a tracker twice; name each once")
    return list(loggers)


def _mlflow(raw, loggers: List[str], storage: str) -> Optional[MLflow]:
    """``mlflow``: only with ``loggers: [mlflow]``. Its default store is a SQLite file in the sweep's
    folder, which a URI storage cannot hold: there ``tracking_uri`` must be given. MLflow 3 refuses
    file-store URIs (plain folders, ``file:``) unless ``MLFLOW_ALLOW_FILE_STORE`` is set."""
    if "mlflow" not in loggers:
        if raw is not None:
            raise BadInput(
                "mlflow settings are given but loggers does not name mlflow; add loggers: [mlflow] "
                "or remove the mlflow section"
            )
        return None
    options = build_checked(MLflow, raw if raw is not None else {}, "mlflow.")
    uri = options.tracking_uri
    if uri is not None and not uri.strip():
        raise BadInput(
            "mlflow.tracking_uri='' must name a tracking URI (sqlite:///PATH/mlflow.db, http://HOST:PORT, "
            "...); leave the key out for STORAGE/NAME/mlflow.db"
        )
    if uri is not None and _file_store(uri) and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() != "true":
        raise BadInput(
            f"mlflow.tracking_uri={shown(uri)} is a file store, which MLflow 3 refuses; use "
            f"sqlite:///PATH/mlflow.db or a tracking server (http://HOST:PORT)"
        )
    if uri is None and "://" in storage:
        raise BadInput(
            f"loggers: [mlflow] with storage={shown(storage)}: the default MLflow store is a SQLite file "
            f"in the sweep folder, which a URI storage cannot hold; set mlflow.tracking_uri "
            f"(sqlite:///PATH/mlflow.db or http://HOST:PORT)"
        )
    if options.experiment is not None and not options.experiment.strip():
        raise BadInput("mlflow.experiment='' must name an experiment; leave the key out for the sweep's name")
    return options


def _file_store(uri: str) -> bool:
    """Whether MLflow reads ``uri`` as a file store: a path, or a ``file:`` URI."""
    scheme = uri.split(":", 1)[0].lower() if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", uri) else ""
    return scheme in ("", "file") or len(scheme) == 1  # a Windows drive letter is a path


def _search(raw) -> Search:
    raw = _mapping("search", raw)
    search = build_checked(Search, {k: v for k, v in raw.items() if k != "space"}, "search.")
    if not search.metric.startswith(METRICS_PREFIXES):
        raise BadInput(f"search.metric={shown(search.metric)} must be a val/R@N or test/<dataset>/R@N metric")
    space = _mapping("search.space", raw.get("space") or {})
    if not space:
        raise BadInput("search.space is empty; give at least one dotted key with a type")
    dims = {}
    for key, dim in space.items():
        _config_key("search space", key)
        dims[key] = _dimension(f"search.space[{key}]", dim)
    return dataclasses.replace(search, space=dims)


def _dimension(where: str, raw) -> Dimension:
    raw = _mapping(where, raw)
    dim = build_checked(Dimension, {k: v for k, v in raw.items() if k != "choices"}, f"{where}.")
    if dim.type is None:
        raise BadInput(f"{where}.type is missing; choose one of: float, int, categorical")
    if dim.type == "categorical":
        if not isinstance(raw.get("choices"), list) or not raw["choices"]:
            raise BadInput(f"{where}: categorical needs a non-empty choices list")
        return dataclasses.replace(dim, choices=list(raw["choices"]))
    if dim.low is None or dim.high is None or dim.low >= dim.high:
        raise BadInput(f"{where}: {dim.type} needs numbers low < high")
    if dim.log and dim.low <= 0:
        raise BadInput(f"{where}: log scale needs low > 0")
    if dim.type == "int" and not (dim.low.is_integer() and dim.high.is_integer()):
        raise BadInput(f"{where}: int needs whole low and high")
    return dim


def _scheduler(raw, task: str) -> Scheduler:
    scheduler = build_checked(Scheduler, _mapping("scheduler", raw), "scheduler.")
    if scheduler.type is None:
        raise BadInput("scheduler.type is missing; choose one of: asha, fifo")
    if task == "eval" and scheduler.type == "asha":
        raise BadInput("scheduler.type='asha' stops training trials early; task eval has no epochs")
    return scheduler


def _check_references(spec: SweepSpec) -> None:
    """``model.resume_from: trial:NAME`` must name a first-stage trial of this sweep (one level)."""
    trials = spec.trials()
    if not any(t.after for t in trials):
        return
    if spec.search:
        raise BadInput(f"model.resume_from: {TRIAL_REF}NAME works with a grid, not with search")
    first = {t.name for t in trials if not t.after}
    names = sorted({n.rsplit("-s", 1)[0] for n in first})
    for t in trials:
        if t.after and t.after not in first:
            ref = t.after.rsplit("-s", 1)[0]
            raise BadInput(
                f"trial {t.name}: model.resume_from={TRIAL_REF}{ref} names no trial of this "
                f"sweep that trains from scratch; allowed: {', '.join(TRIAL_REF + n for n in names)}"
            )


def _check_trials(spec: SweepSpec) -> None:
    """Every trial's config must be legal, and a second-stage trial must be able to start from the
    model its first-stage trial will leave (checked against that trial's config): refuse now,
    before any trial runs. In search mode, the ends of every range and every choice."""
    from vgray.models.network import check_start

    made: Dict[str, Dict[str, Any]] = {}  # first-stage trial -> its config's model section
    seen: Dict[Tuple[str, int], Trial] = {}  # (config key, seed) -> the first trial of that config
    for trial in spec.trials():
        try:
            cfg = spec.checked[trial.name] = trial.config(spec, trial.seeds[0])
            if trial.after:
                check_start(
                    cfg.model,
                    made[trial.after],
                    f"model.resume_from={cfg.model.resume_from} (the model of trial {trial.after})",
                )
            else:
                made[trial.name] = cfg.to_dict()["model"]
        except BadInput as exc:
            raise BadInput(f"trial {trial.name}: {exc}")
        first = seen.setdefault((cfg.key(), trial.seeds[0]), trial)
        if first is not trial:
            raise equal_trials(first, trial)
    for key, dim in spec.search.space.items() if spec.search else ():
        values: Optional[List[Any]] = dim.choices if dim.type == "categorical" else [dim.low, dim.high]
        assert values is not None  # a categorical dimension has choices (_dimension)
        for value in values:
            value = int(value) if dim.type == "int" else value
            try:
                load_config(base=spec.base, overrides=[(key, value)])
            except BadInput as exc:
                raise BadInput(f"search.space[{key}]={shown(value)}: {exc}")


def equal_trials(first: Trial, second: Trial) -> BadInput:
    """The refusal of two trials whose configs are equal once their values are read (a grid with
    ``3`` and ``3.0``, or ``1e0`` and ``1``, for a float key; a value given twice; a variant that
    repeats the base): they would run the same config and seed twice, and their rows would clash."""
    keys = [
        k
        for k in {**first.overrides, **second.overrides}
        if repr(first.overrides.get(k)) != repr(second.overrides.get(k))
    ]
    said = "; ".join(f"{k}: {shown(first.overrides.get(k))} and {shown(second.overrides.get(k))}" for k in keys)
    return BadInput(
        f"trials {first.name} and {second.name} are the same config once their values are read"
        f" ({said or 'the grid or variants give the same values twice'}); give each value once"
    )


def check_dataset_roots(spec: SweepSpec) -> None:
    """Every dataset a trial reads (``data.root``, ``data.val_root``, ``test.datasets``; in search
    mode, the base's) must be on this machine, checked before Ray starts: for a sweep launched here,
    a missing folder would fail every trial. (A sweep that joins a cluster by ``--address`` reads
    its datasets on the workers, so the driver does not check.)"""
    from vgray.data.dataset import check_root_positives, resolve_root
    from vgray.data.ground_truth import LIST_SUFFIXES, SEPARATOR

    configs = [(t.name, spec.checked.get(t.name) or t.config(spec, t.seeds[0])) for t in spec.trials()] or [
        ("base", load_config(base=spec.base))
    ]
    seen = set()
    for name, cfg in configs:
        roots = [("data.root", cfg.data.root), ("data.val_root", cfg.data.val_root)]
        roots += [(f"test.datasets.{k}", v) for k, v in (cfg.test.datasets or {}).items()]
        for key, root in roots:
            # (the positives rule is checked per root and rule: a grid may vary test.positives)
            if not root or root.startswith("synthetic:") or (key, root, cfg.test.positives) in seen:
                continue
            seen.add((key, root, cfg.test.positives))
            for part in root.split(SEPARATOR):
                path = Path(os.path.expandvars(os.path.expanduser(part)))
                if not (path.exists() or any(Path(str(path) + s).exists() for s in LIST_SUFFIXES)):
                    raise BadInput(
                        f"sweep {spec.source}: trial {name}: {key}={root}: {path} does not exist on this "
                        f"machine; give a dataset folder, ground-truth lists or synthetic:tiny|small|large"
                    )
            if _names_no_lists(root, "val" if key == "data.val_root" else "test"):
                try:  # then it must be a folder (VG format, MSLS as shipped), as each trial would refuse
                    resolve_root(root, key)
                except BadInput as exc:
                    raise BadInput(f"sweep {spec.source}: trial {name}: {exc}")
            if key != "data.val_root" and (key != "data.root" or not cfg.test.datasets):
                try:  # test.positives against each test set's layout (no index read), before Ray starts
                    check_root_positives(root, cfg.test.positives)
                except BadInput as exc:
                    raise BadInput(f"sweep {spec.source}: trial {name}: {key}={root}: {exc}")


def _names_no_lists(root: str, split: str) -> bool:
    """Whether the data root ``root`` is no form of ground-truth lists (which list set a split
    takes, when a folder holds several, is the trial's to decide)."""
    from vgray.data.ground_truth import find_list_set

    try:
        return find_list_set(root, split) is None
    except BadInput:
        return False


def load_sweep(path: str | os.PathLike, storage: Optional[str] = None) -> SweepSpec:
    """The validated :class:`SweepSpec` of the sweep file at ``path`` (``storage``: a folder or URI
    that replaces the file's ``storage``, as ``--storage``); every trial's config is checked, and a
    bad file raises :class:`~vgray.errors.BadInput` naming the file and the key at fault."""
    return parse_sweep(read_yaml(path, what="sweep"), source=str(path), storage=storage)


# -- the trial codec: Tune's dict ------------------------------------------------------------------


@dataclass(frozen=True)
class TrialParams:
    """One trial as the trainable receives it from Tune, decoded (:func:`decode_trial`)."""

    sweep: str  # the sweep's name (its results actor's)
    directory: str  # STORAGE/NAME
    task: str  # train or eval
    base: Dict[str, Any]  # the sweep's base config
    varied: List[str]  # the keys the sweep varies
    overrides: Dict[str, Any]  # dotted keys: the grid point and variant, or the sampled search keys
    seeds: List[int]  # run in turn, one row each
    name: Optional[str]  # grid trials' readable name; None for a sampled search trial
    after: Optional[str]  # the first-stage trial (with seed) whose kept model this one starts from
    keep_model: bool  # keep this trial's best model in STORAGE/NAME/models/
    resources: Dict[str, Any] = field(default_factory=dict)  # the sweep's resources (a DDP trial's worker shape)

    @property
    def label(self) -> str:
        """The trial's readable name: its grid name, or the words of its sampled keys."""
        return self.name or trial_name({k: self.overrides[k] for k in self.varied if k in self.overrides}, None)

    def config(self, seed: int, resume_from: Optional[str] = None) -> Config:
        """The validated config of ``seed``; ``resume_from``: the local file of the model this trial
        starts from (default: ``model.resume_from`` as the sweep states it)."""
        overrides = dict(self.overrides)
        if resume_from is not None:
            overrides["model.resume_from"] = resume_from
        return load_config(base=self.base, overrides=[*overrides.items(), ("seed", seed)])


def _plain(value):
    """Tune's samplers give numpy scalars; the config takes Python numbers."""
    return value.item() if type(value).__module__ == "numpy" and hasattr(value, "item") else value


def param_space(
    spec: SweepSpec,
    stage: Optional[List[Trial]],
    grid_search: Callable[[list], Any],
    sample: Callable[[Dimension], Any],
) -> Dict[str, Any]:
    """Tune's ``param_space`` for ``spec``: the keys every trial shares, then in grid mode the trials
    of ``stage`` (default: every trial) as ``grid_search([entry, ...])`` under :data:`GRID_KEY`; in
    search mode one entry that runs every seed, and ``sample(dimension)`` for each searched key (the
    grid's keys as categorical dimensions) at the top. :func:`decode_trial` reads a trial back."""
    common = {
        "sweep": spec.name,
        "directory": spec.directory,
        "task": spec.task,
        "base": spec.base,
        "varied": spec.varied,
        "resources": spec.resources,
    }
    if not spec.search:
        trials = spec.trials() if stage is None else stage
        kept = {t.after for t in spec.trials() if t.after}
        entries = [
            {
                "overrides": t.overrides,
                "seeds": t.seeds,
                "name": t.name,
                "after": t.after,
                "keep_model": spec.keep_models or t.name in kept,
            }
            for t in trials
        ]
        return {**common, GRID_KEY: grid_search(entries)}
    # Search trials keep no model: the same sampled words could name two of them.
    space: Dict[str, Any] = {
        **common,
        "overrides": {},
        "seeds": list(range(spec.repeats)),
        "name": None,
        "after": None,
        "keep_model": False,
    }
    for key, dim in spec.search.space.items():
        space[key] = sample(dim)
    for key, values in spec.grid.items():
        space[key] = sample(Dimension(type="categorical", choices=values))
    return space


def decode_trial(config: Dict[str, Any]) -> TrialParams:
    """The :class:`TrialParams` of one trial's Tune dict (what :func:`param_space` gave Tune, as
    Tune resolved it: a grid trial's entry under :data:`GRID_KEY`, sampled keys at the top)."""
    flat = {**config, **(config.get(GRID_KEY) or {})}
    overrides = dict(flat.get("overrides") or {})
    overrides.update({k: _plain(v) for k, v in flat.items() if "." in k})
    return TrialParams(
        sweep=flat["sweep"],
        directory=flat["directory"],
        task=flat["task"],
        base=flat["base"],
        varied=list(flat.get("varied") or []),
        overrides=overrides,
        seeds=[int(s) for s in flat.get("seeds") or [0]],
        name=flat.get("name"),
        after=flat.get("after"),
        keep_model=bool(flat.get("keep_model")),
        resources=dict(flat.get("resources") or {}),
    )


# -- --dry-run -------------------------------------------------------------------------------------


def dry_run_table(spec: SweepSpec) -> str:
    """The expanded trials: count and a table (what ``--dry-run`` prints)."""
    lines = [f"sweep {spec.name}: {spec.num_trials} trials ({spec.task}), storage {spec.directory}"]
    if spec.search:
        s = spec.search
        lines.append(
            f"optuna search ({s.sampler}): {s.num_samples} samples, {s.mode} {s.metric}, "
            f"each running seeds 0..{spec.repeats - 1}"
        )
        for key, dim in s.space.items():
            rng = (
                dim.choices
                if dim.type == "categorical"
                else f"[{dim.low:g}, {dim.high:g}]" + (" log" if dim.log else "")
            )
            lines.append(f"  {key}: {dim.type} {rng}")
        for key, values in spec.grid.items():
            lines.append(f"  {key}: categorical {values}")
        return "\n".join(lines)
    keys = spec.varied + ["seed"]
    rows = [
        [t.name] + [str(t.overrides[k]) if k in t.overrides else "-" for k in spec.varied] + [str(t.seeds[0])]
        for t in spec.trials()
    ]
    header = ["trial"] + keys
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)
