"""Data-parallel trials (``train.workers`` > 1, Ray Train's DDP): N workers with a part of the batch
each take the step one worker takes with the whole batch (both regimes, gloo on this CPU); a sweep
of two-worker trials on a two-node ``ray.cluster_utils.Cluster`` (each trial's workers on both
nodes) writes one row a trial and its report; a worker killed mid-epoch costs a retry from the last
checkpoint, not an epoch or a row; the bad inputs are refused in one line before Ray starts."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from conftest import SWEEP_BASE, TINY_SET, rows

from vgray.cli import main
from vgray.config import load_config

# The tests' quick training run (vgray's test_train.py): 32x48 images, 2 negatives, 20 queries an epoch.
SWEEP_QUICK = [
    "data.root=synthetic:tiny",
    *TINY_SET,
    "data.resize=[32,48]",
    "model.aggregation=gem",
    "train.queries_per_epoch=10",
    "train.cache_refresh_rate=10",
    "train.negs_num_per_query=2",
    "train.neg_samples_num=60",
    "train.lr=0.001",
    "test.recall_values=[1,5]",
]


# -- the same optimisation ---------------------------------------------------------------------------


def test_two_workers_take_the_step_one_worker_takes_with_the_whole_batch():
    from vgray.bench.ddp import DEFAULTS, compare

    # The paper's triplet of 1 + 1 + 10 (4 of them) and 8 places x 4 images at 48x64; BatchNorm in
    # eval mode (its running statistics): on CPUs there is no SyncBatchNorm (see vgray.train.parallel).
    cfg = load_config(overrides=[*DEFAULTS, "train.workers=2"])
    for case, got in compare(cfg, 2, 2, [("triplets", "eval"), ("places", "eval")]).items():
        assert got["loss"] > 0, case
        assert got["loss_rel_diff"] <= 1e-5, (case, got)
        assert got["update_rel_diff"] <= 1e-4, (case, got)


@pytest.mark.slow
def test_a_resumed_two_worker_run_ends_as_the_straight_one(tiny_root, tmp_path):
    """Two workers (gloo, processes of this machine): 2 epochs straight, and 1 epoch then resumed to
    2, give the same history and test recall: the mining state, the shared generator and each
    worker's own RNG streams (``rng_ranks``) come back from rank 0's checkpoint."""
    import torch

    from vgray.bench.ddp import in_group

    quick = [*SWEEP_QUICK, "train.workers=2", "train.batch_size=2"]
    straight = in_group(2, 1, "train", load_config(overrides=[*quick, "train.epochs=2"]), str(tmp_path / "a"), False)
    in_group(2, 1, "train", load_config(overrides=[*quick, "train.epochs=1"]), str(tmp_path / "b"), False)
    resumed = in_group(2, 1, "train", load_config(overrides=[*quick, "train.epochs=2"]), str(tmp_path / "b"), True)
    keys = [k for k in straight if k.startswith(("val/", "test/")) or k in ("loss", "epochs")]
    assert {k: straight[k] for k in keys} == {k: resumed[k] for k in keys}
    assert straight["epochs"] == 2 and straight["workers"] == 2
    ck = torch.load(tmp_path / "b" / "last.pt", weights_only=False)
    assert len(ck["rng_ranks"]) == 2 and not any(k.startswith("module.") for k in ck["model"])


def test_a_worker_part_of_every_batch_and_its_weight():
    import numpy as np

    from vgray.train.parallel import Group, split_batches

    order = np.arange(10)
    # 10 triplets in batches of 4 over 3 workers: 4 = 2 + 1 + 1, then 4, then the last 2 = 1 + 1 + 0
    plans = [split_batches(10, 4, Group(r, 3), order) for r in range(3)]
    assert [m for m, _ in plans[0]] == [[0, 1], [4, 5], [8]]
    assert [m for m, _ in plans[2]] == [[3], [7], [8]]  # nothing left: the batch's first item, weight 0
    for step in range(3):  # the weights average to 1 over the workers (DDP averages the gradients)
        assert sum(p[step][1] for p in plans) / 3 == pytest.approx(1.0)
    assert plans[2][2][1] == 0.0


# -- bad input, before Ray starts --------------------------------------------------------------------


def _sweep_file(path: Path, resources, base_changes=None, **raw) -> Path:
    """A sweep file over the tests' tiny base with ``resources``; ``base_changes``: dotted keys
    (``device`` at the top) set in its base."""
    import yaml

    base = json.loads(json.dumps(SWEEP_BASE))
    for dotted, value in (base_changes or {}).items():
        *sections, key = dotted.split(".")
        node = base
        for section in sections:
            node = node.setdefault(section, {})
        node[key] = value
    path.write_text(yaml.safe_dump({"base": base, "resources": resources, **raw}))
    return path


@pytest.mark.parametrize(
    "resources, base, says",
    [
        ({"workers": 0}, {}, "resources.workers=0 must be positive"),
        ({"workers": "two"}, {}, "resources.workers"),
        ({"workers": 2, "strategy": "ROUND"}, {}, "resources.strategy"),
        ({"workers": 3, "cpu": 1}, {"train.batch_size": 4}, "do not fit this machine"),
        ({"workers": 2}, {"device": "cpu", "train.ddp_backend": "nccl"}, "train.ddp_backend=nccl"),
        ({"workers": 2}, {"train.batch_size": 1}, "at least one triplet"),
        ({"workers": 3}, {"train.regime": "places", "train.places_per_batch": 8}, "must divide"),
    ],
)
def test_a_bad_group_is_refused_in_one_line_before_ray_starts(tmp_path, capsys, resources, base, says):
    path = _sweep_file(tmp_path / "s.yaml", resources, base, name="ddp_bad", storage=str(tmp_path / "store"))
    assert main(["sweep", str(path), "--num-cpus", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err, err
    assert not (tmp_path / "store").exists()  # refused before anything was written


def test_sync_bn_without_batchnorm_and_train_workers_refusals(capsys, tmp_path):
    base = ["train", *[a for s in TINY_SET for a in ("--set", s)], "--out", str(tmp_path / "run")]
    for extra, says in [
        (["--set", "model.backbone=alexnet", "--set", "train.sync_bn=true"], "no BatchNorm layer to synchronise"),
        (["--workers", "0"], "--workers=0 must be at least 1"),
        (["--workers", "3"], "the group needs {1 CPU} + {1 CPU} + {1 CPU}"),
        (["--workers", "2", "--set", "device=cpu", "--set", "train.sync_bn=true"], "SyncBatchNorm"),
    ]:
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and says in err, err
    assert not (tmp_path / "run").exists()


# -- on a two-node cluster ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spread_nodes():
    """A head without CPUs and two worker nodes of 2 CPUs: a two-worker group spreads over both."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=2, num_gpus=0)
    try:
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def _ddp_sweep(tmp_path, name, epochs, **raw):
    """A sweep of trials of two workers, one a node where they can (SPREAD), ``epochs`` each."""
    path = _sweep_file(
        tmp_path / f"{name}.yaml",
        {"cpu": 1, "workers": 2, "strategy": "SPREAD"},
        {"train.epochs": epochs, "train.patience": epochs, "train.batch_size": 2},
        name=name,
        storage=str(tmp_path / "store"),
        **raw,
    )
    return path, tmp_path / "store" / name


def _train_workers():
    """The PIDs of the Ray Train workers running on this machine."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"RayTrainWorker" in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.slow
def test_two_worker_trials_on_two_nodes_and_a_killed_worker(spread_nodes, tiny_root, tmp_path, monkeypatch):
    """Two trials of two workers each, each trial's workers on both nodes; once a trial has
    reported (and checkpointed) epoch 1, a running worker is killed: its group fails, Tune retries
    that trial from its checkpoint, and both trials end with their 2 epochs and one row each."""
    import ray

    path, directory = _ddp_sweep(tmp_path, "ddp_two", 2, grid={"train.lr": [0.001, 0.0001]}, max_failures=2)
    killed = {}

    def kill_a_worker_after_epoch_1():
        deadline = time.time() + 600
        while time.time() < deadline and not killed:
            for result in directory.glob("*/result.json"):
                lines = [json.loads(x) for x in result.read_text().splitlines() if x.strip()]
                if lines and lines[-1].get("epoch") == 1:
                    pids = _train_workers()  # a worker of this trial or of the other: either group fails
                    if pids:
                        os.kill(pids[-1], signal.SIGKILL)
                        killed.update(pid=pids[-1])
                        return
            time.sleep(0.2)

    watcher = threading.Thread(target=kill_a_worker_after_epoch_1, daemon=True)
    watcher.start()
    # Tune copies each trial's result.json into the storage with its snapshots; 1 s, as test_node_lost.
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "1")
    try:
        assert main(["sweep", str(path), "--address", spread_nodes.address]) == 0
        watcher.join(timeout=5)
    finally:
        ray.shutdown()
    assert killed, "no worker was running after a trial's epoch 1"
    got = rows(directory)
    assert sorted(r["train.lr"] for r in got) == [0.0001, 0.001]  # a row each, none twice
    for r in got:
        assert r["status"] == "ok" and r["epochs"] == 2, r
        assert r["workers"] == 2 and r["train.workers"] == 2
        assert r["group_nodes"] == 2  # the trial's two workers ran on the two nodes
        assert r["train_images_per_s"] > 0 and r["train_time_s"] > 0
        assert 0 < r["test/synthetic_tiny/R@1"] <= 100
    # The killed worker's trial failed once and was retried from its last checkpoint: every epoch
    # reported once, none trained twice.
    (error,) = directory.glob("*/error.txt")
    assert "the training group failed" in error.read_text(), error.read_text()[-2000:]
    reports = [json.loads(x) for x in (error.parent / "result.json").read_text().splitlines() if x.strip()]
    assert [r["epoch"] for r in reports if r.get("epoch") is not None] == [1, 2], reports
    # The report draws them: the summary holds both configs, the Pareto of R@1 against training time.
    assert main(["report", str(directory)]) == 0
    summary = (directory / "summary.md").read_text()
    assert "0.001" in summary and "0.0001" in summary
    assert (directory / "report" / "pareto_train_time_s.png").is_file()


def test_the_report_draws_training_time_against_workers(tmp_path):
    import csv

    from vgray.report.figures import FIGURES, caption

    rows = []
    # 1, 2 and 4 workers, two seeds each; 4 workers slower than 2 (a network-bound group): off the front.
    for workers, times in ((1, (100.0, 110.0)), (2, (60.0, 64.0)), (4, (70.0, 72.0))):
        for seed, t in enumerate(times):
            rows.append(
                {
                    "config_key": f"k{workers}",
                    "status": "ok",
                    "seed": seed,
                    "train.workers": workers,
                    "train_time_s": t,
                    "workers": workers,
                    "test/tiny/R@1": 50.0 + seed,
                }
            )
    written = FIGURES["workers"](rows, ["train.workers"], tmp_path)
    assert {p.name for p in written} == {"workers.csv", "workers.png"}
    with open(tmp_path / "workers.csv") as f:
        got = {int(float(r["train.workers"])): r for r in csv.DictReader(f)}
    assert float(got[2]["train_time_s"]) == pytest.approx(62.0) and float(got[1]["train_time_s std"]) > 0
    assert [w for w in (1, 2, 4) if got[w]["pareto"] == "True"] == [1, 2]
    assert "Pareto front" in caption("workers")
