"""A sweep folder has one writer, and a stopped sweep says so.

The folder's lock (:mod:`vgray.distributed.lock`): a second ``vgray sweep`` into a folder that a
running driver holds, with or without ``--resume``, ends with exit 2 and one line naming the holder,
before it writes anything or starts Ray; the lock goes with its holder, however it ends.
Interruption (:mod:`vgray.distributed.interrupt`): SIGINT (Ctrl-C, sent to the process group as a
terminal sends it) and SIGTERM end a sweep with 130 and 143, one line saying how to carry on, its
rows kept and its plan marked interrupted, and ``--resume`` finishes it. Addresses that are not one
(``--address``, ``RAY_ADDRESS``) are refused naming where they came from.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import driver_env, rows, wait_for_first_row, write_sweep

from vgray.cli import main
from vgray.errors import BadInput


def _listing(folder: Path):
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*")) if folder.exists() else []


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# -- the lock -------------------------------------------------------------------------------------


def test_a_held_sweep_folder_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    from vgray.distributed.lock import LOCK_FILE, sweep_lock

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    path = write_sweep(tmp_path / "s.yaml", name="held", storage=str(tmp_path / "store"), grid={"train.lr": [0.001]})
    directory = tmp_path / "store" / "held"
    with sweep_lock(str(directory), "held") as lock:
        assert lock == directory / LOCK_FILE
        before = _listing(tmp_path / "store")
        for extra in ([], ["--resume"]):
            assert main(["sweep", str(path), *extra]) == 2
            line = _one_line(capsys.readouterr().err)
            assert line.startswith("vgray: error: sweep 'held' in ") and f"pid {os.getpid()} on " in line, line
            assert "--resume" in line and "another name or --storage" in line
            assert _listing(tmp_path / "store") == before  # nothing written, no Ray started
        holder = json.loads(lock.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] and holder["started"]
    assert lock.read_text() == ""  # released: it names no holder
    with sweep_lock(str(directory), "held"):  # free again
        pass


def test_the_lock_goes_with_its_holder_and_a_refusal_takes_back_what_it_made(tmp_path):
    from vgray.distributed.lock import LOCK_FILE, check_free, lock_path, sweep_lock

    folder = tmp_path / "store" / "x"
    folder.mkdir(parents=True)
    holder = subprocess.Popen(  # a holder that wrote no details, then is killed
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(folder / LOCK_FILE)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(BadInput, match=r"^sweep 'x' in .* is being run by another vgray sweep; "):
            check_free(str(folder), "x")
        with pytest.raises(BadInput, match="is being run by another vgray sweep"):
            with sweep_lock(str(folder), "x"):
                pass
    finally:
        holder.kill()
        holder.wait()
    check_free(str(folder), "x")  # a killed holder's lock is free: nothing stale to guess
    fresh = tmp_path / "new" / "deep" / "sweep"
    with pytest.raises(BadInput, match="refused inside"):
        with sweep_lock(str(fresh), "sweep"):
            raise BadInput("refused inside")
    assert not (tmp_path / "new").exists()  # the lock file and the folders made for it are gone
    # An object store has no locks: a file on this machine, keyed on the URI, under the cache.
    assert lock_path("s3://bucket/sweeps/a").parent.name == "sweep-locks"
    assert lock_path("s3://bucket/sweeps/a") != lock_path("s3://bucket/sweeps/b")
    assert lock_path(f"file://{folder}") == folder / LOCK_FILE


# -- addresses ------------------------------------------------------------------------------------


def test_addresses_that_are_not_one_are_refused_naming_where_they_came_from(monkeypatch):
    import ray

    from vgray.distributed.sweep import init_ray, join_ray

    assert not ray.is_initialized()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(BadInput, match=r"^--address 'no where' is not a Ray cluster address"):
        init_ray("no where")
    with pytest.raises(BadInput, match=r"^--address is empty"):
        join_ray("")
    with pytest.raises(BadInput, match=r"^--address 127\.0\.0\.1:1: no Ray cluster answers there"):
        join_ray("127.0.0.1:1")
    monkeypatch.setenv("RAY_ADDRESS", "http//x:y")
    with pytest.raises(BadInput, match=r"^RAY_ADDRESS 'http//x:y' is not a Ray cluster address"):
        init_ray(None)
    assert not ray.is_initialized()


# -- interruption ---------------------------------------------------------------------------------


def test_stop_signals_outside_tune_raise_and_are_recorded():
    from vgray.distributed.interrupt import StopSignals, exit_status

    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as stop:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        assert stop.signum == signal.SIGTERM and os.environ["TUNE_DISABLE_SIGINT_HANDLER"] == "1"
    assert signal.getsignal(signal.SIGTERM) == before
    assert (exit_status(signal.SIGINT), exit_status(signal.SIGTERM)) == (130, 143)


def _start(cmd, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, stdout=open(log, "w"), stderr=subprocess.PIPE, text=True, env=driver_env(), start_new_session=True
    )


def _interrupted(directory: Path, driver: subprocess.Popen, signal_name: str, code: int) -> str:
    _, err = driver.communicate(timeout=180)
    assert driver.returncode == code, err[-3000:]
    line = _one_line(err)
    assert line.startswith(f"vgray: sweep stopped interrupted by {signal_name}: ") and line.endswith(" --resume"), line
    plan = json.loads((directory / "plan.json").read_text())
    assert plan["finished"] is None and plan["interrupted"].endswith(f"({signal_name})")
    return line


@pytest.mark.slow
def test_an_interrupted_sweep_says_so_keeps_its_rows_and_resumes(tiny_root, tmp_path, capsys, monkeypatch):
    from vgray.distributed.lock import LOCK_FILE
    from vgray.report import progress_of

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    path = write_sweep(
        tmp_path / "s.yaml", name="stopped", storage=str(tmp_path / "store"), grid={"train.lr": [0.001, 0.0001]}
    )
    directory = tmp_path / "store" / "stopped"
    cmd = [sys.executable, "-m", "vgray.cli", "sweep", str(path), "--num-cpus", "1"]

    # A second run while the first holds the folder, fresh or resuming: refused at once.
    driver = _start(cmd, tmp_path / "1.log")
    lock = directory / LOCK_FILE
    deadline = time.time() + 120
    while not (lock.exists() and f'"pid": {driver.pid},' in lock.read_text()):
        assert driver.poll() is None and time.time() < deadline, (tmp_path / "1.log").read_text()
        time.sleep(0.2)
    for extra in ([], ["--resume"]):
        assert main(["sweep", str(path), *extra]) == 2
        assert f"is being run by pid {driver.pid} on " in _one_line(capsys.readouterr().err)
    # Ctrl-C (SIGINT to the whole process group) once the first trial's row is written.
    wait_for_first_row(directory, driver, tmp_path / "1.log", timeout=300, poll=0.5)
    os.killpg(driver.pid, signal.SIGINT)
    line = _interrupted(directory, driver, "SIGINT", 130)
    kept = rows(directory)
    assert f": {len(kept)} of 2 rows kept in {directory}" in line and len(kept) == 1
    progress = progress_of(directory, kept).text()
    assert progress.startswith("Sweep interrupted (") and "1 of 2 trials done" in progress, progress

    # SIGTERM to the driver alone, as soon as its resumed run is under way (Ray up).
    driver = _start(cmd + ["--resume"], tmp_path / "2.log")
    deadline = time.time() + 120
    while "sweep stopped:" not in (tmp_path / "2.log").read_text():
        assert driver.poll() is None and time.time() < deadline, (tmp_path / "2.log").read_text()
        time.sleep(0.2)
    driver.send_signal(signal.SIGTERM)
    _interrupted(directory, driver, "SIGTERM", 143)
    assert rows(directory) == kept

    done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=driver_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    after = rows(directory)
    assert len(after) == 2 and len({r["trial_id"] for r in after}) == 2 and kept[0] in after
    plan = json.loads((directory / "plan.json").read_text())
    assert plan["finished"] and plan["interrupted"] is None
    assert "report: " in done.stdout
