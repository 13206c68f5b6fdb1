"""Image reading and decoding: files -> RGB images or uint8 tensors, unreadable files named by path.

Unreadable images are reported by path: the run stops with :class:`~vgray.errors.BadInput`, or,
with ``data.skip_corrupt``, the image is left out (:func:`unreadable`).

Decoding (``data.decode``): on the PIL path loader workers decode and transform each image
(:class:`ImageList`). On the torchvision path (the hard-resize transform,
:class:`~vgray.data.transforms.ResizeNormalize`, only; other transforms stay on PIL; see
:func:`device_transform`) workers only read the files' bytes (:class:`EncodedImages`); each batch
of JPEGs is decoded in one ``torchvision.io.decode_jpeg`` call on the runtime's device (nvjpeg on a
GPU, libjpeg-turbo on the CPU; :func:`decode_on_device`), then normalised and resized there, or
resized and normalised, in the order ``data.resize_order`` says
(:meth:`~vgray.data.transforms.ResizeNormalize.on_tensors`, the same order as the workers'). Files
that are not JPEGs, whose bytes do not end with the JPEG end-of-image marker (truncated ones), or
whose frame header declares other than 1 or 3 components (CMYK, which nvjpeg refuses) are decoded
in the worker (``torchvision.io.decode_image``, PIL where that fails); a JPEG the
device cannot decode is decoded by PIL from its bytes, so that what PIL can read is read, and what
it cannot is reported by path with PIL's message, exactly as on the PIL path.
"""

from __future__ import annotations

import abc
import os
import sys
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, get_worker_info

from vgray.data.transforms import ResizeNormalize
from vgray.errors import BadInput
from vgray.runtime import Runtime


class UnreadableImage(Exception):
    """An image file that cannot be decoded; carries its path."""

    def __init__(self, path: str, cause: Exception):
        first = str(cause).splitlines()[0] if str(cause) else ""
        super().__init__(f"{type(cause).__name__}: {first}")
        self.path = path


def check_regular(path: str) -> None:
    """A path named like an image must be a regular file: opening a FIFO blocks for ever, and a
    device or a folder is no image (:class:`UnreadableImage` naming it)."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise UnreadableImage(path, exc) from exc
    if not stat.S_ISREG(mode):
        raise UnreadableImage(path, OSError("not a regular file (a FIFO, a device or a folder)"))


def read_image(path: str) -> Image.Image:
    """The RGB image in file ``path``; raises :class:`UnreadableImage` when it cannot be decoded."""
    check_regular(path)
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except Exception as exc:  # truncated, corrupt, unreadable, not an image
        raise UnreadableImage(path, exc) from exc


def unreadable(path: str, message: str, skip_corrupt: bool, log: Optional[Callable[[str], None]] = None) -> None:
    """An image that cannot be read: the run stops with :class:`BadInput` naming it or, with
    ``data.skip_corrupt``, it is reported (``log``, default stderr) and left out."""
    if not skip_corrupt:
        raise BadInput(
            f"image {path} cannot be read ({message}); fix or remove it, "
            f"or set data.skip_corrupt=true to leave such images out"
        )
    (log or (lambda m: print(f"vgray: {m}", file=sys.stderr)))(f"skipping unreadable image {path} ({message})")


def device_transform(rt: Runtime, transform):
    """``transform`` when its images are decoded and transformed on the device (``data.decode``:
    torchvision, or auto on a CUDA device, and a transform that can run on tensors), else None."""
    if not rt.decodes_on_device():
        return None
    return transform if isinstance(transform, ResizeNormalize) else None


class SafeDataset(Dataset, abc.ABC):
    """A dataset whose items read image files. An unreadable image is returned as
    ``(None, i, (path, message))``, not raised, so that the main process can name the file in one
    line (an exception raised in a loader worker arrives wrapped in a traceback)."""

    if TYPE_CHECKING:  # every dataset of images has its length (each subclass defines it)

        def __len__(self) -> int: ...

    @abc.abstractmethod
    def load(self, i: int):
        """Item ``i`` (a tensor); raises :class:`UnreadableImage` for a bad file."""

    def __getitem__(self, i: int):
        try:
            return self.load(i), i, None
        except UnreadableImage as exc:
            return None, i, (exc.path, str(exc))


class ImageList(SafeDataset):
    """Images at ``paths`` through ``transform``."""

    def __init__(self, paths: Sequence[str], transform: Callable):
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int) -> torch.Tensor:
        return self.transform(read_image(self.paths[i]))


_JPEG_START, _JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"


class EncodedImages(SafeDataset):
    """The files at ``paths`` for decoding on the device: a complete JPEG of 1 or 3 components as its
    bytes ``("jpeg", uint8 tensor (n,))``; any other image (CMYK JPEGs included: nvjpeg refuses them,
    :func:`jpeg_components`) decoded here, ``("pixels", uint8 (3, h, w))``
    (torchvision's decoder, PIL where it fails or is not RGB uint8, so that PIL's formats and
    messages stay as on the PIL path)."""

    def __init__(self, paths: Sequence[str]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int):
        path = self.paths[i]
        check_regular(path)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise UnreadableImage(path, exc) from exc
        complete = data.startswith(_JPEG_START) and data.rstrip(b"\0").endswith(_JPEG_END)
        if complete and jpeg_components(data) in (1, 3, None):  # None: broken, reported as on the device
            return "jpeg", torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return "pixels", decode_here(path, data)


# Start-of-frame markers (their segment holds the component count): 0xC0-0xCF but for DHT (C4),
# JPG (C8) and DAC (CC). Markers without a length: TEM (01) and RST0-7 (D0-D7).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_NO_LENGTH = frozenset([0x01, *range(0xD0, 0xD8)])


def jpeg_components(data: bytes) -> Optional[int]:
    """The number of colour components a JPEG's frame header declares (1 grey, 3 YCbCr or RGB, 4
    CMYK or YCCK), read from its markers before any decoding; None where the header cannot be read
    (not a JPEG, cut short, or no frame before the scan). nvjpeg refuses 4-component JPEGs and a
    refusal costs the whole batched call (each image then decoded alone), so :class:`EncodedImages`
    decodes the JPEGs of another count in the worker (a header it cannot read goes to the device,
    whose fallbacks report a broken file at its batch's turn)."""
    if not data.startswith(b"\xff\xd8"):
        return None
    at, end = 2, len(data)
    while at + 1 < end:
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte before a marker
            at += 1
            continue
        if marker in _NO_LENGTH:
            at += 2
            continue
        if marker == 0xDA or at + 4 > end:  # the scan starts (no frame header before it), or cut short
            return None
        length = int.from_bytes(data[at + 2 : at + 4], "big")
        if marker in _SOF:
            return data[at + 9] if at + 10 <= end and length >= 8 else None
        at += 2 + length
    return None


def decode_here(path: str, data: Optional[bytes] = None) -> torch.Tensor:
    """uint8 (3, h, w) of the image in file ``path`` (``data``: its bytes), decoded on the CPU:
    by torchvision unless it is a JPEG (one that gets here is incomplete or broken), else by PIL."""
    from torchvision.io import ImageReadMode, decode_image

    if data is not None and not data.startswith(_JPEG_START):
        try:
            image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
            if image.dtype == torch.uint8 and image.shape[0] == 3:
                return image
        except Exception:
            pass
    # PIL reads the file itself, so that its message names the path as on the PIL path.
    return torch.from_numpy(np.asarray(read_image(path)).copy()).permute(2, 0, 1).contiguous()


class ByteBatch:
    """A batch of :class:`EncodedImages` items packed in ONE uint8 tensor: ``kinds[k]`` ("jpeg" or
    "pixels"), item k's bytes at ``data[offsets[k]:offsets[k + 1]]``, shaped ``shapes[k]``.

    Why: a tensor a loader worker sends travels as shared memory, one file descriptor per tensor
    storage held open in the main process while the tensor lives; one tensor an image kept
    hundreds of descriptors open per batch (777 at batch 512 with 2 workers, measured). Packed,
    a batch holds one. Indexing gives ``(kind, view)`` as the items did, views into ``data``."""

    def __init__(self, kinds: List[str], data: torch.Tensor, offsets: List[int], shapes: List[Tuple[int, ...]]):
        self.kinds, self.data, self.offsets, self.shapes = kinds, data, offsets, shapes

    @classmethod
    def pack(cls, items: Sequence[Tuple[str, torch.Tensor]]) -> "ByteBatch":
        """The items' tensors copied into one buffer; in a loader worker the buffer is allocated in
        shared memory at once (as torch's default collate does), so sending it copies nothing more."""
        sizes = [t.numel() for _, t in items]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64).tolist()
        data = torch.empty(offsets[-1], dtype=torch.uint8)
        if get_worker_info() is not None:
            data = data.share_memory_()
        for (_, t), start, end in zip(items, offsets, offsets[1:]):
            data[start:end] = t.reshape(-1)
        return cls([kind for kind, _ in items], data, offsets, [tuple(t.shape) for _, t in items])

    def __len__(self) -> int:
        return len(self.kinds)

    def __getitem__(self, k: int) -> Tuple[str, torch.Tensor]:
        return self.kinds[k], self.data[self.offsets[k] : self.offsets[k + 1]].view(self.shapes[k])

    def __iter__(self):
        return (self[k] for k in range(len(self)))


def decode_on_device(
    items: Union[Sequence[Tuple[str, torch.Tensor]], ByteBatch], paths: Sequence[str], device: torch.device
):
    """``(images, errors)``: uint8 (3, h, w) tensors on ``device`` (None where unreadable) for
    :class:`EncodedImages` items (a list or a :class:`ByteBatch`); the JPEGs in one batched
    ``decode_jpeg`` call on ``device`` (nvjpeg takes the views: 1-D, contiguous, on the CPU). If
    that call fails, each JPEG is decoded alone, and one the device cannot decode is decoded by
    PIL from its bytes (an :class:`UnreadableImage` there is an error ``(k, (path, message))``)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    images: List[Optional[torch.Tensor]] = [None] * len(items)
    errors = []
    jpegs = [k for k, (kind, _) in enumerate(items) if kind == "jpeg"]
    for k in range(len(items)):
        kind, data = items[k]
        if kind == "pixels":
            images[k] = data.to(device, non_blocking=True)
    if jpegs:
        try:
            decoded = decode_jpeg([items[k][1] for k in jpegs], mode=ImageReadMode.RGB, device=device)
        except RuntimeError:
            decoded = [None] * len(jpegs)
        for k, image in zip(jpegs, decoded):
            if image is None:
                try:
                    image = decode_jpeg(items[k][1], mode=ImageReadMode.RGB, device=device)
                except RuntimeError:
                    try:
                        image = decode_here(paths[k]).to(device)
                    except UnreadableImage as exc:
                        errors.append((k, (exc.path, str(exc))))
                        continue
            images[k] = image
    return images, errors
