"""vgray locate: descriptors saved by ``vgray eval --save-descriptors`` answer where new photos were
taken, with the same network and transform as the evaluation, through a cached kNN index."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import TINY_SET

from vgray.cli import main
from vgray.locate import cached_index
from vgray.saved_descriptors import open_database

# NetVLAD from random weights: its k-means clusters exist only in the evaluated model, so locate
# gives the evaluation's descriptors only if model.pt carries them.
EVAL_SET = TINY_SET + [
    "data.resize=[64,64]",
    "model.backbone=resnet18conv4",
    "model.aggregation=netvlad",
    "model.netvlad_clusters=8",
]


def _sets(values):
    return [arg for v in values for arg in ("--set", v)]


@pytest.fixture(scope="module")
def saved(tiny_root, tmp_path_factory) -> Path:
    """Descriptors of a slice of tiny's val split (40 database images, 12 queries), as its test split."""
    base = tmp_path_factory.mktemp("locate")
    for role, count in (("database", 40), ("queries", 12)):
        target = base / "ds" / "images" / "test" / role
        target.mkdir(parents=True)
        for photo in sorted((tiny_root / "images" / "val" / role).iterdir())[:count]:
            shutil.copy(photo, target / photo.name)
    out = base / "desc"
    assert main(["eval", *_sets(EVAL_SET + [f"data.root={base / 'ds'}"]), "--save-descriptors", str(out)]) == 0
    return out


def _table(path: Path):
    t = pq.read_table(path)
    x = np.stack(t.column("descriptor").to_numpy(zero_copy_only=False)).astype(np.float32)
    return t.column("path").to_pylist(), x


def _locate_json(capsys, *args):
    capsys.readouterr()
    assert main(["locate", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_eval_writes_what_locate_needs(saved):
    for name in ("database.parquet", "queries.parquet", "config.yaml", "model.pt"):
        assert (saved / name).is_file(), name
    assert "netvlad_clusters: 8" in (saved / "config.yaml").read_text()


def test_locate_recomputes_the_evaluation(saved, capsys):
    """A database photo finds itself at distance ~0; query photos get the evaluation's descriptors:
    top-k and distances equal a brute-force search of the saved query descriptors over the database."""
    db_paths, xb = _table(saved / "database.parquet")
    q_paths, xq = _table(saved / "queries.parquet")
    rows = [0, 5, 11]
    answer = _locate_json(capsys, db_paths[7], *[q_paths[r] for r in rows], "--database", str(saved), "--k", "4")
    itself, *queries = answer["photos"]

    top = itself["matches"][0]
    assert top["path"] == db_paths[7] and top["distance"] < 1e-3
    assert [m["rank"] for m in itself["matches"]] == [1, 2, 3, 4]
    fields = os.path.basename(db_paths[7]).split("@")
    # The predicted position is the top-1's: UTM and the lat/lon its file name carries.
    predicted = itself["predicted"]
    assert (predicted["utm_east"], predicted["utm_north"]) == (float(fields[1]), float(fields[2]))
    assert (predicted["lat"], predicted["lon"], predicted["utm_zone"]) == (float(fields[5]), float(fields[6]), "33T")

    for r, result in zip(rows, queries):
        d = np.sqrt(((xb - xq[r]) ** 2).sum(1))
        expected = np.argsort(d, kind="stable")[:4]
        assert [m["path"] for m in result["matches"]] == [db_paths[i] for i in expected]
        np.testing.assert_allclose([m["distance"] for m in result["matches"]], d[expected], atol=2e-3)
        assert result["predicted"]["path"] == db_paths[expected[0]]


def test_index_is_cached_and_rebuilt_when_the_database_changes(saved, tmp_path):
    folder = tmp_path / "desc"
    shutil.copytree(saved, folder)
    for old in folder.glob("index.*.faiss"):
        old.unlink()
    built = cached_index(open_database(folder))
    (index,) = folder.glob("index.*.faiss")
    first = index.stat().st_mtime_ns
    again = cached_index(open_database(folder))
    assert index.stat().st_mtime_ns == first  # read, not written again
    assert again.ntotal == built.ntotal == 40

    # A rewritten database.parquet (here: a new mtime) makes the cached index stale.
    stat = (folder / "database.parquet").stat()
    os.utime(folder / "database.parquet", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    cached_index(open_database(folder))
    (rebuilt,) = folder.glob("index.*.faiss")
    assert rebuilt != index and not index.exists()


def test_table_by_default(saved, capsys):
    photo = _table(saved / "database.parquet")[0][3]
    capsys.readouterr()
    assert main(["locate", photo, "--database", str(saved), "--k", "2"]) == 0
    out = capsys.readouterr().out
    assert f"{photo}: predicted UTM" in out and "lat " in out
    assert len([line for line in out.splitlines() if line.strip().startswith(("1 ", "2 "))]) == 2


def test_bad_input_exits_2_with_one_line(saved, tmp_path, capsys):
    photo = _table(saved / "database.parquet")[0][0]
    not_image = tmp_path / "note.jpg"
    not_image.write_text("not an image")
    no_model = tmp_path / "no_model"
    no_model.mkdir()
    for name in ("database.parquet", "config.yaml"):
        shutil.copy(saved / name, no_model / name)
    cases = [
        ([photo, "--database", str(tmp_path / "nowhere")], "no such folder"),
        ([photo, "--database", str(no_model)], "no model.pt"),
        ([str(not_image), "--database", str(saved)], "is not a readable image"),
        ([str(tmp_path / "missing.jpg"), "--database", str(saved)], "no such file"),
        ([photo, "--database", str(saved), "--k", "0"], "--k=0 must be at least 1"),
    ]
    for args, message in cases:
        capsys.readouterr()
        assert main(["locate", *args]) == 2, args
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err, err


@pytest.mark.slow
def test_pca_and_multi_crop_queries(tiny_root, tmp_path, capsys):
    """With model.pca_dim the saved pca.faiss projects the photos; with nearest_crop a photo is seen
    as five crops, searched separately and merged as the evaluation merges them."""
    from vgray.config import load_config
    from vgray.evaluate.methods import create_method

    ds = tmp_path / "ds"
    for split, role, count in (("val", "database", 30), ("val", "queries", 6), ("train", "database", 24)):
        target = ds / "images" / ("test" if split == "val" else split) / role
        target.mkdir(parents=True)
        for photo in sorted((tiny_root / "images" / split / role).iterdir())[:count]:
            shutil.copy(photo, target / photo.name)
    (ds / "images" / "train" / "queries").mkdir()
    shutil.copy(next((tiny_root / "images" / "train" / "queries").iterdir()), ds / "images" / "train" / "queries")
    out = tmp_path / "desc"
    extra = [f"data.root={ds}", "model.pca_dim=16", "test.method=nearest_crop"]
    assert main(["eval", *_sets(EVAL_SET + extra), "--save-descriptors", str(out)]) == 0
    assert (out / "pca.faiss").is_file()

    db_paths, xb = _table(out / "database.parquet")
    q_paths, xq = _table(out / "queries.parquet")  # five rows (crops) per query, query-major
    assert xb.shape[1] == 16 and len(q_paths) == 5 * 6
    answer = _locate_json(capsys, q_paths[0], q_paths[5], "--database", str(out), "--k", "3")

    method = create_method(load_config(out / "config.yaml"), (0, 0, 0), (1, 1, 1))
    for q, result in zip((0, 1), answer["photos"]):
        crops = xq[5 * q : 5 * q + 5]
        D = ((crops[:, None, :] - xb[None]) ** 2).sum(-1)  # (5 crops, database)
        I = np.argsort(D, axis=1, kind="stable")[:, : method.search_k(3)]
        D = np.take_along_axis(D, I, 1)
        expected = method.merge(D[None], I[None], 3)[0]
        assert [m["path"] for m in result["matches"]] == [db_paths[i] for i in expected]
        nearest = [np.sqrt(D[I == i].min()) for i in expected]
        np.testing.assert_allclose([m["distance"] for m in result["matches"]], nearest, atol=2e-3)
