"""Sweeps on a real local Ray: trials, the results actor surviving a kill, Optuna, ASHA, resume after
the driver is killed, and a sweep submitted through the Ray Jobs API to a `ray start --head` cluster."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from vgray.cli import main

pytestmark = pytest.mark.slow

BASE = {"data": {"root": "synthetic:tiny", "resize": [32, 48], "num_workers": 0},
        "model": {"pretrained": "none", "aggregation": "gem"},
        "train": {"queries_per_epoch": 10, "cache_refresh_rate": 10, "negs_num_per_query": 2,
                  "neg_samples_num": 40, "epochs": 1, "lr": 0.001},
        "test": {"recall_values": [1, 5], "batch_size": 64}}


@pytest.fixture(scope="module")
def ray_local(tiny_root):
    import ray
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="vgray", log_to_driver=False)
    yield ray
    ray.shutdown()


def write_sweep(path: Path, base_changes=None, **raw) -> Path:
    """A sweep file over the tiny base; ``base_changes`` maps dotted keys to new base values."""
    base = json.loads(json.dumps(BASE))
    for dotted, value in (base_changes or {}).items():
        section, key = dotted.split(".")
        base[section][key] = value
    path.write_text(yaml.safe_dump({"base": base, "resources": {"cpu": 1}, **raw}))
    return path


def rows(directory: Path):
    return pq.read_table(directory / "results.parquet").to_pylist()


def test_results_actor_restarts_and_reloads_without_loss_or_duplicates(ray_local, tmp_path):
    from vgray.distributed.results import get_results_actor
    ray = ray_local
    actor = get_results_actor("actor-test", str(tmp_path), ["model.aggregation"])
    row = lambda i: {"trial_id": f"t{i}", "config_key": "k", "seed": i, "status": "ok", "test/x/R@1": float(i)}
    assert ray.get([actor.add.remote(row(i)) for i in range(3)]) == [True, True, True]
    pid = ray.get(actor.pid.remote())
    ray.kill(actor, no_restart=False)  # dies; Ray restarts it, and it reloads from disk
    assert ray.get(actor.add.remote(row(1))) is False  # acknowledged before: not written twice
    assert ray.get(actor.add.remote(row(3))) is True
    assert ray.get(actor.pid.remote()) != pid
    assert [r["trial_id"] for r in ray.get(actor.rows.remote())] == ["t0", "t1", "t2", "t3"]
    assert [r["trial_id"] for r in rows(tmp_path)] == ["t0", "t1", "t2", "t3"]
    assert "4 |" in ray.get(actor.summary_markdown.remote())  # n = 4 seeds of one config


def test_grid_sweep_rows_summary_and_tune_logs(ray_local, tmp_path, capsys):
    path = write_sweep(tmp_path / "s.yaml", name="grid", grid={"model.aggregation": ["gem"]}, repeats=2,
                       storage=str(tmp_path / "store"))
    assert main(["sweep", str(path)]) == 0
    out = capsys.readouterr().out
    directory = tmp_path / "store" / "grid"
    got = rows(directory)
    assert len(got) == 2 and len({r["trial_id"] for r in got}) == 2
    assert {(r["model.aggregation"], r["seed"]) for r in got} == {("gem", 0), ("gem", 1)}
    assert all(r["status"] == "ok" and r["epochs"] == 1 for r in got)
    for agg in ("gem",):
        vals = [r["test/synthetic_tiny/R@1"] for r in got if r["model.aggregation"] == agg]
        cell = f"{np.mean(vals):.1f} ± {np.std(vals, ddof=1):.1f}"
        assert f"| {agg} | 2 | {cell} |" in (directory / "summary.md").read_text()
        assert f"| {agg} | 2 | {cell} |" in out
    trial_dirs = sorted(p.name for p in directory.iterdir() if p.is_dir())
    assert [d.split("_")[0] for d in trial_dirs] == ["gem-s0", "gem-s1"]
    for d in trial_dirs:  # Tune's own CSV and TensorBoard logs stay on
        assert (directory / d / "progress.csv").is_file()
        assert any(p.name.startswith("events.out.tfevents") for p in (directory / d).iterdir())


def test_optuna_search_runs_every_seed_and_sees_the_mean(ray_local, tmp_path):
    path = write_sweep(tmp_path / "s.yaml", name="optuna", task="eval", repeats=2, storage=str(tmp_path / "store"),
                       search={"algorithm": "optuna", "space": {"model.gem_p": {"type": "float", "low": 1.5, "high": 4.0}},
                               "num_samples": 2, "metric": "test/synthetic_tiny/R@5", "mode": "max", "sampler": "random"})
    assert main(["sweep", str(path)]) == 0
    got = rows(tmp_path / "store" / "optuna")
    assert len(got) == 4  # 2 sampled points x 2 seeds
    keys = {r["config_key"] for r in got}
    assert len(keys) == 2
    for key in keys:
        group = [r for r in got if r["config_key"] == key]
        assert sorted(r["seed"] for r in group) == [0, 1]
        assert len({r["model.gem_p"] for r in group}) == 1 and 1.5 <= group[0]["model.gem_p"] <= 4.0
    # the searcher's view: each trial's last result is the mean over its seeds
    for result in (tmp_path / "store" / "optuna").glob("*/result.json"):
        last = json.loads(result.read_text().strip().splitlines()[-1])
        group = [r for r in got if r["trial_id"].startswith(last["trial_id"])]
        assert last["test/synthetic_tiny/R@5"] == pytest.approx(np.mean([r["test/synthetic_tiny/R@5"] for r in group]))


def test_asha_stops_the_worse_trials_early(ray_local, tmp_path):
    # One trial at a time, the good one first: at the first rung the 8x12-pixel trial is below the
    # median of the two at val R@1 (tiny val R@5 saturates) and ASHA stops it; the first trial is
    # never compared below the median.
    path = write_sweep(tmp_path / "s.yaml", {"train.epochs": 3, "train.patience": 3}, name="asha",
                       storage=str(tmp_path / "store"), grid={"data.resize_fraction": [1.0, 0.25]},
                       max_concurrent_trials=1,
                       scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2, "metric": "val/R@1"})
    assert main(["sweep", str(path)]) == 0
    got = rows(tmp_path / "store" / "asha")
    assert len(got) == 2 and len({r["trial_id"] for r in got}) == 2
    status = {r["data.resize_fraction"]: r["status"] for r in got}
    assert status == {1.0: "ok", 0.25: "stopped"}
    assert {r["data.resize_fraction"]: r.get("epochs") for r in got}[1.0] == 3
    assert all("val/R@5" in r and r["val/R@5"] is not None for r in got)


def test_resources_that_no_node_has_are_refused(ray_local, tmp_path, capsys):
    path = write_sweep(tmp_path / "s.yaml", name="big", resources={"cpu": 64, "gpu": 8}, storage=str(tmp_path / "store"))
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fit no node of this cluster" in err[0]
    assert not (tmp_path / "store" / "big" / "tuner.pkl").exists()


def _sweep_env():
    env = {**os.environ}
    env.pop("RAY_ADDRESS", None)
    return env


def test_resume_after_the_driver_is_killed(tmp_path):
    path = write_sweep(tmp_path / "s.yaml", name="killed", storage=str(tmp_path / "store"),
                       grid={"train.lr": [0.001, 0.0001, 0.00001]})
    directory = tmp_path / "store" / "killed"
    cmd = [sys.executable, "-m", "vgray.cli", "sweep", str(path), "--num-cpus", "1"]
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_sweep_env(), start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        if (directory / "results.parquet").exists() and len(rows(directory)) >= 1:
            break
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-2000:]
        time.sleep(1)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
    driver.wait()
    before = {r["trial_id"]: r for r in rows(directory)}
    assert 1 <= len(before) < 3
    lines = {p.parent.name: len(p.read_text().splitlines()) for p in directory.glob("*/result.json")}
    done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=_sweep_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    after = rows(directory)
    assert sorted(r["trial_id"] for r in after) == sorted({r["trial_id"] for r in after})
    assert len(after) == 3
    for r in after:  # finished trials were not run again
        if r["trial_id"] in before:
            assert r == before[r["trial_id"]]
    for p in directory.glob("*/result.json"):
        trial_id = p.parent.name.rsplit("_", 1)[-1]
        if trial_id in before and p.parent.name in lines:
            assert len(p.read_text().splitlines()) == lines[p.parent.name]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sweep_submitted_through_the_jobs_api(tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient
    assert os.environ["RAY_AUTH_MODE"] == "token"  # conftest: the cluster and this client use a token
    path = write_sweep(tmp_path / "s.yaml", name="jobs", storage=str(tmp_path / "store"),
                       grid={"model.aggregation": ["gem"]})
    ray_cli = str(Path(sys.executable).parent / "ray")
    # `ray start` in token mode needs a token to exist (ray.init makes one; ray start does not)
    subprocess.run([ray_cli, "get-auth-token", "--generate"], check=True, capture_output=True)
    port, dash = _free_port(), _free_port()
    head = subprocess.Popen([ray_cli, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
                             "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2",
                             "--include-dashboard=true"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_sweep_env(),
                            start_new_session=True, cwd=str(Path(sys.executable).parent))
    try:
        client, last = None, None
        deadline = time.time() + 120
        while client is None and time.time() < deadline:
            try:
                client = JobSubmissionClient(f"http://127.0.0.1:{dash}")
            except Exception as exc:  # not up yet
                last = exc
                time.sleep(2)
        assert client is not None, f"the dashboard of the started cluster did not come up: {last}"
        job = None
        while job is None and time.time() < deadline:
            try:  # the head's job agent may come up a little after the dashboard
                job = client.submit_job(entrypoint=f"{sys.executable} -m vgray.cli sweep {path}",
                                        runtime_env={"env_vars": {"VGRAY_CACHE": os.environ["VGRAY_CACHE"]}})
            except RuntimeError as exc:
                last = exc
                time.sleep(2)
        assert job is not None, f"the job could not be submitted: {last}"
        deadline = time.time() + 600
        status = client.get_job_status(job)
        while status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED) and time.time() < deadline:
            time.sleep(2)
            status = client.get_job_status(job)
        assert status == JobStatus.SUCCEEDED, client.get_job_logs(job)[-3000:]
        got = rows(tmp_path / "store" / "jobs")
        assert len(got) == 1 and got[0]["status"] == "ok"
        assert "sweep jobs: 1 trials" in client.get_job_logs(job)
    finally:  # stop the cluster this test started, and only it: its own process group
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        time.sleep(2)
        try:
            os.killpg(head.pid, signal.SIGKILL)  # what SIGTERM left (the GCS server may linger)
        except ProcessLookupError:
            pass
