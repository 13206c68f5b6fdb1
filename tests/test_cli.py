"""The command line: figures and JSON, and every bad input ending in exit status 2 with one line."""

import json
import subprocess
import sys

from conftest import TINY_SET, write_image

from vgray.cli import main

EVAL = [
    "eval",
    *sum((["--set", s] for s in TINY_SET), []),
    "--set",
    "data.resize=[32,48]",
    "--set",
    "model.aggregation=gem",
    "--set",
    "test.recall_values=[1,5]",
]


def run_main(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_profile_prints_and_writes_json(tmp_path, capsys):
    code, out, err = run_main(
        [
            "profile",
            "--set",
            "model.aggregation=gem",
            "--set",
            "data.resize=[64,80]",
            "--runs",
            "1",
            "--json",
            str(tmp_path / "p.json"),
        ],
        capsys,
    )
    assert code == 0
    figures = json.loads((tmp_path / "p.json").read_text())
    assert set(figures) == {"features_dim", "gflops", "model_size_mb", "params", "extraction_ms"}
    assert figures["features_dim"] == 256 and figures["extraction_ms"] > 0
    assert "gflops" in out


def test_eval_json_has_the_contract_keys(vg_folder, tmp_path, capsys):
    code, out, err = run_main(EVAL + ["--set", f"data.root={vg_folder}", "--json", str(tmp_path / "e.json")], capsys)
    assert code == 0, err
    figures = json.loads((tmp_path / "e.json").read_text())
    for key in (
        "R@1",
        "R@5",
        "queries",
        "queries_without_positives",
        "database",
        "features_dim",
        "matching_ms",
        "index_memory_mb",
    ):
        assert key in figures and f"{key} " in out


def _bad_cases(root, tmp):
    """(name, argv) for each bad input of the core pipeline."""
    empty = tmp / "empty"
    (empty / "test" / "database").mkdir(parents=True)
    (empty / "test" / "queries").mkdir(parents=True)
    nocoords = tmp / "nocoords"
    write_image(nocoords / "test" / "database" / "IMG_1.jpg", 1)
    write_image(nocoords / "test" / "queries" / "IMG_2.jpg", 2)
    corrupt = tmp / "corrupt"
    write_image(corrupt / "test" / "database" / "@1.00@2.00@.jpg", 1)
    (corrupt / "test" / "queries").mkdir(parents=True)
    (corrupt / "test" / "queries" / "@1.00@3.00@.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return [
        ("missing folder", ["--set", f"data.root={tmp / 'nowhere'}"], "no such folder"),
        ("empty folder", ["--set", f"data.root={empty}"], "holds no images"),
        ("no coordinates", ["--set", f"data.root={nocoords}"], "IMG_1.jpg: the file name carries no UTM"),
        ("corrupt image", ["--set", f"data.root={corrupt}"], "@1.00@3.00@.jpg cannot be read"),
        ("unknown backbone", ["--set", "model.backbone=resnet34"], "model.backbone='resnet34' is not allowed"),
        ("unknown aggregation", ["--set", "model.aggregation=vlad"], "model.aggregation='vlad' is not allowed"),
        (
            "illegal combination",
            ["--set", "test.knn=HNSW32", "--set", "test.memory_budget_mb=10"],
            "only test.knn=Flat",
        ),
        ("non-positive size", ["--set", "data.resize=[0,48]"], "data.resize=[0, 48] must lie in [1, 16384]"),
        ("non-positive threshold", ["--set", "test.positive_dist_threshold=0"], "must be positive"),
        ("unknown key", ["--set", "test.recal_values=[1]"], "unknown config key 'test.recal_values'"),
        ("faiss refuses", ["--set", "test.knn=IVF4,Bogus"], "refused by faiss"),
        ("PQ size", ["--set", "test.knn=IVF4,PQ7"], "allowed m: 1, 2, 4, 8, 16, 32, 64, 128, 256"),
        ("missing weights file", ["--set", f"model.pretrained={tmp / 'w.pth'}"], "no such file"),
        ("missing config file", ["--config", str(tmp / "c.yaml")], "cannot be read"),
    ]


def test_bad_inputs_exit_2_with_one_line_and_write_nothing(vg_folder, tmp_path, capsys):
    for name, extra, message in _bad_cases(vg_folder, tmp_path / "cases"):
        out_json, out_desc = tmp_path / f"{name}.json", tmp_path / f"{name}-desc"
        argv = (
            EVAL
            + ["--set", f"data.root={vg_folder}"]
            + extra
            + ["--json", str(out_json), "--save-descriptors", str(out_desc)]
        )
        code, out, err = run_main(argv, capsys)
        assert code == 2, (name, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("vgray: error: "), (name, err)
        assert message in lines[0], (name, lines[0])
        assert not out_json.exists() and not out_desc.exists(), name


def test_usage_errors_are_one_line(capsys):
    code, out, err = run_main(["eval", "--no-such-flag"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    code, out, err = run_main(["bench", "nonsense"], capsys)
    assert code == 2 and "choose one of: ddp, extract, index, knn, mining, scale, search, sweep, train" in err


def test_real_process_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "vgray.cli", "eval", "--set", "model.backbone=nope"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "Traceback" not in proc.stderr
