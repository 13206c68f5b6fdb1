"""A sweep trial that extracts through Ray Data inside its placement group, on a 2-CPU Ray: the
trial reserves its trainer's CPU and an extraction bundle, i.e. every CPU of the cluster, so a Ray
Data task or actor scheduled outside the group would wait forever; the sweep finishes."""

import json

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import SWEEP_BASE

from vgray.cli import main

pytestmark = pytest.mark.slow

BASE = {**SWEEP_BASE, "data": {**SWEEP_BASE["data"], "ray_threshold": 251}}


def test_trials_extract_through_ray_data_in_their_placement_group(ray_local, small_root, tmp_path):
    from vgray.config import load_config
    from vgray.distributed.descriptors import trial_bundles

    # The tiny preset's val database (252 images) exceeds the threshold (251); its mining sets, its
    # val queries and the small test set do not: those stay in-process.
    base = {**BASE, "test": {**BASE["test"], "datasets": {"small": str(small_root)}}}  # a quick final test
    cfg = load_config(base=base)
    assert trial_bundles({"cpu": 1, "gpu": 0}, cfg) == [{"CPU": 1}, {"CPU": 1}]
    assert trial_bundles({"cpu": 1, "gpu": 0}, cfg.replace(**{"data.ray_threshold": 5000})) == [{"CPU": 1}]

    path = tmp_path / "s.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "raydata",
                "base": base,
                "resources": {"cpu": 1},
                "grid": {"model.aggregation": ["gem"]},
                "storage": str(tmp_path / "store"),
            }
        )
    )
    assert main(["sweep", str(path)]) == 0
    directory = tmp_path / "store" / "raydata"
    rows = pq.read_table(directory / "results.parquet").to_pylist()
    assert len(rows) == 1 and rows[0]["status"] == "ok" and rows[0]["epochs"] == 1
    results = list(directory.glob("*/result.json"))
    assert len(results) == 1
    for result in results:
        epochs = [json.loads(line) for line in result.read_text().splitlines() if "ray_data_images" in line]
        assert epochs and epochs[0]["ray_data_images"] == 252  # validation's database, through Ray Data


def test_eval_trials_extract_through_ray_data_and_score_as_in_process(ray_local, small_root, tmp_path):
    """task: eval with data.ray_threshold 0: the test set's 27 images go through Ray Data in the
    trial's placement group, and the row's recalls are those of the in-process `vgray eval`."""
    from vgray.config import load_config
    from vgray.evaluate.evaluate import evaluate

    base = {**BASE, "data": {**BASE["data"], "root": str(small_root), "ray_threshold": 0}}
    path = tmp_path / "e.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "raydata_eval",
                "task": "eval",
                "base": base,
                "resources": {"cpu": 1},
                "grid": {"model.aggregation": ["gem"]},
                "storage": str(tmp_path / "store"),
            }
        )
    )
    assert main(["sweep", str(path)]) == 0
    directory = tmp_path / "store" / "raydata_eval"
    rows = pq.read_table(directory / "results.parquet").to_pylist()
    assert len(rows) == 1 and rows[0]["status"] == "ok"
    reported = [json.loads(line) for line in next(directory.glob("*/result.json")).read_text().splitlines()]
    assert any(r.get("ray_data_images") == 27 for r in reported)  # 21 database + 6 queries
    local = evaluate(load_config(base=base), progress=False)
    name = next(k for k in rows[0] if k.startswith("test/") and k.endswith("/R@1")).rsplit("/", 1)[0]
    for n in (1, 5):
        assert rows[0][f"{name}/R@{n}"] == pytest.approx(local[f"R@{n}"])
