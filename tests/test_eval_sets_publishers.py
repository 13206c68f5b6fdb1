"""The evaluation sets in their publishers' own layouts, on files the tests write (issue 32's five):

1. BoQ's ``NAME_gt_25m.npy`` positives (amaralibey/Bag-of-Queries ``src/dataloaders/mapillary_sls.py``);
2. a folder holding one list set is labelled by the set's NAME (SALAD's ``msls_val`` is val);
3. MSLS val's candidates (747) and scored queries (740) compared each with its own kind;
4. a positives rule the dataset cannot decide is refused before anything is written;
5. the paper's Table 2 figures, rounded as printed, compared within their rounding.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import eval_refused, make_vg_folder
from test_datasets_cmd import run, touch
from test_ground_truth import GT, RECALLS, brute_recalls, gt_folder, run_eval, save_object_array
from test_msls_raw import msls_folder

from vgray.cli import main
from vgray.data.catalog import CATALOG, Figure, table2
from vgray.data.dataset import open_split
from vgray.evaluate.evaluate import dataset_name

MSLS_DB, MSLS_CANDIDATES, MSLS_SCORED = 18871, 747, 740


def boq_folder(root: Path, name: str = "msls_val") -> Path:
    """BoQ's msls-val: ``cph/`` and ``sf/`` image folders beside ``msls_val_dbImages.npy``,
    ``msls_val_qImages.npy`` (paths relative to the folder) and ``msls_val_gt_25m.npy`` (per query,
    the database indices within 25 m), as its loader reads them."""
    gt_folder(root, name=name)  # the images, the two image lists and NAME_gt.npy
    (root / f"{name}_gt.npy").rename(root / f"{name}_gt_25m.npy")
    for city in ("cph", "sf"):
        (root / city).mkdir(exist_ok=True)
    return root


# -- 1. BoQ's NAME_gt_25m.npy ------------------------------------------------------------------------


def test_boq_gt_25m_positives_score_as_the_files_say(tmp_path, capsys):
    root = boq_folder(tmp_path / "msls-val")
    split = open_split(root, "val")
    assert split.ground_truth_file == "msls_val_gt_25m.npy" and split.candidates is None
    assert [p.tolist() for p in split.ground_truth] == GT
    assert dataset_name(str(root / "msls_val_gt_25m.npy")) == "msls_val"
    figures, xb, xq, *_ = run_eval(root, tmp_path, capsys)
    reference = brute_recalls(xb, xq, GT, RECALLS)  # BoQ's rule: every listed query, an empty entry a miss
    assert {k: figures[k] for k in reference} == pytest.approx(reference)
    assert figures["positives"] == "files msls_val_gt_25m.npy" and figures["query_set"] == f"all {len(GT)}"


def test_both_gt_files_are_refused_in_one_line_before_anything_is_written(tmp_path, capsys):
    root = boq_folder(tmp_path / "both")
    save_object_array(root / "msls_val_gt.npy", GT)
    line = eval_refused(root, ["model.pretrained=none", "device=cpu"], tmp_path, capsys)
    assert "msls_val_gt.npy and msls_val_gt_25m.npy" in line and "no publisher ships both" in line
    code, out, err = run(capsys, "datasets", "check", str(root))
    assert code == 2 and out == "" and err.count("\n") == 1


# -- 2. a list set labelled by its NAME ---------------------------------------------------------------


@pytest.mark.parametrize("name, split", [("msls_val", "val"), ("pitts30k_test", "test"), ("SPED", "test")])
def test_one_list_set_is_labelled_by_its_name(name, split, tmp_path, capsys):
    root = gt_folder(tmp_path / "lists", name=name)
    code, out, err = run(capsys, "datasets", "check", str(root), "--json")
    report = json.loads(out)
    assert list(report["splits"]) == [split] and report["layout"] == "lists"
    if name == "msls_val":  # guessed from the set's name, and set against MSLS val's figures, not test's
        assert report["dataset"] == "msls" and code == 1
        assert f"val/database: 10 found, {MSLS_DB} published" in err
        assert "36565" not in err and "1135" not in err


# -- 3. MSLS val: candidates and scored queries -------------------------------------------------------


DB = [f"cph/database/images/d{i:05d}.jpg" for i in range(MSLS_DB)]
QUERIES = [f"cph/query/images/q{i:03d}.jpg" for i in range(MSLS_CANDIDATES)]


@pytest.fixture(scope="module")
def msls_images(tmp_path_factory) -> Path:
    """MSLS val's 18,871 database and 747 query images as empty files (the check reads no pixels)."""
    images = tmp_path_factory.mktemp("msls_images")
    for rel in DB + QUERIES:
        touch(images / rel)
    return images


def msls_val_lists(images: Path, root: Path, form: str, without_positive: int = 0) -> str:
    """A faithful MSLS val's lists in ``root`` for the images in ``images``; the data root
    ``IMAGES::LISTS``. ``form`` "salad": 747 candidates in qImages, the 740 scored in qIdx, their
    positives in pIdx (as GSV-Cities, MixVPR and SALAD ship it); "boq": the 740 scored in qImages,
    their positives in ``_gt_25m`` (as BoQ ships it). ``without_positive`` queries get no positive."""
    root.mkdir(parents=True)
    db, queries = DB, QUERIES[: MSLS_CANDIDATES if form == "salad" else MSLS_SCORED]
    np.save(root / "msls_val_dbImages.npy", np.array(db))
    np.save(root / "msls_val_qImages.npy", np.array(queries))
    positives = [[i * 25] for i in range(MSLS_SCORED)]
    for i in range(without_positive):
        positives[i] = []
    if form == "salad":
        np.save(root / "msls_val_qIdx.npy", np.arange(MSLS_SCORED, dtype=np.int64))
        save_object_array(root / "msls_val_pIdx.npy", positives)
    else:
        save_object_array(root / "msls_val_gt_25m.npy", positives)
    return f"{images}::{root}"


@pytest.mark.parametrize("form", ["salad", "boq"])
def test_a_faithful_msls_val_agrees_like_with_like(form, msls_images, tmp_path, capsys):
    root = msls_val_lists(msls_images, tmp_path / "lists", form)
    code, out, err = run(capsys, "datasets", "check", root, "--json")
    assert code == 0, err
    report = json.loads(out)
    val = report["splits"]["val"]
    assert report["dataset"] == "msls" and list(report["splits"]) == ["val"]
    assert (val["database"], val["queries"], val["scored"]) == (MSLS_DB, MSLS_SCORED, MSLS_SCORED)
    assert (val["published_database"], val["published_queries"], val["published_scored"]) == (
        MSLS_DB,
        MSLS_CANDIDATES,
        MSLS_SCORED,
    )
    if form == "salad":  # qImages lists the candidates, qIdx selects the scored
        assert val["candidates"] == val["compared_queries"] == MSLS_CANDIDATES
    else:  # BoQ lists only the scored queries: no candidate list to set against 747
        assert val["candidates"] is None and val["compared_queries"] is None
    code, out, _ = run(capsys, "datasets", "check", root)
    assert code == 0 and "val/scored" in out and "DIFFERS" not in out


def test_a_query_without_positive_is_not_scored(msls_images, tmp_path, capsys):
    root = msls_val_lists(msls_images, tmp_path / "lists", "boq", without_positive=1)
    code, _, err = run(capsys, "datasets", "check", root)
    assert code == 1 and err.count("\n") == 1
    assert f"val/scored: {MSLS_SCORED - 1} found, {MSLS_SCORED} published" in err


def test_raw_msls_counts_its_candidates(tmp_path):
    """MSLS's own files: the candidates are the non-panorama queries flagged for subtask ``all``."""
    split = open_split(msls_folder(tmp_path / "mini"), "val")
    assert split.query_set == "im2im 4 of 10" and split.candidates == 8


# -- 4. the positives rule before any effect ----------------------------------------------------------

SETS = ["model.pretrained=none", "model.aggregation=gem", "data.resize=[32,32]", "device=cpu"]


@pytest.mark.parametrize(
    "rule, message",
    [("files", "test.positives=files: dataset"), ("frames", "carries no frame number")],
)
def test_a_rule_the_vg_folder_cannot_decide_leaves_nothing(rule, message, tmp_path, capsys):
    root = make_vg_folder(tmp_path / "vg", [(0.0, 0.0), (100.0, 0.0)], [(1.0, 0.0)], size=(32, 32))
    line = eval_refused(root, [*SETS, f"test.positives={rule}"], tmp_path, capsys)
    assert message in line


def test_radius_on_lists_leaves_nothing(tmp_path, capsys):
    line = eval_refused(gt_folder(tmp_path / "lists"), [*SETS, "test.positives=radius"], tmp_path, capsys)
    assert "test.positives=radius" in line and "no coordinates" in line


def test_a_sweep_refuses_the_rule_before_ray_starts(tmp_path, capsys):
    root = make_vg_folder(tmp_path / "vg", [(0.0, 0.0)], [(1.0, 0.0)], size=(32, 32))
    sweep = tmp_path / "s.yaml"
    storage = tmp_path / "results"
    sweep.write_text(
        "name: s\ntask: eval\n"
        f"base: {{data: {{root: '{root}'}}, model: {{pretrained: none}}, test: {{positives: files}}}}\n"
        "grid: {model.aggregation: [gem]}\n"
        f"storage: '{storage}'\n"
    )
    code = main(["sweep", str(sweep)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "test.positives=files" in err and "data.root" in err
    assert not storage.exists()


def test_a_grid_over_the_rule_is_checked_for_each_rule(tmp_path, capsys):
    """The same root in every trial, a rule it cannot decide in the second: refused before Ray."""
    root = make_vg_folder(tmp_path / "vg", [(0.0, 0.0)], [(1.0, 0.0)], size=(32, 32))
    sweep = tmp_path / "s.yaml"
    storage = tmp_path / "results"
    sweep.write_text(
        "name: s\ntask: eval\n"
        f"base: {{data: {{root: '{root}'}}, model: {{pretrained: none}}}}\n"
        "grid: {test.positives: [radius, files]}\n"
        f"storage: '{storage}'\n"
    )
    code = main(["sweep", str(sweep)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "test.positives=files" in err and "data.root" in err
    assert not storage.exists()


# -- 5. Table 2's rounded figures ---------------------------------------------------------------------


def test_table2_figures_keep_their_printed_precision():
    assert table2("24K") == Figure(24000, 1000, "24K")
    assert table2("6.8K") == Figure(6800, 100, "6.8K")
    assert table2("1.05M") == Figure(1050000, 10000, "1.05M")
    assert table2("315").exact and table2("315").value == 315
    k24 = table2("24K")
    assert [k24.agrees(n) for n in (23499, 23500, 24000, 24499, 24500)] == [False, True, True, True, False]
    assert not Figure(607).agrees(606) and Figure(607).agrees(607)
    # The six each carry Table 2's test sizes; an exact publisher figure stays exact.
    for name in ("pitts30k", "msls", "tokyo247", "san_francisco", "eynsham", "st_lucia"):
        e = CATALOG[name]
        assert e.figure("test", "database", "vg") is not None and e.figure("test", "queries", "vg") is not None
    assert CATALOG["eynsham"].figure("test", "database", "vg") == Figure(23935)
    assert CATALOG["pitts30k"].figure("test", "queries", "vg") == Figure(6816)
    assert CATALOG["st_lucia"].figure("test", "queries", "vg").rounded_to == 100


def test_list_marks_rounded_figures(capsys):
    code, out, _ = run(capsys, "datasets", "list")
    assert code == 0
    line = next(x for x in out.splitlines() if x.startswith("tokyo247"))
    assert "~75K" in line and " 315 " in line
    assert "~ rounded as the paper's Table 2 prints it" in out
    _, out, _ = run(capsys, "datasets", "list", "--json")
    rows = json.loads(out)
    lucia = next(r for r in rows if r["name"] == "st_lucia")
    assert (lucia["database"], lucia["database_rounded_to"], lucia["database_text"]) == (1500, 100, "~1.5K")
    assert not any(r["database"] is None for r in rows if r["paper"] and r["split"] == "test")


@pytest.mark.parametrize("queries, code", [(1549, 0), (1550, 1)])
def test_a_count_agrees_with_a_rounded_figure_within_its_rounding(queries, code, tmp_path, capsys):
    root = tmp_path / "st_lucia"
    for i in range(1450):
        touch(root / "images" / "test" / "database" / f"@{i * 100.0:.1f}@0@@@@@@@@@@@@.jpg")
    for i in range(queries):
        touch(root / "images" / "test" / "queries" / f"@{i * 100.0:.1f}@5@@@@@@@@@@@@.jpg")
    got, out, err = run(capsys, "datasets", "check", str(root), "--no-positives")
    assert got == code, err
    if code:
        assert "test/queries: 1550 found, ~1.5K (1,450 to 1,549) published" in err
    else:
        assert "~1.5K published  ok" in out


def test_train_and_val_together_are_set_against_table2s_first_column(tmp_path, capsys):
    root = tmp_path / "p"
    for split in ("train", "val"):
        make_vg_folder(root, [(0.0, 0.0)], [(1.0, 0.0)], split=split, size=(8, 8))
    code, out, err = run(capsys, "datasets", "check", str(root), "--name", "pitts30k", "--json")
    report = json.loads(out)
    assert code == 1 and report["combined"]["train+val"]["database"] == 2
    assert "train+val/database: 2 found, ~20K (19,500 to 20,499) published" in err
