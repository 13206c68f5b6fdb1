"""Sweeps driven as a user does, in their own processes and clusters: resume after the driver is
killed, and a sweep submitted through the Ray Jobs API to a `ray start --head` cluster on loopback.
Kept apart from test_sweep_ray.py so that no in-process Ray runs beside these clusters (two Rays on
one machine contend for the agents' default ports)."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import driver_env, rows, wait_for_first_row, write_sweep

pytestmark = pytest.mark.slow


def test_resume_after_the_driver_is_killed(tiny_root, tmp_path):
    path = write_sweep(
        tmp_path / "s.yaml", name="killed", storage=str(tmp_path / "store"), grid={"train.lr": [0.001, 0.0001, 0.00001]}
    )
    directory = tmp_path / "store" / "killed"
    cmd = [sys.executable, "-m", "vgray.cli", "sweep", str(path), "--num-cpus", "1"]
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=driver_env(), start_new_session=True)
    wait_for_first_row(directory, driver, tmp_path / "driver.log", timeout=300, poll=1)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
    driver.wait()
    before = {r["trial_id"]: r for r in rows(directory)}
    assert 1 <= len(before) < 3
    lines = {p.parent.name: len(p.read_text().splitlines()) for p in directory.glob("*/result.json")}
    done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=driver_env(), timeout=600)
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


def test_sweep_submitted_through_the_jobs_api(tiny_root, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    assert os.environ["RAY_AUTH_MODE"] == "token"  # conftest: the cluster and this client use a token
    path = write_sweep(
        tmp_path / "s.yaml", name="jobs", storage=str(tmp_path / "store"), grid={"model.aggregation": ["gem"]}
    )
    ray_cli = str(Path(sys.executable).parent / "ray")
    # `ray start` in token mode needs a token to exist (ray.init makes one; ray start does not)
    subprocess.run([ray_cli, "get-auth-token", "--generate"], check=True, capture_output=True)
    port, dash, agent = _free_port(), _free_port(), _free_port()
    head = subprocess.Popen(
        [
            ray_cli,
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            "--num-cpus=2",
            f"--dashboard-agent-listen-port={agent}",
            "--include-dashboard=true",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=driver_env(),
        start_new_session=True,
        cwd=str(Path(sys.executable).parent),
    )
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
                job = client.submit_job(
                    entrypoint=f"{sys.executable} -m vgray.cli sweep {path}",
                    runtime_env={"env_vars": {"VGRAY_CACHE": os.environ["VGRAY_CACHE"]}},
                )
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
