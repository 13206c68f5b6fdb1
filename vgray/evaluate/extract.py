"""Descriptor extraction: image paths -> descriptors, batched, in inference mode.

The network runs channels-last; on a GPU under bf16 autocast with pinned, non-blocking transfers,
on the CPU the same code in fp32; ``test.compile`` runs it through ``torch.compile`` (compiled once
per model object, batches padded to one shape so that it compiles once). Unreadable images are
reported by path: the run stops with :class:`BadInput`, or, with ``data.skip_corrupt``, the image is
left out and marked invalid.

Decoding (``data.decode``): on the PIL path loader workers decode, resize and normalise each image.
On the torchvision path (the hard-resize transform, :class:`~vgray.data.transforms.ResizeNormalize`,
only; other transforms stay on PIL) workers only read the files' bytes; each batch of JPEGs is
decoded in one ``torchvision.io.decode_jpeg`` call on the runtime's device (nvjpeg on a GPU,
libjpeg-turbo on the CPU), then resized and normalised there. Files that are not JPEGs, or whose
bytes do not end with the JPEG end-of-image marker (truncated ones), are decoded in the worker
(``torchvision.io.decode_image``, PIL where that fails); a JPEG the device cannot decode is decoded
by PIL from its bytes, so that what PIL can read is read, and what it cannot is reported by path
with PIL's message, exactly as on the PIL path.
"""
from __future__ import annotations

import abc
import math
import os
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from vgray.data.transforms import ResizeNormalize
from vgray.errors import BadInput


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BadInput(f"device={name}: no CUDA device is available here; use auto or cpu")
    return device


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return torch.bfloat16 if precision == "bf16" else torch.float32


DECODERS = ("auto", "pil", "torchvision")


def default_workers(num_workers: Optional[int]) -> int:
    return min(8, os.cpu_count() or 1) if num_workers is None else num_workers


@dataclass
class Runtime:
    """Where and how the network runs during extraction."""
    device: torch.device
    dtype: torch.dtype
    batch_size: int = 32
    num_workers: int = 0
    skip_corrupt: bool = False
    progress: bool = True
    decode: str = "pil"     # data.decode: auto, pil, torchvision
    compile: bool = False   # test.compile

    @classmethod
    def from_config(cls, cfg, progress: bool = True) -> "Runtime":
        device = resolve_device(cfg.device)
        return cls(device=device, dtype=resolve_precision(cfg.precision, device),
                   batch_size=cfg.test.batch_size, num_workers=default_workers(cfg.data.num_workers),
                   skip_corrupt=cfg.data.skip_corrupt, progress=progress,
                   decode=cfg.data.decode, compile=cfg.test.compile)

    def tensor_transform(self, transform):
        """``transform`` when its images are decoded and transformed on the device (``data.decode``:
        torchvision, or auto on a CUDA device, and a transform that can run on tensors), else None."""
        if self.decode not in DECODERS:
            raise BadInput(f"data.decode={self.decode!r} is not allowed; choose one of: {', '.join(DECODERS)}")
        if self.decode == "pil" or (self.decode == "auto" and self.device.type != "cuda"):
            return None
        return transform if isinstance(transform, ResizeNormalize) else None

    def autocast(self):
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    # Channels-last suits cuDNN's tensor-core kernels and oneDNN's CPU convolutions alike
    # (measured 1.3x on ResNet-18 conv4 here, 2 CPU cores).
    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device, memory_format=torch.channels_last).eval()
        return compiled(model) if self.compile else model

    def to_device(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)

    def forward(self, model, images: torch.Tensor) -> torch.Tensor:
        """``model(images)`` (images on the device). Compiled, a short batch is padded with zeros
        to ``batch_size`` (eval-mode networks treat samples independently), so that one graph of
        one shape serves every batch; a compiler that cannot work here ends in one line."""
        if not self.compile:
            return model(images)
        n = len(images)
        if n < self.batch_size:
            images = torch.cat([images, images.new_zeros((self.batch_size - n, *images.shape[1:]))])
            images = images.contiguous(memory_format=torch.channels_last)
        try:
            return model(images)[:n]
        except Exception as exc:
            if type(exc).__module__.startswith(("torch._dynamo", "torch._inductor")):
                first = (str(exc).strip().splitlines() or [""])[-1][:200]
                raise BadInput(f"test.compile=true: torch.compile cannot compile the network on this machine "
                               f"({type(exc).__name__}: {first}); set test.compile=false") from exc
            raise


class _CompiledSlot:
    """Holds a model's compiled wrapper in the model's ``__dict__`` (not a submodule, so not in its
    state dict); a copy or pickle of the model gets an empty slot, never the compiled graph."""

    def __init__(self, module=None):
        self.module = module

    def __deepcopy__(self, memo):
        return _CompiledSlot()

    def __reduce__(self):
        return _CompiledSlot, ()


def compiled(model: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile(model)``, made once per model object and kept with it (it lives and dies
    with the model), so that repeated extractions do not compile again."""
    slot = model.__dict__.get("_vgray_compiled")
    if slot is None or slot.module is None:
        slot = _CompiledSlot(torch.compile(model, dynamic=False))
        model.__dict__["_vgray_compiled"] = slot
    return slot.module


class UnreadableImage(Exception):
    """An image file that cannot be decoded; carries its path."""

    def __init__(self, path: str, cause: Exception):
        first = str(cause).splitlines()[0] if str(cause) else ""
        super().__init__(f"{type(cause).__name__}: {first}")
        self.path = path


def read_image(path: str) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except Exception as exc:  # truncated, corrupt, unreadable, not an image
        raise UnreadableImage(path, exc) from exc


class SafeDataset(Dataset, abc.ABC):
    """A dataset whose items read image files. An unreadable image is returned as
    ``(None, i, (path, message))``, not raised, so that the main process can name the file in one
    line (an exception raised in a loader worker arrives wrapped in a traceback)."""

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
    """The files at ``paths`` for decoding on the device: a complete JPEG as its bytes
    ``("jpeg", uint8 tensor (n,))``; any other image decoded here, ``("pixels", uint8 (3, h, w))``
    (torchvision's decoder, PIL where it fails or is not RGB uint8, so that PIL's formats and
    messages stay as on the PIL path)."""

    def __init__(self, paths: Sequence[str]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int):
        path = self.paths[i]
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise UnreadableImage(path, exc) from exc
        if data.startswith(_JPEG_START) and data.rstrip(b"\0").endswith(_JPEG_END):
            return "jpeg", torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return "pixels", decode_here(path, data)


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


def decode_on_device(items: List[Tuple[str, torch.Tensor]], paths: Sequence[str], device: torch.device):
    """``(images, errors)``: uint8 (3, h, w) tensors on ``device`` (None where unreadable) for
    :class:`EncodedImages` items; the JPEGs in one batched ``decode_jpeg`` call on ``device``. If
    that call fails, each JPEG is decoded alone, and one the device cannot decode is decoded by
    PIL from its bytes (an :class:`UnreadableImage` there is an error ``(k, (path, message))``)."""
    from torchvision.io import ImageReadMode, decode_jpeg
    images: List[Optional[torch.Tensor]] = [None] * len(items)
    errors = []
    jpegs = [k for k, (kind, _) in enumerate(items) if kind == "jpeg"]
    for k, (kind, data) in enumerate(items):
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


def _collate(batch):
    good = [b for b in batch if b[2] is None]
    images = torch.stack([b[0] for b in good]) if good else None
    return images, [b[1] for b in good], [(b[1], b[2]) for b in batch if b[2] is not None]


def _collate_list(batch):
    good = [b for b in batch if b[2] is None]
    return [b[0] for b in good] or None, [b[1] for b in good], [(b[1], b[2]) for b in batch if b[2] is not None]


def unreadable(path: str, message: str, skip_corrupt: bool, log: Optional[Callable[[str], None]] = None) -> None:
    """An image that cannot be read: the run stops with :class:`BadInput` naming it or, with
    ``data.skip_corrupt``, it is reported (``log``, default stderr) and left out."""
    if not skip_corrupt:
        raise BadInput(f"image {path} cannot be read ({message}); fix or remove it, "
                       f"or set data.skip_corrupt=true to leave such images out")
    (log or (lambda m: print(f"vgray: {m}", file=sys.stderr)))(f"skipping unreadable image {path} ({message})")


def _report(errors, rt: Runtime) -> None:
    for _, (path, message) in errors:
        unreadable(path, message, rt.skip_corrupt)


def iter_batches(dataset: SafeDataset, rt: Runtime, desc: str = "images", shuffle: bool = False,
                 batch_size: Optional[int] = None) -> Iterator[Tuple[torch.Tensor, List[int]]]:
    """``(items, indices)`` batches of ``dataset``; an item that fails to load stops the run with
    :class:`BadInput` naming its file or, with ``data.skip_corrupt``, is left out. The items of an
    :class:`EncodedImages` come as a list (bytes and tensors of several sizes), else stacked."""
    encoded = isinstance(dataset, EncodedImages)
    loader = DataLoader(dataset, batch_size=batch_size or rt.batch_size, shuffle=shuffle,
                        num_workers=rt.num_workers, collate_fn=_collate_list if encoded else _collate,
                        pin_memory=rt.device.type == "cuda" and not encoded, persistent_workers=False)
    bar = tqdm(total=len(dataset), desc=desc, unit="img" if isinstance(dataset, (ImageList, EncodedImages)) else "it",
               disable=not rt.progress or None, file=sys.stderr, leave=False, dynamic_ncols=True)
    with bar:
        for items, indices, errors in loader:
            _report(errors, rt)
            bar.update(len(indices) + len(errors))
            if items is not None:
                yield items, indices


def iter_images(paths: Sequence[str], transform: Callable, rt: Runtime,
                desc: str = "images") -> Iterator[Tuple[torch.Tensor, List[int]]]:
    """``(images on the device, channels-last, indices)`` batches of the images at ``paths``
    through ``transform``: decoded and transformed on the device where :meth:`Runtime.tensor_transform`
    says so, else in loader workers."""
    on_device = rt.tensor_transform(transform)
    if on_device is None:
        for images, indices in iter_batches(ImageList(paths, transform), rt, desc):
            yield rt.to_device(images), indices
        return
    for items, indices in iter_batches(EncodedImages(paths), rt, desc):
        images, errors = decode_on_device(items, [paths[i] for i in indices], rt.device)
        _report(errors, rt)
        if errors:
            keep = [k for k, image in enumerate(images) if image is not None]
            images, indices = [images[k] for k in keep], [indices[k] for k in keep]
        if images:
            yield on_device.on_tensors(images).contiguous(memory_format=torch.channels_last), indices


def iter_descriptors(model: torch.nn.Module, paths: Sequence[str], transform: Callable, rt: Runtime,
                     desc: str = "images") -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """``(indices, descriptors float32)`` per batch, in path order."""
    model = rt.prepare(model)
    with torch.inference_mode(), rt.autocast():
        for images, indices in iter_images(paths, transform, rt, desc):
            out = rt.forward(model, images)
            yield np.asarray(indices, dtype=np.int64), out.float().cpu().numpy()


def extract_descriptors(model: torch.nn.Module, paths: Sequence[str], transform: Callable, rt: Runtime,
                        features_dim: int, desc: str = "images") -> Tuple[np.ndarray, np.ndarray]:
    """All descriptors ``(n, features_dim)`` float32 and a mask of the images that could be read."""
    out = np.zeros((len(paths), features_dim), dtype=np.float32)
    valid = np.zeros(len(paths), dtype=bool)
    for indices, descriptors in iter_descriptors(model, paths, transform, rt, desc):
        out[indices] = descriptors
        valid[indices] = True
    return out, valid


def calibrate_batchnorm(model: torch.nn.Module, paths: Sequence[str], transform: Callable, rt: Runtime,
                        desc: str = "batchnorm statistics") -> torch.nn.Module:
    """Running BatchNorm statistics of ``model`` from the images at ``paths``: one forward pass in
    train mode, no weight update; returns the model on the device in eval mode.

    A randomly initialised network evaluates with BatchNorm's initial statistics (mean 0, variance 1);
    its first training steps replace them with the data's, which alone moves recall by several
    points. The untrained network calibrated this way is the baseline that isolates what the weight
    updates of training did."""
    model = model.to(rt.device, memory_format=torch.channels_last).train()
    with torch.no_grad():
        for images, _ in iter_images(paths, transform, rt, desc):
            model(images)
    return model.eval()


def sample_local_features(model, paths: Sequence[str], transform: Callable, rt: Runtime,
                          total: int = 50_000, per_image: int = 100, seed: int = 0) -> np.ndarray:
    """L2-normalised local features of the backbone: ``per_image`` random positions from each of
    ``ceil(total / per_image)`` random images (the paper's NetVLAD initialisation)."""
    rng = np.random.default_rng(seed)
    count = min(len(paths), math.ceil(total / per_image))
    chosen = sorted(rng.choice(len(paths), size=count, replace=False).tolist())
    model = rt.prepare(model)
    features = []
    with torch.inference_mode(), rt.autocast():
        for images, _ in iter_images([paths[i] for i in chosen], transform, rt, "netvlad init"):
            local = torch.nn.functional.normalize(model.forward_local(images).float(), dim=1)
            local = local.flatten(2).transpose(1, 2).cpu().numpy()  # (B, hw, C)
            for per in local:
                take = rng.choice(len(per), size=min(per_image, len(per)), replace=False)
                features.append(per[take])
    return np.concatenate(features).astype(np.float32)


def initialize_aggregation(model, paths: Sequence[str], transform: Callable, rt: Runtime, seed: int = 0) -> None:
    """Initialise an aggregation that asks for it (NetVLAD) from images at ``paths``."""
    if model.needs_init():
        model.aggregation.initialize(sample_local_features(model, paths, transform, rt, seed=seed), seed=seed)
