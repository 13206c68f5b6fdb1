"""``vgray report``: the paper's tables and figures from the rows of real sweeps run here (a tiny
eval sweep over test.knn x data.resize_fraction with 2 seeds, a tiny train sweep over an
augmentation strength that keeps its models), the numbers checked against the rows; report.html
opened in headless Chromium; the live view (a running sweep's folder, the results actor); and the
bad inputs (exit 2, one line). Without Ray, from rows made by the results model: the page's set-up
block, figure grid and captions, skipped-figure reasons and failed trials read back with an HTML
parser (hostile names and errors escaped), plan.json files of any shape, and the page in Chromium
(figures side by side, a header click sorting the table by value)."""

import csv
import json
import os
import re
import shutil
import subprocess
import tempfile
from html import escape, unescape
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote, unquote

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import SWEEP_BASE
from hypothesis import given, settings
from hypothesis import strategies as st

from vgray.cli import main
from vgray.report.figures import pareto_front
from vgray.results import SETUP_KEYS

BASE = SWEEP_BASE
PNG = b"\x89PNG\r\n\x1a\n"


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


# -- fast: bad input that needs no sweep, and the Pareto front against brute force ------------------


def test_missing_folder_or_results_file_or_rows_is_refused_in_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "does not exist" in one_error_line(capsys)
    assert main(["report", str(tmp_path)]) == 2
    assert "holds no results.parquet" in one_error_line(capsys)
    (tmp_path / "sweep_a").mkdir()
    schema = pa.schema(
        [("config_key", pa.string()), ("seed", pa.int64()), ("status", pa.string()), ("trial_id", pa.string())]
    )
    pq.write_table(schema.empty_table(), tmp_path / "sweep_a" / "results.parquet")
    assert main(["report", str(tmp_path)]) == 2  # the storage folder above the sweeps
    assert str(tmp_path / "sweep_a") in one_error_line(capsys)
    assert main(["report", str(tmp_path / "sweep_a")]) == 2
    assert "holds no rows" in one_error_line(capsys)
    (tmp_path / "sweep_a" / "results.parquet").write_text("not parquet")
    assert main(["report", str(tmp_path / "sweep_a")]) == 2
    assert "not a readable parquet file" in one_error_line(capsys)
    assert main(["report", str(tmp_path / "sweep_a"), "--figure", "fig9"]) == 2
    line = one_error_line(capsys)
    assert "fig9" in line and "pareto" in line
    assert main(["report", str(tmp_path / "sweep_a"), "--recall", "1,x"]) == 2
    assert "--recall" in one_error_line(capsys)


def test_pareto_front_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 12))
        cost = rng.integers(0, 5, n).astype(float)
        recall = rng.integers(0, 5, n).astype(float)
        # brute force: i is on the front unless some j costs no more and recalls more, or recalls as
        # much for less cost; among exact duplicates the first in (cost, -recall) order is kept
        dominated = {
            i
            for i in range(n)
            for j in range(n)
            if (cost[j] <= cost[i] and recall[j] > recall[i]) or (cost[j] < cost[i] and recall[j] >= recall[i])
        }
        front = pareto_front(list(cost), list(recall))
        assert {(cost[i], recall[i]) for i in front} == {(cost[i], recall[i]) for i in range(n) if i not in dominated}
        assert len(front) == len({(cost[i], recall[i]) for i in front})


@pytest.mark.parametrize(
    "values,why",
    [
        ([0.3990, 0.3995, 0.3990], "gflops spans 0.3990–0.3995 (0.13 %)"),
        ([256, 256], "gflops has one value (256)"),
        ([-2.0, -2.01], "gflops spans -2.010–-2.000 (0.5 %)"),
        ([100.0, 100.5], "gflops spans 100.0–100.5 (0.5 %)"),
        ([100.0, 101.0], "gflops spans 100.0–101.0 (0.99 %)"),
        ([99.0, 100.0], None),  # 1 % of the largest: drawn
        ([0.0, 1e-9], None),  # tiny numbers, but far apart for their size
        ([], None),
    ],
)
def test_an_x_axis_of_one_value_or_within_1_percent_is_flat(values, why):
    from vgray.report.figures import flat_axis

    assert flat_axis(values, "gflops") == why


# -- fast: report.html from rows made by the results model (no Ray) ---------------------------------

EVIL = "<script>alert('x')</script>"
# R@1 of each config's two seeds: means 9.5, 100, 40.5, 75 (sorted as text, "9.5" would come first)
SCORES = {
    ("Flat", 1.0): (9.0, 10.0),
    ("Flat", 0.5): (100.0, 100.0),
    ("HNSW8", 1.0): (40.0, 41.0),
    ("HNSW8", 0.5): (75.0, 75.0),
}


def _made_rows():
    """Rows of a finished 4-config, 2-seed eval sweep as the results model writes them: GFLOPs
    0.3990 or 0.3995 (within 1 %), one descriptor size, the index memory unknown for one config;
    then a failed trial whose name and error are markup, and a stopped one."""
    from vgray.config import load_config
    from vgray.results import make_row

    rows = []
    for i, ((knn, fraction), scores) in enumerate(SCORES.items()):
        for seed, score in enumerate(scores):
            cfg = load_config(
                base=BASE, overrides=[f"seed={seed}", f"test.knn={knn}", f"data.resize_fraction={fraction}"]
            )
            metrics = {
                "test/tiny/R@1": score,
                "gflops": 0.3990 + 0.0005 * (i % 2),
                "features_dim": 256,
                "matching_ms": 0.5 + i + 0.1 * seed,
                "extraction_ms": 3.0 + 2 * i,
                "database": 100 * 10 ** (i // 2),
                "queries": 10,
            }
            if i:
                metrics["index_memory_mb"] = 0.25 * i
            rows.append(make_row(cfg, f"t{i}{seed}", f"{knn}-{fraction}-s{seed}", metrics))
    cfg = load_config(base=BASE, overrides=["seed=2", "test.knn=Flat"])
    rows.append(make_row(cfg, "tf", EVIL, {}, status="failed", error=f"RuntimeError: {EVIL} & more"))
    rows.append(make_row(load_config(base=BASE, overrides=["seed=3"]), "ts", "stopped-trial", {}, status="stopped"))
    return rows


def _made_sweep(folder: Path, setup=None) -> Path:
    from vgray.results import make_plan, rows_to_parquet

    folder.mkdir(parents=True)
    (folder / "results.parquet").write_bytes(rows_to_parquet(_made_rows()))
    (folder / "plan.json").write_bytes(
        make_plan("made", "eval", 8, ["test.knn", "data.resize_fraction"], False, None, finished=True, setup=setup)
    )
    return folder


SETUP = {
    "base": {**BASE, "note": f"</pre>{EVIL}"},
    "grid": {"test.knn": ["Flat", "HNSW8"], "data.resize_fraction": [1.0, 0.5]},
    "variants": [],
    "search": None,
    "scheduler": None,
    "seeds": [0, 1],
    "resources": {"cpu": 1.0, "gpu": 0.0},
    "storage": "/data/store/made",
    "cluster": {"address": "10.0.0.7:6379", "nodes": 3, "cpus": 24.0, "gpus": 2.0},
}


@pytest.fixture(scope="module")
def made_report(tmp_path_factory):
    """The report (folder, page text, printed lines) of :func:`_made_sweep` with a full set-up."""
    import contextlib
    import io

    folder = _made_sweep(tmp_path_factory.mktemp("made") / "made", SETUP)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["report", str(folder)]) == 0
    return folder / "report", (folder / "report" / "report.html").read_text(), printed.getvalue()


class PageParts(HTMLParser):
    """What a report page holds, as a browser's parser reads it: the text of every element by its
    tag and classes, the set-up's (term, value) pairs, the rows of each table, and the scripts."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.stack, self.texts, self.tables, self.setup, self.scripts, self.figures = [], [], {}, [], [], []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("br", "img", "meta"):
            if tag == "img" and any(t == "figure" for t, _, _ in self.stack):
                self.figures[-1]["img"] = attrs.get("src")
            return
        self.stack.append((tag, attrs.get("class") or "", []))
        if tag == "tr":
            table = next(c for t, c, _ in reversed(self.stack) if t == "table")
            self.tables.setdefault(table, []).append([])
        if tag == "figure":
            self.figures.append({})

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1][0] != tag:
            return
        tag, css, parts = self.stack.pop()
        text = "".join(parts).strip()
        if self.stack:
            self.stack[-1][2].append("".join(parts))  # the enclosing element's text holds this one's
        self.texts.append((tag, css, text))
        if tag in ("td", "th"):
            table = next(c for t, c, _ in reversed(self.stack) if t == "table")
            self.tables[table][-1].append(text)
        if tag == "dd":
            self.setup.append((self.text_of("dt")[-1], text))
        if tag == "script":
            self.scripts.append(text)
        if tag == "figcaption":
            self.figures[-1]["caption"] = text

    def handle_data(self, data):
        if self.stack:
            self.stack[-1][2].append(data)

    def text_of(self, tag, css=None):
        return [t for g, c, t in self.texts if g == tag and (css is None or css in c.split())]


def test_report_page_shows_the_setup_the_figure_grid_the_skips_and_the_failed_trials(made_report):
    out, html, printed = made_report
    page = PageParts(html)
    # the set-up block: every item of the plan, hostile text escaped (it reads back as text)
    setup = dict((k, v) for k, v in page.setup)
    assert setup["Task"] == "eval" and setup["Seeds"] == "0, 1 (2 per config)"
    assert setup["Varied"] == "test.knn: Flat, HNSW8\ndata.resize_fraction: 1.0, 0.5"
    assert setup["Resources per trial"] == "cpu 1, gpu 0"
    assert setup["Cluster"] == "10.0.0.7:6379 (3 nodes, 24 CPUs, 2 GPUs)"
    assert setup["Storage"] == "/data/store/made" and setup["Ended"] == setup["Started"] != "not recorded"
    assert yaml.safe_load(setup["Base config"]) == SETUP["base"]
    # one script only, the page's own: the sorting and the marks; nothing from the network
    assert len(page.scripts) == 1 and "vgraySort" in page.scripts[0] and 'addEventListener("click"' in page.scripts[0]
    assert EVIL not in html and "<link" not in html and 'src="http' not in html
    # the table: one row per finished config, sortable
    results = page.tables["results sortable"]
    assert results[0][:4] == ["test.knn", "data.resize_fraction", "n", "tiny/R@1"] and len(results) == 1 + 4
    cells = sorted(f"{np.mean(s):.1f} ± {np.std(s, ddof=1):.1f}" for s in SCORES.values())
    assert sorted(r[3] for r in results[1:]) == cells
    # the failed and the stopped trial with their error lines, the markup shown as text
    apart = page.tables["apart sortable"]
    assert apart[0] == ["trial", "seed", "status", "error"]
    assert apart[1] == [EVIL, "2", "failed", f"RuntimeError: {EVIL} & more"]
    assert apart[2][:3] == ["stopped-trial", "3", "stopped"]
    # the figures in a CSS grid, each with its caption; the ones not drawn with their reason
    assert re.search(r"\.figures\s*\{[^}]*display:\s*grid", html)
    drawn = sorted(p.name for p in out.glob("*.png"))
    assert sorted(f["img"] for f in page.figures) == drawn and len(drawn) >= 4
    for f in page.figures:
        stem = f["img"][: -len(".png")]
        assert f["caption"].startswith(f"{stem} (data): ") and "a point is one config" in f["caption"]
    pareto = next(f for f in page.figures if f["img"] == "pareto_matching_ms.png")
    assert "matching_ms (ms per query)" in pareto["caption"] and "Pareto front" in pareto["caption"]
    skipped = page.text_of("li")
    assert "pareto vs gflops: not drawn: gflops spans 0.3990–0.3995 (0.13 %)" in skipped
    assert "pareto vs features_dim: not drawn: features_dim has one value (256)" in skipped
    assert "skipped figure pareto vs gflops: gflops spans 0.3990–0.3995 (0.13 %)" in printed
    assert not (out / "pareto_gflops.png").exists() and not (out / "pareto_features_dim.png").exists()


def test_figure_numbers_are_the_means_over_seeds(made_report):
    out = made_report[0]
    rows = _made_rows()
    with open(out / "fig4a_matching_time.csv") as f:
        fig4a = list(csv.DictReader(f))
    assert len(fig4a) == 4
    for p in fig4a:
        group = [r for r in rows if r["config_key"] == p["config_key"] and r["status"] == "ok"]
        assert len(group) == 2 and float(p["database x dim"]) == group[0]["database"] * 256
        assert float(p["matching_ms"]) == pytest.approx(np.mean([r["matching_ms"] for r in group]))
        assert float(p["extraction_ms"]) == pytest.approx(np.mean([r["extraction_ms"] for r in group]))
    with open(out / "pareto_index_memory_mb.csv") as f:
        assert len(list(csv.DictReader(f))) == 3  # the config without the column is left out


def test_report_of_an_old_plan_or_none_says_not_recorded(tmp_path, capsys):
    from vgray.results import make_plan, parse_plan

    old = _made_sweep(tmp_path / "old")  # a plan as written before the set-up was recorded
    plan = parse_plan((old / "plan.json").read_bytes())
    assert not {"base", "seeds", "cluster", "resources"} & set(plan)
    assert main(["report", str(old)]) == 0
    setup = dict(PageParts((old / "report" / "report.html").read_text()).setup)
    for item in ("Base config", "Seeds", "Resources per trial", "Cluster", "Storage"):
        assert setup[item] == "not recorded", item
    assert setup["Task"] == "eval" and setup["Varied"] == "test.knn\ndata.resize_fraction"
    (old / "plan.json").unlink()  # no plan at all
    assert main(["report", str(old)]) == 0
    setup = dict(PageParts((old / "report" / "report.html").read_text()).setup)
    assert setup["Started"] == setup["Ended"] == setup["Cluster"] == "not recorded"
    # a resumed sweep's plan keeps its start, and the cluster when Ray is gone at the end
    again = parse_plan(
        make_plan(
            "made",
            "eval",
            8,
            [],
            False,
            None,
            earlier=json.dumps({**plan, "started": "earlier", "cluster": SETUP["cluster"]}).encode(),
            finished=True,
            setup={"cluster": None},
        )
    )
    assert again["started"] == "earlier" and again["cluster"] == SETUP["cluster"] and again["finished"]
    capsys.readouterr()


JSON_TEXT = st.lists(st.sampled_from(list("ab :/.-_<>&\"'=;\n") + ["</pre>", "<script>"]), max_size=12).map("".join)
JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) | JSON_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(JSON_TEXT, inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(["task", "trials", "varied", "started", "finished", *SETUP_KEYS]), JSON_VALUE))
def test_any_plan_json_renders_each_set_up_item_as_text(plan):
    """A plan.json of any shape (hand-edited, or from another version) renders: each set-up item
    reads back from the page exactly as it was made, so no value escapes its element."""
    from vgray.report.html import Progress, render_page, setup_items
    from vgray.report.tables import build_table

    rows = _made_rows()
    page = render_page(
        Path("."),
        build_table(rows, ["test.knn", "data.resize_fraction"]),
        [],
        {},
        Progress("made", 8, 2, 8, False),
        plan=plan,
    )
    assert dict(PageParts(page).setup) == {i["label"]: i["text"].strip() for i in setup_items(plan)}
    assert page.count("<script>") == 1


def test_report_page_in_chromium_lays_figures_in_a_grid_and_sorts_by_a_header(made_report, tmp_path):
    out = made_report[0]
    page = (out / "report.html").as_uri()
    # sorted through the header's click handler (#sort= clicks it), numbers by value: 100 > 75 > 40.5 > 9.5
    dom = chromium(
        "--virtual-time-budget=10000",
        "--dump-dom",
        "--window-size=1200,1600",
        page + "#sort=" + quote("tiny/R@1") + ":desc",
    ).stdout
    marks = body_attributes(dom)
    assert marks["data-sorted"] == "3:desc" and marks["data-images"] == marks["data-images-loaded"] != "0"
    table = PageParts(dom).tables["results sortable"]
    assert [r[3].split(" ")[0] for r in table[1:]] == ["100.0", "75.0", "40.5", "9.5"]
    # the figures side by side: two columns at this width, the second figure right of the first
    boxes = [tuple(map(int, b.split(","))) for b in marks["data-figure-boxes"].split(";")]
    assert len(boxes) == len(list(out.glob("*.png")))
    (x0, y0, w0, _), (x1, y1, _, _) = boxes[:2]
    assert y0 == y1 and x1 >= x0 + w0 and len({x for x, _, _, _ in boxes}) == 2
    # an empty cell ("—") comes last whichever way a column is sorted
    for direction in ("", ":desc"):
        dom = chromium("--virtual-time-budget=10000", "--dump-dom", page + "#sort=index_memory_mb" + direction).stdout
        memory = [r[-1] for r in PageParts(dom).tables["results sortable"][1:]]
        assert memory[-1] == "—" and memory[:3] == sorted(memory[:3], key=float, reverse=bool(direction))


# -- slow: real sweeps --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_local(tiny_root):
    import ray

    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, namespace="vgray", log_to_driver=False)
    yield ray
    ray.shutdown()


def run_sweep(tmp: Path, name: str, **raw) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump({"name": name, "base": BASE, "resources": {"cpu": 1}, "storage": str(tmp / "store"), **raw})
    )
    assert main(["sweep", str(path)]) == 0
    return tmp / "store" / name


@pytest.fixture(scope="module")
def eval_sweep(ray_local, tmp_path_factory) -> Path:
    """2 index types x 2 resolutions x 2 seeds, task eval."""
    return run_sweep(
        tmp_path_factory.mktemp("eval"),
        "knn_res",
        task="eval",
        repeats=2,
        grid={"test.knn": ["Flat", "HNSW8"], "data.resize_fraction": [1.0, 0.5]},
    )


@pytest.fixture(scope="module")
def train_sweep(ray_local, tmp_path_factory) -> Path:
    """Training with and without a brightness augmentation, one seed each; the models are kept."""
    return run_sweep(
        tmp_path_factory.mktemp("train"), "aug", grid={"train.augmentation.brightness": [0.0, 0.5]}, keep_models=True
    )


def rows(directory: Path):
    return pq.read_table(directory / "results.parquet").to_pylist()


def md_rows(text: str):
    """The Markdown table as dicts (header -> cell)."""
    lines = [l for l in text.splitlines() if l.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in l.strip("|").split("|")))) for l in lines[2:]]


@pytest.mark.slow
def test_tables_hold_the_mean_and_std_of_the_rows_with_the_best_in_bold(eval_sweep, tmp_path, capsys):
    got = rows(eval_sweep)
    assert len(got) == 8 and all(r["status"] == "ok" for r in got)
    assert all(r["database"] > 0 and r["queries"] > 0 for r in got)  # sizes now kept in sweep rows
    out = tmp_path / "rep"
    assert main(["report", str(eval_sweep), "--out", str(out), "--recall", "1,5"]) == 0
    printed = capsys.readouterr().out
    table = (out / "table.md").read_text()
    assert table in printed
    md = md_rows(table)
    assert len(md) == 4
    with open(out / "table.csv") as f:
        csv_rows = list(csv.DictReader(f))
    tex = (out / "table.tex").read_text()
    assert tex.startswith("\\begin{tabular}") and "\\end{tabular}" in tex
    for n in (1, 5):
        column = f"synthetic_tiny/R@{n}"
        means = {}
        for knn in ("Flat", "HNSW8"):
            for fraction in (1.0, 0.5):
                vals = [
                    r[f"test/{column}"] for r in got if r["test.knn"] == knn and r["data.resize_fraction"] == fraction
                ]
                assert len(vals) == 2
                means[(knn, fraction)] = (np.mean(vals), np.std(vals, ddof=1))
        best = max(f"{m:.1f}" for m, _ in means.values())
        bold_count = 0
        for (knn, fraction), (mean, std) in means.items():
            line = next(r for r in md if r["test.knn"] == knn and r["data.resize_fraction"] == str(fraction))
            assert line["n"] == "2"
            cell = f"{mean:.1f} ± {std:.1f}"
            is_best = f"{mean:.1f}" == best
            assert line[column] == (f"**{cell}**" if is_best else cell)
            tex_cell = cell.replace("±", "$\\pm$")
            assert (("\\textbf{" + tex_cell + "}") in tex) == is_best and tex_cell in tex
            bold_count += is_best
            row = next(r for r in csv_rows if r["test.knn"] == knn and r["data.resize_fraction"] == str(fraction))
            assert float(row[f"{column} mean"]) == pytest.approx(mean)
            assert float(row[f"{column} std"]) == pytest.approx(std)
        assert bold_count >= 1
    # the cost columns follow the recalls, averaged the same way
    for knn in ("Flat", "HNSW8"):
        vals = [r["matching_ms"] for r in got if r["test.knn"] == knn and r["data.resize_fraction"] == 1.0]
        row = next(r for r in csv_rows if r["test.knn"] == knn and r["data.resize_fraction"] == "1.0")
        assert float(row["matching_ms"]) == pytest.approx(np.mean(vals))
    header = list(md[0])
    assert header.index("synthetic_tiny/R@5") < header.index("features_dim") < header.index("matching_ms")


def skip_reasons(html: str) -> dict:
    """The page's "NAME: not drawn: WHY" lines as {NAME: WHY}."""
    return {unescape(name): unescape(why) for name, why in re.findall(r"<li>(.*?): not drawn: (.*?)</li>", html)}


def png_with_csv(out: Path, stem: str) -> list:
    png, table = out / f"{stem}.png", out / f"{stem}.csv"
    assert png.is_file() and png.read_bytes().startswith(PNG) and png.stat().st_size > 1000
    with open(table) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_figures_of_the_eval_sweep_and_the_one_it_cannot_give(eval_sweep, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["report", str(eval_sweep), "--out", str(out), "--figure", "augmentation"]) == 2
    line = one_error_line(capsys)
    assert "figure augmentation" in line and "train.augmentation" in line
    got = rows(eval_sweep)
    # Fig. 3: R@1 against the resize fraction, one line per index type
    fig3 = png_with_csv(out, "fig3_resolution")
    assert len(fig3) == 4
    for p in fig3:
        assert p["series"].startswith("knn=")
        knn = p["series"].split("=", 1)[1]
        vals = [
            r["test/synthetic_tiny/R@1"]
            for r in got
            if r["test.knn"] == knn and r["data.resize_fraction"] == float(p["data.resize_fraction"])
        ]
        assert float(p["R@1"]) == pytest.approx(np.mean(vals)) and float(p["R@1 std"]) == pytest.approx(
            np.std(vals, ddof=1)
        )
    # Fig. 4a: every config searched the same database with descriptors of one size: one x value,
    # so the figure is not drawn and the report says why (its numbers: test_figure_numbers_...)
    sizes = {r["database"] * r["features_dim"] for r in got}
    assert len(sizes) == 1 and not (out / "fig4a_matching_time.png").exists()
    skipped = skip_reasons((out / "report.html").read_text())
    assert skipped["matching_time"] == f"database x dim has one value ({sizes.pop():g})"
    # Fig. 4b: recall against matching time per index, labelled with its memory
    fig4b = png_with_csv(out, "fig4b_knn")
    for p in fig4b:
        series = dict(s.split("=", 1) for s in p["series"].split(", "))
        group = [
            r
            for r in got
            if r["test.knn"] == series["knn"] and r["data.resize_fraction"] == float(series["resize_fraction"])
        ]
        assert len(group) == 2
        assert float(p["index_memory_mb"]) == pytest.approx(np.mean([r["index_memory_mb"] for r in group]))
        assert float(p["matching_ms"]) == pytest.approx(np.mean([r["matching_ms"] for r in group]))
    # a Pareto front per cost column whose config means spread over 1 % or more; its points are not
    # beaten by any other. The others are not drawn, with the reason (features_dim: one value)
    assert skipped["pareto vs features_dim"] == f"features_dim has one value ({got[0]['features_dim']})"
    for cost in ("gflops", "extraction_ms", "matching_ms", "index_memory_mb"):
        means = [np.mean([r[cost] for r in got if r["config_key"] == key]) for key in {r["config_key"] for r in got}]
        if (max(means) - min(means)) / max(means) < 0.01:  # timings can be that close: then not drawn
            assert skipped[f"pareto vs {cost}"].startswith(cost) and not (out / f"pareto_{cost}.png").exists()
            continue
        front = png_with_csv(out, f"pareto_{cost}")
        assert len(front) == 4
        on = [p for p in front if p["on_front"] == "True"]
        assert on and all(
            not (float(q[cost]) <= float(p[cost]) and float(q["R@1"]) > float(p["R@1"])) for p in on for q in front
        )
    assert (out / "pareto_gflops.png").is_file() and (out / "pareto_index_memory_mb.png").is_file()
    assert not list(out.glob("fig2_*"))


@pytest.mark.slow
def test_augmentation_figure_from_a_training_sweep(train_sweep, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["report", str(train_sweep), "--out", str(out), "--figure", "augmentation"]) == 0
    printed = capsys.readouterr().out
    assert "skipped figure knn" in printed and "skipped figure resolution" in printed
    got = rows(train_sweep)
    fig2 = png_with_csv(out, "fig2_augmentation_brightness")
    assert sorted(float(p["train.augmentation.brightness"]) for p in fig2) == [0.0, 0.5]
    for p in fig2:
        row = next(r for r in got if r["train.augmentation.brightness"] == float(p["train.augmentation.brightness"]))
        assert float(p["R@1"]) == pytest.approx(row["test/synthetic_tiny/R@1"]) and p["n"] == "1"
    assert (out / "table.md").is_file()
    # brightness changes no cost but the timings: every config's GFLOPs alike, no Pareto front of them
    gflops = {r["gflops"] for r in got}
    assert len(gflops) == 1 and not (out / "pareto_gflops.png").exists()
    # (one line for the part, or the whole figure's line when no cost of the two rows spreads: the
    # timings of two one-epoch trials can fall within 1 % of each other)
    assert re.search(
        rf"skipped figure pareto( vs gflops)?: .*gflops has one value \({re.escape(f'{gflops.pop():g}')}\)", printed
    ), printed
    # a figure asked for that the sweep lacks: exit 2, one line, and the rest still written
    again = tmp_path / "again"
    assert main(["report", str(train_sweep), "--out", str(again), "--figure", "knn"]) == 2
    assert "test.knn" in one_error_line(capsys)
    assert (again / "table.tex").is_file() and (again / "fig2_augmentation_brightness.png").is_file()


@pytest.mark.slow
def test_rows_of_two_sweeps_mixed_are_refused(eval_sweep, train_sweep, tmp_path, capsys):
    # both sweeps ran the default config (Flat, full resolution, no augmentation) with seed 0
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    table = pa.concat_tables(
        [pq.read_table(eval_sweep / "results.parquet"), pq.read_table(train_sweep / "results.parquet")],
        promote_options="default",
    )
    pq.write_table(table, mixed / "results.parquet")
    assert main(["report", str(mixed)]) == 2
    assert "mixes rows of different sweeps" in one_error_line(capsys)
    assert not (mixed / "report").exists() or not list((mixed / "report").iterdir())


# -- report.html in a real browser, prediction grids, the live view ---------------------------------

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def chromium(*args: str) -> subprocess.CompletedProcess:
    """Headless Chromium (Debian's package) with a throwaway profile; skipped where it is absent,
    failed when CI is set (CI installs it)."""
    exe = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (CI installs Debian's chromium package in .ci/run)")
        pytest.skip("chromium is not installed (apt-get install chromium); report.html is not checked in a browser")
    with tempfile.TemporaryDirectory(prefix="vgray-chromium-") as profile:
        done = subprocess.run(
            [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120
        )
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def body_attributes(dom: str) -> dict:
    body = re.search(r"<body([^>]*)>", dom).group(1)
    return dict(re.findall(r'(data-[\w-]+)="([^"]*)"', body))


@pytest.mark.slow
def test_report_page_renders_in_chromium_with_every_image_and_the_prediction_grids(train_sweep, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "rep"
    assert main(["report", str(train_sweep), "--out", str(out), "--predictions", "3"]) == 0
    printed = capsys.readouterr().out
    page = out / "report.html"
    assert f"open {page}" in printed
    html = page.read_text()
    assert "http://" not in html.replace("http://127.0.0.1:8265", "")  # no network but the dashboard link
    assert "https://" not in html and "<link" not in html and 'src="http' not in html
    sources = [unquote(s) for s in re.findall(r'<img src="([^"]+)"', html)]
    figures = sorted(p.name for p in out.glob("*.png"))
    grids = sorted(p.relative_to(out).as_posix() for p in (out / "predictions").glob("*.png"))
    assert len(grids) == 3 and sorted(sources) == sorted(figures + grids)
    # the browser: every image loaded, one table row per config of the sweep, and a screenshot
    shot = tmp_path / "shot.png"
    dom = chromium(
        "--virtual-time-budget=10000", "--dump-dom", f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()
    ).stdout
    marks = body_attributes(dom)
    configs = {r["config_key"] for r in rows(train_sweep)}
    assert marks["data-images"] == str(len(sources)) and marks["data-images-loaded"] == str(len(sources))
    assert marks["data-table-rows"] == str(len(configs)) == "2"
    for brightness in ("0.0", "0.5"):
        row = next(r for r in rows(train_sweep) if r["train.augmentation.brightness"] == float(brightness))
        cell = f"{row['test/synthetic_tiny/R@1']:.1f} ± 0.0"
        assert re.search(
            rf"<td class=\"config\">{re.escape(brightness)}</td><td>1</td><td>(<strong>)?{re.escape(cell)}", dom
        )
    assert "Sweep finished: 2 of 2 trials done" in dom
    # the set-up the sweep recorded in plan.json, and the figure its equal GFLOPs make pointless
    parts = PageParts(dom)
    setup = dict(parts.setup)
    assert setup["Varied"] == "train.augmentation.brightness: 0.0, 0.5" and setup["Seeds"] == "0 (1 per config)"
    assert setup["Resources per trial"] == "cpu 1, gpu 0" and setup["Task"] == "train"
    assert re.fullmatch(r"[\w.\-]+:\d+ \(1 node, 2 CPUs, 0 GPUs\)", setup["Cluster"]), setup["Cluster"]
    assert yaml.safe_load(setup["Base config"]) == BASE and Path(setup["Storage"]) == train_sweep.resolve()
    assert setup["Started"] <= setup["Ended"] and setup["Ended"] != "not recorded"
    assert any(re.match(r"pareto( vs gflops)?: .*gflops has one value", line) for line in parts.text_of("li")), (
        parts.text_of("li")
    )
    assert len(parts.figures) == len(figures) and all(f["caption"] for f in parts.figures)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 1600)
    assert len(image.getcolors(maxcolors=1 << 20) or []) > 50  # text, table and plots, not a blank page
    if os.environ.get("VGRAY_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["VGRAY_KEEP_SCREENSHOT"])


@pytest.mark.slow
def test_predictions_of_a_sweep_without_kept_models_exit_2_and_the_rest_is_written(eval_sweep, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["report", str(eval_sweep), "--out", str(out), "--predictions", "2"]) == 2
    line = one_error_line(capsys)
    assert "keep_models" in line and "holds no kept models" in line
    assert (out / "table.md").is_file() and (out / "fig3_resolution.png").is_file()
    html = (out / "report.html").read_text()
    assert "keep_models" in html and html.count("<tr data-config=") == 4
    assert main(["report", str(eval_sweep), "--out", str(out), "--failures-only"]) == 2
    assert "--predictions" in one_error_line(capsys)


@pytest.mark.slow
def test_live_view_of_a_running_sweep(eval_sweep, tmp_path, capsys):
    plan = json.loads((eval_sweep / "plan.json").read_text())
    assert plan["trials"] == 8 and plan["finished"] and plan["sweep"] == "knn_res"
    # the set-up the report shows at its top
    assert plan["base"] == BASE and plan["seeds"] == [0, 1] and plan["resources"]["cpu"] == 1
    assert plan["grid"] == {"test.knn": ["Flat", "HNSW8"], "data.resize_fraction": [1.0, 0.5]}
    assert (
        plan["search"] is None and Path(plan["storage"]) == eval_sweep.resolve() and plan["started"] <= plan["finished"]
    )
    import ray

    assert plan["cluster"] == {"address": ray.get_runtime_context().gcs_address, "nodes": 1, "cpus": 2, "gpus": 0}
    # the folder as it is while the sweep runs: its plan not finished, the rows written so far
    live = tmp_path / "knn_res"
    live.mkdir()
    (live / "plan.json").write_text(json.dumps({**plan, "finished": None, "dashboard": "http://10.0.0.5:8265"}))
    assert main(["report", str(live)]) == 2  # no row yet
    assert "0 of 8 trials done" in one_error_line(capsys)
    first = rows(eval_sweep)[:1]  # one row: the table has the sweep's varied columns all the same
    pq.write_table(pa.Table.from_pylist(first), live / "results.parquet")
    assert main(["report", str(live), "--out", str(tmp_path / "one")]) == 0
    assert "Sweep running: 1 of 8 trials done" in capsys.readouterr().out
    one = md_rows((tmp_path / "one" / "table.md").read_text())
    assert len(one) == 1 and one[0]["test.knn"] == first[0]["test.knn"]
    assert one[0]["data.resize_fraction"] == str(first[0]["data.resize_fraction"])
    got = rows(eval_sweep)[:4]
    evil = "<img src=x onerror=alert(1)>"  # a failed trial's error text goes on the page escaped
    got[3] = {**got[3], "status": "failed", "error": evil}
    pq.write_table(pa.Table.from_pylist(got), live / "results.parquet")
    assert main(["report", str(live)]) == 0
    printed = capsys.readouterr().out
    assert "Sweep running: 3 of 8 trials done, 1 failed or stopped" in printed
    html = (live / "report" / "report.html").read_text()
    assert "Sweep running: 3 of 8 trials done" in html and 'href="http://10.0.0.5:8265"' in html
    assert html.count("<tr data-config=") == len({r["config_key"] for r in got[:3]})
    assert evil not in html and escape(evil) in html


@pytest.mark.slow
def test_summary_is_readable_from_the_live_results_actor(eval_sweep, tmp_path):
    import ray

    from vgray.distributed.results import get_results_actor, live_summary, summarize, summary_markdown
    from vgray.report.rows import varied_keys

    got = rows(eval_sweep)
    varied = varied_keys(got)
    actor = get_results_actor("live-view", str(tmp_path / "live-view"), varied)
    try:
        for r in got[:5]:
            assert ray.get(actor.add.remote(r))
        live = live_summary("live-view")
        assert live["count"] == 5 and live["rows"] == summarize(got[:5], varied)
        for entry in live["rows"]:
            vals = [r["test/synthetic_tiny/R@1"] for r in got[:5] if r["config_key"] == entry["config_key"]]
            assert entry["n"] == len(vals) and entry["test/synthetic_tiny/R@1"] == pytest.approx(np.mean(vals))
            assert entry["test/synthetic_tiny/R@1 std"] == pytest.approx(np.std(vals, ddof=1) if len(vals) > 1 else 0.0)
        assert live["markdown"] == summary_markdown(live["rows"]) and live["markdown"].count("\n| ") == len(
            live["rows"]
        )
    finally:
        ray.kill(actor)
    with pytest.raises(ValueError):
        live_summary("no-such-sweep")
