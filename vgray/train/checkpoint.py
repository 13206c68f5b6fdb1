"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint holds the model, the optimizer, the epoch, the best validation score, the patience
counter, the mining state, the metrics so far and every RNG state, so that a resumed run computes
what a straight run computes; and the full config, so that any checkpoint says what it is.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch

from vgray.atomic import atomic_path
from vgray.errors import BadInput


def save(path: Path, payload: Dict[str, Any]) -> None:
    """Write to a temporary file, then ``os.replace``: a reader sees the old file or the new one."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load(path: Path) -> Dict[str, Any]:
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise BadInput(f"checkpoint {path}: no such file")
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BadInput(f"checkpoint {path} is corrupt or not a vgray checkpoint ({first[:160]})")
    if not isinstance(obj, dict) or "model" not in obj or "epoch" not in obj:
        raise BadInput(f"checkpoint {path} is not a vgray training checkpoint (no model/epoch)")
    return obj


def rng_state(generator: np.random.Generator) -> Dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy_global": _np_global_state(),
        "numpy": generator.bit_generator.state,
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: Dict[str, Any], generator: np.random.Generator) -> None:
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy_global"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    generator.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _np_global_state():
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return (kind, keys.tolist(), int(pos), int(has_gauss), float(cached))


def _tuples(x):
    """``random.setstate`` wants tuples; a round trip may have turned them into lists."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x
