"""Shared fixtures: a private vgray cache, hand-made VG folders, and the synthetic tiny dataset."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(2)

# Ray's token authentication on for every cluster the tests start and every client they use
# (set before Ray is imported: Ray reads it once). Ray creates ~/.ray/auth_token when missing.
os.environ.setdefault("RAY_AUTH_MODE", "token")

# Every test session gets its own cache (dataset indexes, synthetic datasets), never the user's.
_CACHE = Path(os.environ.setdefault("VGRAY_CACHE", str(Path(__file__).resolve().parent.parent / ".pytest_cache" / "vgray")))

TINY = "synthetic:tiny"
# Overrides that make a run tiny: tests never load pretrained weights and use small images.
TINY_SET = ["model.pretrained=none", "data.num_workers=0", "test.batch_size=16"]


@pytest.fixture(autouse=True)
def _no_logging_to_closed_streams():
    """Ray Data attaches stream handlers to the sys.stderr of the moment, which in a test is
    pytest's capture of an earlier test, closed since; a later log line would print logging's
    "--- Logging error ---" traceback into this test's stderr. Drop such handlers first."""
    import logging
    loggers = [logging.getLogger()] + [v for v in logging.Logger.manager.loggerDict.values()
                                       if isinstance(v, logging.Logger)]
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
