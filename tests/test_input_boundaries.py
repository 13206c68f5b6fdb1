"""Bad input at the readers' boundaries (issue 18): YAML text that is not UTF-8, aliases that
expand without bound, keys given twice, NaN and infinity where a number is checked, a section set to
a scalar, sweep bounds, dataset walks, output paths, and a sweep whose datasets are not on this machine. Each case
must end with exit 2, exactly one stderr line naming the culprit, no traceback, within a bounded
time, with nothing written and no Ray started; every case runs the installed ``vgray`` script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

VGRAY = Path(sys.executable).parent / "vgray"
TINY = {
    "data": {"root": "synthetic:tiny", "resize": [32, 48], "num_workers": 0},
    "model": {"pretrained": "none", "aggregation": "gem"},
}


def bomb(levels: int = 9, width: int = 9) -> str:
    """A billion-laughs document (about 1 KB) whose aliases stand for width**levels values."""
    lines = [f"l0: &l0 [{', '.join(['x'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def write(path: Path, text) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def sweep_text(store: Path, **raw) -> str:
    """A sweep file over the tiny base storing under ``store``; ``raw`` replaces keys (None: leaves one out)."""
    body = {"name": "s", "base": TINY, "storage": str(store), "grid": {"model.aggregation": ["gem"]}, **raw}
    return yaml.safe_dump({k: v for k, v in body.items() if v is not None})


def sweep_with_base(d: Path, o: Path, base: bytes) -> str:
    write(d / "b.yaml", base)
    return write(d / "sb.yaml", sweep_text(o, base="b.yaml"))


def vg_folder(d: Path, name: str, make) -> str:
    """A VG-format test split under ``d/name`` with one good query, its database made by ``make(folder)``."""
    from conftest import vg_name, write_image

    root = d / name
    write_image(root / "images" / "test" / "queries" / vg_name(1.0, 1.0), 1)
    database = root / "images" / "test" / "database"
    database.mkdir(parents=True)
    write_image(database / vg_name(0.0, 0.0), 2)
    make(database)
    return str(root)


def _loop(db: Path) -> None:
    (db / "day" / "north").mkdir(parents=True)
    (db / "day" / "north" / "again").symlink_to(db / "day")


def _fifo(db: Path) -> None:
    os.mkfifo(db / vg_name_at(5.0))


def _latin1_name(db: Path) -> None:
    (db / os.fsdecode(b"@5.00@5.00@33@T@@@@@@@@@@@caf\xe9@.jpg")).write_bytes(b"\xff\xd8\xff")


def _dangling(db: Path) -> None:
    (db / vg_name_at(6.0)).symlink_to(db / "moved_away.jpg")


def vg_name_at(x: float) -> str:
    from conftest import vg_name

    return vg_name(x, x)


EVAL = ["eval", "--set", "model.pretrained=none", "--set", "data.resize=[32,48]", "--set", "data.num_workers=0"]

CASES = {
    # 1. not UTF-8: a config, a sweep file, the config file a sweep's base names, a run's config.yaml
    "config latin-1": (
        lambda d, o: ["eval", "--config", write(d / "c.yaml", "model:\n  backbone: r\xe9snet\n".encode("latin-1"))],
        "not UTF-8 text",
    ),
    "config UTF-16": (
        lambda d, o: ["eval", "--config", write(d / "c16.yaml", "data: {root: x}\n".encode("utf-16"))],
        "not UTF-8 text",
    ),
    "sweep latin-1": (
        lambda d, o: ["sweep", write(d / "s.yaml", sweep_text(o).encode() + b"# caf\xe9\n")],
        "not UTF-8 text",
    ),
    "sweep base file latin-1": (
        lambda d, o: ["sweep", sweep_with_base(d, o, b"model: {backbone: \xff}\n")],
        "not UTF-8 text",
    ),
    "run config latin-1": (
        lambda d, o: [
            "train",
            "--out",
            str(Path(write(d / "run" / "config.yaml", b"\xfe\xfemodel: {}\n")).parent),
            "--resume",
        ],
        "not UTF-8 text",
    ),
    # 2. aliases that expand without bound: in a config, a sweep file, a --set value
    "config alias bomb": (
        lambda d, o: ["eval", "--config", write(d / "bomb.yaml", bomb() + "model: {backbone: *l8}\n")],
        "expand to more than",
    ),
    "sweep alias bomb": (
        lambda d, o: ["sweep", write(d / "sbomb.yaml", bomb() + sweep_text(o))],
        "expand to more than",
    ),
    "--set alias bomb": (
        lambda d, o: ["eval", "--set", "test.recall_values=" + "{" + bomb(7, 6).replace("\n", ", ") + "}"],
        "expand to more than",
    ),
    # keys given twice are not dropped silently
    "config duplicate key": (
        lambda d, o: ["eval", "--config", write(d / "dup.yaml", "test:\n  knn: Flat\n  knn: HNSW32\n")],
        "given twice",
    ),
    "sweep duplicate grid key": (
        lambda d, o: ["sweep", write(d / "dupgrid.yaml", sweep_text(o) + "grid: {}\n")],
        "given twice",
    ),
    # 3. NaN and infinity where a number is checked
    "nan threshold": (lambda d, o: ["eval", "--set", "test.positive_dist_threshold=.nan"], "must be a finite number"),
    "inf lr": (lambda d, o: ["train", "--out", str(o / "run"), "--set", "train.lr=.inf"], "must be a finite number"),
    "-inf memory budget": (lambda d, o: ["eval", "--set", "test.memory_budget_mb=-.inf"], "must be a finite number"),
    "nan for an optional number": (
        lambda d, o: ["train", "--out", str(o / "run"), "--set", "train.place_heading_deg=.NaN"],
        "must be a finite number",
    ),
    "sweep resources nan": (
        lambda d, o: ["sweep", write(d / "rnan.yaml", sweep_text(o, resources={"cpu": float("nan")}))],
        "resources.cpu=nan must be a finite number",
    ),
    "sweep search bound inf": (
        lambda d, o: [
            "sweep",
            write(
                d / "sinf.yaml",
                sweep_text(
                    o, grid=None, search={"space": {"train.lr": {"type": "float", "low": 1e-5, "high": float("inf")}}}
                ),
            ),
        ],
        "must be a finite number",
    ),
    # 4. a section set to a scalar
    "--set section to int": (lambda d, o: ["eval", "--set", "model=1"], "model=1 is a section"),
    "--set section to list": (lambda d, o: ["eval", "--set", "test=[1, 2]"], "test=[1, 2] is a section"),
    "config section scalar": (
        lambda d, o: ["eval", "--config", write(d / "scalar.yaml", "data: synthetic:tiny\n")],
        "must be a mapping",
    ),
    # 6. dataset walks: a link back up the tree, a FIFO named like an image (open() would block for ever),
    # a name that is not UTF-8, a link to nothing
    "walk symlink loop": (lambda d, o: [*EVAL, "--set", f"data.root={vg_folder(d, 'loop', _loop)}"], "a loop"),
    "walk fifo": (lambda d, o: [*EVAL, "--set", f"data.root={vg_folder(d, 'fifo', _fifo)}"], "is not a regular file"),
    "walk latin-1 name": (
        lambda d, o: [*EVAL, "--set", f"data.root={vg_folder(d, 'latin', _latin1_name)}"],
        "is not valid UTF-8",
    ),
    "walk dangling link": (
        lambda d, o: [*EVAL, "--set", f"data.root={vg_folder(d, 'dangling', _dangling)}"],
        "is a link to nothing",
    ),
    # 9. output paths that are files, lie under a file, or are folders where a file belongs: refused
    # before the command runs (not after an hour of evaluation)
    "eval --json a folder": (lambda d, o: [*EVAL, "--json", str(d)], "--json"),
    "eval --save-descriptors a file": (
        lambda d, o: [*EVAL, "--save-descriptors", write(d / "f", "x")],
        "is a file, not a folder",
    ),
    "eval --predictions-dir under a file": (
        lambda d, o: [*EVAL, "--save-predictions", "2", "--predictions-dir", write(d / "f", "x") + "/p"],
        "is a file, not a folder",
    ),
    "train --out a file": (
        lambda d, o: ["train", "--out", write(d / "run", "x"), "--set", "model.pretrained=none"],
        "is a file, not a folder",
    ),
    "report --out under a file": (
        lambda d, o: ["report", str(d), "--out", write(d / "f", "x") + "/r"],
        "is a file, not a folder",
    ),
    "extract --out under a file": (
        lambda d, o: ["extract", "--out", write(d / "f", "x") + "/e", "--set", "model.pretrained=none"],
        "is a file, not a folder",
    ),
    "profile --json under a file": (
        lambda d, o: ["profile", "--json", write(d / "f", "x") + "/p.json", "--set", "model.pretrained=none"],
        "is a file, not a folder",
    ),
    # 10. bounds and emptiness that used to hang or fall back silently
    "repeats huge": (
        lambda d, o: ["sweep", write(d / "rep.yaml", sweep_text(o, repeats=10**8)), "--dry-run"],
        "repeats=100000000 must lie in [1, 1000]",
    ),
    "grid too large": (
        lambda d, o: [
            "sweep",
            write(d / "big.yaml", sweep_text(o, repeats=1000, grid={"train.lr": [1e-5 * (i + 1) for i in range(200)]})),
            "--dry-run",
        ],
        "a sweep may plan at most",
    ),
    "storage empty": (
        lambda d, o: ["sweep", write(d / "empty.yaml", sweep_text(o, storage=""))],
        "storage='' must name",
    ),
    "sweep dataset missing": (
        lambda d, o: [
            "sweep",
            write(
                d / "nodata.yaml",
                sweep_text(o, base={**TINY, "data": {**TINY["data"], "root": str(d / "no_such_dataset")}}),
            ),
        ],
        "does not exist on this machine",
    ),
}


# Every case runs the installed script in its own process, as a user meets it (no traceback reaches
# a real terminal, no Ray starts). A refused config costs a tenth of a second: the command line
# checks configs and paths before it imports torch.
@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_at_a_boundary_is_one_line_exit_2_and_writes_nothing(case, tmp_path, monkeypatch):
    build, expected = CASES[case]
    d, out = tmp_path / "in", tmp_path / "out"
    d.mkdir()
    argv = build(d, out)
    before = sorted(p.relative_to(d) for p in d.rglob("*"))
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "ray"))  # a started Ray would leave its session here
    proc = subprocess.run([str(VGRAY), *argv], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    code, err = proc.returncode, proc.stderr
    lines = err.strip().splitlines()
    assert code == 2, err[-2000:]
    assert len(lines) == 1 and lines[0].startswith("vgray: error: "), err[-2000:]
    assert expected in lines[0], lines[0]
    assert len(lines[0]) < 600, f"message of {len(lines[0])} characters"
    assert not out.exists(), sorted(out.rglob("*"))
    assert sorted(p.relative_to(d) for p in d.rglob("*")) == before
    assert not (tmp_path / "ray").exists(), "Ray was started"
    assert set(os.listdir(tmp_path)) == {"in"}


# -- 7. library warnings stay off the console ---------------------------------------------------


@pytest.fixture(scope="module")
def bomb_sized(tmp_path_factory):
    """A VG-format test split whose database holds a 96-megapixel JPEG (PIL warns of a
    decompression bomb above 89.5 MP), and one with that image and a truncated query."""
    from conftest import make_vg_folder, vg_name
    from PIL import Image

    root = tmp_path_factory.mktemp("warnings")
    good = make_vg_folder(root / "good", [(0.0, 0.0), (50.0, 0.0)], [(1.0, 1.0), (51.0, 0.0)], size=(48, 64))
    Image.new("RGB", (12000, 8000), (90, 120, 150)).save(good / "images" / "test" / "database" / vg_name(0.5, 0.5))
    bad = make_vg_folder(root / "bad", [(0.0, 0.0)], [(1.0, 1.0)], size=(48, 64))
    query = next((bad / "images" / "test" / "queries").iterdir())
    query.write_bytes(query.read_bytes()[:200])
    for role in ("database", "queries"):  # read before the truncated query: its name sorts first
        big = good / "images" / "test" / "database" / vg_name(0.5, 0.5)
        (bad / "images" / "test" / role / big.name).write_bytes(big.read_bytes())
    return good, bad


def _eval(root: Path, tmp_path: Path):
    env = {**os.environ, "VGRAY_CACHE": str(tmp_path / "cache"), "PYTHONWARNINGS": "default"}
    argv = [
        str(VGRAY),
        "eval",
        "--set",
        f"data.root={root}",
        "--set",
        "data.resize=[32,48]",
        "--set",
        "model.pretrained=none",
        "--set",
        "model.aggregation=gem",
        "--set",
        "data.num_workers=0",
        "--set",
        "test.recall_values=[1]",
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)


def test_a_library_warning_goes_to_the_log_and_one_line_says_so(bomb_sized, tmp_path):
    proc = _eval(bomb_sized[0], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "R@1" in proc.stdout
    assert "Warning" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    log = tmp_path / "cache" / "warnings.log"
    assert lines[-1] == f"vgray: 1 warning from libraries written to {log}", proc.stderr
    assert "DecompressionBombWarning" in log.read_text()


def test_a_warning_before_bad_input_leaves_the_refusal_one_line(bomb_sized, tmp_path):
    proc = _eval(bomb_sized[1], tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and "cannot be read" in lines[0], proc.stderr
    assert "DecompressionBombWarning" in (tmp_path / "cache" / "warnings.log").read_text()
