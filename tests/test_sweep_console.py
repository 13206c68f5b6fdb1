"""What a sweep's user sees: one start line, the live table (a row per trial event, naming its varied
value), the summary, the TensorBoard line and the report's path; Ray's and Tune's log lines in
STORAGE/NAME/logs/ray.log, Tune's snapshot warning not raised at all; ``--verbose`` configs.

The sweep runs as the user runs it, ``vgray sweep`` in its own process, so that what Ray prints to
the driver's terminal (through its loggers, or straight to the file descriptors) is read too."""

import logging
import re
import subprocess
import sys

import pytest
from conftest import driver_env, write_sweep

NAME = "console"
RAY_LINE = re.compile(r"\b(INFO|WARNING)\b \S+\.py:\d+ --")  # Ray's log format: "WARNING tune.py:123 -- ..."


@pytest.fixture(scope="module")
def sweep(tiny_root, tmp_path_factory):
    """One two-trial sweep (gem, netvlad) run through the installed command line."""
    tmp = tmp_path_factory.mktemp("console")
    path = write_sweep(
        tmp / "s.yaml",
        {"model.netvlad_clusters": 8},
        name=NAME,
        grid={"model.aggregation": ["gem", "netvlad"]},
        storage=str(tmp / "store"),
        loggers=["mlflow"],
    )  # MLflow logs its store's set-up on a handler of its own
    done = subprocess.run(
        [sys.executable, "-m", "vgray.cli", "sweep", str(path), "--num-cpus", "2"],
        capture_output=True,
        text=True,
        env=driver_env(),
        timeout=600,
    )
    return done, tmp / "store" / NAME


@pytest.mark.slow
def test_console_is_the_start_line_the_live_table_and_the_end(sweep):
    done, directory = sweep
    assert done.returncode == 0, done.stderr[-3000:]
    console = done.stdout + done.stderr
    # No log line of Ray or Tune, no box of Tune's output engine.
    assert not [line for line in console.splitlines() if RAY_LINE.search(line)], console
    for word in (
        "experiment_state.py",
        "tune.py",
        "worker.py",
        "Trial status",
        "╭",
        "/tmp/ray/session",
        "INFO mlflow",
        "WARNING mlflow",
    ):
        assert word not in console, word
    lines = done.stdout.splitlines()
    log = directory / "logs" / "ray.log"
    assert lines[0] == (
        f"sweep {NAME}: 2 trials; Ray dashboard: {lines[0].split('Ray dashboard: ')[1].split(';')[0]}; "
        f"results in {directory}; Ray's log in {log}"
    )
    assert lines[0].split("Ray dashboard: ")[1].startswith("http://127.0.0.1:")

    # The live table: a header, then rows whose varied column holds the trial's value.
    header = lines[1].split()
    assert header[:3] == ["trial", "status", "aggregation"] and header[3:] == ["epoch", "loss", "R@1", "R@5", "time"]
    table = [line.split() for line in lines[2 : lines.index("")]]
    assert table and all(len(row) == len(header) for row in table), table
    for row in table:
        assert row[0] in ("gem-s0", "netvlad-s0") and row[2] == row[0].split("-")[0], row
    statuses = {(row[0], row[1]) for row in table}
    assert {("gem-s0", "done"), ("netvlad-s0", "done"), ("gem-s0", "running")} <= statuses
    done_rows = [row for row in table if row[1] == "done"]
    assert all(row[3] == "1" and 0 <= float(row[6]) <= 100 for row in done_rows)  # epoch 1, val R@5
    assert len(table) == len({tuple(row) for row in table})  # printed on change only

    # The end: the summary, TensorBoard on the sweep's folder, the report written.
    assert f"sweep {NAME}: 2 trials, results in {directory}" in lines
    assert any(line.startswith("| gem | 1 |") for line in lines) and any(
        line.startswith("| netvlad | 1 |") for line in lines
    )
    assert f"TensorBoard: tensorboard --logdir {directory}" in lines
    assert f"MLflow: mlflow ui --backend-store-uri sqlite:///{directory}/mlflow.db (experiment {NAME})" in lines
    assert lines[-1] == f"report: {directory / 'report' / 'report.html'}"
    assert (directory / "report" / "report.html").is_file()

    # Ray's lines are in the log, Tune's snapshot warning among none of them (its cause is gone).
    text = log.read_text()
    assert "Started a local Ray instance" in text and "tune.py" in text
    assert "Creating initial MLflow database tables" in text  # MLflow's lines are routed there too
    assert "snapshotting has been triggered" not in text and "\x1b[" not in text
    # Tune kept up to 3 checkpoints per trial while it ran; a finished trial keeps its last one.
    for trial in [p for p in directory.iterdir() if p.name.startswith(("gem-s0_", "netvlad-s0_"))]:
        assert len([c for c in trial.iterdir() if c.name.startswith("checkpoint_")]) == 1, trial


def _trial(config):
    from ray.tune.experiment import Trial

    return Trial("vgray_trainable", config=config, stub=True, trial_name_creator=lambda t: "gem-s0")


def _spec(tmp_path):
    from vgray.distributed.spec import load_sweep

    path = write_sweep(
        tmp_path / "s.yaml", name=NAME, grid={"model.aggregation": ["gem", "netvlad"]}, storage=str(tmp_path / "store")
    )
    return load_sweep(str(path))


@pytest.mark.parametrize("verbose", [False, True])
def test_verbose_prints_each_trial_config_and_leaves_ray_lines_on_the_console(tmp_path, capsys, verbose):
    """The live table and the log routing of one driver, without a sweep: a started trial's row
    (and with --verbose its config: the keys that differ from the defaults); Ray's loggers into
    the log file (ERROR lines also on stderr, one line) unless --verbose, put back afterwards."""
    from ray import tune

    from vgray.distributed.live import LiveTable, console, open_log
    from vgray.distributed.spec import GRID_KEY, param_space

    spec = _spec(tmp_path)
    space = param_space(spec, None, tune.grid_search, None)
    trial = _trial({**space, GRID_KEY: space[GRID_KEY]["grid_search"][0]})  # as Tune resolves the grid
    log = tmp_path / "logs" / "ray.log"
    before = list(logging.getLogger("ray").handlers)
    with console(log, verbose):
        LiveTable.for_sweep(spec).on_trial_start(0, [trial], trial)
        logging.getLogger("ray.tune.tune").warning("a Tune warning")
        assert not log.parent.exists()  # kept until the sweep is under way: a refusal leaves no folder
        open_log()
        logging.getLogger("ray.tune.tune").error("a Tune error\nTraceback (most recent call last):\n  more")
        during = list(logging.getLogger("ray").handlers)
    assert logging.getLogger("ray").handlers == before
    out, err = capsys.readouterr()
    row = out.splitlines()[1].split()
    assert row == ["gem-s0", "started", "gem", "-", "-", "-", "-", "-"]
    assert ("model.aggregation: gem" in out and "data.resize: [32, 48]" in out) == verbose
    assert "model.backbone:" not in out  # a default
    if verbose:  # Ray's own handlers, as without vgray
        assert not log.exists() and during == before
    else:
        assert "a Tune warning" not in err
        assert err.strip().splitlines() == [f"ray: ERROR a Tune error (details in {log})"]
        assert "a Tune warning" in log.read_text() and "more" in log.read_text()


def test_a_report_that_cannot_be_drawn_is_one_line_and_does_not_fail_the_sweep(tmp_path, capsys):
    """The sweep's results are written before its report: a report that fails (here a folder
    without results.parquet) is one stderr line saying how to draw it again, and nothing else."""
    from vgray.cli import _sweep_report

    folder = tmp_path / "store" / NAME
    folder.mkdir(parents=True)
    _sweep_report(NAME, str(folder))
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"vgray: sweep {NAME}: report not written (")
    assert lines[0].endswith(f"; try: vgray report {folder}"), lines[0]
    assert "Traceback" not in err
