"""Descriptor extraction: image paths -> descriptors, batched, in inference mode.

The network runs as the runtime (:mod:`vgray.runtime`) says: channels-last, on a GPU under bf16
autocast with pinned, non-blocking transfers, compiled with ``test.compile``. Images are read and
decoded as :mod:`vgray.data.images` describes (``data.decode``: in loader workers, or batched on the
device); an unreadable image stops the run with :class:`~vgray.errors.BadInput` naming it, or, with
``data.skip_corrupt``, is left out and marked invalid.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader

from vgray.console import progress_bar, progress_step
from vgray.data.images import (EncodedImages, ImageList, SafeDataset, decode_on_device, device_transform,
                               unreadable)
from vgray.runtime import Runtime


def _collate(batch):
    good = [b for b in batch if b[2] is None]
    images = torch.stack([b[0] for b in good]) if good else None
    return images, [b[1] for b in good], [(b[1], b[2]) for b in batch if b[2] is not None]


def _collate_list(batch):
    good = [b for b in batch if b[2] is None]
    return [b[0] for b in good] or None, [b[1] for b in good], [(b[1], b[2]) for b in batch if b[2] is not None]


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
    bar = progress_bar(len(dataset), desc, "img" if isinstance(dataset, (ImageList, EncodedImages)) else "it",
                       rt.progress)
    with bar:
        for items, indices, errors in loader:
            _report(errors, rt)
            bar.update(len(indices) + len(errors))
            if items is not None:
                yield items, indices


def iter_images(paths: Sequence[str], transform: Callable, rt: Runtime,
                desc: str = "images") -> Iterator[Tuple[torch.Tensor, List[int]]]:
    """``(images on the device, channels-last, indices)`` batches of the images at ``paths``
    through ``transform``: decoded and transformed on the device where
    :func:`~vgray.data.images.device_transform` says so, else in loader workers."""
    on_device = device_transform(rt, transform)
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
        features = sample_local_features(model, paths, transform, rt, seed=seed)
        # The clustering is one faiss call with no progress of its own: a step with its time.
        name = type(model.aggregation).__name__.lower()
        with progress_step(f"{name} init: k-means of {len(features):,} local features", rt.progress):
            model.aggregation.initialize(features, seed=seed)
