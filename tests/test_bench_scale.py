"""``vgray bench scale``: the ladder's machinery at two small sizes through the code path of the
million-image run (links to a prefix of the test database, Ray Data extraction into shards, indexes
from shards, sharded Flat on actors, a mining refresh), on a real local Ray."""

import json

import pytest

from vgray.bench.scale import growth_exponent, ivfpq_spec

SIZES = (200, 800)  # of the tiny preset's 920 test database images
STAGES = (
    "file_index",
    "extract",
    "index_build_flat",
    "search_flat",
    "index_build_ivfpq",
    "search_ivfpq",
    "search_ivfpq_nprobe16",
    "search_sharded_flat",
    "mining_partial",
)


def test_growth_exponent_and_index_choice():
    assert growth_exponent([10, 100, 1000], [1.0, 10.0, 100.0]) == pytest.approx(1.0)
    assert growth_exponent([10, 100], [2.0, 2.0]) == pytest.approx(0.0)
    assert growth_exponent([10], [1.0]) is None
    assert ivfpq_spec(1_000_000) == "IVF4000,PQ16" and ivfpq_spec(200) == "IVF5,PQ16x4"


@pytest.mark.slow
def test_small_ladder(tiny_root, tmp_path, capsys):
    """On a cluster of two one-CPU nodes (the million-image run's shape) with two extraction actors:
    CPU slots that a decode task can always find whole on some node (no deadlock)."""
    from vgray.cli import main

    out, figure = tmp_path / "scale.json", tmp_path / "scale.png"
    argv = ["bench", "scale", "--sizes", ",".join(map(str, SIZES)), "--queries", "60", "--methods", "partial"]
    argv += ["--shard-size", "100", "--repeats", "1", "--json", str(out), "--figure", str(figure)]
    argv += ["--dir", str(tmp_path), "--nodes", "2", "--num-cpus", "2", "--extract-actors", "2", "--store-mb", "300"]
    for override in (
        "data.root=synthetic:tiny",
        "data.resize=[32,48]",
        "test.batch_size=32",
        "train.cache_refresh_rate=10",
        "train.neg_samples_num=40",
        "data.ray_threshold=100000",  # the refresh's few images in-process, as training does below it
    ):
        argv += ["--set", override]
    assert main(argv) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith("driver_peak_ratio")
    got = json.loads(out.read_text())
    assert got["sizes"] == list(SIZES) and got["complete"] is True
    for stage in STAGES:
        for n in SIZES:
            m = got["stages"][stage][str(n)]
            assert m["seconds"] > 0 and m["driver_peak_mb"] > 0 and m["worker_peak_mb"] > 0, (stage, n)
        assert isinstance(got[f"{stage} a"], float)
    small = got["stages"]
    assert small["search_sharded_flat"]["200"]["R@1"] == small["search_flat"]["200"]["R@1"]
    assert got["sharded_flat_same_as_flat"] == 1.0
    # the rungs' training split keeps the same queries (those with a positive in the smallest), so a
    # refresh handles as many queries at every size and only the database grows
    usable = {small["mining_partial"][str(n)]["usable"] for n in SIZES}
    assert len(usable) == 1 and usable.pop() > 0
    assert got["driver_peak_ratio"] == pytest.approx(got["driver_peak_mb_largest"] / got["driver_peak_mb_smallest"])
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("bench-scale-*"))  # links and shards removed
    # --from-json: the same summary again from the JSON, nothing run
    again = tmp_path / "again.json"
    assert main(["bench", "scale", "--from-json", str(out), "--json", str(again)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("driver_peak_ratio")
    redone = json.loads(again.read_text())
    assert {k: redone[k] for k in got if k != "stages"} == {k: got[k] for k in got if k != "stages"}


def test_size_beyond_the_dataset_is_refused(tiny_root, capsys):
    from vgray.cli import main

    assert main(["bench", "scale", "--sizes", "100,5000", "--set", "data.root=synthetic:tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "5,000" in err[0] and "920" in err[0]
