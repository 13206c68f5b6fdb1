"""The dataset reader, its cached index, and positives against a brute-force reference."""

import os
import time

import numpy as np
import pytest
from conftest import vg_name, write_image

from vgray.data.dataset import index_cache_path, open_split, parse_name
from vgray.data.positives import positives_within
from vgray.errors import BadInput


def test_parse_name_takes_fields_from_the_file_name_only():
    east, north, note = parse_name("/data/a@b@c/@500123.45@4100456.78@33@T@37.0@15.0@pano@@90@@@@@night_side_sf@.jpg")
    assert (east, north, note) == (500123.45, 4100456.78, "night_side_sf")
    assert parse_name("@1@2@.png")[:2] == (1.0, 2.0)
    with pytest.raises(BadInput, match="carries no UTM coordinates"):
        parse_name("/data/@1@2@/photo.jpg")


def test_layout_variants(tmp_path):
    # No images/ level, nested folders, '@' in directory names, jpg/jpeg/png and upper case.
    root = tmp_path / "ds"
    write_image(root / "test" / "database" / "city@x" / vg_name(10, 20), 1)
    write_image(root / "test" / "database" / "a" / "b" / vg_name(30, 40).replace(".jpg", ".png"), 2)
    write_image(root / "test" / "database" / vg_name(50, 60).replace(".jpg", ".JPEG"), 3)
    (root / "test" / "database" / "notes.txt").write_text("not an image")
    write_image(root / "test" / "queries" / vg_name(11, 21), 4)
    split = open_split(root, "test")
    assert len(split.database) == 3 and len(split.queries) == 1
    assert sorted(map(tuple, split.database.utm.tolist())) == [(10, 20), (30, 40), (50, 60)]
    assert all(os.path.isfile(p) for p in split.database.paths)


def test_index_is_cached_and_redone_when_the_folder_changes(vg_folder):
    split = open_split(vg_folder, "test")
    cache = index_cache_path(vg_folder / "images" / "test" / "database")
    assert cache.is_file()
    stamp = cache.stat().st_mtime_ns
    assert open_split(vg_folder, "test").database.paths == split.database.paths
    assert cache.stat().st_mtime_ns == stamp  # reused, not rewritten
    time.sleep(0.01)
    write_image(vg_folder / "images" / "test" / "database" / "new" / vg_name(500200, 4100000), 9)
    again = open_split(vg_folder, "test")
    assert len(again.database) == len(split.database) + 1
    os.remove(again.database.paths[0])
    assert len(open_split(vg_folder, "test").database) == len(split.database)


def test_bad_folders(tmp_path, vg_folder):
    with pytest.raises(BadInput, match="no such folder"):
        open_split(tmp_path / "missing", "test")
    (tmp_path / "empty" / "test" / "database").mkdir(parents=True)
    (tmp_path / "empty" / "test" / "queries").mkdir(parents=True)
    with pytest.raises(BadInput, match="holds no images"):
        open_split(tmp_path / "empty", "test")
    with pytest.raises(BadInput, match="no 'val' split .* splits found: test"):
        open_split(vg_folder, "val")
    write_image(vg_folder / "images" / "test" / "queries" / "IMG_0001.jpg", 5)
    with pytest.raises(BadInput, match="IMG_0001.jpg: the file name carries no UTM"):
        open_split(vg_folder, "test")


def brute_positives(db, q, threshold):
    d = np.sqrt(((q[:, None, :] - db[None, :, :]) ** 2).sum(-1))
    out = []
    for row in d:
        ids = np.flatnonzero(row <= threshold)
        out.append(ids[np.lexsort((ids, row[ids]))])
    return out


@pytest.mark.parametrize("threshold", [10.0, 25.0])
def test_positives_match_brute_force(threshold):
    rng = np.random.default_rng(0)
    origin = np.array([500000.0, 4100000.0])
    db = origin + rng.uniform(0, 300, size=(2000, 2))
    q = origin + rng.uniform(-50, 350, size=(300, 2))
    # exact boundary cases and ties: points at exactly the threshold, duplicates
    db[:3] = origin + [[0, 0], [threshold, 0], [0, threshold]]
    db[3] = db[0]
    q[0] = origin
    ours, ref = positives_within(db, q, threshold), brute_positives(db, q, threshold)
    assert all(np.array_equal(a, b) for a, b in zip(ours, ref))
    assert list(ours[0][:2]) == [0, 3] and {1, 2} <= set(ours[0].tolist())  # tie by id, boundary kept
    assert any(len(p) == 0 for p in ours)  # queries outside the area have none


def test_positives_edge_cases():
    assert positives_within(np.zeros((0, 2)), np.zeros((2, 2)), 25)[0].size == 0
    assert positives_within(np.zeros((3, 2)), np.zeros((0, 2)), 25) == []
