"""The doors of numbers, empty values and environment variables (issue 32), and the messages that
name the option: one Hypothesis property per door, over every numeric option of every command
(``bench`` commands included) and every numeric config key, enumerated from the parsers and the
config schema so that a new command, option or key inherits them; then the listed examples.

Each example ends with exit 0 or with exit 2 and one stderr line, with nothing written and no
exception out of ``vgray.cli.main``. A value a door accepts is checked by calling the door itself
(its bounds, 64 bits, finite), not by running the command: the properties stay cheap."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import math
import os
import tempfile
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from vgray import values
from vgray.bench import BENCHMARKS
from vgray.cli import build_parser, main
from vgray.config import all_keys, load_config
from vgray.environment import CHECKS, VARIABLES, check_environment
from vgray.errors import BadInput
from vgray.results import RESULTS_FILE, load_rows, rows_to_parquet

# -- what the doors are given: every parser's options, every config key ------------------------------


def _parsers() -> Iterator[Tuple[List[str], argparse.ArgumentParser]]:
    """``(argv prefix, parser)`` of vgray and of each of its (sub)commands, benchmarks included."""

    def walk(prefix: List[str], parser: argparse.ArgumentParser):
        yield prefix, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk([*prefix, name], sub)

    yield from walk([], build_parser())
    for name, module in sorted(BENCHMARKS.items()):
        yield ["bench", name], importlib.import_module(module).parser()


PARSERS = list(_parsers())


def _options(kinds) -> List[Tuple[List[str], str, values.OptionType]]:
    """``(argv prefix, --option, its type)`` of every optional argument whose type= is one of ``kinds``."""
    out = []
    for prefix, parser in PARSERS:
        for action in parser._actions:
            if action.option_strings and isinstance(action.type, values.OptionType) and action.type.__name__ in kinds:
                out.append((prefix, action.option_strings[-1], action.type))
    return out


NUMERIC_OPTIONS = _options({"count", "seed", "amount", "integer"})
TEXT_OPTIONS = _options({"text"})
NUMERIC_KEYS = sorted(
    k for k, f in all_keys().items() if any(t in str(f.type) for t in ("int", "float")) and "str" not in str(f.type)
)
STRING_KEYS = sorted(k for k, f in all_keys().items() if "str" in str(f.type) and "Dict" not in str(f.type))

# Numbers as a user may type them: integers of any size, floats with NaN and the infinities, text.
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=2**62, max_value=2**80) | st.integers(min_value=-(2**80), max_value=-(2**62)),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", " ", "nan", "-inf", "1e400", "1_000", "0x10", "3.0", "1e0", "٣", "2**70"]),
)


def run(argv) -> Tuple[int, List[str]]:
    """``(exit status, stderr lines)`` of ``vgray ARGV`` in this process, in an empty working folder
    that must stay empty; an exception escaping ``main`` fails the test with its traceback."""
    err = io.StringIO()
    with tempfile.TemporaryDirectory() as d, contextlib.chdir(d):
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main([str(a) for a in argv])
        left = sorted(os.listdir(d))
    assert not left, f"vgray {argv} wrote {left}"
    return code, err.getvalue().strip().splitlines()


def refused(code: int, lines: List[str], *names: str) -> None:
    """Exit 2, one line, and the line says each of ``names`` (the option, key or variable)."""
    assert code == 2 and len(lines) == 1, (code, lines)
    assert lines[0].startswith("vgray: error: ") and all(n in lines[0] for n in names), lines


@contextlib.contextmanager
def environment(**changes: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_every_numeric_option_reads_through_the_number_door():
    """No option of any command or benchmark parses a number with plain int or float (which take
    NaN, infinities, 70-bit integers and negative counts): each uses a door of vgray.values."""
    raw = [
        (" ".join(prefix), a.option_strings or a.dest)
        for prefix, parser in PARSERS
        for a in parser._actions
        if a.type in (int, float)
    ]
    assert not raw, raw
    assert len(NUMERIC_OPTIONS) >= 40 and len(TEXT_OPTIONS) >= 30, (len(NUMERIC_OPTIONS), len(TEXT_OPTIONS))
    assert len(NUMERIC_KEYS) >= 60 and "seed" in NUMERIC_KEYS and "data.root" in STRING_KEYS


# -- the properties: one per door -----------------------------------------------------------------


@given(option=st.sampled_from(NUMERIC_OPTIONS), value=numbers)
def test_any_number_into_any_numeric_option_is_read_or_refused_in_one_line(option, value):
    """Integers of any size, NaN, infinities and empty text into every numeric option of every
    command: the door returns an integer of 64 bits (a count of at least its low end) or a finite
    number, or the command ends with exit 2 and one line naming the option, writing nothing."""
    prefix, name, door = option
    text = str(value)
    try:
        read = door(text)
    except argparse.ArgumentTypeError:
        refused(*run([*prefix, f"{name}={text}"]), f"{name}=")
        return
    if door.__name__ == "amount":
        assert isinstance(read, float) and math.isfinite(read) and read >= 0
    else:
        assert isinstance(read, int) and values.INT64_MIN <= read <= values.INT64_MAX
        assert read >= 0 and (door.__name__ != "count" or read <= values.COUNT_MAX)


def _yaml(value) -> str:
    return value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip()


@given(key=st.sampled_from(NUMERIC_KEYS), value=numbers, as_file=st.booleans())
def test_any_number_into_any_numeric_config_key_is_read_or_refused_in_one_line(key, value, as_file):
    """The same numbers into every numeric config key, by ``--set`` or by a YAML file: the config
    holds a 64-bit integer or a finite number there, or the command ends with exit 2 and one line
    naming the key."""
    text = _yaml(value).removesuffix("...").strip()
    try:
        cfg = load_config(overrides=[f"{key}={text}"])
    except BadInput as exc:
        assert "\n" not in str(exc) and key in str(exc), str(exc)
        if as_file:
            with tempfile.TemporaryDirectory() as d:  # the same text, as the --set reads it
                path = Path(d) / "c.yaml"
                *sections, leaf = key.split(".")
                lines = [f"{'  ' * i}{part}:" for i, part in enumerate(sections)]
                lines.append(f"{'  ' * len(sections)}{leaf}: {text if text.strip() else repr(text)}")
                path.write_text("\n".join(lines) + "\n")
                refused(*run(["profile", "--config", path, "--runs", "1"]), leaf)
        else:
            refused(*run(["profile", "--set", f"{key}={text}", "--runs", "1"]), key)
        return
    for x in _flat(cfg.flat()[key]):
        assert not isinstance(x, bool) and isinstance(x, (int, float)), (key, x)
        assert math.isfinite(x) and (not isinstance(x, int) or values.INT64_MIN <= x <= values.INT64_MAX)


def _flat(value):
    if value is None:
        return []
    return [x for v in value for x in _flat(v)] if isinstance(value, list) else [value]


blank = st.text(alphabet=" \t", max_size=3)


@given(option=st.sampled_from(TEXT_OPTIONS), value=blank)
def test_an_empty_value_in_any_text_option_is_refused_in_one_line(option, value):
    """The empty-value rule: an empty (or blank) value of any text option of any command (an
    output path, a config file, an address, a name) is refused naming the option, never read as
    "use the default"."""
    prefix, name, _ = option
    refused(*run([*prefix, f"{name}={value}"]), f"{name}=")


@given(key=st.sampled_from(STRING_KEYS), value=blank)
def test_an_empty_value_in_any_string_config_key_is_refused_in_one_line(key, value):
    with pytest.raises(BadInput, match="must name a value") as exc:
        load_config(overrides=[(key, value)])
    assert key in str(exc.value)


env_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30)


@given(
    name=st.sampled_from(sorted(CHECKS)),
    value=env_text | st.sampled_from(["", "/", "/etc/passwd", "/proc/1/x", "auto", "local", "h:0", "h:65535"]),
)
def test_any_value_of_any_checked_variable_starts_or_is_refused_in_one_line(name, value):
    """Any value of each environment variable vgray checks at start-up: ``vgray datasets list``
    runs (exit 0) or ends with exit 2 and one line naming the variable, writing nothing."""
    with tempfile.TemporaryDirectory() as home, environment(**{name: value, "HOME": home}):
        if name == "XDG_CACHE_HOME":
            os.environ.pop("VGRAY_CACHE")  # XDG_CACHE_HOME counts only without VGRAY_CACHE
        try:
            code, lines = run(["datasets", "list", "--json"])
        finally:
            os.environ["VGRAY_CACHE"] = VGRAY_CACHE
        assert code in (0, 2), (code, lines)
        if code == 2:
            refused(code, lines, name)
        assert not os.listdir(home)


VGRAY_CACHE = os.environ["VGRAY_CACHE"]


finite_or_not = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**63), 2**63 - 1))


@given(
    cells=st.lists(
        st.tuples(st.sampled_from(["test/x/R@1", "val/R@5", "gflops", "model.gem_p", "extraction_ms"]), finite_or_not),
        max_size=4,
    )
)
def test_any_number_in_a_results_table_is_read_or_refused_naming_the_column(cells):
    """Numbers read back from a results table: every number of the rows is finite, a NaN in a
    measured column is shown as missing (None), or the table is refused naming the file and column."""
    row = {"config_key": "k", "seed": 0, "status": "ok", "trial_id": "t", **dict(cells)}
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / RESULTS_FILE).write_bytes(rows_to_parquet([row]))
        try:
            rows = load_rows(d)
        except BadInput as exc:
            assert "\n" not in str(exc) and RESULTS_FILE in str(exc) and "column" in str(exc), str(exc)
            return
    for k, v in rows[0].items():
        assert not isinstance(v, float) or math.isfinite(v), (k, v)


# -- the listed examples --------------------------------------------------------------------------


COUNTS = [(p, n) for p, n, t in NUMERIC_OPTIONS if t.__name__ == "count"]


@pytest.mark.parametrize("prefix,name", COUNTS, ids=[f"{' '.join(p)} {n}" for p, n in COUNTS])
def test_zero_and_negative_counts_are_refused_naming_the_option(prefix, name):
    low = next(t for p, n, t in NUMERIC_OPTIONS if p == prefix and n == name)("999")  # a count it takes
    assert low == 999
    for value in ("-1", "0", "99999999999999999999999") if name != "--positive-frames" else ("-1",):
        code, lines = run([*prefix, f"{name}={value}"])
        refused(code, lines, f"{name}={value} ")


@pytest.mark.parametrize(
    "argv,says",
    [
        (["synth", "out", "--seed", "99999999999999999999999"], "--seed=99999999999999999999999 must be at most"),
        (["synth", "out", "--seed", "-1"], "--seed=-1 must be at least 0"),
        (["synth", "out", "--num-cpus", "-1"], "--num-cpus=-1 must be at least 1"),
        (["sweep", "s.yaml", "--num-cpus=-1"], "--num-cpus=-1 must be at least 1"),
        (["train", "--worker-cpus", "nan"], "--worker-cpus='nan' must be a finite number"),
        (["train", "--worker-cpus", "0"], "--worker-cpus=0.0 must be positive"),
        (["train", "--worker-gpus=-1"], "--worker-gpus=-1.0 must be at least 0"),
        (["train", "--worker-gpus", "1e400"], "--worker-gpus='1e400' must be a finite number"),
        (["extract", "--out", "o", "--batch-size", "2.5"], "--batch-size='2.5' must be an integer"),
        (["bench", "search", "--seed", "99999999999999999999"], "--seed=99999999999999999999 must be at most"),
        (["bench", "knn", "--dim", "0"], "--dim=0 must be at least 1"),
        (["bench", "scale", "--store-mb", "50"], "--store-mb=50 must be at least 100"),
        (["eval", "--set", "train.batch_size=99999999999999999999999"], "train.batch_size=99999999999999999999999"),
        (["eval", "--set", "model.netvlad_clusters=9999999999"], "must be at most 2147483647"),
        (["eval", "--set", "test.recall_values=[1, 99999999999999999999]"], "does not fit in 64 bits"),
        (["eval", "--set", f"train.lr=1{'0' * 400}"], "train.lr=1000"),
        (["eval", "--set", "train.lr=.nan"], "train.lr=nan must be a finite number"),
        (["eval", "--set", "seed=1099511627776"], "seed=1099511627776 must lie in [0, 4294967295]"),
        (["eval", "--set", "seed=18446744073709551616"], "seed=18446744073709551616 does not fit in 64 bits"),
        (["eval", "--set", "data.resize=[100000000, 100000000]"], "data.resize=[100000000, 100000000] must lie in"),
    ],
)
def test_numbers_past_what_the_code_holds_are_refused_in_one_line(argv, says):
    refused(*run(argv), says)


@pytest.mark.parametrize(
    "argv,says",
    [
        (["train", "--out", ""], "--out='' must name"),
        (["eval", "--json", ""], "--json='' must name"),
        (["eval", "--config", ""], "--config='' must name"),
        (["eval", "--set", "data.root="], "data.root='' must name"),
        (["eval", "--set", "data.root=  "], "data.root='' must name"),
        (["eval", "--set", "test.datasets={a: ''}"], "test.datasets.a='' must name"),
        (["sweep", "s.yaml", "--storage", ""], "--storage='' must name"),
        (["synth", ""], "out='' must name"),
        (["locate", "", "--database", "d"], "PHOTO='' must name"),
        (["bench", ""], "name='' must name"),
        (["bench", "knn", "--json="], "--json='' must name"),
    ],
)
def test_empty_values_are_refused_never_read_as_the_default(argv, says):
    refused(*run(argv), says)


def test_empty_files_are_refused_never_read_as_the_defaults(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here\n")
    nothing = tmp_path / "null.yaml"
    nothing.write_text("~\n")
    refused(*run(["eval", "--config", empty]), f"config file {empty} is empty")
    refused(*run(["eval", "--config", nothing]), f"config file {nothing} is empty")
    refused(*run(["sweep", empty, "--dry-run"]), f"sweep file {empty} is empty")
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"name: s\ntask: eval\nstorage: {tmp_path / 'store'}\nbase: {empty}\n")
    refused(*run(["sweep", sweep, "--dry-run"]), f"config file {empty} is empty")


@pytest.mark.parametrize(
    "grid,says",
    [
        ("{model.gem_p: [3, 3.0]}", "model.gem_p: 3 and 3.0"),
        ("{train.lr: [1e0, 1]}", "train.lr: '1e0' and 1"),
        ("{model.aggregation: [gem, gem]}", "are the same config"),
        ("{train.margin: [0.1, 0.10], model.l2: [none]}", "give the same values twice"),
    ],
)
def test_a_grid_whose_values_make_equal_trials_is_refused(tmp_path, grid, says):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"name: s\ntask: eval\nstorage: {tmp_path / 'store'}\ngrid: {grid}\n")
    code, lines = run(["sweep", sweep, "--dry-run"])
    refused(code, lines, says)
    assert "give each value once" in lines[0]
    assert not (tmp_path / "store").exists()


def test_a_grid_of_distinct_values_and_repeats_is_not_refused(tmp_path):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(
        f"name: s\ntask: eval\nstorage: {tmp_path / 'store'}\nrepeats: 2\ngrid: {{model.gem_p: [3, 3.5]}}\n"
    )
    assert run(["sweep", sweep, "--dry-run"])[0] == 0


def _results(folder: Path, **cells) -> Path:
    folder.mkdir()
    rows = [
        {"config_key": "a", "seed": 0, "status": "ok", "trial_id": "t0", "model.gem_p": 3.0, "test/x/R@1": 50.0},
        {"config_key": "b", "seed": 0, "status": "ok", "trial_id": "t1", "model.gem_p": 4.0, "test/x/R@1": 60.0},
    ]
    rows[1].update(cells)
    (folder / RESULTS_FILE).write_bytes(rows_to_parquet(rows))
    return folder


@pytest.mark.parametrize(
    "cells,says",
    [
        ({"test/x/R@1": math.inf}, "column 'test/x/R@1' holds inf in the row of trial t1"),
        ({"gflops": -math.inf}, "column 'gflops' holds -inf"),
        ({"model.gem_p": math.nan}, "column 'model.gem_p' holds nan"),
    ],
)
def test_infinities_and_nan_outside_measured_columns_in_a_results_table_are_refused(tmp_path, cells, says):
    results = _results(tmp_path / "sweep", **cells)
    refused(*run(["report", results, "--out", tmp_path / "report"]), says)
    assert not (tmp_path / "report").exists()


def test_nan_in_a_measured_column_is_shown_as_missing(tmp_path):
    results = _results(tmp_path / "sweep", **{"test/x/R@1": math.nan})
    rows = load_rows(results)
    assert rows[1]["test/x/R@1"] is None and rows[0]["test/x/R@1"] == 50.0


@pytest.mark.parametrize(
    "name,value,says",
    [
        ("VGRAY_CACHE", "", "VGRAY_CACHE is set but empty"),
        ("VGRAY_CACHE", "/etc/passwd", "/etc/passwd is a file"),
        ("RAY_ADDRESS", "not an address", "RAY_ADDRESS='not an address' is not a Ray cluster address"),
        ("RAY_ADDRESS", "10.0.0.1:99999", "RAY_ADDRESS='10.0.0.1:99999'"),
        ("XDG_CACHE_HOME", "relative/cache", "XDG_CACHE_HOME='relative/cache' must be an absolute path"),
    ],
)
def test_bad_environment_variables_are_refused_at_start_up(name, value, says):
    with environment(**{name: value}):
        if name == "XDG_CACHE_HOME":
            os.environ.pop("VGRAY_CACHE")
        try:
            refused(*run(["datasets", "list"]), name, says)
        finally:
            os.environ["VGRAY_CACHE"] = VGRAY_CACHE


def test_variables_owned_by_others_keep_their_meaning_and_every_checked_one_is_listed(tmp_path):
    for value in ("", "auto", "local", "127.0.0.1:6379", "ray://head:10001", "[::1]:6379"):
        check_environment({"RAY_ADDRESS": value})
    check_environment({"XDG_CACHE_HOME": ""})  # empty: unset, as the XDG specification says
    check_environment({"VGRAY_CACHE": str(tmp_path / "new" / "cache"), "XDG_CACHE_HOME": "relative"})
    assert not (tmp_path / "new").exists()
    assert set(CHECKS) <= set(VARIABLES) and "VGRAY_HYPOTHESIS" in VARIABLES


def test_the_number_door_itself():
    assert values.read_integer(2**63 - 1, "k") == 2**63 - 1
    for bad, says in [
        (2**63, "does not fit in 64 bits"),
        (True, "must be an integer"),
        (3.0, "must be an integer"),
    ]:
        with pytest.raises(BadInput, match=says):
            values.read_integer(bad, "k")
    assert values.read_real(10**308, "k") == 1e308
    for bad in (10**400, math.nan, -math.inf, "1"):
        with pytest.raises(BadInput, match="k="):
            values.read_real(bad, "k")
    with pytest.raises(BadInput, match=r"k=\[0, 1\] must lie in \[1, 5\]"):
        values.check_bounds(0, "k", 1, 5, interval=True, whole=[0, 1])
