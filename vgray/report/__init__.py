"""``vgray report RESULTS_DIR``: a sweep's results as the paper's tables and figures.

One module per output: :mod:`rows` (reading and checking ``results.parquet``), :mod:`tables`
(Tables 3-6 in Markdown, CSV, LaTeX), :mod:`figures` (Figs. 2, 3, 4a, 4b and Pareto fronts).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from vgray.errors import BadInput


@dataclass
class Report:
    table_md: str
    written: List[Path] = field(default_factory=list)
    skipped: Dict[str, str] = field(default_factory=dict)  # figure name -> what its rows lack


def make_report(directory: str | Path, out: Optional[str | Path] = None, recalls: Sequence[int] = (1,),
                required: Sequence[str] = ()) -> Report:
    """Write the tables and every figure the rows allow to ``out`` (default ``directory/report``).
    A figure the rows cannot give is skipped with its reason (``Report.skipped``); :class:`BadInput`
    for one in ``required`` (checked by name first, raised after every other output is written)."""
    from vgray.report.figures import FIGURES, Missing
    from vgray.report.rows import load_rows, varied_keys
    from vgray.report.tables import build_table, markdown, write_tables

    unknown = [f for f in required if f not in FIGURES]
    if unknown:
        raise BadInput(f"--figure {unknown[0]} is not a figure; allowed: {', '.join(FIGURES)}")
    rows = load_rows(directory)
    varied = varied_keys(rows)
    target = Path(out) if out else Path(directory) / "report"
    target.mkdir(parents=True, exist_ok=True)
    table = build_table(rows, varied, recalls)
    report = Report(markdown(table), write_tables(table, target))
    for name in FIGURES:
        try:
            report.written += FIGURES[name](rows, varied, target)
        except Missing as exc:
            report.skipped[name] = str(exc)
    missing = [f for f in required if f in report.skipped]
    if missing:
        raise BadInput(f"figure {missing[0]} cannot be drawn from {directory}: {report.skipped[missing[0]]} "
                       f"(the tables and the other figures are written to {target})")
    return report
