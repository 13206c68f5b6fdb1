"""``vgray report``: the paper's tables and figures from the rows of real sweeps run here (a tiny
eval sweep over test.knn x data.resize_fraction with 2 seeds, a tiny train sweep over an
augmentation strength that keeps its models), the numbers checked against the rows; report.html
opened in headless Chromium; the live view (a running sweep's folder, the results actor); and the
bad inputs (exit 2, one line)."""
import csv
import json
import os
import re
import shutil
import subprocess
import tempfile
from html import escape
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from vgray.cli import main
from vgray.report.figures import pareto_front

BASE = {"data": {"root": "synthetic:tiny", "resize": [32, 48], "num_workers": 0},
        "model": {"pretrained": "none", "aggregation": "gem"},
        "train": {"queries_per_epoch": 10, "cache_refresh_rate": 10, "negs_num_per_query": 2,
                  "neg_samples_num": 40, "epochs": 1, "lr": 0.001},
        "test": {"recall_values": [1, 5], "batch_size": 64}}
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
    schema = pa.schema([("config_key", pa.string()), ("seed", pa.int64()), ("status", pa.string()),
                        ("trial_id", pa.string())])
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
        dominated = {i for i in range(n) for j in range(n)
                     if (cost[j] <= cost[i] and recall[j] > recall[i]) or (cost[j] < cost[i] and recall[j] >= recall[i])}
        front = pareto_front(list(cost), list(recall))
        assert {(cost[i], recall[i]) for i in front} == {(cost[i], recall[i]) for i in range(n) if i not in dominated}
        assert len(front) == len({(cost[i], recall[i]) for i in front})


# -- slow: real sweeps --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_local(tiny_root):
    import ray
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, namespace="vgray", log_to_driver=False)
    yield ray
    ray.shutdown()


def run_sweep(tmp: Path, name: str, **raw) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "base": BASE, "resources": {"cpu": 1},
                                    "storage": str(tmp / "store"), **raw}))
    assert main(["sweep", str(path)]) == 0
    return tmp / "store" / name


@pytest.fixture(scope="module")
def eval_sweep(ray_local, tmp_path_factory) -> Path:
    """2 index types x 2 resolutions x 2 seeds, task eval."""
    return run_sweep(tmp_path_factory.mktemp("eval"), "knn_res", task="eval", repeats=2,
                     grid={"test.knn": ["Flat", "HNSW8"], "data.resize_fraction": [1.0, 0.5]})


@pytest.fixture(scope="module")
def train_sweep(ray_local, tmp_path_factory) -> Path:
    """Training with and without a brightness augmentation, one seed each; the models are kept."""
    return run_sweep(tmp_path_factory.mktemp("train"), "aug", grid={"train.augmentation.brightness": [0.0, 0.5]},
                     keep_models=True)


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
                vals = [r[f"test/{column}"] for r in got if r["test.knn"] == knn and r["data.resize_fraction"] == fraction]
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
        vals = [r["test/synthetic_tiny/R@1"] for r in got
                if r["test.knn"] == knn and r["data.resize_fraction"] == float(p["data.resize_fraction"])]
        assert float(p["R@1"]) == pytest.approx(np.mean(vals)) and float(p["R@1 std"]) == pytest.approx(np.std(vals, ddof=1))
    # Fig. 4a: matching time against database size x dim, with the extraction time
    fig4a = png_with_csv(out, "fig4a_matching_time")
    size = got[0]["database"] * got[0]["features_dim"]
    assert len(fig4a) == 4 and all(float(p["database x dim"]) == size for p in fig4a)
    # Fig. 4b: recall against matching time per index, labelled with its memory
    fig4b = png_with_csv(out, "fig4b_knn")
    for p in fig4b:
        series = dict(s.split("=", 1) for s in p["series"].split(", "))
        group = [r for r in got if r["test.knn"] == series["knn"]
                 and r["data.resize_fraction"] == float(series["resize_fraction"])]
        assert len(group) == 2
        assert float(p["index_memory_mb"]) == pytest.approx(np.mean([r["index_memory_mb"] for r in group]))
        assert float(p["matching_ms"]) == pytest.approx(np.mean([r["matching_ms"] for r in group]))
    # a Pareto front per cost column; its points are not beaten by any other
    for cost in ("features_dim", "gflops", "extraction_ms", "matching_ms", "index_memory_mb"):
        front = png_with_csv(out, f"pareto_{cost}")
        assert len(front) == 4
        on = [p for p in front if p["on_front"] == "True"]
        assert on and all(not (float(q[cost]) <= float(p[cost]) and float(q["R@1"]) > float(p["R@1"]))
                          for p in on for q in front)
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
    assert (out / "table.md").is_file() and (out / "pareto_gflops.png").is_file()
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
    table = pa.concat_tables([pq.read_table(eval_sweep / "results.parquet"), pq.read_table(train_sweep / "results.parquet")],
                             promote_options="default")
    pq.write_table(table, mixed / "results.parquet")
    assert main(["report", str(mixed)]) == 2
    assert "mixes rows of different sweeps" in one_error_line(capsys)
    assert not (mixed / "report").exists() or not list((mixed / "report").iterdir())


# -- report.html in a real browser, prediction grids, the live view ---------------------------------

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"]


def chromium(*args: str) -> subprocess.CompletedProcess:
    """Headless Chromium (Debian's package) with a throwaway profile; skipped where it is absent,
    failed when CI is set (CI installs it)."""
    exe = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (CI installs Debian's chromium package in .ci/run)")
        pytest.skip("chromium is not installed (apt-get install chromium); report.html is not checked in a browser")
    with tempfile.TemporaryDirectory(prefix="vgray-chromium-") as profile:
        done = subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=120)
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
    assert "https://" not in html and "<link" not in html and "src=\"http" not in html
    sources = [unquote(s) for s in re.findall(r'<img src="([^"]+)"', html)]
    figures = sorted(p.name for p in out.glob("*.png"))
    grids = sorted(p.relative_to(out).as_posix() for p in (out / "predictions").glob("*.png"))
    assert len(grids) == 3 and sorted(sources) == sorted(figures + grids)
    # the browser: every image loaded, one table row per config of the sweep, and a screenshot
    shot = tmp_path / "shot.png"
    dom = chromium("--virtual-time-budget=10000", "--dump-dom", f"--screenshot={shot}", "--window-size=1200,1600",
                   page.as_uri()).stdout
    marks = body_attributes(dom)
    configs = {r["config_key"] for r in rows(train_sweep)}
    assert marks["data-images"] == str(len(sources)) and marks["data-images-loaded"] == str(len(sources))
    assert marks["data-table-rows"] == str(len(configs)) == "2"
    for brightness in ("0.0", "0.5"):
        row = next(r for r in rows(train_sweep) if r["train.augmentation.brightness"] == float(brightness))
        cell = f"{row['test/synthetic_tiny/R@1']:.1f} ± 0.0"
        assert re.search(rf"<td class=\"config\">{re.escape(brightness)}</td><td>1</td><td>(<strong>)?{re.escape(cell)}", dom)
    assert "Sweep finished: 2 of 2 trials done" in dom
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
    assert "keep_models" in html and html.count('<tr data-config=') == 4
    assert main(["report", str(eval_sweep), "--out", str(out), "--failures-only"]) == 2
    assert "--predictions" in one_error_line(capsys)


@pytest.mark.slow
def test_live_view_of_a_running_sweep(eval_sweep, tmp_path, capsys):
    plan = json.loads((eval_sweep / "plan.json").read_text())
    assert plan["trials"] == 8 and plan["finished"] and plan["sweep"] == "knn_res"
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
        assert live["markdown"] == summary_markdown(live["rows"]) and live["markdown"].count("\n| ") == len(live["rows"])
    finally:
        ray.kill(actor)
    with pytest.raises(ValueError):
        live_summary("no-such-sweep")
