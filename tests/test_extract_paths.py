"""Extraction paths: JPEG bytes decoded in batches on the device (``data.decode=torchvision``; here
the device is the CPU, the same code as nvjpeg on a GPU) against the PIL path, and ``test.compile``.

Tolerance: on the CPU both paths decode with the same libjpeg-turbo (identical pixels); the uint8
antialiased resize on tensors differs from PIL's by at most one grey level in a pixel (rounding), a
perturbation of 1/255 of the input range. Descriptors must then agree to cosine > 0.999 each (on a
GPU nvjpeg's IDCT adds a few grey levels more, still far inside that) and give the same top-1
database image for every query; a wrong channel order, mean or std would move them much further.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import TINY_SET, write_image
from PIL import Image

from vgray.cli import main
from vgray.config import load_config
from vgray.data.dataset import open_split
from vgray.data.images import device_transform
from vgray.data.transforms import test_transform as resize_transform
from vgray.errors import BadInput
from vgray.evaluate.extract import extract_descriptors
from vgray.evaluate.methods import TEST_METHODS
from vgray.models import build_model
from vgray.runtime import Runtime


def _setup(*extra, size=(32, 48)):
    cfg = load_config(overrides=[*TINY_SET, "model.aggregation=gem", f"data.resize=[{size[0]},{size[1]}]", *extra])
    torch.manual_seed(0)
    model = build_model(cfg.model, image_size=cfg.data.image_size)
    rt = Runtime.from_config(cfg, progress=False)
    return cfg, model, rt, resize_transform(cfg.data.image_size, model.mean, model.std)


def _cosine(a, b):
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_torchvision_decode_matches_pil_on_tiny():
    cfg, model, rt, transform = _setup()
    pil, tv = dataclasses.replace(rt, decode="pil"), dataclasses.replace(rt, decode="torchvision")
    # Which transforms the device path serves: the hard resize only, and auto means PIL on the CPU.
    assert device_transform(tv, transform) is transform and device_transform(pil, transform) is None
    assert rt.decode == "auto" and device_transform(rt, transform) is None
    five = TEST_METHODS.create("five_crops", cfg.data.image_size, model.mean, model.std)
    assert all(device_transform(tv, t) is None for t in five.query_transforms)

    split = open_split(cfg.data.root, "test")
    db, q = split.database.paths[:48], split.queries.paths[:12]
    out = {}
    for name, r in (("pil", pil), ("torchvision", tv)):
        xdb, vdb = extract_descriptors(model, db, transform, r, model.features_dim)
        xq, vq = extract_descriptors(model, q, transform, r, model.features_dim)
        assert vdb.all() and vq.all()
        out[name] = xdb, xq
    (pdb, pq), (tdb, tq) = out["pil"], out["torchvision"]
    assert _cosine(pdb, tdb).min() > 0.999 and _cosine(pq, tq).min() > 0.999
    top1 = {name: np.argmin(((xq[:, None] - xdb[None]) ** 2).sum(-1), 1) for name, (xdb, xq) in out.items()}
    np.testing.assert_array_equal(top1["pil"], top1["torchvision"])


@pytest.fixture
def mixed_files(tmp_path):
    """A good JPEG, a PNG, and three bad files: a garbage 'JPEG', one cut in half (no end marker,
    decoded by PIL in the worker) and one whole-looking (start and end markers) with a broken
    middle, which reaches the device decoder and falls back to PIL there."""
    good = write_image(tmp_path / "good.jpg", 1)
    png = tmp_path / "pic.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(png)
    data = write_image(tmp_path / "whole.jpg", 3).read_bytes()
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"\xff\xd8 not really a jpeg")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(data[:20] + bytes(200) + b"\xff\xd9")
    return [str(good), str(png)], [str(garbage), str(truncated), str(broken)]


def test_png_and_corrupt_files_as_on_the_pil_path(mixed_files, capsys):
    cfg, model, rt, transform = _setup()
    good, bad = mixed_files
    runtimes = {d: dataclasses.replace(rt, decode=d) for d in ("pil", "torchvision")}
    for path in bad:  # stops naming the file, with the very message of the PIL path
        messages = {}
        for d, r in runtimes.items():
            with pytest.raises(BadInput) as exc:
                extract_descriptors(model, [*good, path], transform, r, model.features_dim)
            messages[d] = str(exc.value)
        assert path in messages["pil"] and "data.skip_corrupt" in messages["pil"]
        assert messages["torchvision"] == messages["pil"]
    got = {}
    for d, r in runtimes.items():  # skip_corrupt: the bad ones left out and reported, PNG and JPEG kept
        x, valid = extract_descriptors(
            model, [*good, *bad], transform, dataclasses.replace(r, skip_corrupt=True), model.features_dim
        )
        assert valid.tolist() == [True, True, False, False, False]
        err = capsys.readouterr().err
        assert all(f"skipping unreadable image {p}" in err for p in bad)
        got[d] = x[valid]
    assert _cosine(got["pil"], got["torchvision"]).min() > 0.999


def test_bad_decode_and_compile_values_are_refused(capsys):
    with pytest.raises(BadInput, match=r"data.decode='nvjpeg' is not allowed; choose one of: auto, pil, torchvision"):
        load_config(overrides=["data.decode=nvjpeg"])
    with pytest.raises(BadInput, match=r"test.compile='sometimes' must be true or false"):
        load_config(overrides=["test.compile=sometimes"])
    assert main(["eval", "--set", "data.decode=gpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "data.decode='gpu'" in err


def test_compiled_extraction_equals_eager(tmp_path):
    """``test.compile``: inductor on the smallest registered backbone at 32x32 (about 20 s with an
    empty inductor cache on two busy cores; ResNet-18 conv4 took 100 s); same descriptors as eager,
    and a second extraction with the same model object does not compile again. A short last batch
    is padded to one shape."""
    cfg, model, rt, transform = _setup("model.backbone=alexnet", "test.batch_size=4", size=(32, 32))
    paths = [str(write_image(tmp_path / f"{i}.jpg", i)) for i in range(6)]  # batches of 4 and 2
    eager, _ = extract_descriptors(model, paths, transform, rt, model.features_dim)
    crt = dataclasses.replace(rt, compile=True)
    from torch._dynamo.utils import counters

    counters.clear()
    first, _ = extract_descriptors(model, paths, transform, crt, model.features_dim)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1, dict(counters["stats"])
    again, _ = extract_descriptors(model, paths, transform, crt, model.features_dim)
    # cached with the model: no second compile (dynamo's own counters, not a timing)
    assert counters["stats"]["unique_graphs"] == graphs and not counters["recompiles"], dict(counters["stats"])
    assert crt.prepare(model) is crt.prepare(model)
    np.testing.assert_allclose(first, eager, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(first, again)
    assert "_vgray_compiled" not in "".join(model.state_dict())
