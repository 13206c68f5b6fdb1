"""``vgray report RESULTS_DIR``: a sweep's results as the paper's tables and figures.

One module per output: :mod:`rows` (reading and checking ``results.parquet``), :mod:`tables`
(Tables 3-6 in Markdown, CSV, LaTeX), :mod:`figures` (Figs. 2, 3, 4a, 4b and Pareto fronts),
:mod:`predictions` (prediction grids), :mod:`html` (``report.html``, the whole report on one page).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence

from vgray.errors import BadInput

if TYPE_CHECKING:
    from vgray.report.html import Progress


@dataclass
class Report:
    table_md: str
    written: List[Path] = field(default_factory=list)
    skipped: Dict[str, str] = field(default_factory=dict)  # figure (or part: "pareto vs gflops") -> why not drawn
    page: Optional[Path] = None
    progress: str = ""


def progress_of(directory: str | Path, rows) -> Progress:
    """Rows done against the plan the sweep wrote (``plan.json``), and its dashboard URL."""
    from vgray.report.html import Progress
    from vgray.results import DEFAULT_DASHBOARD, read_plan

    plan = read_plan(directory)
    expected = plan.get("trials") if isinstance(plan.get("trials"), int) else None
    return Progress(
        sweep=str(plan.get("sweep") or Path(directory).resolve().name),
        done=sum(r.get("status") == "ok" for r in rows),
        apart=sum(r.get("status") != "ok" for r in rows),
        expected=expected,
        running=(not plan.get("finished") and not plan.get("interrupted")) if plan else None,
        interrupted=str(plan["interrupted"]) if plan.get("interrupted") else None,
        dashboard=str(plan.get("dashboard") or DEFAULT_DASHBOARD),
    )


def make_report(
    directory: str | Path,
    out: Optional[str | Path] = None,
    recalls: Sequence[int] = (1,),
    required: Sequence[str] = (),
    predictions: Optional[int] = None,
    failures_only: bool = False,
) -> Report:
    """Write the tables, every figure the rows allow, the prediction grids of the best config's
    kept model (when ``predictions`` is a count) and ``report.html`` to ``out`` (default
    ``directory/report``). Works on a running sweep's folder: the rows are read as they are.
    A figure the rows cannot give, or whose x values are all alike (within 1 %), is skipped with its
    reason (``Report.skipped``; a part of one, e.g. ``pareto vs gflops``, likewise); :class:`BadInput`
    for one in ``required`` (checked by name first), or for grids asked of a sweep that kept no
    model, raised after every other output (the page included) is written.

    Returns a :class:`Report`: the main table in Markdown, the files written, the figures skipped
    with why, and the path of ``report.html``."""
    from vgray.report.figures import FIGURES, Missing
    from vgray.report.html import write_page
    from vgray.report.rows import varied_keys
    from vgray.report.tables import build_table, markdown, write_tables
    from vgray.results import load_rows, read_plan

    unknown = [f for f in required if f not in FIGURES]
    if unknown:
        raise BadInput(f"--figure {unknown[0]} is not a figure; allowed: {', '.join(FIGURES)}")
    if predictions is not None and predictions < 1:
        raise BadInput(f"--predictions {predictions} must be at least 1 (the number of queries to show)")
    if predictions is None and failures_only:
        raise BadInput("--failures-only needs --predictions N")
    rows = load_rows(directory)
    varied = varied_keys(rows)
    planned = read_plan(directory).get("varied")  # a running sweep's first rows may not differ yet
    if isinstance(planned, list):
        planned = [k for k in planned if isinstance(k, str) and any(k in r for r in rows)]
        varied = planned + [k for k in varied if k not in planned]
    target = Path(out) if out else Path(directory) / "report"
    target.mkdir(parents=True, exist_ok=True)
    table = build_table(rows, varied, recalls)
    report = Report(markdown(table), write_tables(table, target))
    for name in FIGURES:
        try:
            report.written += FIGURES[name](rows, varied, target, skipped=report.skipped)
        except Missing as exc:
            report.skipped[name] = str(exc)
    grids, failure = None, None
    if predictions is not None:
        from vgray.report.predictions import report_grids

        try:
            grids = report_grids(directory, rows, table, target, predictions, failures_only)
            report.written += grids.files
        except BadInput as exc:
            failure = exc
    progress = progress_of(directory, rows)
    report.progress = progress.text()
    figures = [p for p in report.written if p.suffix == ".png" and p.parent == target]
    report.page = write_page(
        target,
        table,
        figures,
        report.skipped,
        progress,
        grids,
        grids_note=str(failure) if failure else None,
        plan=read_plan(directory),
    )
    report.written.append(report.page)
    missing = [f for f in required if f in report.skipped]
    if missing:
        raise BadInput(
            f"figure {missing[0]} cannot be drawn from {directory}: {report.skipped[missing[0]]} "
            f"(the tables and the other figures are written to {target})"
        )
    if failure is not None:
        raise failure
    return report
