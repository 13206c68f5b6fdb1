"""The results of a running sweep: one row per finished trial, written by a named Ray actor.

:class:`ResultsStore` is plain Python (tested without Ray): it keeps the rows of
``STORAGE/NAME/results.parquet``, adds a row only if its ``trial_id`` is new, writes the file
durably (temporary file, fsync, rename) *before* it says yes, and rewrites ``summary.md`` and
``summary.csv``. The row, summary and file formats are :mod:`vgray.results`'s.
:class:`ResultsActor` is the same store behind a named Ray actor that every trial reports to; if it
dies, Ray restarts it and it reloads from disk, so an acknowledged row is never lost and a row is
never written twice.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

from vgray.distributed.storage import Storage
from vgray.results import (
    RESULTS_FILE,
    SUMMARY_CSV,
    SUMMARY_MD,
    rows_from_parquet,
    rows_to_parquet,
    summarize,
    summary_csv,
    summary_markdown,
)

ACTOR_NAMESPACE = "vgray"


class ResultsStore:
    """The rows of one sweep in ``directory`` (a folder or URI all nodes can reach); ``varied``: the
    keys the sweep varies (the summary's first columns)."""

    def __init__(self, directory: str | os.PathLike, varied: Optional[List[str]] = None):
        self.storage = Storage(directory)
        self.varied = list(varied or [])
        self.rows: List[Dict[str, Any]] = []
        if self.storage.exists(RESULTS_FILE):
            self.rows = rows_from_parquet(self.storage.read_bytes(RESULTS_FILE))
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
        self.storage.write_bytes(RESULTS_FILE, rows_to_parquet(rows))
        self.rows = rows
        self.ids.add(trial_id)
        self.write_summary()
        return True

    def summary(self) -> List[Dict[str, Any]]:
        return summarize(self.rows, self.varied)

    def write_summary(self) -> None:
        rows = self.summary()
        self.storage.write_bytes(SUMMARY_MD, summary_markdown(rows).encode())
        self.storage.write_bytes(SUMMARY_CSV, summary_csv(rows).encode())


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


def actor_name(sweep_name: str) -> str:
    return f"vgray-results-{sweep_name}"


def get_results_actor(sweep_name: str, directory: str, varied: List[str]):
    """The sweep's results actor: created on first use, found by name afterwards."""
    return (
        results_actor_class()
        .options(name=actor_name(sweep_name), namespace=ACTOR_NAMESPACE, get_if_exists=True)
        .remote(directory, varied)
    )


def find_results_actor(sweep_name: str):
    """The results actor of the running sweep ``sweep_name`` (from a trial or a driver connected to
    its Ray); ``ValueError`` when no such actor lives on this cluster."""
    import ray

    return ray.get_actor(actor_name(sweep_name), namespace=ACTOR_NAMESPACE)


def live_summary(sweep_name: str) -> Dict[str, Any]:
    """A running sweep's summary, read from its results actor (from a driver connected to the
    sweep's Ray): ``{"rows": summary rows, "markdown": the table, "count": rows received}``.
    ``ValueError`` when no such actor lives on this cluster."""
    import ray

    actor = find_results_actor(sweep_name)
    entries, markdown, rows = ray.get([actor.summary.remote(), actor.summary_markdown.remote(), actor.rows.remote()])
    return {"rows": entries, "markdown": markdown, "count": len(rows)}
