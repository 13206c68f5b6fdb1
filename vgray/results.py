"""The results model of a sweep, without Ray: rows, the summary over seeds, and ``plan.json``.

A sweep's folder ``STORAGE/NAME`` holds:

- ``results.parquet``: one row per finished trial and seed (:func:`make_row`): the flattened config,
  ``trial_id``, ``trial_name``, ``config_key``, ``seed``, ``status`` (``ok``, ``failed`` with
  ``error``, ``stopped``) and the metrics: ``val/R@N``, ``test/<dataset>/R@N``, the
  :data:`COST_COLUMNS` and the :data:`SIZE_COLUMNS`;
- ``summary.md`` and ``summary.csv``: one entry per ``config_key`` (:func:`summarize`), each
  metric as mean ± std over the finished seeds (:func:`mean_std`, sample std);
- ``plan.json``: what the sweep planned (:func:`make_plan`), so that a report can be drawn while it
  runs, and how it was set up (:data:`SETUP_KEYS`), shown at the top of the report.

The results actor (:mod:`vgray.distributed.results`) writes them; ``vgray report`` reads them
(:func:`load_rows`, :func:`read_plan`) and needs no Ray.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vgray.errors import BadInput

if TYPE_CHECKING:
    from vgray.config import Config

RESULTS_FILE = "results.parquet"
SUMMARY_MD = "summary.md"
SUMMARY_CSV = "summary.csv"
PLAN_FILE = "plan.json"
DEFAULT_DASHBOARD = "http://127.0.0.1:8265"

# What a configuration costs (the paper's cost figures): averaged over seeds in the summary and the
# report's tables, and the x axes of the Pareto fronts.
COST_COLUMNS = (
    "features_dim",
    "gflops",
    "model_size_mb",
    "extraction_ms",
    "matching_ms",
    "index_memory_mb",
    "train_time_s",
    "epochs",
    "workers",
)
# Counts a row records beside the costs: the network's parameters and the sizes of the searched sets
# (Fig. 4a's x axis is database x features_dim). Kept in the rows, not columns of the tables.
SIZE_COLUMNS = ("params", "database", "queries", "train_images_per_s", "group_nodes")

Row = Dict[str, Any]


# -- rows ------------------------------------------------------------------------------------------


def make_row(
    cfg: Config,
    trial_id: str,
    name: str,
    result: Dict[str, Any],
    status: str = "ok",
    error: str = "",
    config_key: Optional[str] = None,
) -> Row:
    """One results row of the trial ``trial_id`` (readable ``name``) run with ``cfg`` (a
    :class:`vgray.config.Config`): its flattened config (values other than numbers, strings and
    booleans as text), the ids, ``status`` and ``error``, and from ``result`` the metrics (``val/``,
    ``test/``, cost and size columns; anything else is left out). ``config_key`` defaults to
    ``cfg.key()``; a trial that starts from another trial's model passes the key of its config as
    the sweep states it, so that its seeds (each from its own file) share one key."""
    row: Row = {
        k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v)) for k, v in cfg.flat().items()
    }
    row.update(
        {
            "trial_id": trial_id,
            "trial_name": name,
            "config_key": config_key or cfg.key(),
            "seed": cfg.seed,
            "status": status,
            "error": error,
        }
    )
    for k, v in result.items():
        if measured(k):
            row[k] = v
    return row


def rows_to_parquet(rows: List[Row]) -> bytes:
    """``results.parquet``'s bytes: a column per key of any row (missing values null); numbers as
    int64 or float64, booleans as bool, anything else as text (lists and dicts as their JSON)."""
    columns: List[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    data = {}
    for c in columns:
        values = [r.get(c) for r in rows]
        kinds = {type(v) for v in values if v is not None}
        if kinds and kinds <= {int, float} and not kinds <= {int}:
            data[c] = pa.array([None if v is None else float(v) for v in values], pa.float64())
        elif kinds and kinds <= {int}:
            data[c] = pa.array(values, pa.int64())
        elif kinds and kinds <= {bool}:
            data[c] = pa.array(values, pa.bool_())
        else:
            data[c] = pa.array([v if v is None or isinstance(v, str) else json.dumps(v) for v in values], pa.string())
    buffer = io.BytesIO()
    pq.write_table(pa.table(data), buffer)
    return buffer.getvalue()


def rows_from_parquet(data: bytes) -> List[Row]:
    """The rows of a ``results.parquet`` file's bytes."""
    rows: List[Row] = pq.read_table(io.BytesIO(data)).to_pylist()
    return rows


def load_rows(directory: str | Path) -> List[Row]:
    """The rows of ``directory/results.parquet`` (one sweep's folder), checked: at least one row,
    the id columns in every row, no two rows of one config and seed. :class:`BadInput` naming what
    is missing or wrong."""
    folder = Path(directory)
    if not folder.is_dir():
        raise BadInput(f"RESULTS_DIR {folder} does not exist (a sweep's results folder, STORAGE/NAME)")
    path = folder / RESULTS_FILE
    if not path.is_file():
        inner = sorted(p.parent.name for p in folder.glob(f"*/{RESULTS_FILE}"))
        if inner:
            raise BadInput(
                f"RESULTS_DIR {folder} holds no {RESULTS_FILE} but {len(inner)} sweep folders; "
                f"report one of them: {', '.join(str(folder / n) for n in inner)}"
            )
        raise BadInput(f"RESULTS_DIR {folder} holds no {RESULTS_FILE} (written by vgray sweep){_so_far(folder)}")
    try:
        rows = rows_from_parquet(path.read_bytes())
    except Exception as exc:  # pyarrow's many error types for a damaged file
        raise BadInput(f"{path} is not a readable parquet file ({type(exc).__name__})")
    if not rows:
        raise BadInput(f"{path} holds no rows (no trial of the sweep has finished yet){_so_far(folder)}")
    for column in ("config_key", "seed", "status", "trial_id"):
        if any(r.get(column) is None for r in rows):
            raise BadInput(
                f"{path}: rows without a {column!r} column; vgray sweep writes config_key, seed, "
                f"status and trial_id in every row"
            )
    check_numbers(rows, path)
    check_one_sweep(rows, path)
    return rows


def measured(column: str) -> bool:
    """Whether ``column`` holds a figure a trial measures (``val/``, ``test/``, the cost and size
    columns), which a row may lack: NaN there means "not measured"."""
    return column.startswith(("val/", "test/")) or column in COST_COLUMNS or column in SIZE_COLUMNS


def check_numbers(rows: List[Row], path: Path) -> None:
    """The number door of a results table read back: an infinity anywhere, or NaN outside the
    measured columns (:func:`measured`: a config value, a seed), is refused naming the file, the
    column and the trial; NaN in a measured column is made None, shown as missing."""
    for r in rows:
        for column, value in r.items():
            if not isinstance(value, float) or math.isfinite(value):
                continue
            if math.isnan(value) and measured(column):
                r[column] = None  # not measured: shown as missing, never averaged
                continue
            raise BadInput(
                f"{path}: column {column!r} holds {value} in the row of trial {r.get('trial_id')}; a results "
                f"table holds finite numbers (NaN only where a figure was not measured): rewrite the row or "
                f"report another folder"
            )


def check_one_sweep(rows: List[Row], path: Path) -> None:
    """Refuse rows of several sweeps: a ``sweep`` column with several names, or one config and seed
    that appears in two rows (each sweep runs a config's seed once)."""
    sweeps = sorted({str(r["sweep"]) for r in rows if r.get("sweep") is not None})
    if len(sweeps) > 1:
        raise BadInput(f"{path} mixes rows of {len(sweeps)} sweeps ({', '.join(sweeps)}); report one sweep's folder")
    seen: Dict[Tuple[str, int], str] = {}
    for r in rows:
        key = (r["config_key"], r["seed"])
        if key in seen and seen[key] != r["trial_id"]:
            raise BadInput(
                f"{path} mixes rows of different sweeps: config {r['config_key']} seed {r['seed']} "
                f"appears in trials {seen[key]} and {r['trial_id']}; report one sweep's folder"
            )
        seen[key] = r["trial_id"]


# -- mean ± std over seeds ---------------------------------------------------------------------------


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single seed)."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def _test_r1_columns(rows: Iterable[Row]) -> List[str]:
    seen: List[str] = []
    for r in rows:
        for k, v in r.items():
            if k.startswith("test/") and k.endswith("/R@1") and k not in seen and isinstance(v, (int, float)):
                seen.append(k)
    return seen


def summarize(rows: List[Row], varied: Sequence[str]) -> List[Dict[str, Any]]:
    """One entry per ``config_key``, in order of first appearance: the ``varied`` keys, ``n``
    finished seeds, the ``failed`` and ``stopped`` counts (with the first ``error``), and for R@1 of
    every test set, val R@1 and R@5 and every cost column its mean and std over the finished seeds
    (``<metric>`` and ``<metric> std``)."""
    groups: Dict[str, List[Row]] = {}
    for r in rows:
        groups.setdefault(r["config_key"], []).append(r)
    metrics = _test_r1_columns(rows)
    val = [k for k in ("val/R@1", "val/R@5") if any(k in r for r in rows)]
    out = []
    for key, group in groups.items():
        ok = [r for r in group if r.get("status") == "ok"]
        entry: Dict[str, Any] = {k: group[0].get(k) for k in varied}
        entry.update(
            {
                "config_key": key,
                "n": len(ok),
                "failed": sum(r.get("status") == "failed" for r in group),
                "stopped": sum(r.get("status") == "stopped" for r in group),
            }
        )
        if entry["failed"]:
            entry["error"] = next(r.get("error") for r in group if r.get("status") == "failed")
        for m in [*metrics, *val, *COST_COLUMNS]:
            vals = [r[m] for r in ok if isinstance(r.get(m), (int, float)) and not math.isnan(r[m])]
            if vals:
                entry[m], entry[f"{m} std"] = mean_std(vals)
        out.append(entry)
    return out


def _cell(entry: Dict[str, Any], column: str) -> str:
    if column not in entry:
        return "—"
    value = entry[column]
    if column in COST_COLUMNS:
        return f"{value:.2f}" if isinstance(value, float) and not float(value).is_integer() else f"{value:g}"
    if isinstance(value, float):
        return f"{value:.1f} ± {entry.get(column + ' std', 0.0):.1f}"
    return str(value)


def _summary_columns(entries: List[Dict[str, Any]]) -> Tuple[List[str], List[str], List[str]]:
    """(varied config keys, recall columns, cost columns) present in the summary ``entries``."""
    varied = [k for k in (entries[0] if entries else {}) if "." in k and not k.startswith(("test/", "val/"))]
    recall: List[str] = []
    for e in entries:
        recall += [c for c in e if c.startswith(("test/", "val/")) and not c.endswith(" std") and c not in recall]
    cost = [c for c in COST_COLUMNS if any(c in e for e in entries)]
    return varied, recall, cost


def summary_markdown(entries: List[Dict[str, Any]]) -> str:
    """``summary.md`` of the :func:`summarize` entries, in the paper's table layout: the varied
    keys, n seeds, each recall as mean ± std, then the cost columns; failed configs listed below."""
    if not entries:
        return "no finished trials yet\n"
    varied, recall, cost = _summary_columns(entries)
    header = [k.rsplit(".", 1)[-1] for k in varied] + ["n"] + [c.replace("test/", "") for c in recall] + cost
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for e in entries:
        notes = [f"{e[k]} {k}" for k in ("failed", "stopped") if e.get(k)]
        cells = [str(e.get(k)) for k in varied] + [str(e["n"]) + (f" ({', '.join(notes)})" if notes else "")]
        cells += [_cell(e, c) for c in recall] + [_cell(e, c) for c in cost]
        lines.append("| " + " | ".join(cells) + " |")
    errors = [e for e in entries if e.get("error")]
    if errors:
        lines.append("")
        lines += [f"- failed: {', '.join(f'{k}={e.get(k)}' for k in varied)}: {e['error']}" for e in errors]
    return "\n".join(lines) + "\n"


def summary_csv(entries: List[Dict[str, Any]]) -> str:
    """``summary.csv``: every key of the :func:`summarize` entries as a column (means and stds apart)."""
    buffer = io.StringIO()
    if entries:
        columns: List[str] = []
        for e in entries:
            columns += [k for k in e if k not in columns]
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(entries)
    return buffer.getvalue()


# -- plan.json -------------------------------------------------------------------------------------

# What ``plan.json`` may hold beside the counts (:func:`make_plan`'s ``setup``), all optional:
# ``base`` (the sweep file's base config), ``grid`` (key -> values), ``variants`` (list of
# key -> value), ``search`` (algorithm, num_samples, metric, mode, space), ``scheduler``,
# ``seeds`` (list of ints), ``resources`` (per trial: cpu, gpu, ...), ``storage`` (the sweep's
# folder) and ``cluster`` (``address``: Ray's GCS address, ``nodes``, ``cpus``, ``gpus``).
SETUP_KEYS = ("base", "grid", "variants", "search", "scheduler", "seeds", "resources", "storage", "cluster")


def make_plan(
    sweep: str,
    task: str,
    trials: int,
    varied: Sequence[str],
    keep_models: bool,
    dashboard: Optional[str],
    earlier: Optional[bytes] = None,
    finished: bool = False,
    setup: Optional[Dict[str, Any]] = None,
    interrupted: Optional[str] = None,
) -> bytes:
    """The bytes of ``plan.json``: the sweep's name and task, how many rows it will write
    (``trials``: one per config and seed), the keys it varies, whether it keeps models, the Ray
    dashboard's URL, when it started and (``finished``) when its driver ended. ``earlier``: the
    bytes of the plan a run before this one wrote (a resumed sweep keeps its start and dashboard).
    ``setup``: what the report shows of how the sweep was set up (:data:`SETUP_KEYS`: the base
    config, the grid or search, the seeds, the resources per trial, the cluster), added as they
    are; a plan written before these were recorded lacks them and the report says so.
    ``interrupted``: the signal that stopped the driver (``SIGINT``, ``SIGTERM``); the plan then
    says when and by which (``"interrupted": "TIME (SIGNAL)"``), and stays unfinished until a
    resumed run ends it."""
    old = parse_plan(earlier) if earlier is not None else {}
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    plan = {
        "sweep": sweep,
        "task": task,
        "trials": trials,
        "varied": list(varied),
        "keep_models": keep_models,
        "dashboard": dashboard or old.get("dashboard") or DEFAULT_DASHBOARD,
        "started": old.get("started", now),
        "finished": now if finished else None,
        "interrupted": f"{now} ({interrupted})" if interrupted and not finished else None,
    }
    for key, value in (setup or {}).items():
        if key in SETUP_KEYS:
            plan[key] = value
    if not plan.get("cluster") and old.get("cluster"):  # the driver's end may find Ray gone
        plan["cluster"] = old["cluster"]
    return json.dumps(plan, indent=1, default=str).encode()


def parse_plan(data: bytes) -> Dict[str, Any]:
    """A plan from ``plan.json``'s bytes; ``{}`` when they are not a JSON object."""
    try:
        plan = json.loads(data)
    except ValueError:
        return {}
    return plan if isinstance(plan, dict) else {}


def read_plan(directory: str | Path) -> Dict[str, Any]:
    """``directory/plan.json`` (how many trials, the varied keys, whether its driver ended, the
    dashboard URL, and the set-up keys where the sweep recorded them); ``{}`` when there is none
    or it cannot be read."""
    try:
        return parse_plan((Path(directory) / PLAN_FILE).read_bytes())
    except OSError:
        return {}


def _so_far(folder: Path) -> str:
    plan = read_plan(folder)
    if plan and plan.get("interrupted") and isinstance(plan.get("trials"), int):
        return (
            f"; sweep {plan.get('sweep')} was interrupted ({plan['interrupted']}) with 0 of {plan['trials']} "
            f"trials done; carry on with vgray sweep FILE --resume"
        )
    if plan and not plan.get("finished") and isinstance(plan.get("trials"), int):
        return (
            f"; sweep {plan.get('sweep')} is running: 0 of {plan['trials']} trials done, run vgray report again later"
        )
    return ""
