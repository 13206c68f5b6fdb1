"""Property-based tests of the command line's promise (issue 18), with Hypothesis: whatever a user
types or hands over, a command ends with exit 0, or with exit 2 and exactly one stderr line, and
with nothing written on exit 2; never a traceback (an exception out of ``vgray.cli.main``), never a
hang (each example has a deadline).

The commands run in-process (``vgray.cli.main``) so that many examples fit in the suite's time;
``tests/test_input_boundaries.py`` shows the same classes through the installed script. Example
counts come from the Hypothesis profile: ``suite`` (the default, a few dozen per property) or
``slow`` (``VGRAY_HYPOTHESIS=slow``: hundreds, for a longer CI run)."""

from __future__ import annotations

import contextlib
import io
import string
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import vg_name
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vgray.cli import main
from vgray.config import all_keys
from vgray.distributed.spec import TOP_KEYS

KEYS = sorted(all_keys())
SECTIONS = sorted({k.split(".")[0] for k in KEYS if "." in k})
TINY = [
    "--set",
    "model.pretrained=none",
    "--set",
    "data.num_workers=0",
    "--set",
    "data.resize=[32,48]",
    "--set",
    "model.aggregation=gem",
    "--set",
    "test.recall_values=[1]",
]

# YAML values as a user might type them: numbers (NaN and infinities included), words, lists,
# mappings, nulls, and text that is not YAML at all.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["gem", "netvlad", "resnet18conv4", "Flat", "cpu", "auto", "none", "~", ""]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
raw_text = st.text(alphabet=string.printable + "äé€\u2028", max_size=30)


def run(argv):
    """``(exit status, stderr lines)`` of ``vgray ARGV`` in this process; an exception escaping
    ``main`` fails the test with its traceback, which is the bug the properties look for."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([str(a) for a in argv])
    return code, err.getvalue().strip().splitlines()


def holds(code, lines, out: Path) -> None:
    assert code in (0, 2), (code, lines)
    # data.skip_corrupt=true asks to be told of every image it leaves out, one line each
    lines = [line for line in lines if not line.startswith("vgray: skipping unreadable image ")]
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("vgray: error: "), lines
        assert len(lines[0]) <= 2100, len(lines[0])
        assert not out.exists(), sorted(out.rglob("*"))


def as_yaml(value) -> str:
    try:
        return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    except yaml.YAMLError:
        return str(value)


@given(
    overrides=st.lists(
        st.tuples(st.sampled_from(KEYS + SECTIONS) | raw_text, values.map(as_yaml) | raw_text), min_size=1, max_size=3
    )
)
def test_any_set_on_eval_is_a_run_or_one_line(overrides):
    """Random ``--set KEY=VALUE``s (real keys, sections and made-up ones; YAML values of every
    type and text that is not YAML) on an evaluation whose dataset folder is missing: the config is
    accepted and the folder refused, or the config refused; either way one line."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "out"
        argv = ["eval", *TINY, "--set", f"data.root={Path(d) / 'absent'}", "--json", out / "figures.json"]
        for key, value in overrides:
            argv += ["--set", f"{key}={value}"]
        holds(*run(argv), out)


sweep_documents = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["s", "a.b-c", ""]) | raw_text,
        "task": st.sampled_from(["train", "eval"]) | scalars,
        "grid": st.dictionaries(st.sampled_from(KEYS) | raw_text, st.lists(scalars, max_size=3) | scalars, max_size=2),
        "variants": st.lists(st.dictionaries(st.sampled_from(KEYS), scalars, max_size=2), max_size=2) | scalars,
        "repeats": st.integers(-2, 5) | scalars,
        "search": st.fixed_dictionaries(
            {},
            optional={
                "num_samples": st.integers(-1, 4) | scalars,
                "metric": st.sampled_from(["val/R@5", "test/x/R@1"]) | scalars,
                "space": st.dictionaries(st.sampled_from(KEYS), values, max_size=2),
            },
        ),
        "scheduler": values,
        "resources": st.dictionaries(st.sampled_from(["cpu", "gpu", "x"]), scalars, max_size=2),
        "max_failures": scalars,
        "max_concurrent_trials": scalars,
        "keep_models": scalars,
        "base": st.dictionaries(st.sampled_from(SECTIONS) | raw_text, values, max_size=2) | scalars,
        "extra": values,
    },
)


@given(document=sweep_documents, as_text=st.booleans())
def test_any_sweep_document_dry_runs_or_is_refused_in_one_line(document, as_text):
    """Random sweep documents (each top key present or not, typed or not, unknown keys too):
    ``vgray sweep --dry-run`` prints the plan or refuses in one line."""
    document = {k: v for k, v in document.items() if k in TOP_KEYS or k == "extra"}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "study.yaml"
        document.setdefault("storage", str(Path(d) / "store"))
        text = yaml.safe_dump(document) if as_text else as_yaml(document)
        path.write_text(text, encoding="utf-8")
        holds(*run(["sweep", path, "--dry-run"]), Path(d) / "store")


def _jpeg(seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


names = st.one_of(
    st.tuples(st.floats(-1e7, 1e7, allow_nan=False), st.floats(-1e7, 1e7, allow_nan=False)).map(
        lambda en: vg_name(*en)
    ),
    st.text(alphabet=string.ascii_letters + string.digits + "@._-é ", min_size=1, max_size=40).map(
        lambda s: s + ".jpg"
    ),
    st.sampled_from(["@nan@1@.jpg", "@inf@-inf@.jpg", "@1e400@2@.jpg", "@@@.jpg", ".jpg", "@1@2@.png", "@1@2@.JPEG"]),
)
contents = st.one_of(
    st.integers(0, 5).map(_jpeg), st.binary(max_size=300), st.integers(0, 5).map(lambda s: _jpeg(s)[:150]), st.just(b"")
)


@given(
    database=st.lists(st.tuples(names, contents), min_size=0, max_size=3),
    queries=st.lists(st.tuples(names, contents), min_size=0, max_size=3),
    skip_corrupt=st.booleans(),
    decode=st.sampled_from(["pil", "torchvision"]),
)
def test_any_dataset_folder_evaluates_or_is_refused_in_one_line(database, queries, skip_corrupt, decode):
    """Random VG-format folders: file names with and without coordinates (NaN, infinities,
    overflow, odd characters), contents that are JPEGs, truncated JPEGs, random bytes or empty;
    ``vgray eval`` on them ends with recalls or one line."""
    with tempfile.TemporaryDirectory() as d:
        root, out = Path(d) / "set", Path(d) / "out"
        for role, files in (("database", database), ("queries", queries)):
            folder = root / "images" / "test" / role
            folder.mkdir(parents=True)
            for name, data in files:
                (folder / name.replace("/", "_")).write_bytes(data)
        argv = [
            "eval",
            *TINY,
            "--set",
            f"data.root={root}",
            "--set",
            f"data.skip_corrupt={str(skip_corrupt).lower()}",
            "--set",
            f"data.decode={decode}",
            "--json",
            out / "figures.json",
        ]
        holds(*run(argv), out)


# -- checkpoints and descriptor tables -----------------------------------------------------------


def _tensor(shape_seed):
    import torch

    shape, seed = shape_seed
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


tensors = st.tuples(st.lists(st.integers(0, 4), max_size=3), st.integers(0, 9)).map(_tensor)
entry_values = st.recursive(
    scalars | tensors,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3),
    max_leaves=6,
)
checkpoint_keys = st.sampled_from(
    [
        "model",
        "config",
        "optimizer",
        "epoch",
        "best_r5",
        "not_improved",
        "history",
        "rng",
        "mining",
        "state_dict",
        "network",
    ]
) | st.text(max_size=10)


@given(
    entries=st.dictionaries(checkpoint_keys, entry_values, max_size=6),
    config=st.none() | st.dictionaries(st.sampled_from(SECTIONS) | st.text(max_size=6), values, max_size=2),
    top=st.sampled_from(["dict", "list", "tensor"]),
)
def test_any_checkpoint_as_a_model_source_is_used_or_refused_in_one_line(entries, config, top):
    """Random checkpoint files (vgray's entries or others, tensors where numbers belong and the
    reverse, a config of any shape, a list or a bare tensor instead of a mapping), saved with
    ``torch.save``, given as ``model.resume_from``: refused in one line, or accepted and the
    (absent) dataset refused in one line."""
    import torch

    if config is not None:
        entries["config"] = config
    obj = entries if top == "dict" else list(entries.values()) if top == "list" else _tensor(([2, 2], 0))
    with tempfile.TemporaryDirectory() as d:
        path, out = Path(d) / "model.pt", Path(d) / "out"
        torch.save(obj, path)
        argv = [
            "eval",
            *TINY,
            "--set",
            f"data.root={Path(d) / 'absent'}",
            "--set",
            f"model.resume_from={path}",
            "--json",
            out / "figures.json",
        ]
        holds(*run(argv), out)


@pytest.fixture(scope="module")
def saved_descriptors(tmp_path_factory):
    """A descriptor folder of the tiny world (``vgray eval --save-descriptors``) and one query photo."""
    d = tmp_path_factory.mktemp("saved")
    code, lines = run(["eval", *TINY, "--set", "data.root=synthetic:tiny", "--save-descriptors", d / "db"])
    assert code == 0, lines
    from vgray.data.dataset import open_split

    return d / "db", open_split("synthetic:tiny", "test").queries.paths[0]


column_types = st.sampled_from(["string", "float64", "float32", "int64", "list32", "list64", "fixed32", "null"])


def _column(kind: str, n: int, seed: int, nulls: bool, dim: int):
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    if seed % 3 == 0 and n:
        x[rng.integers(n), rng.integers(dim)] = np.nan
    mask = (rng.random(n) < 0.3) if nulls else None
    if kind == "string":
        return pa.array([f"@{v}@.jpg" for v in rng.integers(0, 99, n)], pa.string(), mask=mask)
    if kind in ("float64", "float32", "int64"):
        values = rng.standard_normal(n) * 100 if kind != "int64" else rng.integers(-5, 5, n)
        return pa.array(values, getattr(pa, kind)(), mask=mask)
    if kind == "null":
        return pa.nulls(n)
    if kind == "fixed32":
        return pa.FixedSizeListArray.from_arrays(pa.array(x.ravel(), pa.float32()), dim)
    rows = [list(map(float, r[: dim - (i % 2 if seed % 5 == 0 else 0)])) for i, r in enumerate(x)]
    return pa.array(rows, pa.list_(pa.float32() if kind == "list32" else pa.float64()), mask=mask)


@given(
    schema=st.dictionaries(
        st.sampled_from(["path", "utm_east", "utm_north", "descriptor", "crop", "x"]),
        st.tuples(column_types, st.booleans()),
        max_size=5,
    ),
    rows=st.integers(0, 6),
    seed=st.integers(0, 30),
    dim=st.sampled_from([256, 255, 1]),
)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_any_descriptor_table_locates_or_is_refused_in_one_line(saved_descriptors, schema, rows, seed, dim):
    """Random ``database.parquet`` schemas and values (columns missing or extra, every Arrow type
    where another belongs, nulls, NaN, ragged and wrong-sized descriptors, no rows) beside a valid
    config and model: ``vgray locate`` answers or refuses in one line, and writes no index cache."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    folder, photo = saved_descriptors
    with tempfile.TemporaryDirectory() as d:
        db = Path(d) / "db"
        shutil.copytree(folder, db)
        table = (
            pa.table(
                {
                    name: _column(kind, rows, seed + k, nulls, dim)
                    for k, (name, (kind, nulls)) in enumerate(schema.items())
                }
            )
            if schema
            else pa.table({})
        )
        pq.write_table(table, db / "database.parquet")
        before = sorted(p.name for p in db.iterdir())
        code, lines = run(["locate", photo, "--database", db])
        holds(code, lines, Path(d) / "out")
        if code == 2:
            assert sorted(p.name for p in db.iterdir()) == before
