"""Where and how a network runs: device, precision (autocast), channels-last, ``torch.compile``.

Part of the ground: it imports nothing of vgray but :mod:`vgray.errors`, so that models (profile),
training and evaluation share one runtime without importing each other. On a GPU the network runs
under bf16 autocast with pinned, non-blocking transfers; on the CPU the same code in fp32;
``test.compile`` runs it through ``torch.compile`` (compiled once per model object, batches padded
or split to one shape so that it compiles once; images of another size run eager).
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, cast

import torch

from vgray.errors import BadInput

#: The values of ``data.decode``.
DECODERS = ("auto", "pil", "torchvision")


# Where a process's GPUs come from. Outside Ray: the machine (``auto`` is CUDA when present). In a
# process Ray started (a sweep trial, a Ray Data actor), :mod:`vgray.distributed` installs a source of
# the GPU ids Ray assigned to it (:func:`set_gpu_assignment`): Ray 2.60 leaves CUDA_VISIBLE_DEVICES
# alone for a worker with no GPU (it would see every GPU of the node), so the machine cannot say.
_gpu_assignment: Optional[Callable[[], Optional[Sequence[str]]]] = None


def set_gpu_assignment(source: Optional[Callable[[], Optional[Sequence[str]]]]) -> None:
    """Install ``source``: called at each :func:`resolve_device`, it returns the GPU ids assigned to
    this process (``[]``: none, so the CPU), or None where nothing assigns GPUs (the machine decides)."""
    global _gpu_assignment
    _gpu_assignment = source


def assigned_gpus() -> Optional[List[str]]:
    """The GPU ids assigned to this process by the installed source, or None (none installed, or
    not a process it assigns GPUs to)."""
    ids = _gpu_assignment() if _gpu_assignment is not None else None
    return None if ids is None else [str(i) for i in ids]


def _visible_cuda() -> Optional[List[str]]:
    """CUDA_VISIBLE_DEVICES as a list (None when unset)."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def _local_ordinal(gpu_id: str, visible: Optional[List[str]]) -> int:
    """The CUDA ordinal, in this process, of the node's GPU ``gpu_id``: its place in
    CUDA_VISIBLE_DEVICES (which Ray sets to the assigned ids, so usually 0), or the id itself when
    nothing narrows the process's view (RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES)."""
    if visible is not None and gpu_id in visible:
        return visible.index(gpu_id)
    return int(gpu_id) if gpu_id.isdigit() else 0


def choose_device(
    name: str, assigned: Optional[Sequence[str]], visible: Optional[Sequence[str]] = None, cuda_present: bool = False
) -> torch.device:
    """The device a ``device`` key value picks, without asking whether CUDA works (see
    :func:`resolve_device`). ``assigned``: the GPU ids a scheduler gave this process (None: no
    scheduler, so ``auto`` is CUDA when ``cuda_present``); ``visible``: CUDA_VISIBLE_DEVICES as a list.

    With an assignment, ``auto`` is the CPU when no GPU was assigned and else the first assigned
    GPU at its local ordinal; ``cuda:N`` means the N-th assigned GPU (``cuda`` the first), and is
    refused (one line) when fewer were assigned: a process never uses a GPU its scheduler did not
    give it."""
    visible = None if visible is None else [str(v) for v in visible]
    if assigned is None:
        if name == "auto":
            return torch.device("cuda" if cuda_present else "cpu")
        return torch.device(name)
    assigned = [str(i) for i in assigned]
    device = torch.device("cuda" if name == "auto" and assigned else "cpu" if name == "auto" else name)
    if device.type != "cuda":
        return device
    index = device.index or 0
    if index >= len(assigned):
        have = f"{len(assigned)} GPU(s) ({', '.join(assigned)})" if assigned else "no GPU"
        raise BadInput(
            f"device={name}: Ray assigned this worker {have}; cuda:N counts the worker's own GPUs "
            f"from 0 (use auto, or give the trial/actor more GPUs)"
        )
    return torch.device("cuda", _local_ordinal(assigned[index], visible))


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device of a ``device`` key value (``auto``: CUDA when present, else the CPU; in a
    process Ray started, what Ray assigned it: see :func:`choose_device`)."""
    assigned = assigned_gpus()
    cuda = torch.cuda.is_available()
    device = choose_device(name, assigned, _visible_cuda(), cuda_present=cuda)
    if device.type == "cuda" and not cuda:
        if assigned:
            raise BadInput(
                f"device={name}: Ray assigned GPU {', '.join(assigned)} to this worker but CUDA is "
                f"not available in it; declare only the GPUs a node has"
            )
        raise BadInput(f"device={name}: no CUDA device is available here; use auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise BadInput(
            f"device={name}: CUDA ordinal {device.index} does not exist here "
            f"({torch.cuda.device_count()} visible GPU(s))"
        )
    return device


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The autocast dtype of a ``precision`` key value on ``device`` (``auto``: bf16 on CUDA, else fp32)."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return torch.bfloat16 if precision == "bf16" else torch.float32


def default_workers(num_workers: Optional[int]) -> int:
    """Loader processes for ``data.num_workers`` (None: one per CPU, at most 8)."""
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
    decode: str = "pil"  # data.decode: auto, pil, torchvision
    compile: bool = False  # test.compile

    @classmethod
    def from_config(cls, cfg: Any, progress: bool = True) -> "Runtime":
        """The runtime of a config (``device``, ``precision``, ``test.batch_size``, ``test.compile``,
        ``data.num_workers``, ``data.skip_corrupt``, ``data.decode``)."""
        device = resolve_device(cfg.device)
        return cls(
            device=device,
            dtype=resolve_precision(cfg.precision, device),
            batch_size=cfg.test.batch_size,
            num_workers=default_workers(cfg.data.num_workers),
            skip_corrupt=cfg.data.skip_corrupt,
            progress=progress,
            decode=cfg.data.decode,
            compile=cfg.test.compile,
        )

    def decodes_on_device(self) -> bool:
        """Whether images are decoded (and transformed, where the transform can run on tensors) on
        the device: ``data.decode`` torchvision, or auto on a CUDA device."""
        if self.decode not in DECODERS:
            raise BadInput(f"data.decode={self.decode!r} is not allowed; choose one of: {', '.join(DECODERS)}")
        return not (self.decode == "pil" or (self.decode == "auto" and self.device.type != "cuda"))

    def autocast(self) -> AbstractContextManager[None]:
        """The autocast context of this runtime's dtype (none in fp32)."""
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    # Channels-last suits cuDNN's tensor-core kernels and oneDNN's CPU convolutions alike
    # (measured 1.3x on ResNet-18 conv4 here, 2 CPU cores).
    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` on the device, channels-last, in eval mode; compiled with ``test.compile``."""
        # torch's stubs lack Module.to(device, memory_format=...), which Module.to accepts.
        model = model.to(self.device, memory_format=torch.channels_last).eval()  # type: ignore[call-overload]
        return compiled(model) if self.compile else model

    def to_device(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` on the device, channels-last (non-blocking from pinned memory)."""
        return images.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)

    def forward(self, model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        """``model(images)`` (images on the device). Compiled, one graph per model and input shape
        class: a short batch is padded with zeros to ``batch_size`` (eval-mode networks treat
        samples independently) and a longer one split into ``batch_size`` pieces, so that one graph
        of one shape serves every batch; images of another size than the first the compiled model
        saw (the crops of ``five_crops`` and its kin, ``single_query``'s sizes) run eager instead
        of compiling again. A compiler that cannot work here ends in one line."""
        if not self.compile:
            return model(images)
        eager: Optional[Callable[[torch.Tensor], torch.Tensor]] = getattr(model, "_orig_mod", None)
        if eager is not None:
            size = tuple(images.shape[1:])
            if model.__dict__.setdefault("_vgray_image_shape", size) != size:
                return eager(images)
        n = len(images)
        if n > self.batch_size:
            return torch.cat(
                [self.forward(model, images[i : i + self.batch_size]) for i in range(0, n, self.batch_size)]
            )
        if n < self.batch_size:
            images = torch.cat([images, images.new_zeros((self.batch_size - n, *images.shape[1:]))])
            images = images.contiguous(memory_format=torch.channels_last)
        try:
            return model(images)[:n]
        except Exception as exc:
            if type(exc).__module__.startswith(("torch._dynamo", "torch._inductor")):
                first = (str(exc).strip().splitlines() or [""])[-1][:200]
                raise BadInput(
                    f"test.compile=true: torch.compile cannot compile the network on this machine "
                    f"({type(exc).__name__}: {first}); set test.compile=false"
                ) from exc
            raise


class _CompiledSlot:
    """Holds a model's compiled wrapper in the model's ``__dict__`` (not a submodule, so not in its
    state dict); a copy or pickle of the model gets an empty slot, never the compiled graph."""

    def __init__(self, module: Optional[torch.nn.Module] = None) -> None:
        self.module = module

    def __deepcopy__(self, memo: Dict[int, object]) -> _CompiledSlot:
        return _CompiledSlot()

    def __reduce__(self) -> Tuple[type[_CompiledSlot], Tuple[()]]:
        return _CompiledSlot, ()


def compiled(model: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile(model)``, made once per model object and kept with it (it lives and dies
    with the model), so that repeated extractions do not compile again."""
    slot: Optional[_CompiledSlot] = model.__dict__.get("_vgray_compiled")
    if slot is None or slot.module is None:
        # torch.compile of a Module is an OptimizedModule, a Module (its stubs say a callable).
        slot = _CompiledSlot(cast(torch.nn.Module, torch.compile(model, dynamic=False)))
        model.__dict__["_vgray_compiled"] = slot
    assert slot.module is not None  # compiled just above, or by an earlier call
    return slot.module
