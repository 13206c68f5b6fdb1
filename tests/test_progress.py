"""Progress bars on the long steps (issue 19): synthetic-world generation, NetVLAD's initialisation,
PCA fitting and faiss index training show a bar on a terminal's stderr, with the look and the rule of
extraction's (:func:`vgray.console.progress_bar`); none when progress is off (as inside a sweep
trial, whose Runtime has ``progress=False``) or when stderr is not a terminal.

The terminal is a real pseudo-terminal: stderr is pointed at its slave end while a step runs and
what arrives at the master end is read back."""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import pty
import struct
import sys
import termios
import threading
import time
import types

import numpy as np
import pytest
from conftest import TINY_SET

from vgray.config import load_config
from vgray.console import progress_bar, progress_step
from vgray.data.dataset import open_split
from vgray.data.synthetic import presets
from vgray.data.synthetic.write import generate
from vgray.evaluate.evaluate import evaluate_split
from vgray.evaluate.extract import initialize_aggregation
from vgray.evaluate.knn import build_index, fill_index
from vgray.evaluate.methods import create_method
from vgray.evaluate.pca import fit_pca
from vgray.models import build_model
from vgray.runtime import Runtime
from vgray.seeding import seed_everything


@contextlib.contextmanager
def terminal_stderr():
    """``sys.stderr`` on a pseudo-terminal while the block runs; yields an object whose ``text``
    is, after the block, everything written to it (drained by a thread, so a long bar never blocks)."""
    master, slave = pty.openpty()
    # A terminal 120 columns wide (a new pseudo-terminal has 0, and tqdm draws within the width).
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    chunks, out = [], types.SimpleNamespace(text="")

    def drain():
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # the slave end closed (EIO on Linux)
                break
            if not data:
                break
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    stream = io.TextIOWrapper(os.fdopen(slave, "wb", buffering=0), write_through=True)
    saved, sys.stderr = sys.stderr, stream
    try:
        yield out
    finally:
        sys.stderr = saved
        stream.close()  # the reader reads what is left, then gets EIO
        reader.join(timeout=5)
        os.close(master)
        out.text = b"".join(chunks).decode("utf-8", "replace")


def test_a_step_shows_its_name_and_time_on_a_terminal_only():
    with terminal_stderr() as out:
        with progress_step("clustering things", enabled=True):
            time.sleep(0.6)  # long enough for the timer thread to redraw once
        with progress_bar(5, "counting", "img", enabled=True) as bar:
            bar.update(5)
    text = out.text
    assert text.count("clustering things: running 00:0") >= 2  # drawn, then redrawn by the timer
    assert "counting" in text and "img" in text
    with terminal_stderr() as out:  # progress off: nothing, even on a terminal
        with progress_step("clustering things", enabled=False):
            pass
        with progress_bar(5, "counting", "img", enabled=False) as bar:
            bar.update(5)
    assert out.text == ""


def test_no_bar_when_stderr_is_not_a_terminal(capfd):
    with progress_step("clustering things", enabled=True):
        pass
    with progress_bar(5, "counting", "img", enabled=True) as bar:
        bar.update(5)
    assert capfd.readouterr().err == ""


@pytest.fixture(scope="module")
def mini_preset():
    """A synthetic world smaller than tiny (one block per split, 24 x 32 pixels): seconds to render."""
    spec = presets.SplitSpec(1, 1, 4)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(presets.PRESETS, "mini", presets.Preset("mini", 24, 32, train=spec, val=spec, test=spec))
        yield "mini"


@pytest.fixture(scope="module")
def mini_root(mini_preset, tmp_path_factory):
    return generate(tmp_path_factory.mktemp("mini") / "world", preset=mini_preset)


def test_synthetic_generation_shows_a_bar_over_the_images(tmp_path, mini_preset):
    with terminal_stderr() as out:
        generate(tmp_path / "world", preset=mini_preset, progress=True)
    text = out.text
    total = sum(
        len(open_split(tmp_path / "world", split).database) + len(open_split(tmp_path / "world", split).queries)
        for split in ("train", "val", "test")
    )
    assert "synthetic mini:" in text and f"/{total} [" in text and "img/s" in text  # a bar over every image
    assert f"synthetic mini: wrote {tmp_path / 'world'}" in text  # the bar is erased: one line says what it did
    with terminal_stderr() as out:
        generate(tmp_path / "quiet", preset=mini_preset, progress=False)
    assert out.text == ""


def mini_cfg(root, *extra):
    return load_config(overrides=[f"data.root={root}", *TINY_SET, "data.resize=[32,48]", "test.split=val", *extra])


def seeded_model(cfg):
    seed_everything(0)
    return build_model(cfg.model, image_size=cfg.data.image_size)


@pytest.mark.parametrize("progress", [True, False])
def test_netvlad_initialisation_shows_the_images_and_the_kmeans(mini_root, progress):
    cfg = mini_cfg(mini_root, "model.aggregation=netvlad", "model.netvlad_clusters=4")
    model = seeded_model(cfg)
    method = create_method(cfg, model.mean, model.std)
    paths = open_split(mini_root, "val").database.paths[:16]
    with terminal_stderr() as out:
        initialize_aggregation(
            model, paths, method.database_transform, Runtime.from_config(cfg, progress=progress), seed=0
        )
    assert not model.needs_init()
    text = out.text
    if progress:
        assert "netvlad init" in text and "img" in text  # the bar over the images sampled
        assert "netvlad init: k-means of" in text and "local features: running" in text
    else:  # a sweep trial's Runtime
        assert text == ""


def test_pca_fit_shows_a_step():
    x = np.random.default_rng(0).standard_normal((300, 16)).astype(np.float32)
    with terminal_stderr() as out:
        fit_pca(x, 4, progress=True)
        fit_pca(x, 4)  # off by default
    text = out.text
    assert text.count("pca: fitting 300 x 16 descriptors -> 4: running") == 1


def test_index_training_is_a_step_and_adding_a_bar():
    xb = np.random.default_rng(0).standard_normal((600, 16)).astype(np.float32)
    with terminal_stderr() as out:
        fill_index(build_index("IVF8,Flat", 16), xb, name="index 'IVF8,Flat'", progress=True)
    text = out.text
    assert "index 'IVF8,Flat': training on 600 descriptors: running" in text
    assert "index 'IVF8,Flat': adding" in text and "vec" in text
    with terminal_stderr() as out:
        index = build_index("IVF8,Flat", 16)
        fill_index(index, xb, progress=False)
    assert out.text == "" and index.ntotal == 600


@pytest.mark.parametrize("progress", [True, False])
def test_evaluation_with_pca_and_ivf_shows_each_step_unless_quiet(mini_root, progress):
    """One evaluation through PCA and an IVF index: with the command's progress on, a bar for every
    step; with a sweep trial's Runtime (``progress=False``), nothing at all."""
    cfg = mini_cfg(mini_root, "model.aggregation=gem", "model.pca_dim=16", "test.knn=IVF4,Flat")
    model = seeded_model(cfg)
    split = open_split(mini_root, "val")
    with terminal_stderr() as out:
        figures = evaluate_split(model, split, cfg, rt=Runtime.from_config(cfg, progress=progress), progress=progress)
    assert figures["R@1"] >= 0
    text = out.text
    if progress:
        for step in (
            "pca: fitting",
            "queries",
            "database",
            "test.knn='IVF4,Flat': training on",
            "test.knn='IVF4,Flat': adding",
        ):
            assert step in text, step
    else:
        assert text == ""
