"""Descriptor extraction: image paths -> descriptors, batched, in inference mode.

The network runs as the runtime (:mod:`vgray.runtime`) says: channels-last, on a GPU under bf16
autocast with pinned, non-blocking transfers, compiled with ``test.compile``. Images are read and
decoded as :mod:`vgray.data.images` describes (``data.decode``: in loader workers, or batched on the
device); an unreadable image stops the run with :class:`~vgray.errors.BadInput` naming it, or, with
``data.skip_corrupt``, is left out and marked invalid. On the device path the workers send each
batch's bytes in one buffer (one file descriptor a batch), the next batch is decoded while the
caller runs the current one, and each batch is made safe for the caller's CUDA stream in one place
(:func:`iter_images`), whichever caller it is.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, nullcontext
from typing import Callable, Generator, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader

from vgray.console import progress_bar, progress_step
from vgray.data.images import (
    ByteBatch,
    EncodedImages,
    ImageList,
    SafeDataset,
    decode_on_device,
    device_transform,
    unreadable,
)
from vgray.runtime import Runtime


def _collate(batch):
    good = [b for b in batch if b[2] is None]
    images = torch.stack([b[0] for b in good]) if good else None
    return images, [b[1] for b in good], [(b[1], b[2]) for b in batch if b[2] is not None]


def _collate_encoded(batch):
    """The good items of an :class:`EncodedImages` batch packed in one :class:`ByteBatch` (one
    shared-memory buffer, so one file descriptor, a batch), their indices, the errors."""
    good = [b for b in batch if b[2] is None]
    packed = ByteBatch.pack([b[0] for b in good]) if good else None
    return packed, [b[1] for b in good], [(b[1], b[2]) for b in batch if b[2] is not None]


def _report(errors, rt: Runtime) -> None:
    for _, (path, message) in errors:
        unreadable(path, message, rt.skip_corrupt)


def iter_batches(
    dataset: SafeDataset,
    rt: Runtime,
    desc: str = "images",
    shuffle: bool = False,
    batch_size: Optional[int] = None,
    batches: Optional[List[List[int]]] = None,
) -> Generator[Tuple[torch.Tensor, List[int]], None, None]:
    """``(items, indices)`` batches of ``dataset`` (or the items of each of ``batches``, in that
    order); an item that fails to load stops the run with
    :class:`BadInput` naming its file or, with ``data.skip_corrupt``, is left out. The items of an
    :class:`EncodedImages` come as a :class:`ByteBatch` (bytes and tensors of several sizes in one
    buffer), else stacked."""
    encoded = isinstance(dataset, EncodedImages)
    sizes = {"batch_sampler": batches} if batches is not None else {"batch_size": batch_size or rt.batch_size}
    loader = DataLoader(
        dataset,
        **sizes,
        shuffle=shuffle,
        num_workers=rt.num_workers,
        collate_fn=_collate_encoded if encoded else _collate,
        pin_memory=rt.device.type == "cuda" and not encoded,
        persistent_workers=False,
    )
    bar = progress_bar(
        len(dataset) if batches is None else sum(len(b) for b in batches),
        desc,
        "img" if isinstance(dataset, (ImageList, EncodedImages)) else "it",
        rt.progress,
    )
    with bar:
        for items, indices, errors in loader:
            _report(errors, rt)
            bar.update(len(indices) + len(errors))
            if items is not None:
                yield items, indices


def iter_images(
    paths: Sequence[str], transform: Callable, rt: Runtime, desc: str = "images"
) -> Iterator[Tuple[torch.Tensor, List[int]]]:
    """``(images on the device, channels-last, indices)`` batches of the images at ``paths``
    through ``transform``: decoded and transformed on the device where
    :func:`~vgray.data.images.device_transform` says so, else in loader workers.

    On the device path batch k+1 is decoded (:func:`lookahead`, one thread) while the caller runs
    batch k, and every batch comes ready for the caller's stream (:func:`ready_for_caller`): each
    caller (descriptors, BatchNorm calibration, NetVLAD's local features, the bench) gets both by
    going through here."""
    on_device = device_transform(rt, transform)
    if on_device is None:
        for images, indices in iter_batches(ImageList(paths, transform), rt, desc):
            yield rt.to_device(images), indices
        return
    stream = torch.cuda.Stream(rt.device) if rt.device.type == "cuda" else None

    def decode(items, indices):
        return _decode_batch(items, indices, paths, on_device, rt, stream)

    for images, indices, ready in lookahead(iter_batches(EncodedImages(paths), rt, desc), decode):
        yield ready_for_caller(images, ready), indices


def lookahead(batches: Generator, work: Callable) -> Iterator:
    """``work(*batch)`` of each of ``batches``, in order, None results left out; the work of the
    next batch runs in one thread while the caller holds the current result, so that on a GPU the
    decode of batch k+1 overlaps the forward of batch k (torchvision's nvjpeg call blocks its host
    thread until the decode ends; torch releases the GIL meanwhile). An exception of ``work`` is
    raised here at its batch's turn, once; ``batches`` is closed then (its loader workers end now,
    not when the traceback is collected)."""
    with closing(batches), ThreadPoolExecutor(max_workers=1, thread_name_prefix="vgray-decode") as pool:
        pending = None
        for batch in batches:
            future = pool.submit(work, *batch)
            if pending is not None and (result := pending.result()) is not None:
                yield result
            pending = future
        if pending is not None and (result := pending.result()) is not None:
            yield result


def _on_stream(stream: Optional[torch.cuda.Stream]):
    """The context that makes ``stream`` current (none on the CPU)."""
    return nullcontext() if stream is None else torch.cuda.stream(stream)


def _decode_batch(
    items: ByteBatch,
    indices: List[int],
    paths: Sequence[str],
    on_device,
    rt: Runtime,
    stream: Optional[torch.cuda.Stream],
):
    """``(images channels-last, indices, ready)`` of one batch decoded and transformed on
    ``rt.device``, or None when none could be read; unreadable ones reported (:func:`_report`).
    ``ready``: on CUDA an event recorded on ``stream`` after the batch's work, else None.

    On CUDA it runs on ``stream``, this extraction's side stream. torchvision 0.29's nvjpeg call
    decodes on a private stream, waits for it on the host, then makes the current stream (here
    ``stream``) wait for it; it does not make its private stream wait for pending work on the
    current one, so its output buffers (from the caching allocator) could be blocks that the
    previous batch's transform, still queued, reads. Hence the host waits for ``stream`` first."""
    if stream is not None:
        stream.synchronize()
    device = rt.device if stream is None else stream.device  # cuda with its index, as nvjpeg wants
    with _on_stream(stream):
        images, errors = decode_on_device(items, [paths[i] for i in indices], device)
        _report(errors, rt)
        if errors:
            keep = [k for k, image in enumerate(images) if image is not None]
            images, indices = [images[k] for k in keep], [indices[k] for k in keep]
        if not images:
            return None
        images = on_device.on_tensors(images).contiguous(memory_format=torch.channels_last)
    ready = None
    if stream is not None:
        ready = torch.cuda.Event()
        ready.record(stream)
    return images, indices, ready


def ready_for_caller(images: torch.Tensor, ready: Optional[torch.cuda.Event]) -> torch.Tensor:
    """``images`` made on the side stream (:func:`_decode_batch`), safe on the caller's current
    stream: that stream waits for the event ``ready`` (no host sync; the event, not the side stream,
    so that it does not wait for the next batch's decode already queued there), and the caching
    allocator is told the images are used there (``record_stream``), so it does not hand their
    memory to a later decode before the caller's work on them ends. The one decode-then-forward
    sync, for every caller of :func:`iter_images`; on the CPU (``ready`` None) it returns
    ``images`` as they are."""
    if ready is None:
        return images
    current = torch.cuda.current_stream(images.device)
    current.wait_event(ready)
    images.record_stream(current)
    return images


def iter_descriptors(
    model: torch.nn.Module, paths: Sequence[str], transform: Callable, rt: Runtime, desc: str = "images"
) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """``(indices, descriptors float32)`` per batch, in path order."""
    model = rt.prepare(model)
    with torch.inference_mode(), rt.autocast():
        for images, indices in iter_images(paths, transform, rt, desc):
            out = rt.forward(model, images)
            yield np.asarray(indices, dtype=np.int64), out.float().cpu().numpy()


def extract_descriptors(
    model: torch.nn.Module,
    paths: Sequence[str],
    transform: Callable,
    rt: Runtime,
    features_dim: int,
    desc: str = "images",
) -> Tuple[np.ndarray, np.ndarray]:
    """All descriptors ``(n, features_dim)`` float32 and a mask of the images that could be read."""
    out = np.zeros((len(paths), features_dim), dtype=np.float32)
    valid = np.zeros(len(paths), dtype=bool)
    for indices, descriptors in iter_descriptors(model, paths, transform, rt, desc):
        out[indices] = descriptors
        valid[indices] = True
    return out, valid


def calibrate_batchnorm(
    model: torch.nn.Module, paths: Sequence[str], transform: Callable, rt: Runtime, desc: str = "batchnorm statistics"
) -> torch.nn.Module:
    """Running BatchNorm statistics of ``model`` from the images at ``paths``: one forward pass in
    train mode, no weight update; returns the model on the device in eval mode.

    A randomly initialised network evaluates with BatchNorm's initial statistics (mean 0, variance 1);
    its first training steps replace them with the data's, which alone moves recall by several
    points. The untrained network calibrated this way is the baseline that isolates what the weight
    updates of training did."""
    # torch's stubs lack Module.to(device, memory_format=...), which Module.to accepts.
    model = model.to(rt.device, memory_format=torch.channels_last).train()  # type: ignore[call-overload]
    with torch.no_grad():
        for images, _ in iter_images(paths, transform, rt, desc):
            model(images)
    return model.eval()


def sample_local_features(
    model,
    paths: Sequence[str],
    transform: Callable,
    rt: Runtime,
    total: int = 50_000,
    per_image: int = 100,
    seed: int = 0,
) -> np.ndarray:
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
            batch = local.flatten(2).transpose(1, 2).cpu().numpy()  # (B, hw, C)
            for per in batch:
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
