"""``vgray datasets list|check``, the bulk indexer (headings, the first bad name, the cached index) and
``vgray bench index``, on folders of empty files the tests write (the index reads names, never pixels)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from vgray.cli import main
from vgray.data.catalog import CATALOG, known
from vgray.data.dataset import index_cache_path, index_images, parse_name
from vgray.errors import BadInput

TWELVE = [
    "pitts30k",
    "msls",
    "tokyo247",
    "san_francisco",
    "eynsham",
    "st_lucia",
    "pitts250k",
    "nordland",
    "sped",
    "amstertime",
    "svox",
    "sf_xl",
]


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def vg_name(east: float, north: float, heading: str = "", note: str = "") -> str:
    return f"@{east:.2f}@{north:.2f}@10@S@@@pano@@{heading}@@@@@{note}@.jpg"


def sped_like_vg(root: Path, n: int = 607) -> Path:
    """SPED's published test sizes (607 database, 607 queries) in the VG format: query i 5 m from
    database image i, pairs 1 km apart (as the downloader's download_sped.py places them)."""
    for i in range(n):
        touch(root / "images" / "test" / "database" / vg_name(i * 1000.0, 0.0))
        touch(root / "images" / "test" / "queries" / vg_name(i * 1000.0, 5.0))
    return root


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_names_all_twelve_with_sources(capsys):
    code, out, _ = run(capsys, "datasets", "list")
    assert code == 0
    for name in TWELVE:
        assert f"\n{name}" in out
    assert set(CATALOG) == set(TWELVE)
    code, out, _ = run(capsys, "datasets", "list", "--json")
    rows = json.loads(out)
    assert {r["name"] for r in rows} == set(TWELVE)
    # One row per split and group of layouts (MSLS's test: its challenge lists, and the VG copy's).
    assert len({r["name"] for r in rows if r["paper"] and r["split"] == "test"}) == 6
    # Every figure names where it comes from; an unknown one is None, never a guess.
    for r in rows:
        assert r["source"]
        assert r["database"] is None or r["database"] > 0
    assert known("SPED").published("test", "queries") == 607


def test_check_a_vg_folder_against_its_published_counts(tmp_path, capsys):
    root = sped_like_vg(tmp_path / "sped")
    code, out, err = run(capsys, "datasets", "check", str(root), "--json")
    report = json.loads(out)
    assert code == 0, err
    assert report["layout"] == "vg" and report["dataset"] == "sped"  # guessed from the folder's name
    test = report["splits"]["test"]
    assert (test["database"], test["queries"]) == (607, 607)
    assert (test["published_database"], test["published_queries"]) == (607, 607)
    assert test["queries_without_positives"] == 0 and test["positives"] == "radius 25 m"
    assert test["query_set"].startswith("all")  # every query is scored
    # One query fewer: exit 1, naming the split and role.
    os.remove(root / "images" / "test" / "queries" / vg_name(3000.0, 5.0))
    code, out, err = run(capsys, "datasets", "check", str(root), "--name", "sped")
    assert code == 1
    assert "test/queries: 606 found, 607 published" in err
    assert "DIFFERS" in out and "queries without positives: 0" in out


def test_check_counts_queries_without_positives_and_guesses_nothing_unknown(tmp_path, capsys):
    root = tmp_path / "mine"
    for i in range(5):
        touch(root / "test" / "database" / vg_name(i * 100.0, 0.0))
    touch(root / "test" / "queries" / vg_name(0.0, 3.0))
    touch(root / "test" / "queries" / vg_name(0.0, 900.0))  # nothing within 25 m
    code, out, _ = run(capsys, "datasets", "check", str(root))
    assert code == 0
    assert "dataset not recognised" in out and "test queries without positives: 1" in out


def test_check_ground_truth_lists(tmp_path, capsys):
    root = tmp_path / "lists"
    db = [f"ref/{i:07d}.jpg" for i in range(607)]
    q = [f"query/{i:07d}.jpg" for i in range(607)]
    for p in db + q:
        touch(root / p)
    np.save(root / "SPED_dbImages.npy", np.array(db))
    np.save(root / "SPED_qImages.npy", np.array(q))
    gt = np.arange(607).reshape(-1, 1)
    gt[0, 0] = 1  # a wrong positive still counts as one
    np.save(root / "SPED_gt.npy", gt)
    code, out, err = run(capsys, "datasets", "check", str(root), "--name", "sped", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["layout"] == "lists" and report["compared"]
    test = report["splits"]["test"]
    assert (test["database"], test["queries"], test["queries_without_positives"]) == (607, 607, 0)
    assert test["positives"] == "files SPED_gt.npy"


def test_published_counts_of_another_layout_are_not_compared(tmp_path, capsys):
    """Nordland's counts are its lists'; a VG-format folder of it is another split, so no verdict."""
    root = sped_like_vg(tmp_path / "whatever", n=3)
    code, out, _ = run(capsys, "datasets", "check", str(root), "--name", "nordland")
    assert code == 0 and "not compared" in out


@pytest.mark.parametrize("make", ["missing", "empty", "file"])
def test_check_bad_root_is_one_line(tmp_path, capsys, make):
    root = tmp_path / "root"
    if make == "empty":
        root.mkdir()
    elif make == "file":
        root.write_text("x")
    code, out, err = run(capsys, "datasets", "check", str(root))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and str(root) in err
    assert ("no such folder" in err) if make == "missing" else ("not a dataset" in err)


def test_check_unknown_name_is_refused(tmp_path, capsys):
    code, _, err = run(capsys, "datasets", "check", str(sped_like_vg(tmp_path / "d", n=2)), "--name", "oxford")
    assert code == 2 and "choose one of" in err and err.count("\n") == 1


def test_index_reads_headings_notes_and_is_reused(tmp_path):
    top = tmp_path / "database"
    names = [vg_name(1.0, 2.0, "123.5", "night_front_cph"), vg_name(3.0, 4.0), vg_name(5.0, 6.0, "abc"), "@7@8@.jpg"]
    for i, n in enumerate(names):
        touch(top / f"d{i % 2}" / n)
    touch(top / "readme.txt")
    seen = []
    images = index_images(top, progress=seen.append)
    assert seen[-1] == 4
    expected = sorted(os.path.relpath(p, top) for p in top.rglob("*.jpg"))
    assert images.paths == [str(top / r) for r in expected]  # sorted as Python sorts, absolute
    by_name = {Path(p).name: i for i, p in enumerate(images.paths)}
    h = images.headings
    assert h[by_name[names[0]]] == 123.5
    assert np.isnan(h[by_name[names[1]]]) and np.isnan(h[by_name[names[2]]]) and np.isnan(h[by_name[names[3]]])
    assert images.notes[by_name[names[0]]] == "night_front_cph"
    # The same parse as parse_name, file by file.
    for p, (e, n), note in zip(images.paths, images.utm, images.notes):
        assert (e, n, note) == parse_name(p)
    # Reused while the folders hold; a new file makes it index again.
    mtime = index_cache_path(top).stat().st_mtime_ns
    again = index_images(top)
    assert again.paths == images.paths and index_cache_path(top).stat().st_mtime_ns == mtime
    touch(top / "d0" / vg_name(9.0, 9.0, "10"))
    assert len(index_images(top)) == 5


def test_index_order_is_pythons_sorted_order_with_folders_among_files(tmp_path):
    """Folders are visited where their ``name/`` sorts among the files, so no global sort is needed:
    the order must still be exactly sorted() of the relative paths ('-' and '.' sort before '/',
    '0' after it; upper case before lower; non-ASCII last)."""
    top = tmp_path / "database"
    rels = [
        "x.jpg",
        "x-1.jpg",
        "x0.jpg",
        "X.JPG",
        "é.jpg",
        "x/a.jpg",
        "x/b/c.png",
        "x/b.jpeg",
        "x.d/e.jpg",
        "x0/f.jpg",
        "y.txt",
        "x/notes.md",
    ]
    for i, r in enumerate(rels):
        touch(top / Path(*r.split("/")).parent / f"{Path(r).stem}@{i}@{i}@.{r.rsplit('.', 1)[1]}")
    (top / "z.jpg").mkdir()  # a folder named like an image is a folder
    touch(top / "z.jpg" / "@1@1@.jpg")
    images = index_images(top)
    want = sorted(
        os.path.relpath(p, top) for p in top.rglob("*") if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png")
    )
    assert [os.path.relpath(p, top) for p in images.paths] == want and len(want) == 11


def test_index_names_the_first_file_without_coordinates(tmp_path):
    top = tmp_path / "queries"
    touch(top / "a" / vg_name(1.0, 2.0))
    touch(top / "b" / "IMG_0001.jpg")
    touch(top / "c" / "IMG_0002.jpg")
    with pytest.raises(BadInput, match=r"b/IMG_0001.jpg: the file name carries no UTM coordinates"):
        index_images(top)
    (top / "b" / "IMG_0001.jpg").unlink()
    (top / "c" / "IMG_0002.jpg").unlink()
    touch(top / "d" / "@inf@2@.jpg")
    with pytest.raises(BadInput, match="must be finite"):
        index_images(top)


def test_bench_index_measures_vgray_against_the_baseline(tmp_path, capsys):
    code, out, err = run(
        capsys, "bench", "index", "--files", "2000", "--per-dir", "300", "--json", str(tmp_path / "bench.json")
    )
    assert code == 0, err
    figures = json.loads((tmp_path / "bench.json").read_text())
    assert figures["files"] == 2000 and figures["folders"] == 7
    for kind in ("baseline", "vgray_cold", "vgray_cached"):
        assert figures[f"{kind}_files_per_s"] > 0 and figures[f"{kind}_peak_rss_mb"] > 0
    assert figures["ratio"] > 0 and figures["memory_ratio"] > 0
    assert out.strip().splitlines()[-1].startswith("ratio")


def test_a_folder_listed_and_parsed_in_batches_is_indexed_as_one(tmp_path, monkeypatch):
    """Names go to Arrow and are parsed PARSE_BATCH at a time (a million-file folder is never one
    Python list of entries): with batches of 3, the index is the one made in a single batch."""
    import pickle

    from vgray.data import dataset

    top = tmp_path / "database"
    for i in range(11):
        touch(top / vg_name(float(i), 2.0 * i, str(i * 10), f"n{i % 2}"))
    for i in range(4):
        touch(top / "sub" / vg_name(100.0 + i, 1.0))
    whole = index_images(top)
    index_cache_path(top).unlink()
    monkeypatch.setattr(dataset, "PARSE_BATCH", 3)
    batched = index_images(top)
    assert batched.paths == whole.paths and len(batched) == 15
    assert np.array_equal(batched.utm, whole.utm) and batched.notes == whole.notes
    assert np.array_equal(batched.headings, whole.headings, equal_nan=True)
    # Paths reads as the list of paths it stands for.
    paths, listed = batched.paths, list(batched.paths)
    assert isinstance(paths, dataset.Paths) and paths[-1] == listed[-1] and paths[3:7] == listed[3:7]
    assert paths[::2] == listed[::2] and paths + ["x"] == [*listed, "x"] and ["x"] + paths == ["x", *listed]
    assert pickle.loads(pickle.dumps(paths)) == listed and paths.to_arrow().to_pylist() == listed
    assert dataset.take_paths(paths, [14, 0]) == [listed[14], listed[0]] == dataset.take_paths(listed, [14, 0])
    with pytest.raises(IndexError):
        paths[15]


def test_work_blocks_grow_with_the_work():
    from vgray.distributed.extract import block_rows

    assert block_rows(500, 32) == 32  # small: a batch a block, so every decode slot has work
    assert block_rows(10_000, 32) == 128 and block_rows(1_085_232, 32) == 1024  # at most 32 batches
