"""MSLS's raw layout (``train_val/<city>/{database,query}/`` with its four CSVs).

A test writes an MSLS-raw-like folder (val cities cph and sf, train city trondheim; tiny JPEGs;
CSVs with MSLS's own headers), whose rows are chosen so that every rule of MSLS's image-to-image
set shows: queries outside subtask ``all``, panoramas, a query with no database image within 25 m,
and a query whose only near database image is outside subtask ``all``. Both query sets must give the
counts the rows define; ``vgray eval`` recalls must equal a brute-force reference on the saved
descriptors with positives computed here from MSLS's rule; the results name the query set;
msls_weighted mining takes its weights from the CSV labels; a CSV without a needed column exits 2
with one line and writes nothing.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_SET, eval_refused, write_image

from vgray.cli import main
from vgray.data.dataset import open_split
from vgray.data.msls import HEADERS, is_msls_raw

RECALLS = [1, 2, 3, 5]
SMALL = [
    *TINY_SET,
    "data.resize=[32,32]",
    "model.aggregation=gem",
    f"test.recall_values={RECALLS}",
    "device=cpu",
    "model.backbone=resnet18conv4",
]

# One row per image: (offset east in m, subtask all, pano, night, view_direction, ca).
DB_ROWS = [
    (0, True, False, False, "Forward", 10.0),
    (40, True, False, True, "Forward", 20.0),
    (80, True, False, False, "Sideways", 30.0),
    (120, True, False, False, "Backward", 40.0),
    (160, False, False, False, "Forward", 50.0),
    (200, True, True, False, "Forward", 60.0),
]
VAL_QUERIES = [
    (3, True, False, False, "Forward", 11.0),  # im2im: db 0 within 3 m
    (45, True, False, True, "Sideways", 21.0),  # im2im, night and sideways
    (400, True, False, False, "Forward", 0.0),  # subtask all, but no database image within 25 m
    (82, False, False, False, "Forward", 31.0),  # not in subtask all: only in the 'all' set
    (120, True, True, False, "Forward", 41.0),  # a panorama: in neither set
    (165, True, False, True, "Forward", None),  # its only near db image (160) is not in subtask all
]
TRAIN_QUERIES = [
    (2, True, False, False, "Forward", 1.0),
    (41, True, False, True, "Forward", 2.0),
    (79, True, False, False, "Sideways", 3.0),
    (121, True, False, True, "Sideways", 4.0),
]
ORIGIN = {"cph": (720000.0, 6170000.0), "sf": (550000.0, 4180000.0), "trondheim": (570000.0, 7030000.0)}


def write_city(root: Path, city: str, role: str, rows, drop_column: str = None) -> list:
    """``root/train_val/city/role/`` with an image per row and MSLS's four CSVs; the keys."""
    folder = root / "train_val" / city / role
    keys = [f"{city}{role}{i:03d}" for i in range(len(rows))]
    for i, key in enumerate(keys):
        write_image(folder / "images" / f"{key}.jpg", seed=hash((city, role, i)) % 2**32, size=(40, 40))
    east0, north0 = ORIGIN[city]
    tables = {
        "seq_info.csv": [[i, k, f"seq{city}", i] for i, k in enumerate(keys)],
        "postprocessed.csv": [
            [i, k, east0 + r[0], north0, 7, False, r[3], r[4]] for i, (k, r) in enumerate(zip(keys, rows))
        ],
        "raw.csv": [
            [i, k, 12.5, 55.6, "" if r[5] is None else r[5], "2017-01-01", r[2]]
            for i, (k, r) in enumerate(zip(keys, rows))
        ],
        "subtask_index.csv": [[i, r[1], False, False, False, False, False, False] for i, r in enumerate(rows)],
    }
    for name, data in tables.items():
        header = HEADERS[name].split(",")
        if drop_column and drop_column in header and name == "postprocessed.csv":
            at = header.index(drop_column)
            header = header[:at] + header[at + 1 :]
            data = [d[:at] + d[at + 1 :] for d in data]
        with open(folder / name, "w", newline="") as f:
            csv.writer(f).writerows([header, *data])
    return keys


def msls_folder(root: Path) -> Path:
    for city in ("cph", "sf"):
        write_city(root, city, "database", DB_ROWS)
        write_city(root, city, "query", VAL_QUERIES)
    write_city(root, "trondheim", "database", DB_ROWS)
    write_city(root, "trondheim", "query", TRAIN_QUERIES)
    return root


def image(root, city, role, i) -> str:
    return str(root / "train_val" / city / role / "images" / f"{city}{role}{i:03d}.jpg")


def expected(root: Path, query_set: str):
    """The database and queries MSLS's rules give, computed here from the row specs:
    ``(db paths, db east/north, query paths, query east/north)``."""
    db, q = [], []
    for city in ("cph", "sf"):
        east0, north0 = ORIGIN[city]
        keep_db = [i for i, r in enumerate(DB_ROWS) if not r[2] and (r[1] or query_set == "all")]
        db += [(image(root, city, "database", i), east0 + DB_ROWS[i][0], north0) for i in keep_db]
        for i, r in enumerate(VAL_QUERIES):
            if r[2]:
                continue  # panoramas: never
            if query_set == "im2im":
                near = [j for j in keep_db if abs(DB_ROWS[j][0] - r[0]) <= 25]
                if not r[1] or not near:
                    continue
            q.append((image(root, city, "query", i), east0 + r[0], north0))
    return ([d[0] for d in db], np.array([d[1:] for d in db]), [x[0] for x in q], np.array([x[1:] for x in q]))


def test_both_query_sets_give_the_counts_the_files_define(tmp_path):
    root = msls_folder(tmp_path / "msls")
    assert is_msls_raw(root) and not is_msls_raw(tmp_path)
    im2im = open_split(root, "val")
    db, db_utm, q, q_utm = expected(root, "im2im")
    assert im2im.database.paths == db and im2im.queries.paths == q
    np.testing.assert_array_equal(im2im.queries.utm, q_utm)
    assert len(q) == 4  # per city: q0 and q1; q2 no positive, q3 not in 'all', q4 pano, q5 near a non-'all' db
    assert im2im.query_set == "im2im 4 of 10"
    everything = open_split(root, "val", "all")
    db, db_utm, q, q_utm = expected(root, "all")
    assert everything.database.paths == db and everything.queries.paths == q
    np.testing.assert_array_equal(everything.database.utm, db_utm)
    assert everything.query_set == "all 10" and len(everything.database) == 10
    # test: MSLS's test cities have no public coordinates; the val cities stand in (as the VG downloader).
    assert open_split(root, "test").queries.paths == im2im.queries.paths
    # Labels and headings from the CSVs.
    assert everything.queries.notes[:2] == ["day_forward_cph", "night_sideways_cph"]
    assert everything.queries.headings[0] == 11.0 and np.isnan(everything.queries.headings[4])
    train = open_split(root, "train")
    assert train.query_set == "all 4" and len(train.database) == 5  # the panorama left out


def test_eval_recalls_equal_brute_force_on_msls_positives(tmp_path, capsys):
    from test_ground_truth import brute_recalls, run_eval

    root = msls_folder(tmp_path / "msls")
    for query_set, size in (("im2im", "im2im 4 of 10"), ("all", "all 10")):
        out = tmp_path / query_set
        out.mkdir()
        figures, xb, xq, db_paths, q_paths, _ = run_eval(
            root, out, capsys, *SMALL[len(SMALL) - 1 :], f"data.msls_queries={query_set}"
        )
        db, db_utm, q, q_utm = expected(root, query_set)
        assert db_paths == db and q_paths == q
        # MSLS's positives: database images within 25 m (sklearn radius_neighbors, inclusive).
        d = np.sqrt(((q_utm[:, None, :] - db_utm[None, :, :]) ** 2).sum(-1))
        positives = [np.flatnonzero(row <= 25.0) for row in d]
        reference = brute_recalls(xb, xq, positives, RECALLS)
        assert {k: figures[k] for k in reference} == pytest.approx(reference)
        assert figures["query_set"] == size and figures["queries"] == len(q)
        assert figures["queries_without_positives"] == sum(len(p) == 0 for p in positives)
        if query_set == "im2im":
            assert figures["queries_without_positives"] == 0  # the im2im set keeps only queries with one


def test_eval_prints_and_rows_record_the_query_set(tmp_path, capsys):
    from vgray.config import load_config
    from vgray.evaluate.evaluate import final_test, test_sets
    from vgray.models import build_model
    from vgray.results import make_row, rows_from_parquet, rows_to_parquet
    from vgray.runtime import Runtime

    root = msls_folder(tmp_path / "msls")
    assert main(["eval", "--set", f"data.root={root}", *[a for s in SMALL for a in ("--set", s)]]) == 0
    printed = capsys.readouterr().out
    assert any(
        line.split()[:2] == ["query_set", "im2im"] and line.rstrip().endswith("4 of 10")
        for line in printed.splitlines()
    ), printed
    cfg = load_config(overrides=[*SMALL, f"test.datasets={{msls: {root}}}", "data.msls_queries=all"])
    model = build_model(cfg.model, image_size=cfg.data.image_size)
    result = final_test(cfg, model, Runtime.from_config(cfg, progress=False), test_sets(cfg))
    row = rows_from_parquet(rows_to_parquet([make_row(cfg, "t0", "msls-s0", result)]))[0]
    assert row["test/msls/query_set"] == "all 10" and row["data.msls_queries"] == "all"


def test_msls_weighted_mining_takes_the_csv_labels(tmp_path):
    from vgray.config import load_config
    from vgray.train.mining import TrainingQueries, create_miner

    root = msls_folder(tmp_path / "msls")
    split = open_split(root, "train")
    assert split.queries.notes == [
        "day_forward_trondheim",
        "night_forward_trondheim",
        "day_sideways_trondheim",
        "night_sideways_trondheim",
    ]
    cfg = load_config(overrides=[*SMALL, "train.mining=msls_weighted"])
    data = TrainingQueries(split, 10.0, 25.0)
    assert data.usable.tolist() == [0, 1, 2, 3]
    miner = create_miner("msls_weighted", data, cfg.train)
    # MSLS's __calcSamplingWeights__: 1, + N/#night for night, + N/#sideways for sideways.
    night = np.array([r[3] for r in TRAIN_QUERIES])
    side = np.array([r[4] == "Sideways" for r in TRAIN_QUERIES])
    n = len(TRAIN_QUERIES)
    w = 1 + night * n / night.sum() + side * n / side.sum()
    np.testing.assert_allclose(miner.weights, w / w.sum())


@pytest.mark.parametrize("column", ["night", "easting"])
def test_a_missing_column_exits_2_naming_the_file_and_writes_nothing(column, tmp_path, capsys):
    root = msls_folder(tmp_path / "msls")
    write_city(root, "sf", "query", VAL_QUERIES, drop_column=column)
    line = eval_refused(root, SMALL, tmp_path, capsys)
    assert str(root / "train_val/sf/query/postprocessed.csv") in line
    assert f"missing column(s) {column}" in line
    assert "key, easting, northing, night, view_direction" in line


def test_a_bad_query_set_choice_exits_2(tmp_path, capsys):
    root = msls_folder(tmp_path / "msls")
    code = main(["eval", "--set", f"data.root={root}", "--set", "data.msls_queries=im2seq"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "data.msls_queries" in err, err


def test_datasets_check_names_the_layout_and_the_query_set(tmp_path, capsys):
    root = msls_folder(tmp_path / "mini")  # a name no known dataset has: nothing to compare against
    assert main(["datasets", "check", str(root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layout"] == "msls_raw" and report["dataset"] is None
    val = report["splits"]["val"]
    assert (val["queries"], val["database"], val["query_set"]) == (4, 8, "im2im 4 of 10")
    assert val["queries_without_positives"] == 0  # im2im keeps the queries with a database image within 25 m
    assert list(report["splits"]) == ["val"]  # the split with public ground truth (test stands for it)
