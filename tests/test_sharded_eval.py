"""``vgray eval --address``: a database above ``data.ray_threshold`` extracted through Ray Data into
shards and searched there (sharded Flat over actors, or an index built from the shards) scores as
the in-process evaluation does; a re-run keeps the shards; bad combinations exit 2 first."""

import json

import pytest
from conftest import TINY_SET

from vgray.cli import main

pytestmark = pytest.mark.slow

SET = [*TINY_SET, "data.root=synthetic:tiny", "data.resize=[32,48]", "model.aggregation=gem"]


def figures(path):
    return json.loads(path.read_text())


@pytest.mark.parametrize(
    "extra, culprit",
    [
        (["--shards", "{tmp}/s"], "--shards"),  # without --address
        (["--address", "auto", "--set", "data.ray_threshold=0", "--set", "test.method=five_crops"], "test.method"),
        (["--address", "auto", "--set", "data.ray_threshold=0", "--save-descriptors", "{tmp}/d"], "--save-descriptors"),
    ],
)
def test_sharded_eval_refusals_exit_2_before_ray(extra, culprit, tmp_path, capsys, tiny_root):
    import ray

    argv = [arg for o in SET for arg in ("--set", o)] + [a.replace("{tmp}", str(tmp_path)) for a in extra]
    assert main(["eval", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and culprit in err[0], err
    assert not ray.is_initialized() and not (tmp_path / "s").exists() and not (tmp_path / "d").exists()


def test_sharded_eval_scores_as_the_in_process_one(ray_local, tmp_path, capsys):
    argv = [arg for o in SET for arg in ("--set", o)]
    assert main(["eval", *argv, "--json", str(tmp_path / "local.json")]) == 0
    shards = tmp_path / "shards"
    sharded = ["--address", "auto", "--shards", str(shards), "--shard-size", "300"]
    assert main(["eval", *argv, *sharded, "--set", "data.ray_threshold=0", "--json", str(tmp_path / "ray.json")]) == 0
    local, ray_flat = figures(tmp_path / "local.json"), figures(tmp_path / "ray.json")
    assert ray_flat["search"].startswith("sharded Flat over") and ray_flat["shards_written"] == 4 + 1
    assert ray_flat["database"] == local["database"] == 920 and ray_flat["queries"] == local["queries"]
    for n in (
        1,
        5,
        10,
        20,
    ):  # Ray Data's descriptors equal the in-process ones to float rounding: at most one query moves
        assert abs(ray_flat[f"R@{n}"] - local[f"R@{n}"]) <= 100.0 / local["queries"] + 1e-9, n
    assert ray_flat["features_dim"] == local["features_dim"] and ray_flat["gflops"] == local["gflops"]
    assert sorted(p.name for p in (shards / "database").iterdir()) == [f"shard-{k:05d}.parquet" for k in range(4)]

    # Again with a compressed index: every shard kept, the index built from them on the driver.
    again = ["--set", "data.ray_threshold=100", "--set", "test.knn=IVF8,PQ16x4", "--json", str(tmp_path / "ivf.json")]
    assert main(["eval", *argv, *sharded, *again]) == 0
    ivf = figures(tmp_path / "ivf.json")
    assert ivf["shards_kept"] == 5 and ivf["shards_written"] == 0 and ivf["search"].startswith("IVF8,PQ16x4")
    assert ivf["index_memory_mb"] < ray_flat["index_memory_mb"] and 0 <= ivf["R@1"] <= ivf["R@20"] <= 100
