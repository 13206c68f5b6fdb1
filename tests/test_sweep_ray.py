"""Sweeps on a real local Ray started in this process: trials, the results actor surviving a kill,
Optuna, ASHA, and resources no node has (driver kills and the Jobs API: test_sweep_jobs.py)."""

import json
import time

import numpy as np
import pytest
from conftest import rows, write_sweep

from vgray.cli import main

pytestmark = pytest.mark.slow


def test_results_actor_restarts_and_reloads_without_loss_or_duplicates(ray_local, tmp_path):
    from vgray.distributed.results import get_results_actor

    ray = ray_local
    actor = get_results_actor("actor-test", str(tmp_path), ["model.aggregation"])

    def row(i):
        return {"trial_id": f"t{i}", "config_key": "k", "seed": i, "status": "ok", "test/x/R@1": float(i)}

    assert ray.get([actor.add.remote(row(i)) for i in range(3)]) == [True, True, True]
    pid = ray.get(actor.pid.remote())
    ray.kill(actor, no_restart=False)  # dies; Ray restarts it, and it reloads from disk
    # The kill is asynchronous: a call sent now may still run on the old process and be retried on
    # the new one (at least once). Wait for the new process so the calls below meet it.
    deadline = time.monotonic() + 60
    while ray.get(actor.pid.remote()) == pid:
        assert time.monotonic() < deadline, "the results actor was not restarted within 60 s"
        time.sleep(0.1)
    assert ray.get(actor.add.remote(row(1))) is False  # acknowledged before: not written twice
    assert ray.get(actor.add.remote(row(3))) is True
    assert [r["trial_id"] for r in ray.get(actor.rows.remote())] == ["t0", "t1", "t2", "t3"]
    assert [r["trial_id"] for r in rows(tmp_path)] == ["t0", "t1", "t2", "t3"]
    assert "4 |" in ray.get(actor.summary_markdown.remote())  # n = 4 seeds of one config


def test_grid_sweep_rows_summary_and_tune_logs(ray_local, tmp_path, capsys):
    path = write_sweep(
        tmp_path / "s.yaml",
        name="grid",
        grid={"model.aggregation": ["gem"]},
        repeats=2,
        storage=str(tmp_path / "store"),
    )
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
    trial_dirs = sorted(
        p.name
        for p in directory.iterdir()
        if p.is_dir() and not p.name.startswith(".") and p.name not in ("logs", "report")
    )
    assert [d.split("_")[0] for d in trial_dirs] == ["gem-s0", "gem-s1"]
    for d in trial_dirs:  # Tune's own CSV and TensorBoard logs stay on
        assert (directory / d / "progress.csv").is_file()
        assert any(p.name.startswith("events.out.tfevents") for p in (directory / d).iterdir())


def test_two_stage_sweep_starts_crn_from_the_netvlad_model_of_its_seed(ray_local, tmp_path, capsys):
    path = write_sweep(
        tmp_path / "s.yaml",
        {"model.netvlad_clusters": 8},
        name="stages",
        variants=[
            {"model.aggregation": "netvlad"},
            {"model.aggregation": "crn", "model.resume_from": "trial:model.aggregation=netvlad"},
        ],
        storage=str(tmp_path / "store"),
    )
    assert main(["sweep", str(path), "--dry-run"]) == 0
    assert "netvlad-s0" in capsys.readouterr().out
    assert main(["sweep", str(path)]) == 0
    directory = tmp_path / "store" / "stages"
    got = {r["trial_name"]: r for r in rows(directory)}
    assert set(got) == {"netvlad-s0", "crn-from=netvlad-s0"}
    assert all(r["status"] == "ok" for r in got.values())
    kept = directory / "models" / "netvlad-s0.pt"
    assert kept.is_file() and not (directory / "models" / "crn-from=netvlad-s0.pt").exists()
    assert got["crn-from=netvlad-s0"]["model.resume_from"] == str(kept)  # the row says where it started
    # ... but its config_key is that of the config as the sweep states it, which every seed shares
    from vgray.distributed.spec import load_sweep

    spec = load_sweep(path)
    assert got["crn-from=netvlad-s0"]["config_key"] == spec.stages()[1][0].config(spec, 0).key()
    assert (directory / "stage2").is_dir()  # the second stage is its own Tune experiment
    import torch

    ck = torch.load(kept, weights_only=True)
    assert ck["config"]["model"]["aggregation"] == "netvlad" and "optimizer" not in ck


def test_optuna_search_runs_every_seed_and_sees_the_mean(ray_local, tmp_path):
    path = write_sweep(
        tmp_path / "s.yaml",
        name="optuna",
        task="eval",
        repeats=2,
        storage=str(tmp_path / "store"),
        search={
            "algorithm": "optuna",
            "space": {"model.gem_p": {"type": "float", "low": 1.5, "high": 4.0}},
            "num_samples": 2,
            "metric": "test/synthetic_tiny/R@5",
            "mode": "max",
            "sampler": "random",
        },
    )
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
    path = write_sweep(
        tmp_path / "s.yaml",
        {"train.epochs": 3, "train.patience": 3},
        name="asha",
        storage=str(tmp_path / "store"),
        grid={"data.resize_fraction": [1.0, 0.25]},
        max_concurrent_trials=1,
        scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2, "metric": "val/R@1"},
    )
    assert main(["sweep", str(path)]) == 0
    got = rows(tmp_path / "store" / "asha")
    assert len(got) == 2 and len({r["trial_id"] for r in got}) == 2
    status = {r["data.resize_fraction"]: r["status"] for r in got}
    assert status == {1.0: "ok", 0.25: "stopped"}
    assert {r["data.resize_fraction"]: r.get("epochs") for r in got}[1.0] == 3
    assert all("val/R@5" in r and r["val/R@5"] is not None for r in got)


def test_resources_that_no_node_has_are_refused(ray_local, tmp_path, capsys):
    path = write_sweep(
        tmp_path / "s.yaml", name="big", resources={"cpu": 64, "gpu": 8}, storage=str(tmp_path / "store")
    )
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fit no node of this cluster" in err[0]
    assert not (tmp_path / "store" / "big" / "tuner.pkl").exists()
