"""The doors of paths, outputs that are not regular files, and weights (issue 32).

Paths: one check (:func:`vgray.paths.check_path`) for every path a user hands over, from an option,
a YAML key, an environment variable or a file read back; refused with one line naming where it came
from. Outputs: :mod:`vgray.atomic` writes through a character device or a FIFO, follows a link to a
file, refuses the rest; never replaces what is not a regular file. Weights: a tensor of another kind
of number than the network's own, or a key that is not a string, is refused at load. An aggregation
that cannot pool what a backbone gives is refused when the network is built.

Properties (Hypothesis, profiles as in ``tests/test_fuzz_cli.py``): random paths into every path
option of every command (enumerated from the parser, so that a new command inherits it), and random
weights through the checkpoint readers."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import stat
import tempfile
import threading
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vgray import atomic, checkpoint
from vgray.cli import build_parser, main
from vgray.errors import BadInput
from vgray.paths import cache_dir, check_path


def run(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([str(a) for a in argv])
    return code, err.getvalue().strip().splitlines()


def refused(fn, *args, match: str = "") -> str:
    with pytest.raises(BadInput) as info:
        fn(*args)
    text = str(info.value)
    assert "\n" not in text and match in text, text
    return text


def _socket(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    return s


@pytest.fixture
def odd(tmp_path):
    """A folder holding one of each kind: file, folder, FIFO, socket, dangling and looping links."""
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    os.mkfifo(tmp_path / "fifo")
    sock = _socket(tmp_path / "sock")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "link").symlink_to(tmp_path / "file")
    yield tmp_path
    sock.close()


# -- the path door ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,kind,message",
    [
        ("a\x00b", "out_file", "holds a NUL byte"),
        ("\udcff.json", "out_file", "not UTF-8"),
        ("n" * 256, "out_dir", "names of at most"),
        ("a/" * 2100, "out_dir", "takes paths under"),
        ("dangling", "out_file", "which does not exist"),
        ("dangling/x", "out_dir", "which does not exist"),
        ("loop", "out_file", "make a loop"),
        ("loop", "in_file", "make a loop"),
        ("file", "out_dir", "is a file, not a folder"),
        ("file/x.json", "out_file", "is a file, not a folder"),
        ("file", "in_dir", "is a file, not a folder"),
        ("folder", "out_file", "is a folder, not a file"),
        ("folder", "in_file", "is a folder, not a file"),
        ("fifo", "in_file", "is a FIFO, not a regular file"),
        ("fifo", "out_dir", "is a FIFO"),
        ("sock", "out_file", "is a socket"),
        ("", "out_dir", "is empty"),
    ],
)
def test_path_door_refuses_each_class(odd, name, kind, message):
    text = refused(check_path, str(odd / name) if name else "", "--opt", kind, match=message)
    assert text.startswith("--opt")
    assert sorted(p.name for p in odd.iterdir()) == ["dangling", "fifo", "file", "folder", "link", "loop", "sock"]


@pytest.mark.parametrize("place", ["/proc/vgray-out", "/sys/vgray-out", "/proc/self/vgray.json"])
def test_places_that_cannot_be_written(place):
    """Refused by trying, not by permission bits (which say yes to root)."""
    refused(check_path, place, "--out", "out_dir", match="cannot be written")
    refused(check_path, place, "--json", "out_file", match="cannot be written")


def test_what_passes(odd):
    assert check_path(odd / "file", "--json", "out_file") == odd / "file"
    assert check_path(odd / "link", "--json", "out_file") == odd / "link"
    assert check_path(odd / "fifo", "--json", "out_file") == odd / "fifo"  # written through
    assert check_path("/dev/null", "--json", "out_file") == Path("/dev/null")
    assert check_path(odd / "new" / "deeper", "--out", "out_dir") == odd / "new" / "deeper"
    assert check_path(odd / "absent.yaml", "--config", "in_file") == odd / "absent.yaml"  # its reader says
    assert not (odd / "new").exists()


def test_where_is_named_as_key_or_variable(odd, monkeypatch):
    text = refused(check_path, str(odd / "fifo"), "model.resume_from", "in_file")
    assert text.startswith(f"model.resume_from={odd / 'fifo'} is a FIFO")
    monkeypatch.setenv("VGRAY_CACHE", str(odd / "file"))
    assert refused(cache_dir).startswith(f"VGRAY_CACHE={odd / 'file'} is a file, not a folder")
    monkeypatch.setenv("VGRAY_CACHE", str(odd / "dangling"))
    refused(cache_dir, match="VGRAY_CACHE=")
    monkeypatch.delenv("VGRAY_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(odd / "file"))
    refused(cache_dir, match="XDG_CACHE_HOME=")


def _sweep_file(d: Path, **entries) -> Path:
    import yaml

    body = {"name": "s", "base": {"data": {"root": str(d / "absent")}}, "grid": {"seed": [0]}, **entries}
    path = d / "s.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


@pytest.mark.parametrize(
    "argv,message",
    [
        (lambda d: ["sweep", _sweep_file(d, storage=str(d / "file")), "--dry-run"], "storage"),
        (lambda d: ["sweep", _sweep_file(d), "--storage", str(d / "fifo"), "--dry-run"], "--storage"),
        (lambda d: ["sweep", _sweep_file(d, base=str(d / "fifo")), "--dry-run"], "base"),
        (lambda d: ["sweep", str(d / "folder")], "SWEEP"),
        (lambda d: ["eval", "--config", str(d / "fifo")], "--config"),
        (lambda d: ["eval", "--set", f"model.resume_from={d / 'folder'}"], "model.resume_from="),
        (lambda d: ["eval", "--json", str(d / "dangling")], "--json"),
        (lambda d: ["eval", "--save-descriptors", str(d / "sock")], "--save-descriptors"),
        (lambda d: ["locate", str(d / "file"), "--database", str(d / "file")], "--database"),
        (lambda d: ["locate", str(d / "fifo"), "--database", str(d / "folder")], "PHOTO"),
        (lambda d: ["report", str(d / "loop")], "RESULTS_DIR"),
        (lambda d: ["synth", str(d / "link")], "OUT"),
        (lambda d: ["train", "--out", str(d / "dangling")], "--out"),
    ],
)
def test_paths_from_every_door_end_in_one_line(odd, argv, message):
    args = argv(odd)
    before = _tree(odd)
    code, lines = run(args)
    assert code == 2 and len(lines) == 1 and message in lines[0], lines
    assert _tree(odd) == before


def test_saved_descriptor_folder_read_back_through_the_door(odd):
    from vgray.saved_descriptors import open_database

    (odd / "folder" / "config.yaml").mkdir()
    refused(open_database, odd / "folder", match="config.yaml is a folder, not a file")
    refused(open_database, odd / "file", match="--database")


# -- outputs that are not regular files --------------------------------------------------------


def test_devices_are_written_through_never_replaced(tmp_path):
    atomic.write_text("/dev/null", "x")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    with pytest.raises(OSError) as info:
        atomic.write_text("/dev/full", "x" * 10)
    assert info.value.filename == "/dev/full"
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)
    assert not list(Path("/dev").glob(".full.*.tmp")) and not list(Path("/dev").glob(".null.*.tmp"))


def test_a_fifo_with_a_reader_is_written_through(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    for _ in range(200):  # until the reader has opened its end
        try:
            atomic.write_bytes(fifo, b"figures")
            break
        except BadInput:
            threading.Event().wait(0.01)
    reader.join(10)
    assert got == [b"figures"] and stat.S_ISFIFO(os.stat(fifo).st_mode)
    refused(atomic.write_bytes, fifo, b"x", match="no process reads")  # no reader: refused, not waited on


def test_links_are_followed_sockets_and_dangling_links_refused(odd):
    atomic.write_text(odd / "link", "new")
    assert (odd / "link").is_symlink() and (odd / "file").read_text() == "new"
    refused(atomic.write_text, odd / "dangling", "x", match="which does not exist")
    refused(atomic.write_text, odd / "loop", "x", match="cannot be written")
    refused(atomic.write_text, odd / "sock", "x", match="is a socket")
    refused(atomic.write_text, odd / "folder", "x", match="is a folder")
    with atomic.atomic_path("/dev/null") as tmp:
        tmp.write_bytes(b"through a temporary elsewhere")
    assert not tmp.exists()
    assert sorted(p.name for p in odd.iterdir()) == ["dangling", "fifo", "file", "folder", "link", "loop", "sock"]


def test_disk_full_mid_run_is_one_line_exit_1():
    code, lines = run(
        ["profile", "--json", "/dev/full", "--runs", "1", "--set", "model.pretrained=none"]
        + ["--set", "model.backbone=resnet18conv4", "--set", "model.aggregation=gem", "--set", "data.resize=[32,32]"]
    )
    assert code == 1 and len(lines) == 1 and lines[0].startswith("vgray: error: writing /dev/full: "), lines
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


# -- weights of the right shape but the wrong kind ---------------------------------------------


def _net():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.complex64, torch.bool])
def test_a_float_parameter_given_another_kind_is_refused(dtype):
    net = _net()
    state = net.state_dict()
    state["0.weight"] = torch.zeros(state["0.weight"].shape, dtype=dtype)
    text = refused(checkpoint.load_fitting, net, state, "weights file w.pt does not fit the net", match="0.weight")
    assert str(dtype).removeprefix("torch.") in text and "allowed: floating-point tensors" in text


def test_integer_buffers_stay_integer():
    net = _net()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    assert state["1.num_batches_tracked"].dtype == torch.int64
    checkpoint.load_fitting(net, state, "fits")  # an int buffer given an int: fine
    state["1.weight"] = state["1.weight"].half()  # another float width: fine
    checkpoint.load_fitting(net, state, "fits")


def test_a_bool_buffer_is_read_and_fits_where_the_network_has_one(tmp_path):
    """NetVLAD keeps a bool buffer (its clusters initialised or not): a checkpoint holding it is
    read and loaded; a bool where the network has a float is refused."""
    from vgray.config import ModelConfig
    from vgray.models import build_model

    net = build_model(ModelConfig(backbone="resnet18conv4", aggregation="netvlad", pretrained="none"), False)
    own = net.state_dict()
    flags = [k for k, v in own.items() if v.dtype == torch.bool]
    assert flags, "NetVLAD declares a bool buffer"
    torch.save(own, tmp_path / "netvlad.pt")
    checkpoint.load_fitting(net, checkpoint.read_state_dict(tmp_path / "netvlad.pt"), "fits")
    wrong = dict(own)
    wrong[flags[0]] = torch.zeros(own[flags[0]].shape)
    refused(checkpoint.load_fitting, net, wrong, "w.pt", match=f"{flags[0]} is a float32 tensor")


def test_non_string_keys_are_refused():
    net = _net()
    state = dict(net.state_dict())
    state[3] = torch.zeros(1)
    refused(checkpoint.load_fitting, net, state, "w.pt", match="a key 3 is not a string; allowed: parameter names")
    refused(checkpoint.check_fits, net.state_dict(), state, "w.pt", (), ("x*",), match="a key 3")


def test_readers_refuse_complex_tensors_and_odd_keys(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2, dtype=torch.complex64)}, path)
    refused(checkpoint.read_state_dict, path, match="['w'] is a torch.complex64 tensor")
    torch.save({1: torch.zeros(2)}, path)
    refused(checkpoint.read_state_dict, path)
    ck = {"model": {"w": torch.zeros(2, dtype=torch.complex128)}, "config": {}}
    refused(checkpoint.check_checkpoint, ck, "checkpoint best.pt", False, match="model['w'] is a torch.complex128")


weights = st.dictionaries(
    st.one_of(st.text(max_size=8), st.integers(), st.booleans(), st.tuples(st.integers())),
    st.sampled_from(
        [torch.float32, torch.float16, torch.float64, torch.int64, torch.int8, torch.uint8, torch.bool, torch.complex64]
    ).map(lambda dt: torch.zeros(4, dtype=dt)),
    max_size=4,
)


@given(state=weights, names=st.lists(st.sampled_from(["0.weight", "0.bias", "1.weight", "1.running_mean"]), max_size=4))
def test_any_weights_are_loaded_or_refused_in_one_line(state, names):
    """Random dtypes and key types through the readers and the fit check: a state dict is loaded,
    or refused with one line; never a torch error."""
    net = _net()
    own = net.state_dict()
    state = dict(state)
    for name in names:
        state[name] = torch.zeros(own[name].shape, dtype=next(iter(state.values())).dtype if state else torch.float32)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "w.pt"
        torch.save(state, path)
        try:
            read = checkpoint.read_state_dict(path)
        except BadInput as exc:
            assert "\n" not in str(exc)
            return
    try:
        checkpoint.load_fitting(net, read, "w.pt does not fit", optional=("*",))
    except BadInput as exc:
        assert "\n" not in str(exc)
        return
    for key, value in read.items():  # what was loaded is of the kind the network's own is
        assert checkpoint.weight_kind(value) == checkpoint.weight_kind(own[key])


# -- an aggregation that cannot pool what the backbone gives -----------------------------------


def test_cls_on_a_cnn_is_refused_when_the_network_is_built():
    from vgray.config import ModelConfig
    from vgray.models import build_model

    cfg = ModelConfig(backbone="resnet18conv4", aggregation="cls", pretrained="none")
    text = refused(build_model, cfg, False, match="model.aggregation=cls cannot pool the feature_map")
    assert "fits model.backbone: " in text and "vit" in text
    code, lines = run(["profile", "--set", "model.aggregation=cls", "--set", "model.pretrained=none"])
    assert code == 2 and len(lines) == 1 and "model.aggregation=cls" in lines[0], lines


def test_every_pairing_is_decided_from_declarations():
    """Every aggregation x backbone: refused by :func:`check_pairing` exactly when the backbone's
    declared output is not among the aggregation's inputs or it lacks a fact the aggregation
    needs; a refusal names the backbones the aggregation fits."""
    from vgray.models.network import check_pairing, fitting_backbones
    from vgray.registry import AGGREGATIONS, BACKBONES

    for aggregation in AGGREGATIONS.names():
        fits = fitting_backbones(aggregation)
        assert fits, aggregation
        for backbone in BACKBONES.names():
            if backbone in fits:
                check_pairing(backbone, aggregation)
            else:
                text = refused(check_pairing, backbone, aggregation, match=f"model.aggregation={aggregation}")
                assert fits[0] in text


# -- the property: random paths into every path option of every command ------------------------

# Path options are told by their destination or metavar: a new command naming its path options so
# (out, json, config, ...; DIR, FILE, ...) is covered without a change here.
PATH_DESTS = {"out", "json", "config", "storage", "shards", "sweep", "database", "results"}
PATH_DESTS |= {"save_descriptors", "predictions_dir", "photos", "root"}
PATH_METAVARS = {"DIR", "FILE", "OUT", "ROOT", "PHOTO", "RESULTS_DIR", "PREDICTIONS_DIR"}


def path_options():
    """``(command words, option or None for a positional, dest)`` of every path option."""
    import argparse

    found = []

    def walk(parser, words):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*words, name])
            elif action.nargs != 0 and (action.dest in PATH_DESTS or action.metavar in PATH_METAVARS):
                found.append((tuple(words), action.option_strings[0] if action.option_strings else None, action.dest))

    walk(build_parser(), [])
    return found


OPTIONS = path_options()
ABSENT = "absent-dataset"


def base_argv(words, d: Path):
    """What each command needs besides the path under test, made to end fast (a missing dataset,
    an unknown preset, a dry run)."""
    sets = ["--set", f"data.root={d / ABSENT}", "--set", "model.pretrained=none", "--set", "data.num_workers=0"]
    sweep = _sweep_file(d / "in")
    return {
        ("synth",): {"out": [d / "o"], "_": ["--preset", "nope"]},
        ("profile",): {"_": ["--runs", "0", *sets]},
        ("eval",): {"_": sets},
        ("train",): {"_": sets},
        ("sweep",): {"sweep": [sweep], "_": ["--dry-run"]},
        ("extract",): {"out": ["--out", d / "o"], "_": sets},
        ("locate",): {"photos": [d / "in" / "photo.jpg"], "database": ["--database", d / "in"], "_": []},
        ("report",): {"results": [d / "in"], "_": []},
        ("datasets", "check"): {"root": [d / ABSENT], "_": []},
    }[tuple(words)]


def test_every_command_with_a_path_has_a_base():
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "in").mkdir()
        for words, _, _ in OPTIONS:
            base_argv(words, Path(d))
    assert {w[0] for w, _, _ in OPTIONS} >= {"synth", "eval", "train", "sweep", "extract", "locate", "report"}


KINDS = ["random", "file", "folder", "fifo", "socket", "dangling", "loop", "under_file", "devnull"]


def _make(d: Path, kind: str, raw: bytes):
    parts = [p for p in os.fsdecode(raw).split("/") if p not in ("", ".", "..")]
    name = "/".join(parts) or "x"
    place = d / "p"
    if kind == "random":
        return f"{d}/{name}", None
    if kind == "devnull":
        return "/dev/null", None
    if kind == "file":
        place.write_text("x")
    elif kind == "folder":
        place.mkdir()
    elif kind == "fifo":
        os.mkfifo(place)
    elif kind == "socket":
        return str(place), _socket(place)
    elif kind == "dangling":
        place.symlink_to(d / "nowhere")
    elif kind == "loop":
        place.symlink_to(place)
    elif kind == "under_file":
        place.write_text("x")
        return f"{place}/{name}", None
    return str(place), None


def _tree(d: Path):
    return sorted((str(p), stat.S_IFMT(os.lstat(p).st_mode)) for p in d.rglob("*"))


@given(
    option=st.sampled_from(OPTIONS),
    kind=st.sampled_from(KINDS),
    raw=st.binary(min_size=1, max_size=5000) | st.sampled_from([b"a\x00b", b"\xff\xfe", b"n" * 300, b"ok.json"]),
)
def test_any_path_into_any_path_option(option, kind, raw):
    """Exit 0 or 2; on 2 exactly one stderr line and nothing new in the folder; never a
    non-regular file replaced (the FIFO, socket and /dev/null keep their kind)."""
    words, flag, dest = option
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "in").mkdir()
        value, sock = _make(d, kind, raw)
        base = base_argv(words, d)
        given_value = [value] if flag is None else [flag, value]
        argv = [*words, *given_value]
        for key, extra in base.items():
            if key not in ("_", dest):
                argv += extra
        argv += base["_"]
        before = _tree(d)
        try:
            code, lines = run(argv)
        finally:
            if sock is not None:
                sock.close()
        assert code in (0, 2), (argv, code, lines)
        if code == 2:
            assert len(lines) == 1 and lines[0].startswith("vgray: error: "), lines
            assert _tree(d) == before, argv
        assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
        if kind in ("fifo", "socket"):
            assert stat.S_IFMT(os.lstat(d / "p").st_mode) in (stat.S_IFIFO, stat.S_IFSOCK)


# -- the benchmarks' own options, the other path forms, sizes past memory ----------------------

# (a benchmark's ``--database`` is a count of images, not a path)
BENCH_PATH_DESTS = (PATH_DESTS - {"database"}) | {"dir", "from_json", "figure", "descriptors"}


def bench_path_options():
    """``(benchmark, option)`` of every path option of every ``vgray bench`` (their parsers are
    their own, not ``vgray``'s): a new benchmark's ``--json`` and folders come in here."""
    import importlib

    from vgray.bench import BENCHMARKS

    found = []
    for name, module in BENCHMARKS.items():
        for action in importlib.import_module(module).parser()._actions:
            if action.option_strings and (action.dest in BENCH_PATH_DESTS or action.metavar in PATH_METAVARS):
                found.append((name, action.option_strings[0]))
    return found


def test_every_benchmark_reads_its_paths_through_the_door_before_it_runs(odd):
    """A dangling link in any benchmark's path option: one line naming the option, at once (the
    options are read before anything is measured), nothing written."""
    options = bench_path_options()
    assert {o for _, o in options} >= {"--json", "--dir", "--from-json", "--figure", "--descriptors"}
    assert {n for n, _ in options} >= {"extract", "index", "scale", "knn", "ddp"}
    before = _tree(odd)
    for name, option in options:
        code, lines = run(["bench", name, option, odd / "dangling"])
        assert code == 2 and len(lines) == 1 and f"{option} " in lines[0] and "does not exist" in lines[0], lines
        code, lines = run(["bench", name, option, ""])
        assert code == 2 and len(lines) == 1 and f"{option}=''" in lines[0], lines
    assert _tree(odd) == before


def test_a_data_root_of_any_form_is_spelled_through_the_door():
    """``vgray datasets check ROOT`` takes folders, FOLDER/NAME and IMAGES::LISTS: its spelling
    (lengths, bytes) through the door, whatever form it names."""
    code, lines = run(["datasets", "check", "n" * 300])
    assert code == 2 and len(lines) == 1 and lines[0].startswith("vgray: error: ROOT "), lines
    assert "the file system takes names of at most 255" in lines[0]
    code, lines = run(["datasets", "check", f"{'n' * 300}::lists"])
    assert code == 2 and len(lines) == 1 and "ROOT" in lines[0], lines


@pytest.mark.parametrize(
    "wrapped,entry",
    [({1: torch.zeros(1)}, "a key of the file"), ({"state_dict": {1: torch.zeros(1)}}, "a key of state_dict")],
)
def test_a_weights_file_with_keys_that_are_not_names_is_refused_as_it_is_read(tmp_path, wrapped, entry):
    path = tmp_path / "w.pth"
    torch.save(wrapped, path)
    refused(checkpoint.read_weights_file, path, match=f"weights file {path}: {entry} is an int 1")
    torch.save({"model": {"a": torch.zeros(1, dtype=torch.complex64)}}, path)
    refused(checkpoint.read_weights_file, path, match="model['a'] is a torch.complex64 tensor")


@pytest.mark.parametrize(
    "changes,named",
    [
        ({"fc_output_dim": 2**31 - 1}, "model.fc_output_dim=2147483647"),
        ({"aggregation": "netvlad", "netvlad_clusters": 2**31 - 1}, "model.netvlad_clusters=2147483647"),
    ],
)
def test_a_network_larger_than_memory_is_refused_naming_its_sizes(changes, named):
    """Sizes the number door lets through (a C int) but no machine holds: one line naming the keys
    set away from their defaults, never the allocator's traceback."""
    from vgray.config import ModelConfig
    from vgray.models import build_model

    cfg = ModelConfig(**{"backbone": "resnet18conv4", "aggregation": "gem", "pretrained": "none", **changes})
    text = refused(build_model, cfg, False, match="does not fit in this machine's memory")
    assert named in text and "model.backbone=resnet18conv4" in text and "GiB" in text


def test_a_test_set_is_named_by_its_key_when_refused(tmp_path):
    """A missing ``test.datasets`` folder is named by its own key, before training starts."""
    code, lines = run(
        ["train", "--set", "test.datasets={x: /absent-set}", "--set", "model.pretrained=none", "--out", tmp_path / "o"]
    )
    assert code == 2 and len(lines) == 1 and "test.datasets.x=/absent-set: no such folder" in lines[0], lines
    assert not (tmp_path / "o").exists()


def test_a_sweep_whose_data_root_is_a_file_is_refused_before_ray_starts(tmp_path):
    (tmp_path / "afile").write_text("x")
    sweep = _sweep_file(tmp_path, base={"data": {"root": str(tmp_path / "afile")}}, grid={"model.aggregation": ["gem"]})
    code, lines = run(["sweep", sweep, "--storage", tmp_path / "st"])
    assert code == 2 and len(lines) == 1, lines
    assert f"trial gem-s0: data.root={tmp_path / 'afile'}: not a folder" in lines[0], lines
    assert not (tmp_path / "st").exists()


def test_an_allocators_refusal_is_told_as_memory():
    """torch's and numpy's own refusals (4 PiB, past any address space), and a DataLoader worker
    the kernel killed, are recognised as memory running out; other errors are not."""
    import numpy as np

    from vgray.errors import memory_failure

    with pytest.raises(RuntimeError) as torch_refused:
        torch.empty(2**50)
    assert (memory_failure(torch_refused.value) or "").startswith(" (it tried to allocate 4,194,304.0 GiB)")
    with pytest.raises(MemoryError) as numpy_refused:
        np.empty(2**50)
    assert memory_failure(numpy_refused.value) is not None
    assert "killed" in (memory_failure(RuntimeError("DataLoader worker (pid(s) 12) exited unexpectedly")) or "")
    assert memory_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None


def test_memory_running_out_mid_run_is_one_line_exit_1(monkeypatch):
    """Whatever command runs out of memory ends with exit 1 and one line naming the sizes to lower
    (a command that takes more than the machine has, with torch's real refusal)."""
    from vgray import cli

    def greedy(args):
        torch.empty(2**50)
        return 0

    monkeypatch.setitem(cli.COMMANDS, "eval", greedy)
    code, lines = run(["eval"])
    assert code == 1 and len(lines) == 1, lines
    assert lines[0].startswith("vgray: error: out of memory (it tried to allocate") and "data.resize" in lines[0]
