"""The rows a report is made from: ``RESULTS_DIR/results.parquet`` of one sweep, checked.

A report needs one sweep's rows: a folder that holds them (not the storage folder above several
sweeps), at least one row, and no two rows that claim the same config and seed (what rows of two
sweeps concatenated look like).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pyarrow.parquet as pq

from vgray.errors import BadInput

Row = Dict[str, Any]


def is_config_column(column: str) -> bool:
    """Flattened config keys are dotted (``model.backbone``); metrics start with ``test/`` or ``val/``."""
    return "." in column and not column.startswith(("test/", "val/"))


def number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def load_rows(directory: str | Path) -> List[Row]:
    """The rows of ``directory/results.parquet``; :class:`BadInput` naming what is missing."""
    folder = Path(directory)
    if not folder.is_dir():
        raise BadInput(f"RESULTS_DIR {folder} does not exist (a sweep's results folder, STORAGE/NAME)")
    path = folder / "results.parquet"
    if not path.is_file():
        inner = sorted(p.parent.name for p in folder.glob("*/results.parquet"))
        if inner:
            raise BadInput(f"RESULTS_DIR {folder} holds no results.parquet but {len(inner)} sweep folders; "
                           f"report one of them: {', '.join(str(folder / n) for n in inner)}")
        raise BadInput(f"RESULTS_DIR {folder} holds no results.parquet (written by vgray sweep){_so_far(folder)}")
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow's many error types for a damaged file
        raise BadInput(f"{path} is not a readable parquet file ({type(exc).__name__})")
    if not rows:
        raise BadInput(f"{path} holds no rows (no trial of the sweep has finished yet){_so_far(folder)}")
    for column in ("config_key", "seed", "status", "trial_id"):
        if any(r.get(column) is None for r in rows):
            raise BadInput(f"{path}: rows without a {column!r} column; vgray sweep writes config_key, seed, "
                           f"status and trial_id in every row")
    check_one_sweep(rows, path)
    return rows


def read_plan(directory: str | Path) -> Dict[str, Any]:
    """``plan.json`` that ``vgray sweep`` writes (how many trials, whether its driver ended, the
    dashboard URL); ``{}`` when there is none or it cannot be read."""
    import json
    try:
        plan = json.loads((Path(directory) / "plan.json").read_text())
    except (OSError, ValueError):
        return {}
    return plan if isinstance(plan, dict) else {}


def _so_far(folder: Path) -> str:
    plan = read_plan(folder)
    if plan and not plan.get("finished") and isinstance(plan.get("trials"), int):
        return f"; sweep {plan.get('sweep')} is running: 0 of {plan['trials']} trials done, run vgray report again later"
    return ""


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
            raise BadInput(f"{path} mixes rows of different sweeps: config {r['config_key']} seed {r['seed']} "
                           f"appears in trials {seen[key]} and {r['trial_id']}; report one sweep's folder")
        seen[key] = r["trial_id"]


def varied_keys(rows: List[Row]) -> List[str]:
    """The config columns whose value differs between rows, in column order (the sweep's grid)."""
    columns: List[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns and is_config_column(k)]
    return [c for c in columns if len({repr(r.get(c)) for r in rows}) > 1]


def datasets(rows: List[Row], recall: int = 1) -> List[str]:
    """Test datasets with an ``test/<name>/R@<recall>`` number in some finished row."""
    out: List[str] = []
    for r in rows:
        for k, v in r.items():
            if k.startswith("test/") and k.endswith(f"/R@{recall}") and number(v):
                name = k[len("test/"):-len(f"/R@{recall}")]
                if name not in out:
                    out.append(name)
    return out


def finished(rows: List[Row]) -> List[Row]:
    return [r for r in rows if r.get("status") == "ok"]
