"""Sweep files: one YAML per study, expanded into trials. No Ray here: a sweep is checked and
expanded (``--dry-run``) before anything starts.

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
```
"""
from __future__ import annotations

import difflib
import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from vgray.config import Config, all_keys, load_config, read_yaml
from vgray.errors import BadInput

TOP_KEYS = ("name", "base", "task", "grid", "variants", "repeats", "search", "scheduler", "resources", "storage",
            "max_failures", "max_concurrent_trials", "keep_models")
TRIAL_REF = "trial:"  # model.resume_from: trial:NAME, the model another trial of the sweep trains
SEARCH_KEYS = ("algorithm", "space", "num_samples", "metric", "mode", "sampler", "seed")
SPACE_TYPES = ("float", "int", "categorical")
SCHEDULER_KEYS = ("type", "grace_period", "reduction_factor", "max_t", "metric", "mode")
# extract_cpu / extract_gpu: a trial's extraction bundle, for Ray Data (vgray.distributed.descriptors)
RESOURCE_KEYS = ("cpu", "gpu", "memory_gb", "extract_cpu", "extract_gpu")
METRICS_PREFIXES = ("val/R@", "test/")


@dataclass
class Trial:
    """One trial: dotted overrides on top of the base config, and the seeds it runs."""
    name: str
    overrides: Dict[str, Any]
    seeds: List[int]
    after: Optional[str] = None  # the trial (with its seed) whose model this one starts from

    def config(self, spec: "SweepSpec", seed: int) -> Config:
        overrides = dict(self.overrides)
        if self.after:  # checked against a stand-in of the model that trial will leave
            overrides["model.resume_from"] = spec.stand_in_model(self.after)
        return load_config(base=spec.base, overrides=[*overrides.items(), ("seed", seed)])


@dataclass
class SweepSpec:
    name: str
    base: Dict[str, Any]
    task: str = "train"
    grid: Dict[str, List[Any]] = field(default_factory=dict)
    variants: List[Dict[str, Any]] = field(default_factory=list)
    repeats: int = 1
    search: Optional[Dict[str, Any]] = None
    scheduler: Optional[Dict[str, Any]] = None
    resources: Dict[str, float] = field(default_factory=lambda: {"cpu": 1, "gpu": 0})
    storage: str = "~/vgray_results"
    max_failures: int = 0
    max_concurrent_trials: Optional[int] = None
    keep_models: bool = False
    source: str = "<dict>"

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
        return keys + [k for k in (self.search or {}).get("space", {}) if k not in keys]

    def trials(self) -> List[Trial]:
        """Grid mode: one trial per (grid point, seed). Search mode: the grid becomes categorical
        dimensions of the search space and each sampled trial runs every seed (see sweep.py)."""
        if self.search:
            return []
        keys = list(self.grid)
        points = list(itertools.product(*(self.grid[k] for k in keys))) if keys else [()]
        out = []
        for point, variant in itertools.product(points, self.variants or [{}]):
            overrides = {**dict(zip(keys, point)), **variant}
            target = _target(overrides.get("model.resume_from", self.base.get("model", {}).get("resume_from")),
                             dict(zip(keys, point)))
            for seed in range(self.repeats):
                out.append(Trial(trial_name(overrides, seed), overrides, [seed],
                                 after=f"{target}-s{seed}" if target else None))
        # Trials that start from another's model come last: the second stage.
        return [t for t in out if not t.after] + [t for t in out if t.after]

    def stages(self) -> List[List[Trial]]:
        """The trials in the order they can run: those that start from another trial's model wait
        for the first stage to end."""
        trials = self.trials()
        return [s for s in ([t for t in trials if not t.after], [t for t in trials if t.after]) if s]

    def keeps_model(self, trial: Trial) -> bool:
        return self.keep_models or any(t.after == trial.name for t in self.trials())

    def stand_in_model(self, name: str) -> str:
        """A checkpoint shaped like the one trial ``name`` will leave (its config, its untrained
        network), so that the trials starting from it are checked before anything runs."""
        target = next(t for t in self.trials() if t.name == name)
        cfg = target.config(self, target.seeds[0])
        key = cfg.key()  # seeds share one stand-in: the architecture does not depend on them
        if key not in _STAND_INS:
            import tempfile

            from vgray.models import build_model
            from vgray.train.checkpoint import save
            model = build_model(cfg.model, load_weights=False, image_size=cfg.data.image_size)
            path = Path(tempfile.mkdtemp(prefix="vgray-stand-in-")) / f"{key}.pt"
            save(path, {"config": cfg.to_dict(), "model": model.state_dict(), "epoch": 0})
            _STAND_INS[key] = str(path)
        return _STAND_INS[key]

    @property
    def num_trials(self) -> int:
        return self.search["num_samples"] if self.search else len(self.trials())


_STAND_INS: Dict[str, str] = {}  # config key -> stand-in checkpoint, for this process


def _target(ref, point: Dict[str, Any]) -> Optional[str]:
    """The trial (name without seed) that ``model.resume_from: trial:...`` names: ``trial:NAME``, or
    ``trial:KEY=VALUE,...``: the trial at the same grid point whose variant is those keys."""
    if not (isinstance(ref, str) and ref.startswith(TRIAL_REF)):
        return None
    body = ref[len(TRIAL_REF):].strip()
    if "=" not in body:
        return body
    import yaml
    variant = {}
    for part in body.split(","):
        key, _, raw = part.partition("=")
        variant[key.strip()] = yaml.safe_load(raw)
    return trial_name({**point, **variant}, None)


def trial_name(overrides: Dict[str, Any], seed: Optional[int]) -> str:
    """A few words that say a trial's config: ``resnet18conv4-gem-s0``."""
    parts = []
    for key, value in overrides.items():
        text = f"{value:g}" if isinstance(value, float) else str(value)
        if key == "data.root":  # the dataset's folder name says it: pitts30k, msls, synthetic:small
            text = text.rstrip("/").rsplit("/", 1)[-1]
        if key == "model.resume_from" and text.startswith(TRIAL_REF):  # from=netvlad
            body = text[len(TRIAL_REF):]
            key, text = "model.from", "+".join(p.split("=", 1)[-1] for p in body.split(","))
        text = re.sub(r"[^A-Za-z0-9.+=_-]+", "_", text)[:24]
        leaf = key.rsplit(".", 1)[-1]
        bare = ("data.root", "model.backbone", "model.aggregation", "train.mining")
        parts.append(text if key in bare else f"{leaf}={text}")
    if seed is not None:
        parts.append(f"s{seed}")
    return "-".join(parts) or "base"


def _unknown(what: str, key: str, allowed) -> BadInput:
    near = difflib.get_close_matches(key, list(allowed), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(near)}?" if near else f"; allowed: {', '.join(allowed)}"
    return BadInput(f"{what} '{key}' is unknown{hint}")


def _require_mapping(where: str, value) -> Dict:
    if not isinstance(value, dict):
        raise BadInput(f"{where} must be a mapping, not {type(value).__name__}")
    return value


def _dotted_key(where: str, key: str) -> None:
    keys = all_keys()
    if key not in keys:
        raise _unknown(f"{where} key", key, keys)


def parse_sweep(raw: Any, source: str = "<dict>", storage: Optional[str] = None) -> SweepSpec:
    """A validated :class:`SweepSpec`; every expanded trial config is checked too."""
    where = f"sweep {source}"
    raw = _require_mapping(where, raw)
    for key in raw:
        if key not in TOP_KEYS:
            raise _unknown(f"{where}: key", str(key), TOP_KEYS)
    name = raw.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise BadInput(f"{where}: name={name!r} must be a word of letters, digits, '.', '_' or '-'")

    base = raw.get("base") or {}
    if isinstance(base, str):
        path = Path(os.path.expandvars(os.path.expanduser(base)))
        if not path.is_absolute() and source != "<dict>":
            path = Path(source).parent / path
        base = read_yaml(path) or {}
    base = _require_mapping(f"{where}: base", base)
    try:
        load_config(base=base)
    except BadInput as exc:
        raise BadInput(f"{where}: base: {exc}")

    task = raw.get("task", "train")
    if task not in ("train", "eval"):
        raise BadInput(f"{where}: task={task!r} is not allowed; choose train or eval")

    grid = _require_mapping(f"{where}: grid", raw.get("grid") or {})
    if "grid" in raw and not grid:
        raise BadInput(f"{where}: grid is empty; give at least one key with a list of values, or leave grid out")
    for key, values in grid.items():
        if key == "seed":
            raise BadInput(f"{where}: grid key 'seed' is not allowed; use repeats: N for seeds 0..N-1")
        _dotted_key(f"{where}: grid", key)
        if not isinstance(values, list) or not values:
            raise BadInput(f"{where}: grid key '{key}' must have a non-empty list of values")

    variants = raw.get("variants") or []
    if not isinstance(variants, list) or ("variants" in raw and not variants):
        raise BadInput(f"{where}: variants must be a non-empty list of mappings of dotted keys, or left out")
    for i, variant in enumerate(variants):
        variant = _require_mapping(f"{where}: variants[{i}]", variant)
        if not variant:
            raise BadInput(f"{where}: variants[{i}] is empty; give at least one dotted key")
        for key in variant:
            _dotted_key(f"{where}: variants[{i}]", key)
            if key in grid:
                raise BadInput(f"{where}: variants[{i}] sets {key}, which the grid varies too; keep it in one of them")
    if len({repr(sorted(v.items())) for v in variants}) != len(variants):
        raise BadInput(f"{where}: variants repeat the same row; each must differ")

    repeats = raw.get("repeats", 1)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise BadInput(f"{where}: repeats={repeats!r} must be a positive integer (seeds 0..repeats-1)")

    search = raw.get("search")
    if search is not None:
        search = _parse_search(where, search)
        if variants:
            raise BadInput(f"{where}: variants work with a grid, not with search; make the keys search dimensions")

    scheduler = raw.get("scheduler")
    if scheduler is not None:
        scheduler = _require_mapping(f"{where}: scheduler", scheduler)
        for key in scheduler:
            if key not in SCHEDULER_KEYS:
                raise _unknown(f"{where}: scheduler key", str(key), SCHEDULER_KEYS)
        if scheduler.get("type") not in ("asha", "fifo"):
            raise BadInput(f"{where}: scheduler type={scheduler.get('type')!r} is not allowed; choose asha or fifo")
        if task == "eval" and scheduler["type"] == "asha":
            raise BadInput(f"{where}: scheduler asha stops training trials early; task eval has no epochs")
        for key in ("grace_period", "reduction_factor", "max_t"):
            if key in scheduler and (not isinstance(scheduler[key], (int, float)) or scheduler[key] <= 0):
                raise BadInput(f"{where}: scheduler {key}={scheduler[key]!r} must be a positive number")

    resources = dict(_require_mapping(f"{where}: resources", raw.get("resources") or {"cpu": 1}))
    for key, value in resources.items():
        if key not in RESOURCE_KEYS:
            raise _unknown(f"{where}: resources key", str(key), RESOURCE_KEYS)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise BadInput(f"{where}: resources {key}={value!r} must be a number >= 0 (fractions allowed)")
    resources.setdefault("cpu", 1)
    resources.setdefault("gpu", 0)

    max_failures = raw.get("max_failures", 0)
    if isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < -1:
        raise BadInput(f"{where}: max_failures={max_failures!r} must be an integer >= 0 (or -1: retry forever)")
    concurrent = raw.get("max_concurrent_trials")
    if concurrent is not None and (isinstance(concurrent, bool) or not isinstance(concurrent, int) or concurrent < 1):
        raise BadInput(f"{where}: max_concurrent_trials={concurrent!r} must be a positive integer")

    keep_models = raw.get("keep_models", False)
    if not isinstance(keep_models, bool):
        raise BadInput(f"{where}: keep_models={keep_models!r} must be true or false")

    storage = storage or raw.get("storage") or "~/vgray_results"
    if not isinstance(storage, str):
        raise BadInput(f"{where}: storage must be a path or a URI (s3://..., gs://...)")
    storage = os.path.expandvars(storage)

    spec = SweepSpec(name=name, base=base, task=task, grid=grid, variants=variants, repeats=repeats, search=search,
                     scheduler=scheduler, resources=resources, storage=storage, max_failures=max_failures,
                     max_concurrent_trials=concurrent, keep_models=keep_models, source=source)
    _check_references(where, spec)
    # Every combination of the grid must be a legal config: refuse now, before any trial runs.
    for trial in spec.trials():
        try:
            trial.config(spec, trial.seeds[0])
        except BadInput as exc:
            raise BadInput(f"{where}: trial {trial.name}: {exc}")
    if search:
        _check_space_bounds(where, spec)
    return spec


def _check_references(where: str, spec: SweepSpec) -> None:
    """``model.resume_from: trial:NAME`` must name a first-stage trial of this sweep (one level)."""
    trials = spec.trials()
    if not any(t.after for t in trials):
        return
    if spec.search:
        raise BadInput(f"{where}: model.resume_from: {TRIAL_REF}NAME works with a grid, not with search")
    first = {t.name for t in trials if not t.after}
    names = sorted({n.rsplit("-s", 1)[0] for n in first})
    for t in trials:
        if t.after and t.after not in first:
            ref = t.after.rsplit("-s", 1)[0]
            raise BadInput(f"{where}: trial {t.name}: model.resume_from={TRIAL_REF}{ref} names no trial of this "
                           f"sweep that trains from scratch; allowed: {', '.join(TRIAL_REF + n for n in names)}")


def _parse_search(where: str, search) -> Dict[str, Any]:
    search = dict(_require_mapping(f"{where}: search", search))
    for key in search:
        if key not in SEARCH_KEYS:
            raise _unknown(f"{where}: search key", str(key), SEARCH_KEYS)
    if search.get("algorithm", "optuna") != "optuna":
        raise BadInput(f"{where}: search algorithm={search.get('algorithm')!r} is not allowed; choose optuna")
    space = _require_mapping(f"{where}: search space", search.get("space") or {})
    if not space:
        raise BadInput(f"{where}: search space is empty; give at least one dotted key with a type")
    for key, dim in space.items():
        _dotted_key(f"{where}: search space", key)
        dim = _require_mapping(f"{where}: search space {key}", dim)
        kind = dim.get("type")
        if kind not in SPACE_TYPES:
            raise BadInput(f"{where}: search space {key}: type={kind!r} is not allowed; choose {', '.join(SPACE_TYPES)}")
        if kind == "categorical":
            if not isinstance(dim.get("choices"), list) or not dim["choices"]:
                raise BadInput(f"{where}: search space {key}: categorical needs a non-empty choices list")
        else:
            low, high = dim.get("low"), dim.get("high")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low >= high:
                raise BadInput(f"{where}: search space {key}: {kind} needs numbers low < high")
            if dim.get("log") and low <= 0:
                raise BadInput(f"{where}: search space {key}: log scale needs low > 0")
            if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
                raise BadInput(f"{where}: search space {key}: int needs whole low and high")
    num = search.get("num_samples", 10)
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise BadInput(f"{where}: search num_samples={num!r} must be a positive integer")
    metric = search.get("metric", "val/R@5")
    if not isinstance(metric, str) or not metric.startswith(METRICS_PREFIXES):
        raise BadInput(f"{where}: search metric={metric!r} must be a val/R@N or test/<dataset>/R@N metric")
    mode = search.get("mode", "max")
    if mode not in ("max", "min"):
        raise BadInput(f"{where}: search mode={mode!r} is not allowed; choose max or min")
    sampler = search.get("sampler", "tpe")
    if sampler not in ("tpe", "random"):
        raise BadInput(f"{where}: search sampler={sampler!r} is not allowed; choose tpe or random")
    return {"algorithm": "optuna", "space": space, "num_samples": num, "metric": metric, "mode": mode,
            "sampler": sampler, "seed": search.get("seed", 0)}


def _check_space_bounds(where: str, spec: SweepSpec) -> None:
    """The ends of every range (and every choice) must make a legal config."""
    for key, dim in spec.search["space"].items():
        values = dim["choices"] if dim["type"] == "categorical" else [dim["low"], dim["high"]]
        for value in values:
            if dim["type"] == "int":
                value = int(value)
            try:
                load_config(base=spec.base, overrides=[(key, value)])
            except BadInput as exc:
                raise BadInput(f"{where}: search space {key}={value!r}: {exc}")


def load_sweep(path: str | os.PathLike, storage: Optional[str] = None) -> SweepSpec:
    return parse_sweep(read_yaml(path, what="sweep"), source=str(path), storage=storage)


def dry_run_table(spec: SweepSpec) -> str:
    """The expanded trials: count and a table (what ``--dry-run`` prints)."""
    lines = [f"sweep {spec.name}: {spec.num_trials} trials ({spec.task}), storage {spec.directory}"]
    if spec.search:
        s = spec.search
        lines.append(f"optuna search ({s['sampler']}): {s['num_samples']} samples, {s['mode']} {s['metric']}, "
                     f"each running seeds 0..{spec.repeats - 1}")
        for key, dim in s["space"].items():
            rng = dim["choices"] if dim["type"] == "categorical" else f"[{dim['low']}, {dim['high']}]" + (" log" if dim.get("log") else "")
            lines.append(f"  {key}: {dim['type']} {rng}")
        for key, values in spec.grid.items():
            lines.append(f"  {key}: categorical {values}")
        return "\n".join(lines)
    keys = spec.varied + ["seed"]
    rows = [[t.name] + [str(t.overrides[k]) if k in t.overrides else "-" for k in spec.varied] + [str(t.seeds[0])]
            for t in spec.trials()]
    header = ["trial"] + keys
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)
