"""The cost of a model, as the paper reports it next to every recall (Table 3).

gflops: 2 x multiply-accumulates of one forward pass of one image at ``data.resize`` (counted by
torch's FlopCounterMode: convolutions and matrix products); model_size_mb: MiB of the fp32
parameters; extraction_ms: mean time of a forward pass of one image, after warm-up (compiled: per
image of a batch of ``test.batch_size``, the shape extraction compiles for).
"""

from __future__ import annotations

import copy
import time
from typing import Dict

import torch
from torch.utils.flop_counter import FlopCounterMode

from vgray.models.network import GeoLocalizationNet, build_model
from vgray.runtime import Runtime
from vgray.seeding import seed_everything


def count_gflops(model: torch.nn.Module, image_size) -> float:
    """GFLOPs of one image, counted on a copy of the model on the meta device: shapes only, so
    counting VGG16 at 480x640 costs no real forward pass."""
    shadow = copy.deepcopy(model).to("meta").eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        shadow(torch.zeros(1, 3, *image_size, device="meta"))
    return counter.get_total_flops() / 1e9


def model_cost(model: GeoLocalizationNet, image_size) -> Dict[str, float]:
    """``features_dim``, ``gflops``, ``model_size_mb``, ``params`` (static: no timing)."""
    params = sum(p.numel() for p in model.parameters())
    return {
        "features_dim": int(model.features_dim),
        "gflops": count_gflops(model, image_size),
        "model_size_mb": params * 4 / 2**20,
        "params": int(params),
    }


def extraction_ms(model: torch.nn.Module, image_size, rt: Runtime, runs: int = 10, warmup: int = 3) -> float:
    """Mean milliseconds of a forward pass of one image on ``rt``'s device and precision, in
    extraction's mode (inference mode, autocast, :meth:`Runtime.forward`). Eager: a batch of one.
    Compiled (``test.compile``): full batches of ``test.batch_size`` through the graph extraction
    compiled (one graph per model and input shape; a batch of one would compile another), the
    figure being a batch's time over its images."""
    model = rt.prepare(model)
    batch = rt.batch_size if rt.compile else 1
    sync = torch.cuda.synchronize if rt.device.type == "cuda" else (lambda: None)
    with torch.inference_mode(), rt.autocast():
        x = rt.to_device(torch.rand(batch, 3, *image_size))
        for _ in range(warmup):
            rt.forward(model, x)
        sync()
        start = time.perf_counter()
        for _ in range(runs):
            rt.forward(model, x)
        sync()
    return 1000.0 * (time.perf_counter() - start) / runs / batch


def profile(cfg, runs: int = 10) -> Dict[str, float]:
    """``vgray profile``: the cost figures of the model ``cfg`` describes, at ``data.resize``."""
    seed_everything(cfg.seed)
    model = build_model(cfg.model, load_weights=False, image_size=cfg.data.image_size)
    out = model_cost(model, cfg.data.image_size)
    out["extraction_ms"] = extraction_ms(model, cfg.data.image_size, Runtime.from_config(cfg, progress=False), runs)
    return out
