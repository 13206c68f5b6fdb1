"""Results of a sweep: one row per finished trial, and the paper-style summary over seeds.

:class:`ResultsStore` is plain Python (tested without Ray): it keeps the rows of
``STORAGE/NAME/results.parquet``, adds a row only if its ``trial_id`` is new, writes the file
durably (temporary file, fsync, rename) *before* it says yes, and rewrites ``summary.md`` and
``summary.csv``. :class:`ResultsActor` is the same store behind a named Ray actor that every trial
reports to; if it dies, Ray restarts it and it reloads from disk, so an acknowledged row is never
lost and a row is never written twice.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vgray.atomic import write_bytes

COST_COLUMNS = ["features_dim", "gflops", "model_size_mb", "extraction_ms", "matching_ms", "index_memory_mb",
                "train_time_s", "epochs"]
ID_COLUMNS = ["trial_id", "trial_name", "config_key", "seed", "status", "error"]


class Storage:
    """A folder that every node reaches: a local or network path (written with fsync and rename),
    or a URI (``s3://``, ``gs://``, ``file://``) through pyarrow's filesystems, where one object
    write is atomic."""

    def __init__(self, directory: str | os.PathLike):
        text = str(directory)
        self.uri = "://" in text
        if self.uri:
            from pyarrow import fs
            self.fs, self.root = fs.FileSystem.from_uri(text)
            self.fs.create_dir(self.root, recursive=True)
        else:
            self.root = str(Path(text))
            Path(self.root).mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def exists(self, name: str) -> bool:
        if not self.uri:
            return os.path.exists(self.path(name))
        from pyarrow import fs
        return self.fs.get_file_info(self.path(name)).type != fs.FileType.NotFound

    def read_bytes(self, name: str) -> bytes:
        if not self.uri:
            return Path(self.path(name)).read_bytes()
        with self.fs.open_input_stream(self.path(name)) as f:
            return f.read()

    def write_bytes(self, name: str, data: bytes) -> None:
        if not self.uri:
            Path(self.path(name)).parent.mkdir(parents=True, exist_ok=True)
            write_bytes(Path(self.path(name)), data)
            return
        with self.fs.open_output_stream(self.path(name)) as f:
            f.write(data)


def _to_table(rows: List[Dict[str, Any]]) -> pa.Table:
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
        else:  # strings, and anything else as its JSON text (lists, dicts)
            data[c] = pa.array([v if v is None or isinstance(v, str) else json.dumps(v) for v in values], pa.string())
    return pa.table(data)


class ResultsStore:
    """The rows of one sweep in ``directory`` (a folder or URI all nodes can reach)."""

    def __init__(self, directory: str | os.PathLike, varied: Optional[List[str]] = None):
        self.storage = Storage(directory)
        self.varied = list(varied or [])
        self.rows: List[Dict[str, Any]] = []
        if self.storage.exists("results.parquet"):
            self.rows = pq.read_table(io.BytesIO(self.storage.read_bytes("results.parquet"))).to_pylist()
        self.ids = {r["trial_id"] for r in self.rows}

    def add(self, row: Dict[str, Any]) -> bool:
        """Append ``row`` durably unless its ``trial_id`` is already there. True when added.
        A failed or stopped row is replaced by a later successful one of the same trial."""
        trial_id = row["trial_id"]
        if trial_id in self.ids:
            old = next(r for r in self.rows if r["trial_id"] == trial_id)
            if not (old.get("status") != "ok" and row.get("status") == "ok"):
                return False
            rows = [r for r in self.rows if r["trial_id"] != trial_id] + [row]
        else:
            rows = self.rows + [row]
        buffer = io.BytesIO()
        pq.write_table(_to_table(rows), buffer)
        self.storage.write_bytes("results.parquet", buffer.getvalue())
        self.rows = rows
        self.ids.add(trial_id)
        self.write_summary()
        return True

    def summary(self) -> List[Dict[str, Any]]:
        return summarize(self.rows, self.varied)

    def write_summary(self) -> None:
        rows = self.summary()
        self.storage.write_bytes("summary.md", summary_markdown(rows).encode())
        self.storage.write_bytes("summary.csv", summary_csv(rows).encode())


def _metric_columns(rows: Iterable[Dict[str, Any]]) -> List[str]:
    seen: List[str] = []
    for r in rows:
        for k, v in r.items():
            if k.startswith("test/") and k.endswith("/R@1") and k not in seen and isinstance(v, (int, float)):
                seen.append(k)
    return seen


def mean_std(values: List[float]) -> tuple:
    """Mean and sample standard deviation (0 for a single seed)."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def summarize(rows: List[Dict[str, Any]], varied: List[str]) -> List[Dict[str, Any]]:
    """One entry per ``config_key``: the varied keys, ``n`` seeds, and for each metric its mean and
    std over the seeds (``<metric>`` and ``<metric> std``); failed trials appear with their error."""
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["config_key"], []).append(r)
    metrics = _metric_columns(rows)
    val = [k for k in ("val/R@1", "val/R@5") if any(k in r for r in rows)]
    out = []
    for key, group in groups.items():
        ok = [r for r in group if r.get("status") == "ok"]
        entry: Dict[str, Any] = {k: group[0].get(k) for k in varied}
        entry.update({"config_key": key, "n": len(ok), "failed": sum(r.get("status") == "failed" for r in group),
                      "stopped": sum(r.get("status") == "stopped" for r in group)})
        if entry["failed"]:
            entry["error"] = next(r.get("error") for r in group if r.get("status") == "failed")
        for m in metrics + val + COST_COLUMNS:
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


def _columns(entries: List[Dict[str, Any]]):
    varied = [k for k in (entries[0] if entries else {}) if "." in k and not k.startswith(("test/", "val/"))]
    recall = [c for c in entries[0] if c.startswith(("test/", "val/")) and not c.endswith(" std")] if entries else []
    for e in entries[1:]:
        recall += [c for c in e if c.startswith(("test/", "val/")) and not c.endswith(" std") and c not in recall]
    cost = [c for c in COST_COLUMNS if any(c in e for e in entries)]
    return varied, recall, cost


def summary_markdown(entries: List[Dict[str, Any]]) -> str:
    """The paper's table layout: the varied keys, n seeds, R@1 per test dataset (mean ± std),
    then the cost columns."""
    if not entries:
        return "no finished trials yet\n"
    varied, recall, cost = _columns(entries)
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
    buffer = io.StringIO()
    if entries:
        columns: List[str] = []
        for e in entries:
            columns += [k for k in e if k not in columns]
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(entries)
    return buffer.getvalue()


def results_actor_class():
    """The Ray actor class (built lazily: Ray is imported only where a sweep runs)."""
    import ray

    @ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
    class ResultsActor:
        def __init__(self, directory: str, varied: List[str]):
            self.store = ResultsStore(directory, varied)

        def add(self, row: Dict[str, Any]) -> bool:
            return self.store.add(row)

        def summary_markdown(self) -> str:
            return summary_markdown(self.store.summary())

        def summary(self) -> List[Dict[str, Any]]:
            """The summary rows so far: one per config, mean and std over its finished seeds."""
            return self.store.summary()

        def rows(self) -> List[Dict[str, Any]]:
            return list(self.store.rows)

        def pid(self) -> int:
            return os.getpid()

    return ResultsActor


ACTOR_NAMESPACE = "vgray"


def actor_name(sweep_name: str) -> str:
    return f"vgray-results-{sweep_name}"


def get_results_actor(sweep_name: str, directory: str, varied: List[str]):
    """The sweep's results actor: created on first use, found by name afterwards."""
    return results_actor_class().options(name=actor_name(sweep_name), namespace=ACTOR_NAMESPACE,
                                         get_if_exists=True).remote(directory, varied)


def live_summary(sweep_name: str) -> Dict[str, Any]:
    """A running sweep's summary, read from its results actor (from a driver connected to the
    sweep's Ray): ``{"rows": summary rows, "markdown": the table, "count": rows received}``.
    ``ValueError`` when no such actor lives on this cluster."""
    import ray
    actor = ray.get_actor(actor_name(sweep_name), namespace=ACTOR_NAMESPACE)
    entries, markdown, rows = ray.get([actor.summary.remote(), actor.summary_markdown.remote(), actor.rows.remote()])
    return {"rows": entries, "markdown": markdown, "count": len(rows)}
