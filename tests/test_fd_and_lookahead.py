"""The device decode path's batches: packed bytes (one file descriptor a batch, not one an image),
the one-batch lookahead of :func:`vgray.evaluate.extract.iter_images`, and where its stream sync is.

Measured before the packing (the same loop as the first test, 8x8 JPEGs, 2 loader workers): the main
process held up to 42 extra descriptors at batch 16, 122 at 64, 202 at 256, 777 at 512; after it,
10 to 13 at every batch size. What a CPU cannot check: the CUDA stream order itself (the side stream,
``wait_stream``, ``record_stream``); here only that every caller goes through the one place that does
it and that it is the identity on the CPU.
"""

from __future__ import annotations

import ast
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_image
from PIL import Image

from vgray.data.images import ByteBatch, EncodedImages
from vgray.data.transforms import ResizeNormalize
from vgray.errors import BadInput
from vgray.evaluate import extract
from vgray.runtime import Runtime

ROOT = Path(__file__).resolve().parents[1]


def _rt(batch_size, skip_corrupt=False, workers=2):
    return Runtime(
        device=torch.device("cpu"),
        dtype=torch.float32,
        batch_size=batch_size,
        num_workers=workers,
        skip_corrupt=skip_corrupt,
        progress=False,
        decode="torchvision",
    )


@pytest.fixture(scope="module")
def tiny_jpegs(tmp_path_factory):
    """260 8x8 JPEGs and one PNG (a "pixels" item) at position 7."""
    folder = tmp_path_factory.mktemp("jpegs")
    paths = [str(write_image(folder / f"{i:04d}.jpg", i, size=(8, 8))) for i in range(260)]
    png = folder / "pic.png"
    Image.fromarray(np.random.default_rng(9).integers(0, 255, (6, 10, 3), dtype=np.uint8)).save(png)
    paths[7] = str(png)
    return paths


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("batch_size", [32, 256])
def test_a_batch_holds_a_bounded_number_of_descriptors(tiny_jpegs, batch_size):
    base, peak, seen = _open_fds(), 0, 0
    for items, indices in extract.iter_batches(EncodedImages(tiny_jpegs), _rt(batch_size)):
        peak = max(peak, _open_fds() - base)
        assert isinstance(items, ByteBatch) and len(items) == len(indices)
        for k, i in enumerate(indices):
            kind, data = items[k]
            if i == 7:
                assert kind == "pixels" and tuple(data.shape) == (3, 6, 10)
            else:
                assert kind == "jpeg" and data.numpy().tobytes() == Path(tiny_jpegs[i]).read_bytes()
        seen += len(indices)
    assert seen == len(tiny_jpegs)
    # Before: 202 at batch 256. A batch's buffer, the workers' pipes and a prefetched batch or two.
    assert peak <= 24, peak


def test_pack_gives_views_of_one_buffer():
    items = [("jpeg", torch.arange(5, dtype=torch.uint8)), ("pixels", torch.ones(3, 2, 2, dtype=torch.uint8))]
    batch = ByteBatch.pack(items)
    assert batch.data.numel() == 17 and not batch.data.is_shared()
    for (kind, want), (got_kind, got) in zip(items, batch):
        assert got_kind == kind and torch.equal(got, want)
        assert got.untyped_storage().data_ptr() == batch.data.untyped_storage().data_ptr()


def _transform():
    return ResizeNormalize((8, 8), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def _without_lookahead(paths, rt):
    """What iter_images yields, batch by batch in the caller's thread (no lookahead)."""
    out = []
    for items, indices in extract.iter_batches(EncodedImages(paths), rt):
        result = extract._decode_batch(items, indices, paths, _transform(), rt, None)
        if result is not None:
            out.append(result)
    return out


def _broken_copy(tiny_jpegs, folder, bad):
    """The first 40 of ``tiny_jpegs`` with the files at ``bad`` replaced by garbage JPEGs."""
    paths = list(tiny_jpegs[:40])
    for i in bad:
        paths[i] = str(folder / f"bad{i}.jpg")
        Path(paths[i]).write_bytes(b"\xff\xd8\xff garbage \xff\xd9")
    return paths


def test_lookahead_keeps_batches_order_and_reports_each_error_once(tiny_jpegs, tmp_path, capsys):
    paths = _broken_copy(tiny_jpegs, tmp_path, bad=[3, 21])
    rt = _rt(8, skip_corrupt=True, workers=1)
    got = list(extract.iter_images(paths, _transform(), rt))
    want = _without_lookahead(paths, rt)
    assert [g[1] for g in got] == [w[1] for w in want]
    assert sum(len(g[1]) for g in got) == 38 and 3 not in got[0][1]
    assert all(ready is None for _, _, ready in want)
    for (images, _), (expected, _, _) in zip(got, want):
        assert images.is_contiguous(memory_format=torch.channels_last) and torch.equal(images, expected)
    err = capsys.readouterr().err
    for i in (3, 21):
        assert err.count(f"skipping unreadable image {paths[i]} ") == 2  # once in each of the two runs


def test_lookahead_stops_at_the_first_unreadable_batch_in_order(tiny_jpegs, tmp_path):
    paths = _broken_copy(tiny_jpegs, tmp_path, bad=[21, 30])
    yielded = []
    with pytest.raises(BadInput, match="bad21.jpg") as info:
        for _, indices in extract.iter_images(paths, _transform(), _rt(8, workers=1)):
            yielded.append(indices)
    assert yielded == [list(range(0, 8)), list(range(8, 16))] and "bad30" not in str(info.value)


def test_next_batch_is_worked_on_while_the_caller_holds_the_current_one():
    started = [threading.Event() for _ in range(4)]

    def work(k):
        started[k].set()
        return None if k == 2 else k

    out = []
    for k in extract.lookahead(((k,) for k in range(4)), work):
        # The caller holds batch k: the work of batch k+1 has started (or k is the last).
        assert k == 3 or started[k + 1].wait(timeout=10)
        out.append(k)
    assert out == [0, 1, 3]


def test_the_stream_sync_is_the_identity_on_the_cpu():
    images = torch.zeros(2, 3, 4, 4)
    assert extract.ready_for_caller(images, None) is images


def _calls(path: Path, name: str):
    """The functions of module ``path`` that call ``name``."""
    tree = ast.parse(path.read_text())
    return {
        f.name
        for f in ast.walk(tree)
        if isinstance(f, ast.FunctionDef)
        for n in ast.walk(f)
        if isinstance(n, ast.Call) and getattr(n.func, "id", getattr(n.func, "attr", None)) == name
    }


def test_every_decode_then_forward_goes_through_iter_images():
    """decode_on_device is called by _decode_batch (iter_images' work, followed by ready_for_caller)
    and by decode-only timings (the bench's and gpu_check's; no forward after them); the callers that
    run a network on decoded images take them from iter_images."""
    callers = {}
    for path in (ROOT / "vgray").rglob("*.py"):
        if "decode_on_device" not in path.read_text():
            continue
        for function in _calls(path, "decode_on_device"):
            callers.setdefault(str(path.relative_to(ROOT)), set()).add(function)
    assert callers == {
        "vgray/evaluate/extract.py": {"_decode_batch"},
        "vgray/bench/extract.py": {"decode_device"},
        "vgray/bench/gpu_check.py": {"jpeg_figures"},
    }
    module = ROOT / "vgray/evaluate/extract.py"
    assert {"iter_descriptors", "calibrate_batchnorm", "sample_local_features"} <= _calls(module, "iter_images")
    assert "iter_images" in _calls(module, "ready_for_caller")


@pytest.mark.cuda
def test_device_path_on_cuda_matches_the_cpu(tiny_jpegs, tmp_path):
    """On a GPU (skipped without): the side stream, the lookahead and the event handed to the
    caller's stream give exactly the batches of the same nvjpeg decode run in the caller's thread on
    its current stream, in order (on random 8x8 JPEGs any mix-up of buffers shows); and on smooth
    pictures saved without chroma subsampling, the CPU path's batches within 8 grey levels (an H200,
    2026-12-04: identical, 0 levels, at 48x64 and 480x640). With 4:2:0 subsampling the decoders'
    chroma upsampling differs (nvjpeg's against libjpeg-turbo's fancy upsampling): there it showed
    at most 9 levels on smooth 480x640 JPEGs and 62 on 48x64 ones, about 70 on random 8x8 ones."""
    import dataclasses

    from vgray.bench.gpu_check import _picture

    rt = dataclasses.replace(_rt(16), device=torch.device("cuda", torch.cuda.current_device()))
    paths = tiny_jpegs[:64]
    gpu = [(images.cpu(), indices) for images, indices in extract.iter_images(paths, _transform(), rt)]
    want = [(images.cpu(), indices) for images, indices, _ in _without_lookahead(paths, rt)]
    assert [i for _, i in gpu] == [i for _, i in want] and len(gpu) == 4
    assert all(torch.equal(g, w) for (g, _), (w, _) in zip(gpu, want))

    smooth = []
    for i in range(40):
        smooth.append(str(tmp_path / f"{i:02d}.jpg"))
        Image.fromarray(_picture(i, (48, 64))).save(smooth[-1], quality=90, subsampling=0)
    transform = ResizeNormalize((48, 64), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    cpu = list(extract.iter_images(smooth, transform, _rt(16)))
    gpu = [(images.cpu(), indices) for images, indices in extract.iter_images(smooth, transform, rt)]
    assert [i for _, i in gpu] == [i for _, i in cpu]
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    for (g, _), (c, _) in zip(gpu, cpu):
        assert float(((g - c).abs() * std * 255).max()) < 8
