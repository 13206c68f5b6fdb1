"""A worker node lost mid-sweep, on a real three-node Ray (``ray.cluster_utils.Cluster``: a head
without CPUs and two one-CPU workers on this machine): the trial it ran is retried from its last
checkpoint on the other node, the sweep finishes, every trial has one row and the summary's means
are those of the rows."""

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import rows, write_sweep

from vgray.cli import main

pytestmark = pytest.mark.slow


def test_a_lost_worker_node_costs_a_retry_from_the_last_checkpoint(tiny_root, tmp_path, monkeypatch):
    import ray
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "num_gpus": 0, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1, num_gpus=0) for _ in range(2)]
    cluster.wait_for_nodes()
    raylets = {w.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid: w for w in workers}
    path = write_sweep(
        tmp_path / "s.yaml",
        {"train.epochs": 4, "train.patience": 4},
        name="lost",
        storage=str(tmp_path / "store"),
        grid={"train.lr": [0.001, 0.0001]},
        max_failures=2,
    )
    directory = tmp_path / "store" / "lost"
    removed = {}

    def remove_a_busy_node():
        """Once a trial has reported (and checkpointed) its first epoch, remove the node it runs on."""
        deadline = time.time() + 600
        while time.time() < deadline and not removed:
            for result in directory.glob("*/result.json"):
                lines = [json.loads(x) for x in result.read_text().splitlines() if x.strip()]
                if not lines or lines[-1].get("epoch") != 1:
                    continue
                try:  # the trial's process is a child of its node's raylet
                    parent = int(Path(f"/proc/{lines[-1]['pid']}/stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
                if parent in raylets:
                    removed.update(trial=result.parent.name, pid=lines[-1]["pid"])
                    cluster.remove_node(raylets[parent])
                    return
            time.sleep(0.5)

    watcher = threading.Thread(target=remove_a_busy_node, daemon=True)
    watcher.start()
    # The driver copies each trial's result.json into the storage with Tune's snapshots of the
    # experiment state, on Tune's period (at least 10 s) since sweeps keep 3 checkpoints a trial;
    # this test watches that file for each epoch (a few seconds here), so it asks for 1 s.
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "1")
    try:
        assert main(["sweep", str(path), "--address", cluster.address]) == 0
        watcher.join(timeout=5)
        assert removed, "no trial reported an epoch on a worker node in time"
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2  # the head and one worker left
    finally:
        ray.shutdown()
        cluster.shutdown()
    got = rows(directory)
    assert sorted(r["train.lr"] for r in got) == [0.0001, 0.001]  # each trial exactly once
    assert len({r["trial_id"] for r in got}) == 2 and all(r["status"] == "ok" and r["epochs"] == 4 for r in got)
    # the trial on the lost node started again from its checkpoint: epoch 1 is not trained twice
    reports = [
        json.loads(x) for x in (directory / removed["trial"] / "result.json").read_text().splitlines() if x.strip()
    ]
    assert [r["epoch"] for r in reports if r.get("epoch") is not None] == [1, 2, 3, 4], reports
    # The node goes some time after its trial reported epoch 1, so the lost process may have finished
    # (and checkpointed) epoch 2 too; what it reported is a prefix, and another process went on from there.
    pids = [r["pid"] for r in reports if r.get("epoch") is not None]
    lost = pids.count(removed["pid"])
    assert pids[:lost] == [removed["pid"]] * lost and 1 <= lost < 4, pids
    # the summary's mean ± std are those of the rows (one seed per config here: std 0)
    summary = (directory / "summary.md").read_text()
    for r in got:
        vals = [x["test/synthetic_tiny/R@1"] for x in got if x["config_key"] == r["config_key"]]
        assert f"| {r['train.lr']} | 1 | {np.mean(vals):.1f} ± 0.0 |" in summary, summary
