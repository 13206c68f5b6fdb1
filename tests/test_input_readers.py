"""Bad input in the two readers of issue 18's classes 5 and 8: vgray checkpoints (``last.pt`` for
``train --resume``, a checkpoint as ``model.resume_from`` or ``model.pretrained``) and descriptor
tables (``database.parquet`` of a ``vgray locate --database`` folder).

The valid bases are made once per module with the real commands (a one-epoch ``vgray train`` on
the synthetic tiny set, ``vgray eval --save-descriptors`` on a slice of it); each case corrupts a
copy with real ``torch.save`` / parquet files and runs ``vgray``, which must end with exit 2 and
exactly one stderr line naming the file, the entry and what is allowed, nothing written (no index
cache either) and no Ray started. One variant of each kind of failure (:data:`SCRIPT`) runs the
installed script in its own process (no traceback either); the others call ``vgray.cli.main`` here,
which keeps the module within the suite's time."""

from __future__ import annotations

import copy
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import TINY_SET

from vgray.cli import main

VGRAY = Path(sys.executable).parent / "vgray"
SMALL = TINY_SET + ["data.resize=[32,48]", "model.aggregation=gem"]
TRAIN = SMALL + [
    "train.queries_per_epoch=10",
    "train.cache_refresh_rate=10",
    "train.negs_num_per_query=2",
    "train.neg_samples_num=40",
    "train.epochs=1",
]


def _sets(values):
    return [arg for v in values for arg in ("--set", v)]


@pytest.fixture(scope="module")
def run(tiny_root, small_root, tmp_path_factory) -> Path:
    """A finished one-epoch run (last.pt, best.pt, config.yaml), its final test on a small set."""
    out = tmp_path_factory.mktemp("readers") / "run"
    assert main(["train", *_sets(TRAIN + [f"test.datasets={{small: {small_root}}}"]), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def saved(small_root, tmp_path_factory) -> Path:
    """A descriptor folder (21 database images) as ``vgray eval --save-descriptors`` writes it."""
    out = tmp_path_factory.mktemp("readers_saved") / "desc"
    assert main(["eval", *_sets(SMALL + [f"data.root={small_root}"]), "--save-descriptors", str(out)]) == 0
    assert not list(out.glob("index.*"))
    return out


def _snapshot(root: Path):
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else None
        for p in sorted(root.rglob("*"))
    }


def _refused(argv, tmp_path: Path, expected: str, watched: Path, capsys=None) -> str:
    """Run ``vgray argv`` through the installed script (in this process with ``capsys``, for the
    variants that need no separate process to show the class): exit 2, one ``vgray: error:`` line
    holding ``expected``, ``watched`` unchanged, no Ray session. Returns the line."""
    before = _snapshot(watched)
    if capsys is None:
        env = {**os.environ, "RAY_TMPDIR": str(tmp_path / "ray")}
        proc = subprocess.run([str(VGRAY), *argv], capture_output=True, text=True, timeout=180, cwd=tmp_path, env=env)
        code, err = proc.returncode, proc.stderr
        assert "Traceback" not in proc.stdout
    else:
        capsys.readouterr()
        code = main(list(argv))
        err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err[-2000:]
    assert len(lines) == 1 and lines[0].startswith("vgray: error: "), err[-2000:]
    assert expected in lines[0], lines[0]
    assert len(lines[0]) < 600, f"message of {len(lines[0])} characters"
    assert _snapshot(watched) == before, "the command wrote into the folder"
    assert not (tmp_path / "ray").exists(), "Ray was started"
    return lines[0]


# The variants run as separate processes (the others in this one: the suite's time): one of each
# kind of failure, so that a real process is seen to print one line and no traceback for each.
# Two cases of each class (checkpoint contents, descriptor tables): each process costs seconds
# (reading them needs torch), and the other cases cross the same code in this process.
SCRIPT = {
    "a weight saved as a list",
    "a pickled Python object",
    "a NaN in one descriptor",
    "descriptors of another size",
}


# -- class 5: checkpoint contents -----------------------------------------------------------------


def _first_weight(ck):
    return next(iter(ck["model"]))


def _drop(key):
    def change(ck):
        del ck[key]

    return change


CHECKPOINTS = {
    "a weight saved as a list": (
        lambda ck: ck["model"].__setitem__(_first_weight(ck), ck["model"][_first_weight(ck)].tolist()),
        "model['backbone.body.0.weight'] is a list; allowed: a tensor",
    ),
    "a weight saved as a float": (
        lambda ck: ck["model"].__setitem__("aggregation.p", 3.0),
        "model['aggregation.p'] is a float 3.0; allowed: a tensor",
    ),
    "epoch as a string": (lambda ck: ck.__setitem__("epoch", "1"), "epoch is a str '1'; allowed: an integer >= 0"),
    "not_improved negative": (lambda ck: ck.__setitem__("not_improved", -1), "not_improved is an int -1"),
    "best_r5 nan": (lambda ck: ck.__setitem__("best_r5", float("nan")), "best_r5 is a float nan; allowed: a number in"),
    "config.model a string": (
        lambda ck: ck["config"].__setitem__("model", "resnet18conv4"),
        "config is not a valid vgray config (config section 'model' must be a mapping",
    ),
    "config with a key of another program": (
        lambda ck: ck["config"]["train"].__setitem__("lr_sheduler", "cos"),
        "config is not a valid vgray config",
    ),
    "no optimizer state": (_drop("optimizer"), "lacks optimizer; a resumable vgray checkpoint (last.pt) holds"),
    "optimizer state of another optimizer": (
        lambda ck: ck["optimizer"]["param_groups"].append(dict(ck["optimizer"]["param_groups"][0], params=[])),
        "optimizer does not fit this config's train.optimizer=adam",
    ),
    "history shorter than the epochs": (
        lambda ck: ck.__setitem__("history", []),
        "history is a list; allowed: a list of one",
    ),
    "torch RNG state as a list": (
        lambda ck: ck["rng"].__setitem__("torch", [0] * 16),
        "rng.torch is a list; allowed: a torch CPU RNG state",
    ),
    "python RNG state cut short": (
        lambda ck: ck["rng"].__setitem__("python", (3, (1, 2, 3), None)),
        "rng.python is a tuple; allowed: a Python random state",
    ),
    "partial mining cache of the wrong length": (
        lambda ck: ck.__setitem__("mining", {"queries": [0, 1, 2], "negatives": [[4, 5]]}),
        "mining.negatives is a list; allowed: a list of 3 lists of database ids",
    ),
    "a list instead of a dict": (lambda ck: [ck["model"]], "holds a list, not a vgray checkpoint"),
    # torch's own refusal (weights_only) as one line, without its colours and advice to load unsafely
    "a pickled Python object": (
        lambda ck: ck.__setitem__("config", pathlib.PurePosixPath("/runs/a")),
        "it holds a 'pathlib.PurePosixPath' object; allowed: tensors, numbers",
    ),
}


def _corrupt(source: Path, change) -> dict:
    ck = torch.load(source, weights_only=True)
    ck = copy.deepcopy(ck)
    changed = change(ck)
    return ck if changed is None else changed


@pytest.mark.parametrize("case", list(CHECKPOINTS))
def test_resume_from_a_damaged_last_pt_is_one_line(case, run, tmp_path, capsys):
    change, expected = CHECKPOINTS[case]
    out = tmp_path / "in" / "run"
    shutil.copytree(run, out)
    torch.save(_corrupt(run / "last.pt", change), out / "last.pt")
    line = _refused(
        ["train", "--resume", "--out", str(out)],
        tmp_path,
        expected,
        tmp_path / "in",
        None if case in SCRIPT else capsys,
    )
    assert str(out / "last.pt") in line


@pytest.mark.parametrize(
    "key, case",
    [
        ("model.resume_from", "config.model a string"),
        ("model.resume_from", "a weight saved as a list"),
        ("model.pretrained", "a weight saved as a float"),
        ("model.pretrained", "config with a key of another program"),
    ],
)
def test_a_damaged_checkpoint_as_a_model_source_is_one_line(key, case, run, small_root, tmp_path, capsys):
    """A kept model read as where a network starts (no optimizer state needed, but the same checks)."""
    change, expected = CHECKPOINTS[case]
    source = tmp_path / "in" / "best.pt"
    source.parent.mkdir()
    torch.save(_corrupt(run / "best.pt", change), source)
    out = tmp_path / "in" / "new_run"
    argv = (
        ["train", "--out", str(out), *_sets(TRAIN + [f"{key}={source}"])]
        if key == "model.resume_from"
        else ["eval", *_sets(SMALL + [f"data.root={small_root}", f"{key}={source}"])]
    )
    line = _refused(argv, tmp_path, expected, tmp_path / "in", capsys if key == "model.pretrained" else None)
    assert f"{key}={source}" in line
    assert not out.exists()


def test_a_model_only_checkpoint_is_a_model_source_but_not_resumable(run, tmp_path, capsys):
    """What a sweep keeps (model, config, scores) starts a network; --resume needs the whole state."""
    from vgray.checkpoint import read_checkpoint

    ck = torch.load(run / "best.pt", weights_only=True)
    slim = {k: ck[k] for k in ("config", "model", "epoch", "best_r5", "history")}
    out = tmp_path / "in" / "run"
    shutil.copytree(run, out)
    torch.save(slim, out / "last.pt")
    assert read_checkpoint(out / "last.pt", "model.resume_from")["model"].keys() == ck["model"].keys()
    _refused(
        ["train", "--resume", "--out", str(out)],
        tmp_path,
        "lacks optimizer, mining, not_improved, rng",
        tmp_path / "in",
        capsys,
    )


# -- class 8: the descriptor table of vgray locate ------------------------------------------------


def _column(table: pa.Table, name: str, values) -> pa.Table:
    return table.set_column(table.column_names.index(name), name, values)


def _matrix(table: pa.Table) -> np.ndarray:
    return np.stack(table.column("descriptor").to_numpy(zero_copy_only=False)).astype(np.float32)


def _fixed(x: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(x).reshape(-1)), x.shape[1])


def _nan_at(x, row, col, value=np.nan):
    x = x.copy()
    x[row, col] = value
    return x


def _with_null(values: list, row: int, kind) -> pa.Array:
    return pa.array([None if i == row else v for i, v in enumerate(values)], kind)


TABLES = {
    "descriptors written as text": (
        lambda t: _column(t, "descriptor", pa.array([" ".join(f"{v:.3f}" for v in r[:4]) for r in _matrix(t)])),
        "column descriptor is of type string; allowed: a fixed-size list of float32",
    ),
    "a NaN in one descriptor": (
        lambda t: _column(t, "descriptor", _fixed(_nan_at(_matrix(t), 7, 11))),
        "the descriptor of row 7 (",
    ),
    "an infinity in one descriptor": (
        lambda t: _column(t, "descriptor", _fixed(_nan_at(_matrix(t), 0, 0, -np.inf))),
        "holds -inf; allowed: finite numbers",
    ),
    "a null descriptor": (
        lambda t: _column(
            t, "descriptor", _with_null([list(r) for r in _matrix(t)], 4, pa.list_(pa.float32(), _matrix(t).shape[1]))
        ),
        # pyarrow 25 (mlflow's pin) cannot read a null fixed-size list back at all
        "column descriptor is null in row 4"
        if int(pa.__version__.split(".")[0]) >= 26
        else "database.parquet cannot be read",
    ),
    "a null inside a descriptor": (
        lambda t: _column(
            t,
            "descriptor",
            pa.array([[None, *r[1:]] if i == 9 else list(r) for i, r in enumerate(_matrix(t))], pa.list_(pa.float32())),
        ),
        "the descriptor of row 9 (",
    ),
    "one descriptor a value short": (
        lambda t: _column(
            t,
            "descriptor",
            pa.array([list(r[:-1]) if i == 5 else list(r) for i, r in enumerate(_matrix(t))], pa.list_(pa.float32())),
        ),
        "has 255 values; allowed: 256",
    ),
    "descriptors of another size": (
        lambda t: _column(t, "descriptor", _fixed(_matrix(t)[:, :64].copy())),
        "the network gives 256-d descriptors but database.parquet holds 64-d ones",
    ),
    "one coordinate NaN": (
        lambda t: _column(t, "utm_north", pa.array(_nan_at(t.column("utm_north").to_numpy()[:, None], 3, 0)[:, 0])),
        "row 3 (",
    ),
    "a null coordinate": (
        lambda t: _column(t, "utm_east", _with_null(t.column("utm_east").to_pylist(), 2, pa.float64())),
        "column utm_east is null in row 2",
    ),
    "coordinates as text": (
        lambda t: _column(t, "utm_east", pa.array([f"{v:.1f}E" for v in t.column("utm_east").to_pylist()])),
        "column utm_east is of type string; allowed: a number (float64)",
    ),
    "a null path": (
        lambda t: _column(t, "path", _with_null(t.column("path").to_pylist(), 6, pa.string())),
        "column path is null in row 6",
    ),
    "paths as numbers": (
        lambda t: _column(t, "path", pa.array(np.arange(len(t)))),
        "column path is of type int64; allowed: a string",
    ),
    "no descriptor column": (lambda t: t.drop(["descriptor"]), "lacks the columns descriptor"),
    "no rows": (lambda t: t.slice(0, 0), "database.parquet holds no rows"),
}


def _database_copy(saved: Path, tmp_path: Path, change) -> Path:
    folder = tmp_path / "in" / "desc"
    shutil.copytree(saved, folder, ignore=shutil.ignore_patterns("index.*"))
    pq.write_table(change(pq.read_table(saved / "database.parquet")), folder / "database.parquet")
    return folder


def _photo(small_root: Path) -> str:
    return str(sorted((small_root / "images" / "test" / "queries").iterdir())[0])


@pytest.mark.parametrize("case", list(TABLES))
def test_locate_refuses_a_damaged_database_table_in_one_line(case, saved, small_root, tmp_path, capsys):
    change, expected = TABLES[case]
    folder = _database_copy(saved, tmp_path, change)
    line = _refused(
        ["locate", _photo(small_root), "--database", str(folder)],
        tmp_path,
        expected,
        tmp_path / "in",
        None if case in SCRIPT else capsys,
    )
    assert f"--database {folder}" in line
    assert not list(folder.glob("index.*")), "an index cache was written"


def test_locate_takes_a_plain_float64_list_and_a_set_without_coordinates(saved, small_root, tmp_path, capsys):
    """What other tools write (a plain list of float64) and what a set given by ground-truth lists
    saves (NaN coordinates in every row) are allowed; the index is cached once the checks pass."""

    def change(t):
        t = _column(t, "descriptor", pa.array([list(map(float, r)) for r in _matrix(t)], pa.list_(pa.float64())))
        nan = pa.array(np.full(len(t), np.nan))
        return _column(_column(t, "utm_east", nan), "utm_north", nan)

    folder = _database_copy(saved, tmp_path, change)
    capsys.readouterr()
    assert main(["locate", _photo(small_root), "--database", str(folder)]) == 0
    assert "the database holds no coordinates" in capsys.readouterr().out
    assert len(list(folder.glob("index.*.faiss"))) == 1


def test_bench_knn_reads_descriptors_through_the_same_checks(saved, tmp_path):
    """``bench knn --descriptors`` reads its tables with the same reader: a NaN is refused in one line."""
    from vgray.errors import BadInput
    from vgray.saved_descriptors import read_descriptors

    folder = _database_copy(saved, tmp_path, lambda t: _column(t, "descriptor", _fixed(_nan_at(_matrix(t), 2, 3))))
    x, utm = read_descriptors(saved / "queries.parquet")
    assert x.shape == (6, 256) and np.isfinite(utm).all()
    with pytest.raises(
        BadInput, match=r"database.parquet: the descriptor of row 2 \(.*\) holds nan; allowed: finite numbers"
    ):
        read_descriptors(folder / "database.parquet")
