"""Ground-truth lists (GSV-Cities' and its successors' .npy files) and frame-based positives.

A ground-truth folder is written in the publishers' form (``NAME_dbImages.npy``, ``NAME_qImages.npy``
of paths relative to the folder, with ``NAME_gt.npy`` or MSLS's ``NAME_qIdx.npy``/``NAME_pIdx.npy``),
``vgray eval`` runs on it, and its recalls must equal a brute-force reference computed here from the
saved descriptors and the files' own positives. A Nordland-like sequence in the VG downloader's
naming is scored by ±N frames the same way. Bad lists exit 2 with one line and write nothing; a
pickle that would run code is refused before it runs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import TINY_SET, eval_refused, write_image

from vgray.cli import main
from vgray.data.dataset import open_split
from vgray.errors import BadInput

RECALLS = [1, 2, 3, 5]
SMALL = [*TINY_SET, "data.resize=[32,32]", "model.aggregation=gem", f"test.recall_values={RECALLS}", "device=cpu"]

DB_N, Q_N = 10, 6
# Per query, the positives as the file gives them: several, one, none, unordered.
GT = [[0, 1], [3], [], [9, 2, 5], [7], [4, 6, 8]]


def save_object_array(path: Path, items) -> None:
    """An object array of integer arrays, as the publishers' gt/pIdx files are (numpy's pickle)."""
    array = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        array[i] = np.asarray(item, dtype=np.int64)
    np.save(path, array, allow_pickle=True)


def gt_folder(root: Path, name: str = "mini_test", form: str = "gt", lists_in: Path = None) -> Path:
    """Images ``ref/000000i.jpg`` and ``query/000000i.jpg`` under ``root``, and the list set ``name``
    in ``lists_in`` (default: ``root``). ``form`` "gt": NAME_gt.npy; "msls": NAME_qIdx.npy over
    Q_N + 2 query images (two of them not evaluated) with NAME_pIdx.npy."""
    lists = lists_in or root
    lists.mkdir(parents=True, exist_ok=True)
    db = [f"ref/{i:07d}.jpg" for i in range(DB_N)]
    for i, rel in enumerate(db):
        write_image(root / rel, seed=100 + i, size=(40, 40))
    q_count = Q_N + 2 if form == "msls" else Q_N
    queries = [f"query/{i:07d}.jpg" for i in range(q_count)]
    for i, rel in enumerate(queries):
        write_image(root / rel, seed=200 + i, size=(40, 40))
    np.save(lists / f"{name}_dbImages.npy", np.array(db))
    np.save(lists / f"{name}_qImages.npy", np.array(queries))
    if form == "gt":
        save_object_array(lists / f"{name}_gt.npy", GT)
    else:
        np.save(lists / f"{name}_qIdx.npy", np.array([0, 2, 3, 4, 6, 7], dtype=np.int64))
        save_object_array(lists / f"{name}_pIdx.npy", GT)
    return root


def brute_recalls(xb, xq, positives, recall_values):
    """Full distance matrix, ranks by (distance, database id); a query without positives is a miss."""
    d = ((xq[:, None, :].astype(np.float64) - xb[None, :, :].astype(np.float64)) ** 2).sum(-1)
    out = {}
    for n in recall_values:
        hits = sum(
            bool(set(np.lexsort((np.arange(len(xb)), d[i]))[:n].tolist()) & set(positives[i])) for i in range(len(xq))
        )
        out[f"R@{n}"] = 100.0 * hits / len(xq)
    return out


def run_eval(root, tmp_path, capsys, *extra, cli=()):
    desc, js = tmp_path / "desc", tmp_path / "eval.json"
    code = main(
        [
            "eval",
            "--set",
            f"data.root={root}",
            *[a for s in [*SMALL, *extra] for a in ("--set", s)],
            "--json",
            str(js),
            "--save-descriptors",
            str(desc),
            *cli,
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    figures = json.loads(js.read_text())
    db, q = pq.read_table(desc / "database.parquet"), pq.read_table(desc / "queries.parquet")
    xb = np.stack(db.column("descriptor").to_numpy(zero_copy_only=False)).astype(np.float32)
    xq = np.stack(q.column("descriptor").to_numpy(zero_copy_only=False)).astype(np.float32)
    return figures, xb, xq, db.column("path").to_pylist(), q.column("path").to_pylist(), desc


@pytest.mark.parametrize("form", ["gt", "msls"])
def test_eval_on_ground_truth_lists_equals_brute_force_on_the_files_positives(form, tmp_path, capsys):
    root = gt_folder(tmp_path / "ds", form=form)
    figures, xb, xq, db_paths, q_paths, desc = run_eval(
        root, tmp_path, capsys, cli=["--save-predictions", "6", "--predictions-dir", str(tmp_path / "grids")]
    )
    assert db_paths == [str(root / f"ref/{i:07d}.jpg") for i in range(DB_N)]  # the list's order
    assert len(list((tmp_path / "grids" / "predictions").glob("*.png"))) == 6  # coloured by the files' positives
    used = [0, 2, 3, 4, 6, 7] if form == "msls" else list(range(Q_N))  # MSLS: only qIdx's queries
    assert q_paths == [str(root / f"query/{i:07d}.jpg") for i in used]
    reference = brute_recalls(xb, xq, GT, RECALLS)
    assert {k: figures[k] for k in reference} == pytest.approx(reference)
    assert figures["queries"] == Q_N and figures["database"] == DB_N
    assert figures["queries_without_positives"] == 1
    source = "mini_test_pIdx.npy" if form == "msls" else "mini_test_gt.npy"
    assert figures["positives"] == f"files {source}"
    assert figures["query_set"] == (f"qIdx {Q_N} of {Q_N + 2}" if form == "msls" else f"all {Q_N}")

    # vgray locate works on the descriptors saved from a ground-truth set (no coordinates: NaN).
    code = main(["locate", str(root / "query/0000001.jpg"), "--database", str(desc), "--k", "3", "--json"])
    answer = json.loads(capsys.readouterr().out)
    assert code == 0
    matches = answer["photos"][0]["matches"]
    assert len(matches) == 3 and matches[0]["utm_east"] is None
    assert matches[0]["path"] == db_paths[int(np.argmin(((xb - xq[1]) ** 2).sum(1)))]


def test_dataset_names_of_ground_truth_roots():
    from vgray.evaluate.evaluate import dataset_name

    assert dataset_name("/data/gt/pitts30k_test") == "pitts30k_test"
    assert dataset_name("/data/gt/msls_val_qIdx.npy") == "msls_val"
    assert dataset_name("/data/msls::~/salad/datasets/msls_val/msls_val") == "msls_val"


def test_root_forms_name_the_list_set(tmp_path):
    root = gt_folder(tmp_path / "ds")
    one = open_split(str(root), "test")
    assert len(one.database) == DB_N and len(one.queries) == Q_N and one.ground_truth_file == "mini_test_gt.npy"
    for form in (root / "mini_test", root / "mini_test_gt.npy", root / "mini_test_qImages.npy"):
        split = open_split(str(form), "test")
        assert split.database.paths == one.database.paths
        assert [p.tolist() for p in split.ground_truth] == GT
    # Lists apart from the images, as the publishers ship them: IMAGES::LISTS (a prefix or a folder).
    images = tmp_path / "images"
    gt_folder(images, name="pitts30k_test", lists_in=tmp_path / "lists")
    gt_folder(images, name="pitts30k_val", lists_in=tmp_path / "lists")
    for text in (f"{images}::{tmp_path / 'lists' / 'pitts30k_test'}", f"{images}::{tmp_path / 'lists'}"):
        split = open_split(text, "test")
        assert split.ground_truth_file == "pitts30k_test_gt.npy" and split.root == images
        assert split.database.paths[0] == str(images / "ref/0000000.jpg")
    assert open_split(f"{images}::{tmp_path / 'lists'}", "val").ground_truth_file == "pitts30k_val_gt.npy"
    with pytest.raises(BadInput, match="no train split"):
        open_split(str(root), "train")
    shutil.copy(root / "mini_test_gt.npy", root / "other_gt.npy")
    shutil.copy(root / "mini_test_dbImages.npy", root / "other_dbImages.npy")
    with pytest.raises(BadInput, match="list sets mini_test, other"):
        open_split(str(root), "val")
    # radius needs coordinates; frames read the digits of the names (ref/0000003.jpg is frame 3).
    with pytest.raises(BadInput, match="test.positives=radius"):
        one.evaluation_positives("radius")
    frames, rule = one.evaluation_positives("frames", frames=1)
    assert rule == "frames ±1" and frames[2].tolist() == [2, 1, 3]


def test_final_test_and_rows_take_a_ground_truth_set(tmp_path, capsys):
    """Sweeps' test.datasets: a ground-truth root scored by final_test, its rule in the row."""
    from vgray.config import load_config
    from vgray.evaluate.evaluate import final_test, test_sets
    from vgray.models import build_model
    from vgray.results import make_row, rows_from_parquet, rows_to_parquet
    from vgray.runtime import Runtime
    from vgray.seeding import seed_everything

    root = gt_folder(tmp_path / "pitts", name="pitts30k_test")
    figures, xb, xq, *_ = run_eval(root, tmp_path, capsys)
    cfg = load_config(overrides=[*SMALL, f"test.datasets={{gt: {root}}}"])
    seed_everything(cfg.seed)
    model = build_model(cfg.model, image_size=cfg.data.image_size)
    result = final_test(cfg, model, Runtime.from_config(cfg, progress=False), test_sets(cfg))
    assert {k: result[f"test/gt/{k}"] for k in ("R@1", "R@5")} == {k: figures[k] for k in ("R@1", "R@5")}
    assert result["test/gt/positives"] == "files pitts30k_test_gt.npy"
    assert result["test/gt/query_set"] == f"all {Q_N}"
    row = rows_from_parquet(rows_to_parquet([make_row(cfg, "t0", "gt-s0", result)]))[0]
    assert row["test/gt/positives"] == "files pitts30k_test_gt.npy" and row["test.positives"] == "auto"


def nordland_folder(root: Path, db_frames, q_frames) -> Path:
    """A sequence in the VG downloader's Nordland naming: ``@0@<north>@@@@@<frame>@@@@@@@@.jpg``,
    frames 100 m apart (so that a 25 m radius finds only the same frame)."""
    for role, frames in (("database", db_frames), ("queries", q_frames)):
        for f in frames:
            write_image(
                root / "images" / "test" / role / f"@0@{100.0 * f:.1f}@@@@@{f}@@@@@@@@.jpg",
                seed=hash((role, f)) % 2**32,
                size=(40, 40),
            )
    return root


@pytest.mark.parametrize("n", [1, 3])
def test_frame_positives_equal_brute_force(n, tmp_path, capsys):
    db_frames, q_frames = list(range(12)), [0, 4, 7, 11, 30]
    root = nordland_folder(tmp_path / "nordland", db_frames, q_frames)
    figures, xb, xq, db_paths, q_paths, _ = run_eval(
        root, tmp_path, capsys, "test.positives=frames", f"test.positive_frames={n}"
    )
    db_f = [int(Path(p).name.split("@")[7]) for p in db_paths]
    q_f = [int(Path(p).name.split("@")[7]) for p in q_paths]
    positives = [[i for i, d in enumerate(db_f) if abs(d - f) <= n] for f in q_f]
    reference = brute_recalls(xb, xq, positives, RECALLS)
    assert {k: figures[k] for k in reference} == pytest.approx(reference)
    assert figures["positives"] == f"frames ±{n}" and figures["queries_without_positives"] == 1
    radius, _, _, _, _, _ = run_eval(root, tmp_path / "r", capsys)
    assert radius["positives"] == "radius 25 m"


def test_ten_frames_are_the_radius_on_the_downloaders_nordland():
    """download_nordland.py places frame i at UTM north i * 25 / 10.5 (one decimal): ±10 frames and
    25 m pick the same database images."""
    from vgray.data.dataset import parse_name
    from vgray.data.positives import positives_within, positives_within_frames

    db = [f"@0@{i * 25 / 10.5:07.1f}@@@@@{i}@@@@@@@@.jpg" for i in range(60)]
    q = [db[i] for i in (0, 5, 29, 59)]
    db_utm, q_utm = (np.array([parse_name(n)[:2] for n in names]) for names in (db, q))
    by_radius = positives_within(db_utm, q_utm, 25.0)
    by_frames = positives_within_frames(db, q, 10)
    assert [sorted(p.tolist()) for p in by_radius] == [sorted(p.tolist()) for p in by_frames]
    assert len(by_frames[2]) == 21


def test_frame_rule_and_a_name_without_frames():
    from vgray.data.positives import frame_number, positives_within_frames

    assert frame_number("/x/@0@00012.3@@@@@42@@@@@@@@.jpg") == 42
    assert frame_number("ref/0000123.jpg") == 123
    got = positives_within_frames([f"{i:03d}.jpg" for i in range(6)], ["002.jpg", "009.jpg"], 2)
    assert [g.tolist() for g in got] == [[2, 1, 3, 0, 4], []]
    with pytest.raises(BadInput, match="carries no frame number"):
        frame_number("@500000.00@4100000.00@33@T@@@database3@@@@@@@@.jpg")


class MakesAMarker:
    """A pickle payload: unpickling it opens (creates) ``path``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def break_missing_image(root):
    (root / "ref" / "0000004.jpg").unlink()


def break_long_gt(root):
    save_object_array(root / "mini_test_gt.npy", GT + [[1]])


def break_index_range(root):
    save_object_array(root / "mini_test_gt.npy", GT[:-1] + [[4, DB_N]])


def break_qidx_range(root):
    np.save(root / "mini_test_qIdx.npy", np.array([0, 2, 3, 4, 5, 99]))
    save_object_array(root / "mini_test_pIdx.npy", GT)


def break_with_code(root):
    array = np.empty(Q_N, dtype=object)
    array[:] = [np.array([0])] * Q_N
    array[1] = MakesAMarker(root.parent / "MARKER")
    np.save(root / "mini_test_gt.npy", array, allow_pickle=True)


def break_with_dict(root):
    array = np.empty(Q_N, dtype=object)
    array[:] = [np.array([0])] * Q_N
    array[2] = {"a": 1}
    np.save(root / "mini_test_gt.npy", array, allow_pickle=True)


BAD = [
    ("image missing", break_missing_image, "mini_test_dbImages.npy: 1 of its 10 images are not on disk"),
    ("gt longer than queries", break_long_gt, "mini_test_gt.npy: holds positives for 7 queries, but there are 6"),
    ("index out of range", break_index_range, f"database index {DB_N} is out of range; allowed: 0 to {DB_N - 1}"),
    ("qIdx out of range", break_qidx_range, "mini_test_qIdx.npy: query index 99 is out of range; allowed: 0 to 5"),
    (
        "pickle runs code",
        break_with_code,
        "mini_test_gt.npy: its pickle names io.open, which is refused (nothing of it ran)",
    ),
    ("pickle holds a dict", break_with_dict, "mini_test_gt.npy: holds ndarray values other than numbers"),
]


@pytest.mark.parametrize("name,damage,message", BAD, ids=[b[0] for b in BAD])
def test_bad_lists_exit_2_with_one_line_and_write_nothing(name, damage, message, tmp_path, capsys):
    root = gt_folder(tmp_path / "ds")
    damage(root)
    line = eval_refused(root, SMALL, tmp_path, capsys)
    assert message in line and "allowed" in line
    assert not (tmp_path / "MARKER").exists()


def test_the_refused_pickle_would_have_run(tmp_path):
    """The payload of the refused file is real: numpy's own loader with allow_pickle creates the marker."""
    root = gt_folder(tmp_path / "ds")
    break_with_code(root)
    from vgray.data.ground_truth import load_list

    with pytest.raises(BadInput, match=r"its pickle names (io|builtins)\.open, which is refused"):
        load_list(root / "mini_test_gt.npy")
    assert not (tmp_path / "MARKER").exists()
    np.load(root / "mini_test_gt.npy", allow_pickle=True)
    assert (tmp_path / "MARKER").exists()


def test_restricted_loader_reads_the_publishers_forms(tmp_path):
    from vgray.data.ground_truth import load_list

    save_object_array(tmp_path / "a_gt.npy", [[1, 2], [], [5]])
    assert [a.tolist() for a in load_list(tmp_path / "a_gt.npy")] == [[1, 2], [], [5]]
    np.save(tmp_path / "b.npy", np.array(["x/1.jpg", "y/2.jpg"], dtype=object), allow_pickle=True)  # msls_test
    assert load_list(tmp_path / "b.npy").tolist() == ["x/1.jpg", "y/2.jpg"]
    np.save(tmp_path / "c_gt.npy", np.arange(4).reshape(4, 1))  # SPED: one positive per row
    assert load_list(tmp_path / "c_gt.npy").shape == (4, 1)


# -- slow: Ray (vgray extract, an eval sweep with a ground-truth test set, its report) -------------


@pytest.mark.slow
def test_extract_sweep_and_report_take_a_ground_truth_set(ray_local, tmp_path, capsys):
    from conftest import rows, write_sweep

    from vgray.config import load_config
    from vgray.distributed.extract import extract

    root = gt_folder(tmp_path / "pitts", name="pitts30k_test", form="msls")
    cfg = load_config(overrides=[*SMALL, f"data.root={root}"])
    figures = extract(cfg, "test", tmp_path / "x", progress=False, shard_size=8, actors=1, batch_size=4)
    assert figures["images"] == DB_N + Q_N
    paths = pq.read_table(tmp_path / "x" / "queries.parquet").column("path").to_pylist()
    assert paths == [str(root / f"query/{i:07d}.jpg") for i in (0, 2, 3, 4, 6, 7)]

    sweep = write_sweep(
        tmp_path / "gt.yaml",
        base_changes={"test.datasets": {"pitts": str(root)}},
        name="gt",
        task="eval",
        storage=str(tmp_path / "store"),
    )
    assert main(["sweep", str(sweep)]) == 0
    (row,) = rows(tmp_path / "store" / "gt")
    assert row["status"] == "ok" and row["test/pitts/positives"] == "files pitts30k_test_pIdx.npy"
    assert 0.0 <= row["test/pitts/R@1"] <= 100.0 and row["queries"] == Q_N
    assert main(["report", str(tmp_path / "store" / "gt"), "--out", str(tmp_path / "report")]) == 0
    assert "pitts/R@1" in capsys.readouterr().out


def test_restricted_loader_reads_numpy_1_pickles(tmp_path):
    """The publishers' files were written by NumPy 1.x (protocol 3, ``numpy.core.multiarray``)."""
    import io
    import pickle

    from vgray.data.ground_truth import load_list

    array = np.empty(3, dtype=object)
    array[:] = [np.array([0, 1]), np.array([9, 10, 11], dtype=np.int64), np.array([], dtype=np.int64)]
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, np.lib.format.header_data_from_array_1_0(array))
    pickle.dump(array, buffer, protocol=3)
    data = buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert b"cnumpy.core.multiarray\n_reconstruct" in data
    (tmp_path / "old_gt.npy").write_bytes(data)  # the header (with its magic) and the pickle
    assert [a.tolist() for a in load_list(tmp_path / "old_gt.npy")] == [[0, 1], [9, 10, 11], []]


def test_datasets_check_counts_a_sequence_by_frames(tmp_path, capsys):
    root = nordland_folder(tmp_path / "sequence", list(range(12)), [0, 4, 7, 11, 30])
    assert main(["datasets", "check", str(root), "--json", "--positives", "frames", "--positive-frames", "1"]) == 0
    test = json.loads(capsys.readouterr().out)["splits"]["test"]
    assert (test["database"], test["queries"]) == (12, 5)
    assert test["positives"] == "frames ±1" and test["queries_without_positives"] == 1  # frame 30
    assert main(["datasets", "check", str(root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["splits"]["test"]["positives"] == "radius 25 m"
