"""The paper's Tables 3-6 from a sweep's rows (Berton et al., "Deep Visual Geo-localization
Benchmark", CVPR 2022): one row per config, R@N per test dataset as mean ± std over the seeds with
the best of each column in bold, then the cost columns. Written as ``table.md``, ``table.csv``
(mean and std in separate columns) and ``table.tex``. Failed and stopped trials are listed apart
and never averaged in.

Grouping and the cost means come from :func:`vgray.results.summarize`, the summary the
sweep itself writes; this module adds R@N for any N and the three file layouts.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence

from vgray.errors import BadInput
from vgray.report.rows import datasets, finished, number
from vgray.results import COST_COLUMNS, Row, mean_std, summarize


@dataclass
class Table:
    varied: List[str]  # config columns, one per varied key
    recall: List[str]  # metric columns: test/<dataset>/R@N
    cost: List[str]  # cost columns present in the rows
    entries: List[Dict[str, Any]]  # one per config with n >= 1 finished seed: <col> and "<col> std"
    best: Dict[str, float]  # the best mean of each recall column
    apart: List[Row]  # failed and stopped rows


def recall_columns(rows: List[Row], recalls: Sequence[int]) -> List[str]:
    """``test/<dataset>/R@N`` for every dataset and asked N; :class:`BadInput` for an N no row holds."""
    ok = finished(rows)
    columns = []
    for n in recalls:
        names = datasets(ok, n)
        if not names:
            held = sorted(
                {
                    int(k.rsplit("@", 1)[1])
                    for r in ok
                    for k in r
                    if k.startswith("test/") and "/R@" in k and number(r[k])
                }
            )
            raise BadInput(
                f"--recall {n}: no finished row holds test/<dataset>/R@{n}; "
                f"allowed: {', '.join(map(str, held)) or 'none (no finished row has a test recall)'}"
            )
        columns += [f"test/{d}/R@{n}" for d in names]
    # the paper's order: per dataset, R@1 then R@5
    order = {d: i for i, d in enumerate(datasets(ok, recalls[0]))}
    return sorted(columns, key=lambda c: (order.get(c.split("/")[1], len(order)), int(c.rsplit("@", 1)[1])))


def build_table(rows: List[Row], varied: List[str], recalls: Sequence[int] = (1,)) -> Table:
    recall = recall_columns(rows, recalls)
    by_key: Dict[str, List[Row]] = {}
    for r in finished(rows):
        by_key.setdefault(r["config_key"], []).append(r)
    entries = []
    for entry in summarize(rows, varied):
        if entry["n"] == 0:
            continue
        group = by_key[entry["config_key"]]
        for column in recall:
            values = [r[column] for r in group if number(r.get(column))]
            if values:
                entry[column], entry[f"{column} std"] = mean_std(values)
                entry[f"{column} n"] = len(values)
        entries.append(entry)
    cost = [c for c in COST_COLUMNS if any(c in e for e in entries)]
    best = {c: max(e[c] for e in entries if c in e) for c in recall if any(c in e for e in entries)}
    apart = [r for r in rows if r.get("status") != "ok"]
    return Table(varied, recall, cost, entries, best, apart)


# The cells of the table, shared by the Markdown, LaTeX and HTML layouts.


def label(column: str) -> str:
    """A recall column's header: ``test/pitts30k/R@1`` -> ``pitts30k/R@1``."""
    return column[len("test/") :] if column.startswith("test/") else column


def config_cell(value: Any) -> str:
    """A config value's cell (``—`` for none)."""
    return "—" if value is None else str(value)


def cost_cell(value: Any) -> str:
    """A cost's cell: whole numbers as they are, others with two decimals (``—`` for none)."""
    if not number(value):
        return "—"
    return f"{value:g}" if float(value).is_integer() else f"{value:.2f}"


def recall_text(table: Table, e: Dict[str, Any], column: str) -> tuple:
    """(text, is_best) of the cell of recall ``column`` in the table's entry ``e``: mean ± std."""
    if column not in e:
        return "—", False
    # bold as the reader sees it: every cell that shows the best mean
    return f"{e[column]:.1f} ± {e[column + ' std']:.1f}", f"{e[column]:.1f}" == f"{table.best[column]:.1f}"


def markdown(table: Table) -> str:
    header = table.varied + ["n"] + [label(c) for c in table.recall] + table.cost
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for e in table.entries:
        cells = [config_cell(e.get(k)) for k in table.varied] + [str(e["n"])]
        for c in table.recall:
            text, bold = recall_text(table, e, c)
            cells.append(f"**{text}**" if bold else text)
        cells += [cost_cell(e.get(c)) for c in table.cost]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("R@N in percent, mean ± std over n seeds; best of each column in bold.")
    if table.apart:
        lines += ["", "Not averaged in (failed or stopped trials):", ""]
        for r in table.apart:
            error = f": {r['error']}" if r.get("error") else ""
            lines.append(f"- {r.get('trial_name') or r['trial_id']} (seed {r['seed']}) {r['status']}{error}")
    return "\n".join(lines) + "\n"


def csv_text(table: Table) -> str:
    header = table.varied + ["config_key", "n"]
    for c in table.recall:
        header += [f"{label(c)} mean", f"{label(c)} std"]
    for c in table.cost:
        header += [c, f"{c} std"]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    for e in table.entries:
        line = [e.get(k) for k in table.varied] + [e["config_key"], e["n"]]
        for c in table.recall + table.cost:
            line += [e.get(c), e.get(f"{c} std")]
        writer.writerow(["" if v is None else v for v in line])
    return buffer.getvalue()


_TEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def tex_escape(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in text)


def latex(table: Table) -> str:
    header = [tex_escape(k) for k in table.varied] + ["n"] + [tex_escape(label(c)) for c in table.recall]
    header += [tex_escape(c) for c in table.cost]
    lines = [
        r"\begin{tabular}{" + "l" * len(table.varied) + "r" * (len(header) - len(table.varied)) + "}",
        r"\hline",
        " & ".join(header) + r" \\",
        r"\hline",
    ]
    for e in table.entries:
        cells = [tex_escape(config_cell(e.get(k))) for k in table.varied] + [str(e["n"])]
        for c in table.recall:
            text, bold = recall_text(table, e, c)
            text = text.replace("±", r"$\pm$")
            cells.append(r"\textbf{" + text + "}" if bold else text)
        cells += [cost_cell(e.get(c)) for c in table.cost]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\hline", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_tables(table: Table, out: Path) -> List[Path]:
    from vgray.atomic import write_bytes

    written = []
    for name, text in (("table.md", markdown(table)), ("table.csv", csv_text(table)), ("table.tex", latex(table))):
        write_bytes(out / name, text.encode())
        written.append(out / name)
    return written
