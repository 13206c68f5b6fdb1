"""Shared fixtures and helpers: a private vgray cache, hand-made VG folders, the synthetic tiny dataset,
local Ray clusters, and the sweep files and result rows of the sweep tests."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings
from PIL import Image

torch.set_num_threads(2)

# Ray's token authentication on for every cluster the tests start and every client they use
# (set before Ray is imported: Ray reads it once). Ray creates ~/.ray/auth_token when missing.
os.environ.setdefault("RAY_AUTH_MODE", "token")

# Every test session gets its own cache (dataset indexes, synthetic datasets), never the user's.
_CACHE = Path(
    os.environ.setdefault("VGRAY_CACHE", str(Path(__file__).resolve().parent.parent / ".pytest_cache" / "vgray"))
)

# Hypothesis's example counts, one profile for every property of the suite: ``suite`` (the default,
# a few dozen examples a property) or ``slow`` (``VGRAY_HYPOTHESIS=slow``: 300, for a longer run).
settings.register_profile(
    "suite", max_examples=25, deadline=20_000, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("slow", max_examples=300, deadline=60_000, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("VGRAY_HYPOTHESIS", "suite"))

TINY = "synthetic:tiny"
# Overrides that make a run tiny: tests never load pretrained weights and use small images.
TINY_SET = ["model.pretrained=none", "data.num_workers=0", "test.batch_size=16"]


# The suite runs on the CPU wherever it runs, a CUDA machine included, except tests marked ``cuda``
# (skipped without CUDA). This process's view of the GPUs is fixed here, before any test hides them
# from the processes it starts.
CUDA = torch.cuda.is_available()


@pytest.fixture(autouse=True)
def _cpu_unless_marked_cuda(request, monkeypatch):
    """``device=auto`` is the CPU in this process (as for a process assigned no GPU:
    :func:`vgray.runtime.set_gpu_assignment`) and in the processes a test starts (a ``vgray``
    command, a sweep driver: CUDA_VISIBLE_DEVICES empty). Tests marked ``cuda`` see the machine."""
    from vgray.runtime import set_gpu_assignment

    if request.node.get_closest_marker("cuda"):
        if not CUDA:
            pytest.skip("needs a CUDA GPU")
        set_gpu_assignment(None)
        yield
        return
    set_gpu_assignment(lambda: [])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    yield
    set_gpu_assignment(None)


@pytest.fixture(autouse=True)
def _no_logging_to_closed_streams():
    """Ray Data attaches stream handlers to the sys.stderr of the moment, which in a test is
    pytest's capture of an earlier test, closed since; a later log line would print logging's
    "--- Logging error ---" traceback into this test's stderr. Drop such handlers first."""
    import logging

    loggers = [logging.getLogger()] + [
        v for v in logging.Logger.manager.loggerDict.values() if isinstance(v, logging.Logger)
    ]
    for logger in loggers:
        for handler in list(logger.handlers):
            if getattr(getattr(handler, "stream", None), "closed", False):
                logger.removeHandler(handler)
    yield


def vg_name(east: float, north: float, note: str = "", pano: str = "") -> str:
    """A file name in the VG format."""
    return f"@{east:.2f}@{north:.2f}@33@T@@@{pano}@@@@@@@{note}@.jpg"


def write_image(path: Path, seed: int, size=(48, 64)) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path, quality=90)
    return path


def make_vg_folder(root: Path, database, queries, split="test", images_level=True, size=(48, 64)) -> Path:
    """A VG-format folder with random images at the given (east, north) positions."""
    top = root / "images" / split if images_level else root / split
    for role, coords in (("database", database), ("queries", queries)):
        for i, (e, n) in enumerate(coords):
            write_image(top / role / vg_name(e, n, pano=f"{role}{i}"), seed=hash((role, i)) % 2**32, size=size)
    return root


@pytest.fixture
def vg_folder(tmp_path):
    """A small hand-made dataset: 12 database images on a line 10 m apart, 4 queries."""
    db = [(500000.0 + 10 * i, 4100000.0) for i in range(12)]
    q = [(500003.0, 4100001.0), (500052.0, 4099998.0), (500110.0, 4100000.0), (501000.0, 4100000.0)]
    return make_vg_folder(tmp_path / "ds", db, q)


@pytest.fixture(scope="session")
def tiny_root() -> Path:
    from vgray.data.synthetic import ensure

    return ensure("tiny")


@pytest.fixture(scope="module")
def small_root(tiny_root, tmp_path_factory) -> Path:
    """The first 21 database and 6 query images of the tiny preset's test split."""
    from vgray.data.dataset import open_split

    split = open_split(tiny_root, "test")
    root = tmp_path_factory.mktemp("small")
    for role, images, n in (("database", split.database, 21), ("queries", split.queries, 6)):
        (root / "images" / "test" / role).mkdir(parents=True)
        for path in images.paths[:n]:
            shutil.copy(path, root / "images" / "test" / role / Path(path).name)
    return root


# -- Ray clusters in this process (one per test module that asks) ------------------------------


def local_ray(num_gpus: int = 0):
    """A local Ray of 2 CPUs declaring ``num_gpus`` GPUs (this machine need not have them), no dashboard,
    in the ``vgray`` namespace; a generator for module fixtures (shut down after the module)."""
    import ray

    ray.init(
        address="local", num_cpus=2, num_gpus=num_gpus, include_dashboard=False, namespace="vgray", log_to_driver=False
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_local(tiny_root):
    """A local Ray of 2 CPUs and no GPU (on a GPU machine too)."""
    yield from local_ray(0)


@pytest.fixture(scope="module")
def two_nodes():
    """Two Ray nodes on this machine (a head of 1 CPU, a worker of 2); the driver joins the head."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False})
    cluster.add_node(num_cpus=2, num_gpus=0)
    try:
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace="vgray", log_to_driver=False)
        yield ray
    finally:
        ray.shutdown()
        cluster.shutdown()


# -- sweeps: a tiny base config, sweep files, result rows, a driver in its own process -----------

SWEEP_BASE = {
    "data": {"root": "synthetic:tiny", "resize": [32, 48], "num_workers": 0},
    "model": {"pretrained": "none", "aggregation": "gem"},
    "train": {
        "queries_per_epoch": 10,
        "cache_refresh_rate": 10,
        "negs_num_per_query": 2,
        "neg_samples_num": 40,
        "epochs": 1,
        "lr": 0.001,
    },
    "test": {"recall_values": [1, 5], "batch_size": 64},
}


def write_sweep(path: Path, base_changes=None, **raw) -> Path:
    """A sweep file over :data:`SWEEP_BASE`; ``base_changes`` maps dotted keys to new base values."""
    import yaml

    base = json.loads(json.dumps(SWEEP_BASE))
    for dotted, value in (base_changes or {}).items():
        section, key = dotted.split(".")
        base[section][key] = value
    path.write_text(yaml.safe_dump({"base": base, "resources": {"cpu": 1}, **raw}))
    return path


def rows(directory: Path):
    """The result rows of the sweep in ``directory`` (its results.parquet), as dicts. The bytes are
    read through one open: a live sweep replaces the file by a rename, and pyarrow's path reader opens
    it twice (footer, then pages), so it could pair one version's footer with the next one's pages."""
    from vgray.results import rows_from_parquet

    return rows_from_parquet((directory / "results.parquet").read_bytes())


def driver_env():
    """The environment of a ``vgray sweep`` run in its own process: it starts its own local Ray."""
    env = {**os.environ}
    env.pop("RAY_ADDRESS", None)
    return env


def wait_for_first_row(directory: Path, driver, log: Path, timeout: float, poll: float = 0.5) -> None:
    """Until the sweep in ``directory`` has a result row; fails with the driver's log if it ends first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (directory / "results.parquet").exists() and len(rows(directory)) >= 1:
            return
        assert driver.poll() is None, log.read_text()[-3000:]
        time.sleep(poll)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """``$TORCH_HOME`` in a temporary folder, and no network: downloads fail as on a machine
    without one, so named weight sources come from files put at their cache path."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url, dst, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "torch"


def eval_refused(root, sets, tmp_path: Path, capsys) -> str:
    """``vgray eval`` on ``root`` with ``sets`` (``key=value`` strings), asking for ``--json`` and
    ``--save-descriptors`` under ``tmp_path/out``: asserts exit 2, one stderr line and nothing
    written; returns the line."""
    from vgray.cli import main

    out = tmp_path / "out"
    code = main(
        [
            "eval",
            "--set",
            f"data.root={root}",
            *[a for s in sets for a in ("--set", s)],
            "--json",
            str(out / "e.json"),
            "--save-descriptors",
            str(out / "desc"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vgray: error: "), err
    assert not out.exists()
    return lines[0]
