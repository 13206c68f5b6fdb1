"""``data.resize_order``: the paper's order (normalise, then resize the float tensor with
antialiasing) against PIL's (resize the image, then normalise), each against a reference written
with torchvision's functional ops on a real JPEG written here, on the worker path and on the device
path (``data.decode=torchvision``, the CPU standing in for nvjpeg), and the caches keyed by it.

Tolerances: on the CPU both paths decode with the same libjpeg-turbo (identical pixels). In the
paper order the device path scales and normalises with the very operations of ``ToTensor`` and
``Normalize`` and then resizes the float batch with the same antialiased kernel, so the two agree
to float rounding (1e-5; measured: equal). In the PIL order the device resizes uint8 tensors
where the worker resizes with PIL: at most one grey level in a pixel (rounding), i.e. 1/(255 *
std) <= 0.0175 after normalising; 0.02 is asked.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import TINY_SET
from PIL import Image, ImageDraw
from torchvision.transforms import functional as TF

from vgray.cli import main
from vgray.config import load_config
from vgray.data.images import read_image
from vgray.data.transforms import ResizeNormalize, query_train_transform, train_database_transform
from vgray.data.transforms import test_transform as resize_transform  # not a pytest test
from vgray.errors import BadInput
from vgray.evaluate.extract import iter_images
from vgray.evaluate.methods import TEST_METHODS
from vgray.runtime import Runtime

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's, as the paper's base_transform
NATIVE, SMALL = (60, 80), (27, 37)  # (H, W); SMALL below the native size, an odd ratio on purpose


def _photo(path, seed: int, size=NATIVE):
    """A JPEG with structure (gradients, shapes, a little noise), as street views have: a resize
    of pure noise would be a poor test of two resizes' differences."""
    h, w = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (h + w) + 60], -1)
    image = Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, w - 8)), int(rng.integers(0, h - 8))
        box = [x0, y0, x0 + int(rng.integers(4, w // 2)), y0 + int(rng.integers(4, h // 2))]
        draw.rectangle(box, fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    image.save(path, quality=92)
    return str(path)


@pytest.fixture
def photo(tmp_path):
    return _photo(tmp_path / "photo.jpg", 0)


def _paper_reference(image, size):
    return TF.resize(TF.normalize(TF.to_tensor(image), MEAN, STD), list(size), antialias=True)


def _pil_reference(image, size):
    return TF.normalize(TF.to_tensor(TF.resize(image, list(size), antialias=True)), MEAN, STD)


def test_each_order_equals_its_torchvision_reference_below_the_native_size(photo):
    image = read_image(photo)
    assert image.size == NATIVE[::-1]
    paper = resize_transform(SMALL, MEAN, STD, "paper")(image)
    pil = resize_transform(SMALL, MEAN, STD, "pil")(image)
    assert paper.shape == pil.shape == (3, *SMALL)
    torch.testing.assert_close(paper, _paper_reference(image, SMALL), rtol=0, atol=1e-6)
    torch.testing.assert_close(pil, _pil_reference(image, SMALL), rtol=0, atol=0)
    # The default is the paper's; the two orders do differ below the native size.
    torch.testing.assert_close(resize_transform(SMALL, MEAN, STD)(image), paper, rtol=0, atol=0)
    assert (paper - pil).abs().max() > 0.01


def test_both_orders_are_the_same_at_the_native_size(photo):
    image = read_image(photo)
    paper = resize_transform(NATIVE, MEAN, STD, "paper")(image)
    pil = resize_transform(NATIVE, MEAN, STD, "pil")(image)
    torch.testing.assert_close(paper, pil, rtol=0, atol=1e-6)
    torch.testing.assert_close(paper, TF.normalize(TF.to_tensor(image), MEAN, STD), rtol=0, atol=1e-6)


def test_training_images_resize_as_pil_images_whichever_the_order(photo):
    """The paper's TripletsDataset resizes positives, negatives and (augmented) queries as PIL
    images (resized_transform); only its mining cache, a BaseDataset, resizes tensors."""
    image = read_image(photo)
    aug = load_config().train.augmentation  # all off: the query transform is the resize alone
    torch.testing.assert_close(
        train_database_transform(SMALL, MEAN, STD)(image), _pil_reference(image, SMALL), rtol=0, atol=0
    )
    torch.testing.assert_close(
        query_train_transform(SMALL, MEAN, STD, aug)(image), _pil_reference(image, SMALL), rtol=0, atol=0
    )


def test_multi_crop_test_methods_follow_the_order(photo):
    """The paper's _test_query_transform crops normalised tensors: five_crops resizes the shorter
    side to min(H, W), then takes torchvision's five crops; central_crop scales to cover (H, W)."""
    image = read_image(photo)
    side = min(SMALL)
    five = {order: TEST_METHODS.create("five_crops", SMALL, MEAN, STD, order=order) for order in ("paper", "pil")}
    full = TF.normalize(TF.to_tensor(image), MEAN, STD)
    paper_crops = TF.five_crop(TF.resize(full, side, antialias=True), [side, side])
    pil_crops = TF.five_crop(TF.resize(image, side, antialias=True), [side, side])
    for c in range(5):
        torch.testing.assert_close(five["paper"].query_transforms[c](image), paper_crops[c], rtol=0, atol=1e-6)
        torch.testing.assert_close(
            five["pil"].query_transforms[c](image), TF.normalize(TF.to_tensor(pil_crops[c]), MEAN, STD), rtol=0, atol=0
        )
    central = TEST_METHODS.create("central_crop", SMALL, MEAN, STD, order="paper").query_transforms[0](image)
    scale = max(SMALL[0] / NATIVE[0], SMALL[1] / NATIVE[1])
    cover = [max(SMALL[0], round(NATIVE[0] * scale)), max(SMALL[1], round(NATIVE[1] * scale))]
    torch.testing.assert_close(
        central, TF.center_crop(TF.resize(full, cover, antialias=True), list(SMALL)), rtol=0, atol=1e-6
    )


@pytest.mark.parametrize("order,atol", [("paper", 1e-5), ("pil", 0.02)])
def test_device_path_agrees_with_the_worker_path(tmp_path, order, atol):
    """``data.decode=torchvision`` (decode, then ResizeNormalize.on_tensors, batched by size) against
    the PIL workers, for images of two sizes in one batch, one of them the native size."""
    paths = [_photo(tmp_path / f"a{k}.jpg", k) for k in range(3)]
    paths += [_photo(tmp_path / f"b{k}.jpg", 10 + k, size=(45, 70)) for k in range(2)]
    cfg = load_config(overrides=[*TINY_SET, f"data.resize_order={order}"])
    rt = Runtime.from_config(cfg, progress=False)
    for size in (SMALL, NATIVE):
        transform = resize_transform(size, MEAN, STD, cfg.data.resize_order)
        out = {}
        for decode in ("pil", "torchvision"):
            batches = list(iter_images(paths, transform, dataclasses.replace(rt, decode=decode)))
            assert [i for _, idx in batches for i in idx] == list(range(len(paths)))
            out[decode] = torch.cat([images for images, _ in batches]).contiguous()
        assert out["pil"].shape == (len(paths), 3, *size)
        torch.testing.assert_close(out["torchvision"], out["pil"], rtol=0, atol=atol)
        references = [(_paper_reference if order == "paper" else _pil_reference)(read_image(p), size) for p in paths]
        torch.testing.assert_close(out["pil"], torch.stack(references), rtol=0, atol=1e-6)


def test_config_refuses_another_order(capsys):
    assert load_config().data.resize_order == "paper"
    assert load_config(overrides=["data.resize_order=pil"]).data.resize_order == "pil"
    with pytest.raises(BadInput, match=r"data.resize_order='bicubic' is not allowed; choose one of: paper, pil"):
        load_config(overrides=["data.resize_order=bicubic"])
    assert main(["eval", "--set", "data.resize_order=foo"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "data.resize_order='foo'" in err and "paper, pil" in err


def test_shards_of_one_order_are_not_taken_for_the_other():
    """``vgray extract`` keeps a shard only when its model hash matches: the order is part of it."""
    from vgray.distributed.extract import model_hash
    from vgray.models import build_model

    cfg = load_config(overrides=[*TINY_SET, "model.aggregation=gem", "data.resize=[32,48]"])
    torch.manual_seed(0)
    model = build_model(cfg.model, image_size=cfg.data.image_size)
    paper = model_hash(model, cfg)
    assert model_hash(model, cfg.replace(**{"data.resize_order": "pil"})) != paper
    assert model_hash(model, cfg.replace(**{"data.resize_order": "paper"})) == paper


def test_a_descriptor_folder_from_before_the_key_is_read_as_pil(tmp_path):
    """Saved descriptors (``--save-descriptors``, ``vgray locate --database``) written before
    data.resize_order existed were made with PIL's order: photos are located with it too."""
    import yaml

    from vgray.saved_descriptors import CONFIG_FILE, DATABASE_FILE, MODEL_FILE, open_database

    cfg = load_config(overrides=TINY_SET)
    tree = cfg.to_dict()
    assert tree["data"]["resize_order"] == "paper"  # a folder written now says which order
    table = pa.table(
        {
            "path": ["a.jpg"],
            "utm_east": [0.0],
            "utm_north": [0.0],
            "descriptor": pa.array([[0.5, 0.5]], type=pa.list_(pa.float32(), 2)),
        }
    )
    for name, data in (
        ("new", tree),
        ("old", {**tree, "data": {k: v for k, v in tree["data"].items() if k != "resize_order"}}),
    ):
        folder = tmp_path / name
        folder.mkdir()
        (folder / CONFIG_FILE).write_text(yaml.safe_dump(data))
        (folder / MODEL_FILE).write_bytes(b"")
        pq.write_table(table, folder / DATABASE_FILE)
    assert open_database(tmp_path / "new").cfg.data.resize_order == "paper"
    assert open_database(tmp_path / "old").cfg.data.resize_order == "pil"


def test_resize_normalize_names_its_order():
    assert ResizeNormalize(SMALL, MEAN, STD).order == "paper"
    assert ResizeNormalize(SMALL, MEAN, STD, "pil").order == "pil"
    with pytest.raises(ValueError, match="allowed are paper, pil"):
        ResizeNormalize(SMALL, MEAN, STD, "nearest")


@pytest.mark.slow
def test_resize_order_study_script_prints_what_eval_measured(tiny_root, tmp_path, capsys):
    """scripts/resize_order_study.py (the README's resize-order table) on tiny at 32x48: one
    training, then an evaluation per order at half the size, whose figures the table prints."""
    import importlib.util
    import json
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "resize_order_study", Path(__file__).resolve().parent.parent / "scripts" / "resize_order_study.py"
    )
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    sets = [
        *TINY_SET,
        "data.root=synthetic:tiny",
        "data.resize=[32,48]",
        "train.queries_per_epoch=10",
        "train.cache_refresh_rate=10",
        "train.negs_num_per_query=2",
        "train.neg_samples_num=40",
        "train.epochs=1",
    ]
    out = tmp_path / "study"
    assert study.main(["--out", str(out), "--fractions", "0.5", *sum((["--set", s] for s in sets), [])]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert (out / "train" / "best.pt").is_file()
    rows = [json.loads(line) for line in printed if line.startswith("{")]
    assert [(r["resize_fraction"], r["resize_order"]) for r in rows] == [(0.5, "paper"), (0.5, "pil")]
    for r in rows:
        figures = json.loads((out / f"eval-{r['resize_order']}-{r['resize_fraction']:g}.json").read_text())
        assert (r["R@1"], r["R@5"]) == (figures["R@1"], figures["R@5"])
    assert rows[0]["image_size"] == [16, 24]
    table = (out / "table.md").read_text().splitlines()
    assert len(table) == 3 and table[2].startswith("| 0.5 | 16×24 |")
    assert printed[-len(table) :] == table
    with pytest.raises(SystemExit) as exc:  # a bad config stops with vgray's status
        study.main(["--out", str(tmp_path / "bad"), "--set", "data.resize_order=bicubic"])
    assert exc.value.code == 2
