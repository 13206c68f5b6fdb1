"""Data-parallel training (``train.workers > 1``): what one of N workers does so that the N of them
train the model one worker would with the whole batch.

The workers are processes of one ``torch.distributed`` group (gloo on CPUs, NCCL on GPUs), set up
by whoever starts them: Ray Train in a sweep or ``vgray train --workers N``
(:mod:`vgray.distributed.ddp`), or ``torch.multiprocessing`` in the benchmark. The training loop
(:func:`vgray.train.loop.train`) asks :meth:`Group.current` where it stands; outside a group (or in
a group of one) nothing here changes a thing.

What stays equal to one worker with the whole batch:

* the **global batch** (``train.batch_size`` triplets, ``train.places_per_batch`` places) is split
  over the workers in contiguous near-equal parts (:meth:`Group.part`); each worker's loss is scaled
  by its share (:func:`split_batches`' weights) so that DDP's gradient average is the gradient of
  the whole batch's mean loss; the places regime's loss and miner see the whole batch through
  pytorch-metric-learning's distributed wrappers (descriptors gathered across workers);
* **what every worker draws**: the run's numpy generator (mining, sampling, the order of triplets)
  is seeded alike on every worker and kept alike, so every worker mines the same triplets from the
  same cache and batches them the same way; torch's generator (augmentations, flips) is seeded
  ``seed + rank``, so that workers do not augment their images alike;
* **extraction** (the mining cache, validation, the final test) is split over the workers and
  gathered (:class:`ShardedExtractor`): every worker ends with the same descriptors, in order;
* the **model** starts from rank 0's weights (DDP broadcasts them), and only rank 0 writes
  checkpoints and reports.

What does not stay equal: BatchNorm in train mode normalises each worker's part of the batch with
that part's statistics (as the paper's DataParallel did on each GPU) unless ``train.sync_bn``
converts it to SyncBatchNorm (GPUs only: torch's SyncBatchNorm refuses CPU tensors), and the
augmentations' random draws differ (a different stream per worker).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch


@dataclass(frozen=True)
class Group:
    """This process's place among the workers: ``rank`` of ``world``; ``Group()`` is one worker."""

    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> "Group":
        """The ``torch.distributed`` group this process belongs to, or one worker outside any."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def main(self) -> bool:
        """Rank 0: the worker that writes checkpoints and reports."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """More than one worker: batches are split and descriptors gathered."""
        return self.world > 1

    def part(self, n: int) -> slice:
        """This worker's contiguous part of ``n`` items (the first ``n % world`` workers one more)."""
        q, r = divmod(n, self.world)
        lo = self.rank * q + min(self.rank, r)
        return slice(lo, lo + q + (self.rank < r))

    def gather_rows(self, x: np.ndarray) -> np.ndarray:
        """Every worker's ``x`` (its part's rows, any count) concatenated in rank order, on every
        worker: one tensor all-gather (padded to the largest part) on the backend's device, no
        pickling of the descriptors."""
        if not self.active:
            return x
        import torch.distributed as dist

        sizes = self.gather_objects(len(x))
        device = _collective_device()
        flag = x.dtype == np.bool_  # gloo and NCCL gather bytes, not booleans
        mine = torch.from_numpy(np.ascontiguousarray(x.astype(np.uint8) if flag else x))
        padded = torch.zeros((max(sizes), *mine.shape[1:]), dtype=mine.dtype, device=device)
        padded[: len(x)] = mine.to(device)
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        out = np.concatenate([p[:n].cpu().numpy() for p, n in zip(parts, sizes)])
        return out.astype(bool) if flag else out

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over the workers (a copy; in place on the tensor's device)."""
        if not self.active:
            return values
        import torch.distributed as dist

        out = values.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def gather_objects(self, obj: Any) -> List[Any]:
        """Every worker's ``obj``, in rank order."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out: List[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast_state(self, model: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers copied to every worker (after rank 0 alone loaded a file)."""
        if not self.active:
            return
        import torch.distributed as dist

        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)

    def broadcast_buffers(self, model: torch.nn.Module) -> None:
        """Rank 0's buffers (BatchNorm's running statistics) copied to every worker. DDP broadcasts
        them at the start of each training forward, so after a step each worker holds its own
        update; an eval-mode extraction first takes rank 0's, as the checkpoint does."""
        if not self.active:
            return
        import torch.distributed as dist

        for tensor in model.buffers():
            dist.broadcast(tensor, src=0)

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()


ONE = Group()  # one worker: no group


def _collective_device() -> torch.device:
    """Where the group's collectives take their tensors: the worker's GPU under NCCL, else the CPU."""
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sync_batchnorm(model: torch.nn.Module, group: Group, on: bool) -> None:
    """``train.sync_bn`` in a group: the network's BatchNorm layers become SyncBatchNorm, in place
    (same parameters, same state-dict keys), so that train-mode statistics are the whole batch's."""
    if on and group.active:
        for name, child in list(model.named_children()):
            setattr(model, name, torch.nn.SyncBatchNorm.convert_sync_batchnorm(child))


def wrap(model: torch.nn.Module, group: Group) -> torch.nn.Module:
    """The module the training steps run: ``model`` itself for one worker, else DDP around it
    (rank 0's weights and buffers broadcast to all). ``model`` stays the bare network:
    extraction, checkpoints and evaluation use it (no ``module.`` prefix is ever written; an
    eval-mode forward needs no other worker)."""
    if not group.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    # The steps feed channels-last images (vgray.runtime), so conv gradients come channels-last: the
    # weights in that layout too, or DDP copies every gradient into its buckets' other layout.
    model.to(memory_format=torch.channels_last)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def has_batchnorm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def split_batches(n: int, batch_size: int, group: Group, order: np.ndarray) -> List[Tuple[List[int], float]]:
    """This worker's part of every global batch of ``batch_size`` items of ``order`` (a permutation
    of ``range(n)``, the same on every worker) and its loss weight ``local * world / global``: the
    weighted losses averaged over the workers (DDP's gradient average) are the global batch's mean.
    A worker left without an item in a last short batch takes the batch's first item with weight 0
    (DDP needs every worker in every step); its BatchNorm statistics see that one item."""
    out = []
    for start in range(0, n, batch_size):
        chunk = order[start : start + batch_size]
        mine = chunk[group.part(len(chunk))].tolist()
        if mine:
            out.append((mine, len(mine) * group.world / len(chunk)))
        else:
            out.append(([int(chunk[0])], 0.0))
    return out


class ShardedExtractor:
    """The extractor contract of :func:`vgray.evaluate.evaluate.evaluate_split` over a group: each
    worker extracts its part of the paths (``inner``, default in-process) and every worker gets
    the whole array, in order."""

    def __init__(self, group: Group, inner: Optional[Callable] = None):
        from vgray.evaluate.extract import extract_descriptors

        self.group, self.inner = group, inner or extract_descriptors

    def __call__(self, model, paths: Sequence[str], transform, rt, dim: int, desc: str = "images", **kwargs):
        self.group.broadcast_buffers(model)  # every part with rank 0's BatchNorm statistics
        mine = paths[self.group.part(len(paths))]
        x, valid = self.inner(model, mine, transform, rt, dim, desc=desc, **kwargs)
        return self.group.gather_rows(np.asarray(x)), self.group.gather_rows(np.asarray(valid))
