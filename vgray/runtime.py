"""Where and how a network runs: device, precision (autocast), channels-last, ``torch.compile``.

Part of the ground: it imports nothing of vgray but :mod:`vgray.errors`, so that models (profile),
training and evaluation share one runtime without importing each other. On a GPU the network runs
under bf16 autocast with pinned, non-blocking transfers; on the CPU the same code in fp32;
``test.compile`` runs it through ``torch.compile`` (compiled once per model object, batches padded
to one shape so that it compiles once).
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Optional

import torch

from vgray.errors import BadInput

#: The values of ``data.decode``.
DECODERS = ("auto", "pil", "torchvision")


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device of a ``device`` key value (``auto``: CUDA when present, else the CPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BadInput(f"device={name}: no CUDA device is available here; use auto or cpu")
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
    decode: str = "pil"     # data.decode: auto, pil, torchvision
    compile: bool = False   # test.compile

    @classmethod
    def from_config(cls, cfg, progress: bool = True) -> "Runtime":
        """The runtime of a config (``device``, ``precision``, ``test.batch_size``, ``test.compile``,
        ``data.num_workers``, ``data.skip_corrupt``, ``data.decode``)."""
        device = resolve_device(cfg.device)
        return cls(device=device, dtype=resolve_precision(cfg.precision, device),
                   batch_size=cfg.test.batch_size, num_workers=default_workers(cfg.data.num_workers),
                   skip_corrupt=cfg.data.skip_corrupt, progress=progress,
                   decode=cfg.data.decode, compile=cfg.test.compile)

    def decodes_on_device(self) -> bool:
        """Whether images are decoded (and transformed, where the transform can run on tensors) on
        the device: ``data.decode`` torchvision, or auto on a CUDA device."""
        if self.decode not in DECODERS:
            raise BadInput(f"data.decode={self.decode!r} is not allowed; choose one of: {', '.join(DECODERS)}")
        return not (self.decode == "pil" or (self.decode == "auto" and self.device.type != "cuda"))

    def autocast(self):
        """The autocast context of this runtime's dtype (none in fp32)."""
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    # Channels-last suits cuDNN's tensor-core kernels and oneDNN's CPU convolutions alike
    # (measured 1.3x on ResNet-18 conv4 here, 2 CPU cores).
    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` on the device, channels-last, in eval mode; compiled with ``test.compile``."""
        model = model.to(self.device, memory_format=torch.channels_last).eval()
        return compiled(model) if self.compile else model

    def to_device(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` on the device, channels-last (non-blocking from pinned memory)."""
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
