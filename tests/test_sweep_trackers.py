"""Following a sweep outside its console: the Ray dashboard's jobs view (the driver's job under the
sweep's name), the Ray metrics of running trials (read from the local Ray's metrics endpoint),
TensorBoard's event files in the sweep's folder, and MLflow (``loggers: [mlflow]``): one real
two-trial sweep serves them all; the sweep-file checks of ``loggers``/``mlflow`` need no Ray."""

import json
import re
import struct
import threading
import urllib.request
from pathlib import Path

import pytest
from conftest import rows, write_sweep

from vgray.cli import main

GAUGES = (
    "ray_vgray_trial_epoch",
    "ray_vgray_trial_val_recall_at_5",
    "ray_vgray_trial_extraction_images_per_second",
    "ray_vgray_trial_mining_refresh_seconds",
)
LRS = [0.001, 0.0002]


# -- the sweep file's loggers and mlflow keys (no Ray) ---------------------------------------------


@pytest.mark.parametrize(
    "extra, culprit",
    [
        ({"loggers": ["wandb"]}, "loggers: 'wandb' is unknown; allowed: mlflow"),
        ({"loggers": "mlflow"}, "loggers='mlflow' must be a list"),
        ({"loggers": ["mlflow", "mlflow"]}, "names a tracker twice"),
        ({"mlflow": {"experiment": "e"}}, "loggers does not name mlflow"),
        (
            {"loggers": ["mlflow"], "mlflow": {"uri": "sqlite:///x.db"}},
            "mlflow key 'uri' is unknown; allowed: tracking_uri, experiment",
        ),
        ({"loggers": ["mlflow"], "mlflow": {"tracking_uri": "./mlruns"}}, "is a file store, which MLflow 3 refuses"),
        ({"loggers": ["mlflow"], "storage": "s3://bucket/sweeps"}, "set mlflow.tracking_uri"),
    ],
)
def test_bad_loggers_and_mlflow_keys_are_refused_in_one_line(tmp_path, capsys, monkeypatch, extra, culprit):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    path = write_sweep(tmp_path / "s.yaml", **{"name": "bad", "storage": str(tmp_path / "store"), **extra})
    assert main(["sweep", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and culprit in err[0], err


def test_a_tracking_server_that_does_not_answer_is_refused_before_ray_starts(tmp_path, capsys, monkeypatch):
    import socket

    import ray

    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    path = write_sweep(
        tmp_path / "s.yaml",
        name="unreachable",
        storage=str(tmp_path / "store"),
        loggers=["mlflow"],
        mlflow={"tracking_uri": f"http://127.0.0.1:{port}"},
    )
    assert not ray.is_initialized()
    assert main(["sweep", str(path), "--num-cpus", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"no MLflow server answers at 127.0.0.1:{port}" in err[0], err
    assert not ray.is_initialized() and not (tmp_path / "store").exists()


# -- one tracked sweep -----------------------------------------------------------------------------


def _get(url: str, headers=None) -> bytes:
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5).read()


def _gauges(text: str):
    """``(metric, sweep, trial, value)`` of every vgray trial gauge in Prometheus text."""
    for line in text.splitlines():
        found = re.match(r"^(ray_vgray_\w+)\{(.*)\} (\S+)$", line)
        if found:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', found.group(2)))
            yield found.group(1), labels.get("sweep"), labels.get("trial"), float(found.group(3))


class Watcher(threading.Thread):
    """While the sweep runs in the test's thread: the dashboard's ``/api/jobs/`` (authenticated
    with Ray's token, as the dashboard requires) and every node's metrics endpoint, polled."""

    def __init__(self, directory: Path):
        super().__init__(daemon=True)
        self.directory, self.done = directory, threading.Event()
        self.jobs, self.gauges, self.errors = [], {}, []

    def run(self):
        while not self.done.wait(0.4):
            self.poll()
        self.poll()

    def poll(self):
        import ray

        if not ray.is_initialized() or not (self.directory / "plan.json").is_file():
            return
        try:
            if not self.jobs:
                from ray._private.authentication.http_token_authentication import get_auth_headers_if_auth_enabled

                url = json.loads((self.directory / "plan.json").read_text())["dashboard"]
                self.jobs = json.loads(_get(f"{url}/api/jobs/", get_auth_headers_if_auth_enabled({})))
            for node in ray.nodes():
                if node.get("Alive"):
                    text = _get(f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics").decode()
                    for name, sweep, trial, value in _gauges(text):
                        self.gauges[(name, sweep, trial)] = value
        except Exception as exc:  # not up yet, or going down: the next poll tries again
            self.errors.append(repr(exc))


@pytest.fixture(scope="module")
def tracked(tiny_root, tmp_path_factory):
    """A two-trial sweep (train.lr varied, one epoch each) with ``loggers: [mlflow]``, run through
    the CLI on a local Ray it starts (with its dashboard), watched while it runs. Ray exports
    metrics every second here (``RAY_metrics_report_interval_ms``, read when Ray starts)."""
    import ray

    assert not ray.is_initialized(), "another module left Ray up"
    tmp = tmp_path_factory.mktemp("tracked")
    path = write_sweep(
        tmp / "s.yaml", name="tracked", grid={"train.lr": LRS}, loggers=["mlflow"], storage=str(tmp / "store")
    )
    directory = tmp / "store" / "tracked"
    watcher = Watcher(directory)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_metrics_report_interval_ms", "1000")
        mp.delenv("RAY_ADDRESS", raising=False)
        watcher.start()
        try:
            code = main(["sweep", str(path), "--num-cpus", "2"])
        finally:
            watcher.done.set()
            watcher.join(30)
            ray.shutdown()
    assert code == 0
    yield {
        "directory": directory,
        "watcher": watcher,
        "rows": rows(directory),
        "names": sorted(r["trial_name"] for r in rows(directory)),
    }


@pytest.mark.slow
def test_the_sweep_is_a_job_named_after_it_in_the_dashboard(tracked):
    jobs = tracked["watcher"].jobs
    ours = [j for j in jobs if (j.get("metadata") or {}).get("job_name") == "tracked"]
    assert len(ours) == 1, (jobs, tracked["watcher"].errors[-3:])
    assert ours[0]["type"] == "DRIVER" and ours[0]["status"] == "RUNNING"
    assert ours[0]["metadata"]["vgray_directory"] == str(tracked["directory"])


@pytest.mark.slow
def test_running_trials_export_their_progress_as_ray_metrics(tracked):
    seen = tracked["watcher"].gauges
    assert len(tracked["names"]) == 2
    for trial in tracked["names"]:
        for name in GAUGES:
            assert (name, "tracked", trial) in seen, (name, trial, sorted(seen), tracked["watcher"].errors[-3:])
        assert seen[("ray_vgray_trial_epoch", "tracked", trial)] == 1
        row = next(r for r in tracked["rows"] if r["trial_name"] == trial)
        assert seen[("ray_vgray_trial_val_recall_at_5", "tracked", trial)] == pytest.approx(row["val/R@5"])
        assert seen[("ray_vgray_trial_extraction_images_per_second", "tracked", trial)] > 0
        assert seen[("ray_vgray_trial_mining_refresh_seconds", "tracked", trial)] > 0


def _scalars(events: Path):
    """``{tag: [(step, value), ...]}`` of a TensorBoard event file (TFRecord: length, CRC, event, CRC)."""
    from tensorboardX.proto import event_pb2

    out = {}
    data = events.read_bytes()
    at = 0
    while at + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[at : at + 8])
        event = event_pb2.Event.FromString(data[at + 12 : at + 12 + length])
        at += 12 + length + 4
        for value in event.summary.value:
            out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


@pytest.mark.slow
def test_tensorboard_events_in_the_sweep_folder_hold_the_epoch_scalars(tracked):
    directory = tracked["directory"]
    for trial in tracked["names"]:
        folder = next(p for p in directory.iterdir() if p.is_dir() and p.name.startswith(trial + "_"))
        result = json.loads((folder / "result.json").read_text().splitlines()[0])  # the epoch's report
        scalars = {}
        for events in folder.glob("events.out.tfevents*"):
            scalars.update(_scalars(events))
        for key in ("val/R@1", "val/R@5", "loss", "epoch", "mining_refresh_s", "extraction_images_per_s"):
            tag = "ray/tune/" + key.replace("@", "_")  # TensorBoard's tags take no '@'
            assert scalars[tag][0] == (1, pytest.approx(result[key])), key


@pytest.mark.slow
def test_mlflow_holds_one_run_per_trial_with_its_varied_key_and_epoch_metrics(tracked):
    from mlflow import MlflowClient

    directory = tracked["directory"]
    client = MlflowClient(tracking_uri=f"sqlite:///{directory}/mlflow.db")
    experiment = client.get_experiment_by_name("tracked")
    assert experiment.artifact_location.endswith(f"{directory}/mlartifacts")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == tracked["names"]
    for name, run in runs.items():
        row = next(r for r in tracked["rows"] if r["trial_name"] == name)
        assert run.info.status == "FINISHED"
        assert run.data.params == {"train.lr": str(row["train.lr"]), "seed": "0", "trial": name}
        history = {
            key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
            for key in ("epoch", "loss", "val/R_at_1", "val/R_at_5")
        }
        assert history["epoch"] == [(1, 1.0)] and len(history["loss"]) == 1
        # step 1: the epoch; step 2: the final report (the test, and val/ as the mean over the seeds)
        assert history["val/R_at_5"] == [(step, pytest.approx(row["val/R@5"])) for step in (1, 2)]
        assert history["val/R_at_1"] == [(step, pytest.approx(row["val/R@1"])) for step in (1, 2)]
        test = client.get_metric_history(run.info.run_id, "test/synthetic_tiny/R_at_5")
        assert [(m.step, m.value) for m in test] == [(2, pytest.approx(row["test/synthetic_tiny/R@5"]))]
    assert sorted(float(r["train.lr"]) for r in tracked["rows"]) == sorted(LRS)


def test_a_restored_driver_continues_each_trials_mlflow_run(tmp_path):
    """Tune restores the callbacks of a resumed sweep from tuner.pkl and sets them up again: the
    second driver's MLflow logger finds the trial's run by its id and logs on, one run per trial."""
    import pickle

    from mlflow import MlflowClient
    from ray import cloudpickle
    from ray.tune.experiment import Trial

    from vgray.distributed.spec import GRID_KEY, load_sweep, param_space
    from vgray.distributed.tracking import mlflow_store, tracker_callbacks

    path = write_sweep(
        tmp_path / "s.yaml", name="resumed", grid={"train.lr": LRS}, loggers=["mlflow"], storage=str(tmp_path / "store")
    )
    spec = load_sweep(str(path))
    (tmp_path / "store" / "resumed").mkdir(parents=True)
    entries = param_space(spec, None, lambda entries: entries, None)
    config = {**entries, GRID_KEY: entries[GRID_KEY][0]}
    trial = Trial(
        "vgray_trainable", config=config, stub=True, trial_id="abc_00000", trial_name_creator=lambda t: "lr=0.001-s0"
    )
    first = tracker_callbacks(spec)[0]
    saved = cloudpickle.dumps(first)  # as Tune keeps it in tuner.pkl, before setting it up
    first.setup()
    first.log_trial_start(trial)
    first.log_trial_result(1, trial, {"training_iteration": 1, "epoch": 1, "val/R@5": 50.0, "pid": 7})
    restored = pickle.loads(saved)  # the driver of --resume
    restored.setup()
    restored.log_trial_result(2, trial, {"training_iteration": 2, "epoch": 2, "val/R@5": 60.0})
    restored.log_trial_end(trial)
    client = MlflowClient(tracking_uri=mlflow_store(spec)["tracking_uri"])
    runs = client.search_runs([client.get_experiment_by_name("resumed").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.params == {"train.lr": "0.001", "seed": "0", "trial": "lr=0.001-s0"}
    history = client.get_metric_history(runs[0].info.run_id, "val/R_at_5")
    assert [(m.step, m.value) for m in history] == [(1, 50.0), (2, 60.0)]
    assert "pid" not in runs[0].data.metrics  # Tune's bookkeeping stays out
