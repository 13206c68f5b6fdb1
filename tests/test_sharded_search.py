"""Sharded exact search (vgray.distributed.search) against one faiss Flat index, on a two-node
local Ray cluster, and ``vgray bench search`` at tiny sizes."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vgray.distributed.search import _contiguous_groups, same_as_flat
from vgray.errors import BadInput


def flat(xb, xq, k):
    index = faiss.IndexFlatL2(xb.shape[1])
    index.add(xb)
    return index.search(xq, min(k, len(xb)))


def write_shard(path, xb, offset):
    n, d = xb.shape
    table = pa.table(
        {
            "path": [f"db/{offset + i}.jpg" for i in range(n)],
            "utm_east": np.arange(offset, offset + n, dtype=np.float64),
            "utm_north": np.zeros(n),
            "descriptor": pa.FixedSizeListArray.from_arrays(pa.array(xb.reshape(-1), pa.float32()), d),
        }
    )
    pq.write_table(table, path)


def test_contiguous_groups_cover_every_file_once_and_none_is_empty():
    for counts, groups in [([1] * 5, 5), ([10, 1, 1, 1], 2), ([1, 1, 1, 10], 3), ([5, 5, 5], 2), ([3], 1)]:
        bounds = _contiguous_groups(counts, groups)
        assert len(bounds) == groups
        assert [lo for lo, _ in bounds] == [0] + [hi for _, hi in bounds[:-1]]
        assert bounds[-1][1] == len(counts) and all(hi > lo for lo, hi in bounds)
    assert _contiguous_groups([5, 5, 5, 5], 2) == [(0, 2), (2, 4)]


def test_same_as_flat_allows_swapped_ties_only():
    D0 = np.array([[1.0, 2.0, 2.0, 3.0]], dtype=np.float32)
    I0 = np.array([[7, 3, 5, 9]])
    assert same_as_flat(D0, I0, D0, I0).all()
    assert same_as_flat(D0, I0, D0, np.array([[7, 5, 3, 9]])).all()  # equal distances, either order
    assert not same_as_flat(D0, I0, D0, np.array([[3, 7, 5, 9]])).any()  # 1.0 is no tie
    assert not same_as_flat(D0, I0, D0 + 0.5, I0).any()
    # Small distances (near-identical unit descriptors): float32 rounding of |x|^2 + |y|^2 - 2x.y moves
    # each by about 1e-6 with how the database is cut, so ranks 1e-6 apart may swap; 1e-3 apart may not.
    D0 = np.array([[0.001, 0.001001, 0.003, 0.004]], dtype=np.float32)
    I0 = np.array([[1, 2, 3, 4]])
    assert same_as_flat(D0, I0, D0 + 2e-6, np.array([[2, 1, 3, 4]])).all()
    assert not same_as_flat(D0, I0, D0 + 2e-6, np.array([[1, 2, 4, 3]])).any()


@pytest.fixture(scope="module")
def two_nodes():
    """Two Ray nodes on this machine (1 CPU each); the driver is connected to the head."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False})
    cluster.add_node(num_cpus=1, num_gpus=0)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="vgray", log_to_driver=False)
    yield ray
    ray.shutdown()
    cluster.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize(
    "sizes",
    [[300], [150, 150], [100, 100, 100], [60, 60, 60, 60, 60], [1, 7, 250, 2, 40]],
    ids=["1", "2", "3", "5", "uneven"],
)
def test_sharded_search_equals_flat(two_nodes, sizes):
    from vgray.distributed.search import ShardedFlatSearch

    rng = np.random.default_rng(len(sizes))
    xb = rng.standard_normal((300, 32), dtype=np.float32)
    xq = rng.standard_normal((50, 32), dtype=np.float32)  # 50 >= 20 queries: faiss's BLAS path
    D0, I0 = flat(xb, xq, 10)
    sharded = ShardedFlatSearch(xb, actors=len(sizes), sizes=sizes, num_cpus=0.2)
    try:
        assert sharded.actor_bytes() == [n * 32 * 4 for n in sizes]  # each actor holds its part only
        assert sum(s["ntotal"] for s in sharded.shards) == 300
        if len(sizes) > 1:  # SPREAD puts the actors on both nodes
            assert len({s["node_id"] for s in sharded.shards}) == 2
        D, I = sharded.search(xq, 10)
        np.testing.assert_array_equal(I, I0)
        np.testing.assert_allclose(D, D0, rtol=1e-5, atol=1e-5)
        D, I = sharded.search(xq[:5], 10)  # < 20 queries: faiss's direct path
        np.testing.assert_array_equal(I, I0[:5])
        D, I = sharded.search(xq[:3], 1000)  # k beyond the database: every id once, as Flat gives
        Dk, Ik = flat(xb, xq[:3], 1000)
        np.testing.assert_array_equal(I, Ik)
    finally:
        sharded.close()


@pytest.mark.slow
def test_equal_distances_keep_the_lower_id_first(two_nodes):
    """Duplicated database vectors (small integers: every distance exact) tie; faiss and the merge
    both list the lower id first, wherever the copies sit."""
    from vgray.distributed.search import ShardedFlatSearch

    rng = np.random.default_rng(3)
    base = rng.integers(-3, 4, size=(20, 8)).astype(np.float32)
    xb = np.concatenate([base, base, base[::-1]])  # each vector three times, in three shards
    xq = rng.integers(-3, 4, size=(30, 8)).astype(np.float32)
    D0, I0 = flat(xb, xq, 12)
    sharded = ShardedFlatSearch(xb, actors=3, num_cpus=0.2)
    try:
        D, I = sharded.search(xq, 12)
    finally:
        sharded.close()
    np.testing.assert_array_equal(D, D0)
    np.testing.assert_array_equal(I, I0)
    for row_d, row_i in zip(D, I):  # the order is (distance, id)
        assert list(zip(row_d, row_i)) == sorted(zip(row_d, row_i))


@pytest.mark.slow
def test_parquet_shards_load_in_their_actors(two_nodes, tmp_path):
    from vgray.distributed.search import ShardedFlatSearch

    rng = np.random.default_rng(5)
    xb = rng.standard_normal((230, 16), dtype=np.float32)
    xq = rng.standard_normal((25, 16), dtype=np.float32)
    cuts = [0, 40, 100, 110, 230]
    files = [tmp_path / f"database-{i:03d}.parquet" for i in range(4)]
    for f, lo, hi in zip(files, cuts, cuts[1:]):
        write_shard(f, xb[lo:hi], lo)
    D0, I0 = flat(xb, xq, 8)
    sharded = ShardedFlatSearch(files=files, actors=2, num_cpus=0.2)
    try:
        assert sum(sharded.actor_bytes()) == xb.nbytes and len(sharded.shards) == 2
        D, I = sharded.search(xq, 8)
    finally:
        sharded.close()
    np.testing.assert_array_equal(I, I0)
    np.testing.assert_allclose(D, D0, rtol=1e-5, atol=1e-5)

    write_shard(files[1], rng.standard_normal((60, 8), dtype=np.float32), 40)  # another model's size
    with pytest.raises(BadInput, match="database-001.parquet"):
        ShardedFlatSearch(files=files, actors=2, num_cpus=0.2)


def test_bad_database_input_is_refused(tmp_path):
    from vgray.distributed.search import ShardedFlatSearch

    with pytest.raises(BadInput, match="not both or neither"):
        ShardedFlatSearch()
    bad = tmp_path / "x.parquet"
    bad.write_text("not parquet")
    with pytest.raises(BadInput, match="x.parquet"):
        ShardedFlatSearch(files=[bad])


@pytest.mark.slow
def test_bench_search_runs_with_tiny_sizes(two_nodes, tmp_path, capsys):
    from vgray.cli import main

    out = tmp_path / "search.json"
    assert (
        main(
            [
                "bench",
                "search",
                "--database",
                "2000",
                "--dim",
                "16",
                "--queries",
                "40",
                "--actors",
                "1,2",
                "--repeats",
                "1",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    figures = json.loads(out.read_text())
    assert figures["actors=1 exact"] == 1.0 and figures["actors=2 exact"] == 1.0
    assert figures["actors=2 nodes_used"] == 2
    assert figures["actors=2 actor_memory_mb"] == pytest.approx(1000 * 16 * 4 / 2**20)
    assert figures["ratio"] == figures["actors=2 speedup_vs_flat"] > 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("ratio")
    assert main(["bench", "search", "--actors", "0"]) == 2
