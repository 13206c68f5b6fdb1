"""Test-time methods: transforms, the nearest_crop and maj_voting merges against hand-computed
cases, independence from test.recall_values, and every method through vgray eval on tiny."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import TINY, TINY_SET, vg_name, write_image
from PIL import Image

from vgray.cli import main
from vgray.config import load_config
from vgray.evaluate.evaluate import evaluate
from vgray.evaluate.knn import build_index, fill_index, search
from vgray.evaluate.methods import TEST_METHODS, majority_votes, merge_nearest
from vgray.evaluate.recall import recall_at_n

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def create(name, size=(32, 48), weight=0.01):
    return TEST_METHODS.create(name, size, MEAN, STD, majority_weight=weight)


def test_query_transforms_keep_the_aspect_ratio_as_the_paper_defines():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 100, 3), dtype=np.uint8))  # h 60, w 100
    assert create("hard_resize").query_transform(image).shape == (3, 32, 48)
    assert create("single_query").query_transform(image).shape == (3, 32, 53)  # shorter side to min(H, W)
    assert create("central_crop").query_transform(image).shape == (3, 32, 48)  # scaled to cover, then cropped
    crops = [t(image) for t in create("five_crops").query_transforms]
    assert len(crops) == 5 and all(c.shape == (3, 32, 32) for c in crops)
    # Crop 4 is the centre of the image resized to 32 x 53; crops 0 and 1 are its left and right ends.
    resized = create("single_query").query_transform(image)
    assert torch.allclose(crops[0], resized[:, :, :32]) and torch.allclose(crops[1], resized[:, :, -32:])
    assert torch.allclose(crops[4], resized[:, :, 10:42])
    for name in ("five_crops", "nearest_crop", "maj_voting"):
        with pytest.raises(Exception, match="feeds a query as 5 crops"):
            _ = create(name).query_transform
    # Database images are hard-resized whatever the method.
    assert all(create(n).database_transform(image).shape == (3, 32, 48) for n in TEST_METHODS.names())


def test_nearest_crop_merge_equals_the_hand_computed_one():
    # One query seen as 2 crops, 3 predictions each; -1 is faiss's "no result".
    I = np.array([[[5, 2, 7], [2, 9, 5]]])
    D = np.array([[[0.1, 0.4, 0.9], [0.2, 0.3, 0.5]]])
    # By distance: 5 (0.1), 2 (0.2), 9 (0.3), 2 again, 5 again, 7 (0.9).
    assert merge_nearest(D, I, 3).tolist() == [[5, 2, 9]]
    assert merge_nearest(D, I, 5).tolist() == [[5, 2, 9, 7, -1]]  # only 4 distinct ids were found
    # Equal distances: the lower database id first.
    I2 = np.array([[[8, 3], [3, 1]]])
    D2 = np.array([[[0.5, 0.7], [0.6, 0.5]]])
    assert merge_nearest(D2, I2, 3).tolist() == [[1, 8, 3]]
    assert merge_nearest(np.array([[[0.1, np.inf]]]), np.array([[[4, -1]]]), 2).tolist() == [[4, -1]]


def test_majority_voting_equals_the_hand_computed_votes():
    w = 0.1
    # Query 0: three crops, two predictions each. Top-1: 1, 3, 4 (no repeats). Within the first
    # 2 columns (the top-5 and top-10 votes), ids 1 and 2 occur twice: -w*2/5 and -w*2/10 each.
    I0 = [[1, 2], [3, 1], [4, 2]]
    D0 = [[1.00, 1.10], [0.98, 1.05], [0.995, 1.20]]
    # Query 1: id 7 is the top-1 of crops 0 and 2 (-w*2/1 there), and occurs 3 times in the first
    # two columns (-w*3/5 - w*3/10 for each of its entries); id 9 twice (-w*2/5 - w*2/10).
    I1 = [[7, 8], [9, 7], [7, 9]]
    D1 = [[0.50, 0.60], [0.45, 0.70], [0.55, 0.80]]
    I, D = np.array([I0, I1]), np.array([D0, D1])
    voted = majority_votes(D, I, w)
    expected = np.array([[[0.94, 1.04], [0.98, 0.99], [0.995, 1.14]], [[0.21, 0.60], [0.39, 0.61], [0.26, 0.74]]])
    assert np.allclose(voted, expected)
    assert np.array_equal(D, np.array([D0, D1]))  # the input is left alone
    method = create("maj_voting", weight=w)
    assert method.merge(D, I, 3).tolist() == [[1, 3, 4], [7, 9, 8]]
    # Without the vote (nearest_crop) the order differs: the vote is what moved 1 and 7 up.
    assert create("nearest_crop").merge(D, I, 3).tolist() == [[3, 4, 1], [9, 7, 8]]
    assert create("maj_voting", weight=0.0).merge(D, I, 3).tolist() == [[3, 4, 1], [9, 7, 8]]


@pytest.mark.parametrize("name", ["nearest_crop", "maj_voting"])
def test_merged_top_n_does_not_depend_on_the_recall_values(name):
    """The reference code only ran with max(recall_values) == 20; here R@N is the same whatever
    other N are asked for: a merge for k equals the first k of the merge for 20."""
    rng = np.random.default_rng(1)
    xb = rng.normal(size=(400, 8)).astype(np.float32)
    crops = rng.normal(size=(30 * 5, 8)).astype(np.float32)
    index = build_index("Flat", 8)
    fill_index(index, xb)
    method = create(name, weight=0.3)  # a large weight, so that votes do reorder
    D20, I20, _ = search(index, crops, method.search_k(20))
    full = method.merge(D20.reshape(30, 5, -1), I20.reshape(30, 5, -1), 20)
    for k in (1, 3, 7, 12):
        D, I, _ = search(index, crops, method.search_k(k))
        merged = method.merge(D.reshape(30, 5, -1), I.reshape(30, 5, -1), k)
        assert np.array_equal(merged, full[:, :k]), k
    positives = [rng.choice(400, 6, replace=False) for _ in range(30)]
    assert recall_at_n(full, positives, [1, 3]) == recall_at_n(full[:, :3], positives, [1, 3])


def eval_cfg(method, *extra, root=TINY):
    return load_config(
        overrides=[
            f"data.root={root}",
            *TINY_SET,
            "data.resize=[32,48]",
            "test.split=val",
            "model.aggregation=gem",
            "test.recall_values=[1,3,7]",
            f"test.method={method}",
            *extra,
        ]
    )


# nearest_crop (several crops, a merge, the crop rows saved) runs in the quick suite; the rest are slow.
@pytest.mark.parametrize(
    "method",
    [
        pytest.param(m, marks=pytest.mark.slow)
        for m in ("hard_resize", "single_query", "central_crop", "five_crops", "maj_voting")
    ]
    + ["nearest_crop"],
)
def test_every_method_runs_on_tiny(method, tmp_path):
    out = tmp_path / "desc"
    result = evaluate(eval_cfg(method), save_descriptors=out, progress=False)
    assert set(result) >= {"R@1", "R@3", "R@7", "matching_ms", "index_memory_mb"}
    assert result["queries"] == 100 and result["skipped_images"] == 0
    assert 0 <= result["R@1"] <= result["R@3"] <= result["R@7"] <= 100
    queries = pq.read_table(out / "queries.parquet")
    if method in ("nearest_crop", "maj_voting"):
        # One row per query and crop: what lets anyone recompute the merged recalls.
        assert queries.num_rows == 500 and queries.column("crop").to_pylist()[:6] == [0, 1, 2, 3, 4, 0]
        xq = np.stack(queries.column("descriptor").to_numpy(zero_copy_only=False)).astype(np.float32)
        database = pq.read_table(out / "database.parquet")
        xb = np.stack(database.column("descriptor").to_numpy(zero_copy_only=False)).astype(np.float32)
        index = build_index("Flat", xb.shape[1])
        fill_index(index, xb)
        m = create(method)
        D, I, _ = search(index, xq, m.search_k(7))
        merged = m.merge(D.reshape(100, 5, -1), I.reshape(100, 5, -1), 7)

        def utm(t):
            return np.stack([t.column("utm_east").to_numpy(), t.column("utm_north").to_numpy()], 1)

        utm_q = utm(queries)[::5]
        positives = [np.flatnonzero(np.hypot(*(utm(database) - u).T) <= 25) for u in utm_q]
        assert recall_at_n(merged, positives, [1, 3, 7]) == pytest.approx({k: result[k] for k in ("R@1", "R@3", "R@7")})
    else:
        assert queries.num_rows == 100 and "crop" not in queries.column_names


def test_single_query_takes_queries_of_different_sizes(vg_folder):
    queries = vg_folder / "images" / "test" / "queries"
    write_image(queries / vg_name(500021.0, 4100002.0, pano="tall"), seed=7, size=(80, 50))
    write_image(queries / vg_name(500031.0, 4100002.0, pano="wide"), seed=8, size=(40, 90))
    result = evaluate(eval_cfg("single_query", "test.split=test", root=vg_folder), progress=False)
    assert result["queries"] == 6 and result["skipped_images"] == 0
    # hard_resize copes too: every query is resized to H x W.
    assert evaluate(eval_cfg("hard_resize", "test.split=test", root=vg_folder), progress=False)["queries"] == 6


def test_cli_method_refusals(capsys):
    assert main(["eval", "--set", "test.method=ten_crops"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "test.method='ten_crops' is not allowed" in err and "maj_voting" in err
    assert main(["eval", "--set", "test.majority_weight=-1"]) == 2
    assert "test.majority_weight" in capsys.readouterr().err
