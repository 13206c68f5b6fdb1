"""``report.html``: one static page per sweep: its set-up, its table, every figure, the failed and
stopped trials and the prediction grids.

The page is rendered from the Jinja2 template ``templates/report.html`` with autoescaping on: every
value read from the results (trial names, errors, config values, the plan) reaches the page as
text, never as markup; this module only decides *what* to show. The page needs no network to be
viewed: no script, font or style from elsewhere. Images are referenced by relative path (the PNGs
lie beside the page, the grids in ``predictions/``): they are already files there, so embedding
them would double the folder's size, and the page stays small enough to open and diff; the folder
moves as a whole. A URL read from the results (the dashboard's, from ``plan.json``) becomes a link
only when it is http(s) with a host: never a ``javascript:`` or ``data:`` one.

The template's inline script sorts a table by the column whose header is clicked (numbers by
value, ``12.3 ± 0.4`` by its mean; also on loading ``report.html#sort=COLUMN`` or
``#sort=COLUMN:desc``, COLUMN a header's text or its index from 0), and on ``load`` marks the
``<body>`` with what a headless browser reads back to check the page: ``data-images``,
``data-images-loaded``, ``data-table-rows``, ``data-figure-boxes`` (each figure's left, top,
width, height in pixels) and, once sorted, ``data-sorted``.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional
from urllib.parse import quote, urlsplit

from vgray.report.tables import Table, config_cell, cost_cell, label, recall_text

PAGE = "report.html"
TEMPLATE = "report.html"
NOT_RECORDED = "not recorded"


def web_url(text: str) -> Optional[str]:
    """``text`` as a browser would read it in an ``href`` when that is an http(s) URL with a
    host, else None. Browsers drop leading and trailing spaces and control characters and every
    tab and newline inside (``java\tscript:`` runs as ``javascript:``), and schemes are
    case-insensitive: the check is made on that same reading, and the link is written from it."""
    url = "".join(c for c in str(text) if c not in "\t\n\r").strip("".join(map(chr, range(0x21))))
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced [ in the host
        return None
    return url if parts.scheme.lower() in ("http", "https") and parts.hostname else None


def _href(path: Path, out: Path) -> str:
    """A relative URL to ``path`` (file names may hold ``#``, ``?``, ``%``); the template escapes it."""
    return quote(path.relative_to(out).as_posix())


@dataclass
class Progress:
    """How far the sweep has come: rows written against the rows its plan announces."""

    sweep: str
    done: int  # finished rows (status ok)
    apart: int  # failed or stopped rows
    expected: Optional[int] = None  # from plan.json; None when the sweep wrote no plan
    running: Optional[bool] = None  # None when unknown (no plan)
    dashboard: str = "http://127.0.0.1:8265"
    interrupted: Optional[str] = None  # "TIME (SIGNAL)" when a signal stopped the sweep's driver

    def text(self) -> str:
        apart = f", {self.apart} failed or stopped" if self.apart else ""
        if self.expected is None:
            return (
                f"{self.done} trials finished{apart} (the sweep wrote no plan.json, so how many it runs is not known)."
            )
        if self.interrupted:
            return (
                f"Sweep interrupted ({self.interrupted}): {self.done} of {self.expected} trials done{apart}; "
                f"carry on with vgray sweep FILE --resume."
            )
        state = "running" if self.running else "finished"
        more = "; run vgray report again to update this page" if self.running else ""
        return f"Sweep {state}: {self.done} of {self.expected} trials done{apart}{more}."


@dataclass
class Grids:
    """Prediction grids of one kept model, with what they show."""

    files: List[Path]
    trial: str
    config: str
    threshold: float
    k: int
    failures_only: bool
    queries: int = 0
    notes: List[str] = field(default_factory=list)


# -- what the page shows, as plain values for the template ------------------------------------------


def _yaml(value: Any) -> str:
    import yaml

    return yaml.safe_dump(value, sort_keys=False, default_flow_style=False).strip()


def _listed(values: Any) -> str:
    return ", ".join(map(str, values)) if isinstance(values, list) else str(values)


def _varied_text(plan: Dict[str, Any]) -> str:
    """The varied keys with their values: the grid's lists, the variants, the search space."""
    lines = (
        [f"{k}: {_listed(v)}" for k, v in (plan.get("grid") or {}).items()]
        if isinstance(plan.get("grid"), dict)
        else []
    )
    variants = plan.get("variants")
    if isinstance(variants, list) and variants:
        lines.append(
            f"{len(variants)} variants: "
            + "; ".join(
                ", ".join(f"{k}={v}" for k, v in variant.items()) if isinstance(variant, dict) else str(variant)
                for variant in variants
            )
        )
    search = plan.get("search")
    if isinstance(search, dict):
        space = search.get("space")
        space = space if isinstance(space, dict) else {}
        lines.append(
            f"search ({search.get('algorithm')}, {search.get('num_samples')} samples, "
            f"{search.get('mode')} {search.get('metric')}):"
        )
        lines += [
            f"  {k}: " + ", ".join(f"{a}={b}" for a, b in dim.items() if b not in (None, [], False))
            if isinstance(dim, dict)
            else f"  {k}: {dim}"
            for k, dim in space.items()
        ]
    if not lines and isinstance(plan.get("varied"), list):
        lines = [str(k) for k in plan["varied"]]
    if not lines and "varied" in plan:
        return "nothing: one config"
    return "\n".join(lines) or NOT_RECORDED


def _seeds_text(plan: Dict[str, Any]) -> str:
    seeds = plan.get("seeds")
    if not isinstance(seeds, list):
        return NOT_RECORDED
    return f"{_listed(seeds)} ({len(seeds)} per config)"


def _mapping_text(value: Any, order=()) -> str:
    if not isinstance(value, dict):
        return NOT_RECORDED
    keys = [k for k in order if k in value] + [k for k in value if k not in order]
    return ", ".join(f"{k} {value[k]:g}" if isinstance(value[k], float) else f"{k} {value[k]}" for k in keys)


def _cluster_text(plan: Dict[str, Any]) -> str:
    cluster = plan.get("cluster")
    if not isinstance(cluster, dict):
        return NOT_RECORDED
    names = {"nodes": ("node", "nodes"), "cpus": ("CPU", "CPUs"), "gpus": ("GPU", "GPUs")}
    counts = [
        f"{cluster[k]:g} {names[k][cluster[k] != 1]}"
        if isinstance(cluster[k], (int, float))
        else f"{cluster[k]} {names[k][1]}"
        for k in names
        if k in cluster
    ]
    return f"{cluster.get('address') or 'address ' + NOT_RECORDED}" + (f" ({', '.join(counts)})" if counts else "")


def _end_text(plan: Dict[str, Any]) -> str:
    if plan.get("finished"):
        return str(plan["finished"])
    if plan.get("interrupted"):
        return f"not finished: interrupted {plan['interrupted']}; resumable with --resume"
    return "not yet: the sweep is running (or its driver was stopped)" if plan else NOT_RECORDED


def setup_items(plan: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The set-up block at the top of the page: (label, text, pre) for each item of ``plan.json``;
    an item the plan lacks (an older sweep, or none at all) reads "not recorded"."""
    scheduler = plan.get("scheduler")
    items = [
        ("Task", str(plan.get("task") or NOT_RECORDED), False),
        ("Base config", _yaml(plan["base"]) if isinstance(plan.get("base"), dict) else NOT_RECORDED, True),
        ("Varied", _varied_text(plan), True),
        ("Seeds", _seeds_text(plan), False),
        (
            "Trials planned",
            str(plan.get("trials", NOT_RECORDED)) + (", models kept" if plan.get("keep_models") else ""),
            False,
        ),
        (
            "Scheduler",
            _mapping_text(scheduler, ("type",))
            if scheduler
            else "FIFO (all trials run to the end)"
            if "scheduler" in plan
            else NOT_RECORDED,
            False,
        ),
        ("Resources per trial", _mapping_text(plan.get("resources"), ("cpu", "gpu")), False),
        ("Cluster", _cluster_text(plan), False),
        ("Storage", str(plan.get("storage") or NOT_RECORDED), False),
        ("Started", str(plan.get("started") or NOT_RECORDED), False),
        ("Ended", _end_text(plan), False),
    ]
    return [
        {"label": a, "text": b, "pre": c, "unknown": b == NOT_RECORDED, "css": "base" if a == "Base config" else ""}
        for a, b, c in items
    ]


def table_view(table: Table) -> Dict[str, Any]:
    """The results table as header texts and rows of cells (text, bold, config column)."""
    head = list(table.varied) + ["n"] + [label(c) for c in table.recall] + list(table.cost)
    rows = []
    for e in table.entries:
        cells = [{"text": config_cell(e.get(k)), "config": True, "bold": False} for k in table.varied]
        cells.append({"text": str(e["n"]), "config": False, "bold": False})
        for c in table.recall:
            text, bold = recall_text(table, e, c)
            cells.append({"text": text, "config": False, "bold": bold})
        cells += [{"text": cost_cell(e.get(c)), "config": False, "bold": False} for c in table.cost]
        rows.append({"key": str(e["config_key"]), "cells": cells})
    return {"head": head, "rows": rows}


def apart_view(table: Table) -> List[Dict[str, str]]:
    """Failed and stopped trials: name, seed, status and their error lines."""
    return [
        {
            "name": str(r.get("trial_name") or r["trial_id"]),
            "seed": str(r.get("seed")),
            "status": str(r.get("status")),
            "error": str(r.get("error") or ("stopped early by the scheduler" if r.get("status") == "stopped" else "—")),
        }
        for r in table.apart
    ]


def figures_view(figures: List[Path], out: Path) -> List[Dict[str, Optional[str]]]:
    from vgray.report.figures import caption

    return [
        {
            "src": _href(png, out),
            "name": png.stem,
            "caption": caption(png.stem),
            "data": _href(png.with_suffix(".csv"), out) if png.with_suffix(".csv").is_file() else None,
        }
        for png in figures
    ]


def grids_view(grids: Optional[Grids], out: Path) -> Optional[Dict[str, Any]]:
    if grids is None:
        return None
    return {
        "trial": grids.trial,
        "config": grids.config,
        "threshold": f"{grids.threshold:g}",
        "k": grids.k,
        "which": "the queries whose top-1 is wrong" if grids.failures_only else "the first queries",
        "files": [{"src": _href(f, out), "name": f.stem} for f in grids.files],
    }


@functools.lru_cache(maxsize=1)
def _environment():
    """The Jinja2 environment over this package's ``templates/``, autoescaping every value."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("vgray.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_page(
    out: Path,
    table: Table,
    figures: List[Path],
    skipped: Dict[str, str],
    progress: Progress,
    grids: Optional[Grids] = None,
    grids_note: Optional[str] = None,
    plan: Optional[Dict[str, Any]] = None,
) -> str:
    """The text of ``report.html`` (see the module's docstring for what it shows)."""
    return (
        _environment()
        .get_template(TEMPLATE)
        .render(
            sweep=progress.sweep,
            progress=progress.text(),
            running=bool(progress.running or progress.interrupted),
            dashboard=progress.dashboard,
            dashboard_url=web_url(progress.dashboard),
            made=time.strftime("%Y-%m-%d %H:%M:%S"),
            setup=setup_items(plan or {}),
            table=table_view(table),
            apart=apart_view(table),
            figures=figures_view(figures, out),
            skipped=skipped,
            grids=grids_view(grids, out),
            grids_note=grids_note,
        )
    )


def write_page(
    out: Path,
    table: Table,
    figures: List[Path],
    skipped: Dict[str, str],
    progress: Progress,
    grids: Optional[Grids] = None,
    grids_note: Optional[str] = None,
    plan: Optional[Dict[str, Any]] = None,
) -> Path:
    """Write ``out/report.html`` (atomically) and return its path."""
    from vgray.atomic import write_bytes

    path = out / PAGE
    write_bytes(path, render_page(out, table, figures, skipped, progress, grids, grids_note, plan).encode("utf-8"))
    return path
