"""Descriptor extraction: image paths -> descriptors, batched, in inference mode.

The network runs channels-last; on a GPU under bf16 autocast with pinned, non-blocking transfers,
on the CPU the same code in fp32. Unreadable images are reported by path: the run stops with
:class:`BadInput`, or, with ``data.skip_corrupt``, the image is left out and marked invalid.
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

    @classmethod
    def from_config(cls, cfg, progress: bool = True) -> "Runtime":
        device = resolve_device(cfg.device)
        return cls(device=device, dtype=resolve_precision(cfg.precision, device),
                   batch_size=cfg.test.batch_size, num_workers=default_workers(cfg.data.num_workers),
                   skip_corrupt=cfg.data.skip_corrupt, progress=progress)

    def autocast(self):
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    # Channels-last suits cuDNN's tensor-core kernels and oneDNN's CPU convolutions alike
    # (measured 1.3x on ResNet-18 conv4 here, 2 CPU cores).
    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device, memory_format=torch.channels_last).eval()

    def to_device(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)


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


def _collate(batch):
    good = [b for b in batch if b[2] is None]
    images = torch.stack([b[0] for b in good]) if good else None
    return images, [b[1] for b in good], [(b[1], b[2]) for b in batch if b[2] is not None]


def iter_batches(dataset: SafeDataset, rt: Runtime, desc: str = "images", shuffle: bool = False,
                 batch_size: Optional[int] = None) -> Iterator[Tuple[torch.Tensor, List[int]]]:
    """``(items, indices)`` batches of ``dataset``; an item that fails to load stops the run with
    :class:`BadInput` naming its file or, with ``data.skip_corrupt``, is left out."""
    loader = DataLoader(dataset, batch_size=batch_size or rt.batch_size, shuffle=shuffle,
                        num_workers=rt.num_workers, collate_fn=_collate,
                        pin_memory=rt.device.type == "cuda", persistent_workers=False)
    bar = tqdm(total=len(dataset), desc=desc, unit="img" if isinstance(dataset, ImageList) else "it",
               disable=not rt.progress or None, file=sys.stderr, leave=False, dynamic_ncols=True)
    with bar:
        for items, indices, errors in loader:
            for _, (path, message) in errors:
                if not rt.skip_corrupt:
                    raise BadInput(f"image {path} cannot be read ({message}); fix or remove it, "
                                   f"or set data.skip_corrupt=true to leave such images out")
                print(f"vgray: skipping unreadable image {path} ({message})", file=sys.stderr)
            bar.update(len(indices) + len(errors))
            if items is not None:
                yield items, indices


def iter_descriptors(model: torch.nn.Module, paths: Sequence[str], transform: Callable, rt: Runtime,
                     desc: str = "images") -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """``(indices, descriptors float32)`` per batch, in path order."""
    model = rt.prepare(model)
    with torch.inference_mode(), rt.autocast():
        for images, indices in iter_batches(ImageList(paths, transform), rt, desc):
            out = model(rt.to_device(images))
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
        for images, _ in iter_batches(ImageList([paths[i] for i in chosen], transform), rt, "netvlad init"):
            local = torch.nn.functional.normalize(model.forward_local(rt.to_device(images)).float(), dim=1)
            local = local.flatten(2).transpose(1, 2).cpu().numpy()  # (B, hw, C)
            for per in local:
                take = rng.choice(len(per), size=min(per_image, len(per)), replace=False)
                features.append(per[take])
    return np.concatenate(features).astype(np.float32)


def initialize_aggregation(model, paths: Sequence[str], transform: Callable, rt: Runtime, seed: int = 0) -> None:
    """Initialise an aggregation that asks for it (NetVLAD) from images at ``paths``."""
    if model.needs_init():
        model.aggregation.initialize(sample_local_features(model, paths, transform, rt, seed=seed), seed=seed)
