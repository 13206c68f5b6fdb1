"""``report.html``: one static page per sweep with its table, every figure and the prediction grids.

The page needs no network to be viewed: no script, font or style from elsewhere. Images are
referenced by relative path (the PNGs lie beside the page, the grids in ``predictions/``): they are
already files there, so embedding them would double the folder's size, and the page stays small
enough to open and diff; the folder moves as a whole. Every value read from the results is
escaped, and a URL read from them (the dashboard's, from ``plan.json``) becomes a link only when it
is http(s): never a ``javascript:`` or ``data:`` one. A few lines of inline script mark the ``<body>`` on ``load`` with how many images loaded
(``data-images``, ``data-images-loaded``) and how many table rows there are (``data-table-rows``),
which a headless browser reads back to check the page.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Dict, List, Optional
from urllib.parse import quote, urlsplit

from vgray.report.tables import Table, config_cell, cost_cell, label, recall_text

PAGE = "report.html"

STYLE = """
body { font-family: sans-serif; margin: 1.5em auto; max-width: 1100px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
.status { background: #f3f6fa; border: 1px solid #d5dde8; padding: .6em .9em; }
.status.running { background: #fff8e6; border-color: #e8d9a8; }
.wide { overflow-x: auto; }
table.results { border-collapse: collapse; font-size: .9em; }
table.results th, table.results td { border: 1px solid #ccc; padding: .3em .6em; text-align: right; }
table.results th { background: #eef1f5; }
table.results td.config { text-align: left; }
figure { display: inline-block; margin: .6em 1em .6em 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: .85em; color: #555; }
.grids img { display: block; margin: .4em 0; border: 1px solid #ddd; }
.note { color: #555; font-size: .9em; }
"""

CHECK = """
window.addEventListener("load", function () {
  var images = document.images, loaded = 0;
  for (var i = 0; i < images.length; i++) {
    if (images[i].complete && images[i].naturalWidth > 0) loaded++;
  }
  document.body.setAttribute("data-images", images.length);
  document.body.setAttribute("data-images-loaded", loaded);
  document.body.setAttribute("data-table-rows", document.querySelectorAll("table.results tbody tr").length);
});
"""


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


def link(text: str) -> str:
    """``text`` as a link when it is an http(s) URL (:func:`web_url`), else as plain escaped text:
    a ``javascript:`` or ``data:`` URL from a results folder never becomes a live link."""
    url = web_url(text)
    if url is None:
        return f"<code>{escape(str(text))}</code> (not linked: only http and https URLs are)"
    return f'<a href="{escape(url)}">{escape(url)}</a>'


def _href(path: Path, out: Path) -> str:
    """A relative URL to ``path`` (file names may hold ``#``, ``?``, ``%``), escaped for an attribute."""
    return escape(quote(path.relative_to(out).as_posix()))


@dataclass
class Progress:
    """How far the sweep has come: rows written against the rows its plan announces."""
    sweep: str
    done: int                       # finished rows (status ok)
    apart: int                      # failed or stopped rows
    expected: Optional[int] = None  # from plan.json; None when the sweep wrote no plan
    running: Optional[bool] = None  # None when unknown (no plan)
    dashboard: str = "http://127.0.0.1:8265"

    def text(self) -> str:
        apart = f", {self.apart} failed or stopped" if self.apart else ""
        if self.expected is None:
            return (f"{self.done} trials finished{apart} (the sweep wrote no plan.json, so how many it runs "
                    f"is not known).")
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


def _table_html(table: Table) -> str:
    head = [escape(k) for k in table.varied] + ["n"] + [escape(label(c)) for c in table.recall]
    head += [escape(c) for c in table.cost]
    lines = ['<div class="wide"><table class="results">', "<thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead>",
             "<tbody>"]
    for e in table.entries:
        cells = [f'<td class="config">{escape(config_cell(e.get(k)))}</td>' for k in table.varied]
        cells.append(f"<td>{escape(str(e['n']))}</td>")
        for c in table.recall:
            text, bold = recall_text(table, e, c)
            cells.append(f"<td><strong>{escape(text)}</strong></td>" if bold else f"<td>{escape(text)}</td>")
        cells += [f"<td>{escape(cost_cell(e.get(c)))}</td>" for c in table.cost]
        lines.append(f'<tr data-config="{escape(str(e["config_key"]))}">' + "".join(cells) + "</tr>")
    lines += ["</tbody>", "</table></div>",
              '<p class="note">R@N in percent, mean ± std over n seeds; best of each column in bold. '
              'Also as <a href="table.md">Markdown</a>, <a href="table.csv">CSV</a>, '
              '<a href="table.tex">LaTeX</a>.</p>']
    if table.apart:
        lines.append("<p>Not averaged in (failed or stopped trials):</p><ul>")
        for r in table.apart:
            error = f": {r['error']}" if r.get("error") else ""
            name = r.get("trial_name") or r["trial_id"]
            lines.append(f"<li>{escape(str(name))} (seed {escape(str(r['seed']))}) "
                         f"{escape(str(r['status']))}{escape(str(error))}</li>")
        lines.append("</ul>")
    return "\n".join(lines)


def _figures_html(figures: List[Path], skipped: Dict[str, str], out: Path) -> str:
    lines = []
    for png in figures:
        data = png.with_suffix(".csv")
        link = f' (<a href="{_href(data, out)}">data</a>)' if data.is_file() else ""
        lines.append(f'<figure><img src="{_href(png, out)}" alt="{escape(png.stem)}">'
                     f"<figcaption>{escape(png.stem)}{link}</figcaption></figure>")
    if not figures:
        lines.append("<p>No figure: the rows allow none.</p>")
    if skipped:
        lines.append('<p class="note">Not drawn:</p><ul class="note">')
        lines += [f"<li>{escape(name)}: {escape(why)}</li>" for name, why in skipped.items()]
        lines.append("</ul>")
    return "\n".join(lines)


def _grids_html(grids: Optional[Grids], note: Optional[str], out: Path) -> str:
    if grids is None:
        return f"<p>{escape(note)}</p>" if note else ""
    which = "the queries whose top-1 is wrong" if grids.failures_only else "the first queries"
    lines = [f"<p>Model of trial <code>{escape(grids.trial)}</code> (the best config, {escape(grids.config)}): "
             f"{len(grids.files)} grids of {escape(which)}, each query (blue) beside its top {grids.k} database "
             f"images, framed green within {grids.threshold:g} m of the query and red otherwise; the distance in "
             f"metres under each.</p>", '<div class="grids">']
    lines += [f'<img src="{_href(f, out)}" alt="{escape(f.stem)}" title="{escape(f.stem)}">' for f in grids.files]
    lines.append("</div>")
    if not grids.files:
        lines.append("<p>No query to show (no failures).</p>")
    return "\n".join(lines)


def write_page(out: Path, table: Table, figures: List[Path], skipped: Dict[str, str], progress: Progress,
               grids: Optional[Grids] = None, grids_note: Optional[str] = None) -> Path:
    """Write ``out/report.html`` (atomically) and return its path."""
    from vgray.atomic import write_bytes
    made = time.strftime("%Y-%m-%d %H:%M:%S")
    status = "running" if progress.running else ""
    body = [
        f"<h1>Sweep {escape(progress.sweep)}</h1>",
        f'<p class="status {status}">{escape(progress.text())} Ray dashboard (while the sweep runs): '
        f"{link(progress.dashboard)}. "
        f"Page made {escape(made)}.</p>",
        "<h2>Table</h2>", _table_html(table),
        "<h2>Figures</h2>", _figures_html(figures, skipped, out),
    ]
    if grids is not None or grids_note:
        body += ["<h2>Prediction grids</h2>", _grids_html(grids, grids_note, out)]
    page = "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>vgray report: {escape(progress.sweep)}</title>", f"<style>{STYLE}</style>",
        f"<script>{CHECK}</script>", "</head>", "<body>", *body, "</body>", "</html>", ""])
    path = out / PAGE
    write_bytes(path, page.encode("utf-8"))
    return path
