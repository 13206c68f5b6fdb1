"""vgray eval --save-predictions: PNG grids whose frames agree with the truth from the UTM coordinates."""

from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, TINY_SET
from PIL import Image

from vgray.cli import main
from vgray.config import load_config
from vgray.evaluate.evaluate import evaluate
from vgray.report.predictions import BORDER, GREEN, RED, tile_box

SETS = [
    f"data.root={TINY}",
    *TINY_SET,
    "data.resize=[32,48]",
    "model.backbone=resnet18conv4",
    "model.aggregation=gem",
    "test.split=val",
    "test.recall_values=[1,5]",
]
EVAL = ["eval", *sum((["--set", s] for s in SETS), [])]


@pytest.fixture(scope="module")
def run(tiny_root, tmp_path_factory):
    """The predictions (through the API), and the grids of two CLI runs: all queries, failures only."""
    out = tmp_path_factory.mktemp("pred")
    cfg = load_config(overrides=SETS)
    keep = {}
    evaluate(cfg, progress=False, keep=keep)
    assert main([*EVAL, "--json", str(out / "all" / "r.json"), "--save-predictions", "4"]) == 0
    assert (
        main(
            [*EVAL, "--predictions-dir", str(out / "fail"), "--save-predictions", "1000", "--predictions-failures-only"]
        )
        == 0
    )
    return cfg, keep, out


def _grids(folder: Path):
    return sorted(folder.glob("*.png"), key=lambda p: int(p.name.split("_")[0]))


def _within(split, q: int, db: int, threshold: float) -> bool:
    return db >= 0 and float(np.hypot(*(split.database.utm[db] - split.queries.utm[q]))) <= threshold


def test_grids_of_the_first_n_queries_frame_candidates_by_distance(run):
    cfg, keep, out = run
    split, predictions = keep["split"], keep["predictions"]
    files = _grids(out / "all" / "predictions")
    assert [f.name for f in files] == [f"{i}_{Path(p).stem}.png" for i, p in enumerate(split.queries.paths[:4])]
    seen = set()
    for q, png in enumerate(files):
        image = Image.open(png).convert("RGB")
        for i, db in enumerate(predictions[q, :5]):
            left, top, _, _ = tile_box(i + 1)
            colour = image.getpixel((left + BORDER // 2, top + BORDER // 2))
            truth = _within(split, q, int(db), cfg.test.positive_dist_threshold)
            assert colour == (GREEN if truth else RED), (png.name, i)
            seen.add(truth)
    assert seen == {True, False}  # both colours checked


def test_failures_only_writes_the_queries_whose_top1_is_wrong(run):
    cfg, keep, out = run
    split, predictions = keep["split"], keep["predictions"]
    wrong = [
        q
        for q in range(len(split.queries))
        if not _within(split, q, int(predictions[q, 0]), cfg.test.positive_dist_threshold)
    ]
    assert 0 < len(wrong) < len(split.queries)
    files = _grids(out / "fail" / "predictions")
    assert [f.name for f in files] == [f"{i}_{Path(split.queries.paths[q]).stem}.png" for i, q in enumerate(wrong)]


@pytest.mark.parametrize("n", ["0", "-2"])
def test_bad_count_exits_2_with_one_line(n, capsys):
    assert main([*EVAL, "--save-predictions", n]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--save-predictions" in err
