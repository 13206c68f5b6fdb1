"""Evaluation: recall@N and the kNN stage against brute-force numpy references; vgray eval end to end."""

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import TINY_SET

from vgray.config import load_config
from vgray.errors import BadInput
from vgray.evaluate.evaluate import evaluate
from vgray.evaluate.knn import build_index, exact_search_chunks, fill_index, index_memory_mb, search
from vgray.evaluate.recall import recall_at_n


def brute_recalls(xb, xq, positives, recall_values):
    """Reference: full distance matrix, ranks ordered by (distance, database id)."""
    d = ((xq[:, None, :].astype(np.float64) - xb[None, :, :]) ** 2).sum(-1)
    out = {}
    for n in recall_values:
        hits = 0
        for qi in range(len(xq)):
            order = np.lexsort((np.arange(len(xb)), d[qi]))[:n]
            hits += bool(set(order.tolist()) & set(positives[qi].tolist()))
        out[f"R@{n}"] = 100.0 * hits / len(xq)
    return out


def test_recall_matches_brute_force_with_ties_and_missing_positives():
    rng = np.random.default_rng(0)
    # Small integers: float32 distances are exact, so ties are real ties.
    xb = rng.integers(0, 3, size=(300, 8)).astype(np.float32)
    xb[150:] = xb[:150]  # every descriptor twice: ids i and i+150 always tie
    xq = rng.integers(0, 3, size=(80, 8)).astype(np.float32)
    positives = [np.sort(rng.choice(300, size=rng.integers(0, 6), replace=False)) for _ in range(80)]
    assert any(len(p) == 0 for p in positives)
    values = [1, 2, 5, 10, 20]
    index = build_index("Flat", 8)
    fill_index(index, xb)
    D, I, _ = search(index, xq, 20)
    assert recall_at_n(I, positives, values) == brute_recalls(xb, xq, positives, values)
    # A positive that only ties with a lower id is not in the top-1: ties go to the lower id.
    assert recall_at_n(np.array([[4, 154]]), [np.array([154])], [1, 2]) == {"R@1": 0.0, "R@2": 100.0}


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_streamed_exact_search_equals_one_flat_index(chunk):
    rng = np.random.default_rng(chunk)
    xb = rng.normal(size=(500, 16)).astype(np.float32)
    xb[250:260] = xb[0]  # ties across chunks
    xq = rng.normal(size=(40, 16)).astype(np.float32)
    xq[0] = xb[0]
    index = build_index("Flat", 16)
    fill_index(index, xb)
    D, I, _ = search(index, xq, 10)
    D2, I2 = exact_search_chunks(((o, xb[o : o + chunk]) for o in range(0, len(xb), chunk)), xq, 10)
    assert np.array_equal(I, I2)
    assert np.allclose(D, D2, atol=1e-4)
    assert list(I2[0][:4]) == [0, 250, 251, 252]


def test_index_strings_and_memory():
    rng = np.random.default_rng(0)
    xb = rng.normal(size=(2000, 32)).astype(np.float32)
    flat = build_index("Flat", 32)
    fill_index(flat, xb)
    assert index_memory_mb(flat) == pytest.approx(2000 * 32 * 4 / 2**20)
    pq16 = build_index("IVF8,PQ8", 32)
    fill_index(pq16, xb)
    assert index_memory_mb(pq16) < index_memory_mb(flat) / 2
    with pytest.raises(BadInput, match="test.knn='Bogus42' is refused by faiss"):
        build_index("Bogus42", 32)


def eval_cfg(root, *extra):
    return load_config(
        overrides=[
            f"data.root={root}",
            *TINY_SET,
            "data.resize=[32,48]",
            "model.aggregation=gem",
            "test.recall_values=[1,2,5]",
            *extra,
        ]
    )


def test_eval_end_to_end_and_saved_descriptors_recompute_the_recalls(vg_folder, tmp_path):
    out = tmp_path / "desc"
    result = evaluate(eval_cfg(vg_folder), save_descriptors=out, progress=False)
    assert set(
        [
            "R@1",
            "R@2",
            "R@5",
            "queries",
            "queries_without_positives",
            "database",
            "features_dim",
            "matching_ms",
            "index_memory_mb",
            "gflops",
            "model_size_mb",
        ]
    ) <= set(result)
    assert result["queries"] == 4 and result["database"] == 12 and result["features_dim"] == 256
    assert result["queries_without_positives"] == 1  # the query 1 km away still counts as a miss
    assert result["R@5"] <= 75.0
    db, q = pq.read_table(out / "database.parquet"), pq.read_table(out / "queries.parquet")
    assert db.column_names == ["path", "utm_east", "utm_north", "descriptor"]
    assert db.num_rows == 12 and q.num_rows == 4
    xb = np.stack(db.column("descriptor").to_numpy(zero_copy_only=False)).astype(np.float32)
    xq = np.stack(q.column("descriptor").to_numpy(zero_copy_only=False)).astype(np.float32)
    utm_b = np.stack([db.column("utm_east").to_numpy(), db.column("utm_north").to_numpy()], 1)
    utm_q = np.stack([q.column("utm_east").to_numpy(), q.column("utm_north").to_numpy()], 1)
    positives = [np.flatnonzero(np.hypot(*(utm_b - u).T) <= 25) for u in utm_q]
    ref = brute_recalls(xb, xq, positives, [1, 2, 5])
    assert ref == pytest.approx({k: result[k] for k in ref}, abs=1e-9)


def test_streamed_database_gives_the_same_recalls(vg_folder, tmp_path):
    whole = evaluate(eval_cfg(vg_folder), progress=False)
    streamed = evaluate(
        eval_cfg(vg_folder, "test.memory_budget_mb=0.002"), save_descriptors=tmp_path / "s", progress=False
    )
    for key in ("R@1", "R@2", "R@5", "queries", "database"):
        assert whole[key] == streamed[key], key
    assert streamed["index_memory_mb"] <= 0.002 + 256 * 4 * 16 / 2**20  # one chunk (plus one batch)
    assert pq.read_table(tmp_path / "s" / "database.parquet").num_rows == 12


def test_netvlad_eval_initialises_from_the_database(vg_folder):
    result = evaluate(eval_cfg(vg_folder, "model.aggregation=netvlad", "model.netvlad_clusters=4"), progress=False)
    assert result["features_dim"] == 4 * 256
    assert 0 <= result["R@1"] <= 100


def test_corrupt_image_is_named_or_skipped(vg_folder, tmp_path):
    bad = vg_folder / "images" / "test" / "database" / "@500500.00@4100000.00@33@T@@@x@@@@@@@@.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(BadInput, match=r"image .*@500500.00@4100000.00.*cannot be read"):
        evaluate(eval_cfg(vg_folder), save_descriptors=tmp_path / "d", progress=False)
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())
    result = evaluate(eval_cfg(vg_folder, "data.skip_corrupt=true"), progress=False)
    assert result["skipped_images"] == 1 and result["database"] == 13


def test_dataset_name_and_test_sets(vg_folder):
    from vgray.evaluate.evaluate import dataset_name, test_sets

    assert dataset_name("synthetic:small") == "synthetic_small"
    assert dataset_name("/data/pitts30k/") == "pitts30k"
    assert test_sets(eval_cfg(vg_folder)) == {"ds": str(vg_folder)}
    assert test_sets(eval_cfg(vg_folder, f"test.datasets={{a: {vg_folder}}}")) == {"a": str(vg_folder)}


def test_final_test_gives_the_eval_figures_and_scores_every_set(vg_folder, tmp_path):
    """The final test of training and of eval trials: on the default set, vgray eval's recalls and
    figures (an untrained NetVLAD initialised on the first set's database, as eval does); with two
    sets, test/<name>/R@N of each, the other figures from the first."""
    import shutil

    from vgray.evaluate.evaluate import final_test, test_sets
    from vgray.evaluate.extract import extract_descriptors
    from vgray.models import build_model
    from vgray.runtime import Runtime
    from vgray.seeding import seed_everything

    other = tmp_path / "other"
    shutil.copytree(vg_folder, other)
    for photo in sorted((other / "images" / "test" / "queries").iterdir())[:2]:
        photo.unlink()  # another set: two queries fewer
    cfg = eval_cfg(vg_folder, "model.aggregation=netvlad", "model.netvlad_clusters=4")
    figures = evaluate(cfg, progress=False)

    def model_and_runtime():
        seed_everything(cfg.seed)
        return build_model(cfg.model, image_size=cfg.data.image_size), Runtime.from_config(cfg, progress=False)

    model, rt = model_and_runtime()
    asked = []
    one = final_test(
        cfg, model, rt, test_sets(cfg), extractor_for=lambda c: asked.append(c.data.root) or extract_descriptors
    )
    assert asked == [str(vg_folder)]
    assert {k: one[f"test/ds/{k}"] for k in ("R@1", "R@2", "R@5")} == {k: figures[k] for k in ("R@1", "R@2", "R@5")}
    for key in (
        "matching_ms",
        "index_memory_mb",
        "database",
        "queries",
        "features_dim",
        "gflops",
        "model_size_mb",
        "params",
    ):
        assert key in one, key
    assert {k: one[k] for k in ("database", "queries", "features_dim", "params")} == {
        k: figures[k] for k in ("database", "queries", "features_dim", "params")
    }

    model, rt = model_and_runtime()
    two = final_test(cfg, model, rt, {"a": str(vg_folder), "b": str(other)})
    assert {k: two[f"test/a/{k}"] for k in ("R@1", "R@2", "R@5")} == {k: figures[k] for k in ("R@1", "R@2", "R@5")}
    assert {"test/b/R@1", "test/b/R@2", "test/b/R@5"} <= set(two)
    assert two["queries"] == 4 and two["database"] == 12  # the first set's
