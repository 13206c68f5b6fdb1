"""The bad-input corpus: every command refuses what it cannot use with exit status 2, ONE line on
stderr that names the culprit, nothing written and nothing launched (no Ray started).

Each case builds its inputs in the module's ``inputs`` folder and points every output of the command
at a fresh ``out`` folder that must still be absent (or unchanged) afterwards. Most cases call
``vgray.cli.main`` in-process (fast); the last test runs a few through the installed ``vgray``
script to show the same on a real process: no traceback.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY_SET, make_vg_folder, vg_name, write_image

from vgray.cli import main

SET = sum((["--set", s] for s in TINY_SET), []) + ["--set", "data.resize=[32,48]", "--set", "model.aggregation=gem"]
TRAIN_BASE = {
    "data": {"root": "synthetic:tiny", "resize": [32, 48], "num_workers": 0},
    "model": {"pretrained": "none", "aggregation": "gem"},
    "train": {
        "queries_per_epoch": 10,
        "cache_refresh_rate": 10,
        "negs_num_per_query": 2,
        "neg_samples_num": 40,
        "epochs": 1,
    },
}


def _sweep(d: Path, name: str, **raw) -> str:
    """A sweep file over a tiny base, stored under ``d/store``; ``raw`` replaces or adds keys."""
    body = {"name": name, "base": TRAIN_BASE, "storage": str(d / "store"), **raw}
    path = d / f"{name.replace('/', '_')}.sweep.yaml"
    path.write_text(yaml.safe_dump(body))
    return str(path)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Every bad file and folder the cases need, built once."""
    d = tmp_path_factory.mktemp("bad_inputs")
    (d / "syntax.yaml").write_text("model: [unclosed\n")
    (d / "list.yaml").write_text("- a\n- b\n")
    (d / "typo.yaml").write_text("model: {backbnoe: resnet18conv4}\n")
    (d / "not_a_checkpoint.pt").write_bytes(b"not a checkpoint at all")
    (d / "a_file").write_text("x")
    make_vg_folder(d / "only_train", [(0.0, 0.0)], [(1.0, 1.0)], split="train")
    make_vg_folder(d / "no_val", [(0.0, 0.0)], [(1.0, 1.0)], split="train")
    make_vg_folder(d / "no_val", [(0.0, 0.0)], [(1.0, 1.0)], split="test")
    write_image(d / "no_coords" / "test" / "database" / "IMG_1.jpg", 1)
    write_image(d / "no_coords" / "test" / "queries" / "IMG_2.jpg", 2)
    write_image(d / "corrupt" / "test" / "database" / vg_name(1, 2), 1)
    (d / "corrupt" / "test" / "queries").mkdir(parents=True)
    (d / "corrupt" / "test" / "queries" / vg_name(1, 3)).write_bytes(b"\xff\xd8 not really a jpeg")
    # a training run whose last.pt is damaged (a disk that filled up under another tool, say)
    (d / "run_corrupt").mkdir()
    (d / "run_corrupt" / "last.pt").write_bytes(b"PK\x03\x04 truncated")
    (d / "run_done").mkdir()
    (d / "run_done" / "last.pt").write_bytes(b"a previous run")
    # a descriptor folder (vgray locate) with a valid config but a damaged database shard
    from vgray.config import load_config

    (d / "db_bad_parquet").mkdir()
    (d / "db_bad_parquet" / "config.yaml").write_text(load_config(overrides=TINY_SET).to_yaml())
    (d / "db_bad_parquet" / "model.pt").write_bytes(b"")
    (d / "db_bad_parquet" / "database.parquet").write_bytes(b"PAR1 half a shard")
    # a sweep's results folder with a damaged results.parquet (vgray report)
    (d / "results_bad").mkdir()
    (d / "results_bad" / "results.parquet").write_bytes(b"PAR1 not parquet")
    (d / "syntax.sweep.yaml").write_text("name: x\ngrid: {a: [1, 2\n")
    return d


def _sha(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


# (id, argv builder (inputs dir, fresh output dir) -> argv, text the one line must contain)
CASES = [
    # configs
    (
        "config YAML syntax",
        lambda d, o: ["train", "--config", str(d / "syntax.yaml"), "--out", str(o)],
        "syntax.yaml line 2: not valid YAML",
    ),
    (
        "config not a mapping",
        lambda d, o: ["eval", "--config", str(d / "list.yaml"), "--json", str(o / "e.json")],
        "must be a mapping, not list",
    ),
    (
        "config is a folder",
        lambda d, o: ["eval", "--config", str(d), "--json", str(o / "e.json")],
        "is a folder, not a file",
    ),
    (
        "config key typo in file",
        lambda d, o: ["eval", "--config", str(d / "typo.yaml"), "--json", str(o / "e.json")],
        "model.backbnoe",
    ),
    (
        "--set without =",
        lambda d, o: ["train", *SET, "--set", "train.epochs", "--out", str(o)],
        "--set 'train.epochs' must look like key=value",
    ),
    (
        "--set wrong type",
        lambda d, o: ["train", *SET, "--set", "train.epochs=abc", "--out", str(o)],
        "train.epochs='abc' must be an integer",
    ),
    (
        "epochs 0",
        lambda d, o: ["train", *SET, "--set", "train.epochs=0", "--out", str(o)],
        "train.epochs=0 must be positive",
    ),
    (
        "negative lr",
        lambda d, o: ["train", *SET, "--set", "train.lr=-1", "--out", str(o)],
        "train.lr=-1.0 must be positive",
    ),
    (
        "unknown mining",
        lambda d, o: ["train", *SET, "--set", "train.mining=bogus", "--out", str(o)],
        "train.mining='bogus' is not allowed; choose one of",
    ),
    (
        "resize with 3 values",
        lambda d, o: ["train", *SET, "--set", "data.resize=[1,2,3]", "--out", str(o)],
        "data.resize=[1, 2, 3] must have 2 values",
    ),
    (
        "no recall values",
        lambda d, o: ["eval", *SET, "--set", "test.recall_values=[]", "--json", str(o / "e.json")],
        "test.recall_values=[] must list at least one N",
    ),
    (
        "recall values not increasing",
        lambda d, o: ["eval", *SET, "--set", "test.recall_values=[5,1]", "--json", str(o / "e.json")],
        "must be increasing",
    ),
    (
        "unset environment variable",
        lambda d, o: ["eval", *SET, "--set", "data.root=${VGRAY_NOT_SET_ANYWHERE}/x", "--json", str(o / "e.json")],
        "VGRAY_NOT_SET_ANYWHERE",
    ),
    (
        "unknown split",
        lambda d, o: ["eval", *SET, "--set", "test.split=nope", "--json", str(o / "e.json")],
        "test.split='nope' is not allowed",
    ),
    (
        "queries_per_epoch vs cache_refresh_rate",
        lambda d, o: [
            "train",
            *SET,
            "--set",
            "train.queries_per_epoch=15",
            "--set",
            "train.cache_refresh_rate=10",
            "--out",
            str(o),
        ],
        "must be a multiple of train.cache_refresh_rate",
    ),
    # dataset folders and images
    (
        "dataset without the test split",
        lambda d, o: ["eval", *SET, "--set", f"data.root={d / 'only_train'}", "--json", str(o / "e.json")],
        "no 'test' split",
    ),
    (
        "dataset without the val split",
        lambda d, o: ["train", *SET, "--set", f"data.root={d / 'no_val'}", "--out", str(o)],
        "no 'val' split",
    ),
    (
        "data.root is a file",
        lambda d, o: ["eval", *SET, "--set", f"data.root={d / 'a_file'}", "--json", str(o / "e.json")],
        "not a folder",
    ),
    (
        "file names without UTM",
        lambda d, o: ["eval", *SET, "--set", f"data.root={d / 'no_coords'}", "--json", str(o / "e.json")],
        "IMG_1.jpg: the file name carries no UTM",
    ),
    (
        "corrupt image",
        lambda d, o: [
            "eval",
            *SET,
            "--set",
            f"data.root={d / 'corrupt'}",
            "--json",
            str(o / "e.json"),
            "--save-descriptors",
            str(o / "desc"),
        ],
        "cannot be read",
    ),
    # checkpoints and weights
    (
        "weights file not a checkpoint",
        lambda d, o: [
            "eval",
            *SET,
            "--set",
            f"model.pretrained={d / 'not_a_checkpoint.pt'}",
            "--json",
            str(o / "e.json"),
        ],
        "not_a_checkpoint.pt cannot be read",
    ),
    (
        "resume from a corrupt last.pt",
        lambda d, o: ["train", *SET, "--resume", "--out", str(d / "run_corrupt")],
        "run_corrupt/last.pt is corrupt or not a vgray checkpoint",
    ),
    (
        "resume with nothing to resume",
        lambda d, o: ["train", *SET, "--resume", "--out", str(o)],
        "last.pt does not exist; nothing to resume",
    ),
    (
        "--out holds a run",
        lambda d, o: ["train", *SET, "--out", str(d / "run_done")],
        "already holds a run (last.pt); pass --resume",
    ),
    # sweep files
    ("sweep file missing", lambda d, o: ["sweep", str(d / "nope.yaml")], "nope.yaml: cannot be read"),
    ("sweep YAML syntax", lambda d, o: ["sweep", str(d / "syntax.sweep.yaml")], "not valid YAML"),
    (
        "sweep unknown key",
        lambda d, o: ["sweep", _sweep(d, "a", grdi={"model.aggregation": ["gem"]})],
        "key 'grdi' is unknown; did you mean grid?",
    ),
    (
        "sweep grid key unknown",
        lambda d, o: ["sweep", _sweep(d, "b", grid={"model.aggregatio": ["gem"]})],
        "grid key 'model.aggregatio' is unknown",
    ),
    (
        "sweep grid empty",
        lambda d, o: ["sweep", _sweep(d, "c", grid={"model.aggregation": []})],
        "must have a non-empty list of values",
    ),
    (
        "sweep grid value refused",
        lambda d, o: ["sweep", _sweep(d, "k", grid={"model.aggregation": ["gem", "vlad"]})],
        "trial vlad-s0: model.aggregation='vlad' is not allowed",
    ),
    ("sweep repeats 0", lambda d, o: ["sweep", _sweep(d, "d", repeats=0)], "repeats=0 must lie in [1, 1000]"),
    (
        "sweep max_failures",
        lambda d, o: ["sweep", _sweep(d, "e", max_failures="x")],
        "max_failures='x' must be an integer",
    ),
    (
        "sweep search algorithm",
        lambda d, o: [
            "sweep",
            _sweep(
                d,
                "i",
                search={
                    "algorithm": "hyperopt",
                    "space": {"train.lr": {"type": "float", "low": 0.1, "high": 1}},
                    "num_samples": 2,
                    "metric": "val/R@5",
                    "mode": "max",
                },
            ),
        ],
        "search.algorithm='hyperopt' is not allowed; choose one of: optuna",
    ),
    (
        "sweep scheduler",
        lambda d, o: ["sweep", _sweep(d, "j", scheduler={"type": "pbt"})],
        "scheduler.type='pbt' is not allowed; choose one of: asha, fifo",
    ),
    ("sweep task", lambda d, o: ["sweep", _sweep(d, "l", task="predict")], "task='predict' is not allowed"),
    ("sweep name", lambda d, o: ["sweep", _sweep(d, "../x")], "name='../x' must be a word"),
    (
        "sweep base file missing",
        lambda d, o: ["sweep", _sweep(d, "m", base=str(d / "nope-base.yaml"))],
        "nope-base.yaml",
    ),
    ("sweep --resume with nothing", lambda d, o: ["sweep", _sweep(d, "g"), "--resume"], "no sweep to resume"),
    (
        "sweep storage is a file",
        lambda d, o: ["sweep", _sweep(d, "h", storage=str(d / "a_file"))],
        "a_file is a file, not a folder",  # the one path door, before the sweep's folder is tried
    ),
    # vgray extract (refused before Ray starts)
    (
        "extract shard size 0",
        lambda d, o: ["extract", *SET, "--out", str(o), "--shard-size", "0"],
        "--shard-size=0 must be at least 1",
    ),
    (
        "extract missing dataset",
        lambda d, o: ["extract", *SET, "--out", str(o), "--set", f"data.root={d / 'nowhere'}"],
        "nowhere: no such folder",
    ),
    ("extract unknown split", lambda d, o: ["extract", *SET, "--out", str(o), "--split", "nope"], "no 'nope' split"),
    (
        "extract multi-crop queries",
        lambda d, o: ["extract", *SET, "--out", str(o), "--set", "test.method=five_crops"],
        "test.method=five_crops: vgray extract writes one descriptor per query image",
    ),
    # vgray locate: descriptor folders and parquet
    (
        "locate no database",
        lambda d, o: ["locate", str(d / "a_file"), "--database", str(d / "nodb")],
        "nodb: no such folder",
    ),
    (
        "locate database without files",
        lambda d, o: ["locate", str(d / "a_file"), "--database", str(d / "only_train")],
        "only_train: no config.yaml",
    ),
    (
        "locate damaged database.parquet",
        lambda d, o: ["locate", str(d / "a_file"), "--database", str(d / "db_bad_parquet")],
        "database.parquet is not a vgray descriptor table",
    ),
    (
        "locate k 0",
        lambda d, o: ["locate", str(d / "a_file"), "--database", str(d / "nodb"), "--k", "0"],
        "--k=0 must be at least 1",
    ),
    # vgray report
    ("report missing folder", lambda d, o: ["report", str(d / "nope"), "--out", str(o)], "does not exist"),
    (
        "report damaged results.parquet",
        lambda d, o: ["report", str(d / "results_bad"), "--out", str(o)],
        "results.parquet",
    ),
    (
        "report recall",
        lambda d, o: ["report", str(d / "results_bad"), "--out", str(o), "--recall", "x"],
        "--recall 'x' must be positive integers",
    ),
    # vgray synth, profile, bench
    ("synth unknown preset", lambda d, o: ["synth", str(o), "--preset", "huge"], "unknown synthetic preset 'huge'"),
    ("synth into a file", lambda d, o: ["synth", str(d / "a_file")], "is a file, not a folder"),
    ("synth into a foreign folder", lambda d, o: ["synth", str(d / "only_train")], "is not a vgray synthetic dataset"),
    (
        "profile runs 0",
        lambda d, o: ["profile", *SET, "--runs", "0", "--json", str(o / "p.json")],
        "--runs=0 must be at least 1",
    ),
    (
        "profile unknown backbone",
        lambda d, o: ["profile", "--set", "model.backbone=nope", "--json", str(o / "p.json")],
        "model.backbone='nope' is not allowed",
    ),
    ("bench unknown", lambda d, o: ["bench", "nonsense"], "unknown benchmark 'nonsense'"),
    (
        "bench knn PQ size",
        lambda d, o: [
            "bench",
            "knn",
            "--index",
            "PQ7",
            "--dim",
            "32",
            "--database",
            "300",
            "--json",
            str(o / "b.json"),
        ],
        "allowed m: 1, 2, 4, 8, 16, 32",
    ),
    ("usage error", lambda d, o: ["eval", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
]


def _snapshot(d: Path):
    """Every file under the inputs folder with its content hash (what a refusal must not touch)."""
    return {str(p.relative_to(d)): _sha(p) for p in sorted(d.rglob("*")) if p.is_file()}


def _ray_started() -> bool:
    ray = sys.modules.get("ray")  # never imported: certainly never started
    return bool(ray is not None and ray.is_initialized())


@pytest.mark.parametrize("name,argv,message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(name, argv, message, inputs, tmp_path, capsys):
    assert not _ray_started()
    out = tmp_path / "out"
    argv = argv(inputs, out)
    before = {k: v for k, v in _snapshot(inputs).items() if not k.endswith(".sweep.yaml")}
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, (name, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vgray: error: "), (name, err)
    assert message in lines[0], (name, lines[0])
    assert not out.exists(), f"{name}: wrote {sorted(map(str, out.rglob('*')))}"
    after = {k: v for k, v in _snapshot(inputs).items() if not k.endswith(".sweep.yaml")}
    assert after == before, f"{name}: changed {set(after.items()) ^ set(before.items())}"
    assert not _ray_started(), f"{name}: started Ray"


SUBPROCESS_CASES = ["config YAML syntax", "sweep grid value refused", "locate damaged database.parquet"]


def test_real_processes_print_one_line_and_no_traceback(inputs, tmp_path):
    vgray = Path(sys.executable).parent / "vgray"
    for name, argv, message in (c for c in CASES if c[0] in SUBPROCESS_CASES):
        out = tmp_path / name.replace(" ", "_")
        proc = subprocess.run([str(vgray), *argv(inputs, out)], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, (name, proc.stderr[-2000:])
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr, (name, proc.stderr[-2000:])
        assert not out.exists(), name
