"""``vgray extract`` on a two-node local Ray cluster: Ray Data descriptors equal the in-process
ones, a re-run keeps complete shards, truncated shards and shards of another model are extracted
again, and an unreadable image stops the run (exit 2, one line naming it) unless skipped."""

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import TINY_SET

from vgray.cli import main
from vgray.config import load_config

pytestmark = pytest.mark.slow

SET = TINY_SET + ["data.resize=[32,48]", "model.backbone=resnet18conv4", "model.aggregation=gem"]


def config(root: Path, *extra: str):
    return load_config(overrides=SET + [f"data.root={root}", *extra])


def run(cfg, out: Path, messages=None, **kw):
    from vgray.distributed.extract import extract

    kw = {"shard_size": 8, "actors": 2, "batch_size": 4, **kw}
    return extract(cfg, "test", out, progress=False, log=(messages.append if messages is not None else None), **kw)


def descriptors(path: Path):
    table = pq.read_table(path)
    return table.column("path").to_pylist(), np.stack(table.column("descriptor").to_numpy(zero_copy_only=False))


@pytest.fixture(scope="module")
def extracted(two_nodes, small_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("extract")
    figures = run(config(small_root), out)
    return out, figures


def test_ray_data_descriptors_equal_the_in_process_ones(extracted, small_root):
    from vgray.data.dataset import open_split
    from vgray.evaluate.extract import extract_descriptors
    from vgray.evaluate.methods import create_method
    from vgray.models import build_model
    from vgray.runtime import Runtime

    out, figures = extracted
    assert figures["images"] == 27 and figures["shards_written"] == 3 + 1 and figures["shards_kept"] == 0
    assert sorted(p.name for p in (out / "database").iterdir()) == [f"shard-0000{k}.parquet" for k in range(3)]
    cfg = config(small_root)
    model = build_model(cfg.model, load_weights=False, image_size=cfg.data.image_size)
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    method = create_method(cfg, model.mean, model.std)
    split = open_split(cfg.data.root, "test")
    rt = Runtime.from_config(cfg, progress=False)
    for role, transform in (("database", method.database_transform), ("queries", method.query_transform)):
        images = getattr(split, role)
        xb, valid = extract_descriptors(model, images.paths, transform, rt, model.features_dim)
        assert valid.all()
        paths, got = descriptors(out / f"{role}.parquet")
        assert paths == images.paths
        np.testing.assert_allclose(got, xb, rtol=1e-4, atol=1e-5)
        table = pq.read_table(out / role / "shard-00000.parquet")
        np.testing.assert_array_equal(table.column("utm_east").to_numpy(), images.utm[: len(table), 0])
    meta = json.loads(pq.read_metadata(out / "database" / "shard-00002.parquet").metadata[b"vgray"])
    assert (meta["start"], meta["stop"], meta["count"], meta["features_dim"]) == (16, 21, 5, 256)
    assert meta["model_sha1"] == figures["model_sha1"]


def test_rerun_keeps_complete_shards_and_extracts_bad_ones_again(extracted, small_root):
    out, first = extracted
    shards = sorted((out / "database").glob("*.parquet")) + sorted((out / "queries").glob("*.parquet"))
    before = {p: p.stat().st_mtime_ns for p in shards}
    _, reference = descriptors(out / "database.parquet")

    again = run(config(small_root), out)
    assert (again["images"], again["shards_written"], again["shards_kept"]) == (0, 0, 4)
    assert again["model_sha1"] == first["model_sha1"]
    assert {p: p.stat().st_mtime_ns for p in shards} == before

    truncated, other_model, other_size = (out / "database" / f"shard-0000{k}.parquet" for k in range(3))
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    for path, key, value in ((other_model, "model_sha1", "0" * 40), (other_size, "features_dim", 512)):
        table = pq.read_table(path)
        meta = json.loads(table.schema.metadata[b"vgray"])
        pq.write_table(table.replace_schema_metadata({b"vgray": json.dumps({**meta, key: value}).encode()}), path)
    messages = []
    third = run(config(small_root), out, messages, actors=1)
    assert (third["images"], third["shards_written"], third["shards_kept"]) == (21, 3, 1)
    assert len(messages) == 3 and all("extracting it again" in m for m in messages)
    assert "unreadable" in messages[0] and "model_sha1" in messages[1] and "features_dim" in messages[2]
    assert (out / "queries" / "shard-00000.parquet").stat().st_mtime_ns == before[
        out / "queries" / "shard-00000.parquet"
    ]
    _, redone = descriptors(out / "database.parquet")
    np.testing.assert_allclose(redone, reference, rtol=1e-4, atol=1e-5)


def test_unreadable_image_exits_2_naming_it_or_is_skipped(two_nodes, small_root, tmp_path, capsys):
    root = tmp_path / "broken"
    shutil.copytree(small_root, root)
    bad = sorted((root / "images" / "test" / "database").iterdir())[3]
    bad.write_bytes(b"not a jpeg")
    code = main(
        [
            "extract",
            *sum((["--set", s] for s in SET), []),
            "--set",
            f"data.root={root}",
            "--out",
            str(tmp_path / "out"),
            "--shard-size",
            "8",
            "--actors",
            "1",
            "--batch-size",
            "8",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("vgray: error:")]
    assert len(errors) == 1 and str(bad) in errors[0] and "data.skip_corrupt" in errors[0]
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "database" / "shard-00000.parquet").exists()  # never a shard with a hole

    messages = []
    figures = run(config(root, "data.skip_corrupt=true"), tmp_path / "skip", messages, actors=1)
    assert figures["skipped"] == 1 and any(str(bad) in m for m in messages)
    paths, _ = descriptors(tmp_path / "skip" / "database.parquet")
    assert len(paths) == 20 and str(bad) not in paths
    meta = json.loads(pq.read_metadata(tmp_path / "skip" / "database" / "shard-00000.parquet").metadata[b"vgray"])
    assert (meta["count"], meta["skipped"]) == (7, 1)


def test_index_option_makes_the_shards_into_a_faiss_index(extracted, small_root, tmp_path, capsys):
    import faiss

    from vgray.evaluate.knn import build_index, fill_index, search

    out, _ = extracted
    figures = run(config(small_root), out, index="IVF2,Flat")  # every shard kept: no extraction
    assert (figures["images"], figures["index"]) == (0, "IVF2,Flat")
    index = faiss.read_index(str(out / "database.index.faiss"))
    _, xb = descriptors(out / "database.parquet")
    reference = build_index("IVF2,Flat", xb.shape[1])
    fill_index(reference, xb, seed=0)
    assert index.ntotal == 21
    np.testing.assert_array_equal(search(index, xb[:5], 3)[1], search(reference, xb[:5], 3)[1])
    code = main(
        [
            "extract",
            *sum((["--set", s] for s in SET), []),
            "--set",
            f"data.root={small_root}",
            "--out",
            str(tmp_path / "bad"),
            "--index",
            "IVF2,PQ7",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "PQ" in err and not (tmp_path / "bad" / "database").exists()


def test_sharded_eval_scores_as_the_in_process_one(extracted, small_root, tmp_path):
    """``vgray eval --address``: the database above data.ray_threshold goes through shards and
    sharded Flat actors (one a node) and scores as the in-process evaluation; again with an index
    built from the shards, every shard kept."""
    argv = [a for o in SET + [f"data.root={small_root}", "test.recall_values=[1,5,10]"] for a in ("--set", o)]
    assert main(["eval", *argv, "--json", str(tmp_path / "local.json")]) == 0
    sharded = ["--address", "auto", "--shards", str(tmp_path / "shards"), "--shard-size", "8"]
    assert main(["eval", *argv, *sharded, "--set", "data.ray_threshold=0", "--json", str(tmp_path / "r.json")]) == 0
    local, flat = (json.loads((tmp_path / f).read_text()) for f in ("local.json", "r.json"))
    assert flat["search"] == "sharded Flat over 2 actors" and flat["shards_written"] == 3 + 1
    for key in ("R@1", "R@5", "R@10", "database", "queries", "features_dim", "gflops"):
        assert flat[key] == local[key], key
    again = ["--set", "data.ray_threshold=10", "--set", "test.knn=IVF2,Flat", "--json", str(tmp_path / "ivf.json")]
    assert main(["eval", *argv, *sharded, *again]) == 0
    ivf = json.loads((tmp_path / "ivf.json").read_text())
    assert ivf["shards_kept"] == 4 and ivf["shards_written"] == 0 and ivf["search"].startswith("IVF2,Flat")
    assert all(ivf[r] == local[r] for r in ("R@1", "R@5", "R@10"))  # 2 lists, both probed: exact


@pytest.mark.parametrize(
    "args, culprit",
    [
        (["--shard-size", "0"], "--shard-size=0"),
        (["--actors", "0"], "--actors=0"),
        (["--set", "model.pca_dim=8"], "model.pca_dim"),
    ],
)
def test_bad_requests_exit_2_before_ray_starts(args, culprit, tmp_path, capsys, monkeypatch):
    import vgray.distributed.sweep

    def no_ray(*a, **k):
        raise AssertionError("Ray started before the request was checked")

    monkeypatch.setattr(vgray.distributed.sweep, "init_ray", no_ray)
    assert main(["extract", "--set", "model.pretrained=none", "--out", str(tmp_path), *args]) == 2
    assert culprit in capsys.readouterr().err
