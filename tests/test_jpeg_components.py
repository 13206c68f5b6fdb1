"""The JPEG frame header read before decoding (issue 32, item 6): nvjpeg refuses 4-component
(CMYK) JPEGs, and one refusal costs the whole batched call, so the loader reads each JPEG's
component count from its markers and decodes only CMYK ones (and any whose header cannot be read)
in the worker; the device gets the rest in one call."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from vgray.data.images import EncodedImages, decode_on_device, jpeg_components, read_image

KINDS = {"baseline": ("RGB", {}, 3), "progressive": ("RGB", {"progressive": True}, 3), "grey": ("L", {}, 1)}
KINDS["cmyk"] = ("CMYK", {}, 4)


def _jpeg(mode: str, options, seed: int = 0, size=(24, 32)) -> bytes:
    rng = np.random.default_rng(seed)
    picture = Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).convert(mode)
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=90, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_component_count_is_read_from_the_frame_header(kind):
    mode, options, components = KINDS[kind]
    data = _jpeg(mode, options)
    assert jpeg_components(data) == components
    # with an EXIF/APP segment and fill bytes before the frame, still found
    padded = data[:2] + b"\xff\xe1\x00\x08Exif\x00\x00" + b"\xff" + data[2:]
    assert jpeg_components(padded) == components


def test_a_header_that_cannot_be_read_gives_none(tmp_path):
    data = _jpeg("RGB", {})
    sof = data.index(b"\xff\xc0")
    assert jpeg_components(b"") is None and jpeg_components(b"\x89PNG\r\n\x1a\n") is None
    assert jpeg_components(data[: sof + 5]) is None  # cut inside the frame header
    assert jpeg_components(data[:2] + b"\x00\x01") is None  # no marker where one must be
    assert jpeg_components(b"\xff\xd8\xff\xda\x00\x02") is None  # a scan with no frame before it
    # a broken JPEG keeps the device path (its fallbacks name it at its batch's turn)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff garbage \xff\xd9")
    assert EncodedImages([str(broken)]).load(0)[0] == "jpeg"


def test_the_loader_decodes_cmyk_in_the_worker_and_sends_the_rest_to_the_device(tmp_path):
    paths = []
    for i, kind in enumerate(sorted(KINDS)):
        path = tmp_path / f"{kind}.jpg"
        path.write_bytes(_jpeg(KINDS[kind][0], KINDS[kind][1], seed=i))
        paths.append(str(path))
    items = [EncodedImages(paths).load(i) for i in range(len(paths))]
    kinds = {p.rsplit("/", 1)[1]: kind for p, (kind, _) in zip(paths, items)}
    assert kinds == {"baseline.jpg": "jpeg", "cmyk.jpg": "pixels", "grey.jpg": "jpeg", "progressive.jpg": "jpeg"}
    at = sorted(KINDS).index("cmyk")  # decoded by PIL, as on the PIL path
    assert torch.equal(items[at][1], torch.from_numpy(np.asarray(read_image(paths[at])).copy()).permute(2, 0, 1))
    images, errors = decode_on_device(items, paths, torch.device("cpu"))
    assert not errors and all(x is not None and x.shape[0] == 3 for x in images)
