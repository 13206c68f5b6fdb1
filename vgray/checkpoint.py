"""Weights files, read and written in one place: vgray checkpoints and foreign state dicts.

The formats:

- **vgray training checkpoint** (``last.pt``, ``best.pt``): ``model`` (state dict), ``config`` (the
  full config as a dict, so that any checkpoint says what it is), ``optimizer``, ``mining``,
  ``epoch``, ``best_r5``, ``not_improved``, ``history`` and ``rng`` (every RNG state), so that a
  resumed run computes what a straight run computes. Read by :func:`load`.
- **vgray checkpoint as a model source** (``model.resume_from``, a ``best.pt`` as
  ``model.pretrained``, a sweep's kept model): any dict with ``model`` and ``config``. Read by
  :func:`read_checkpoint`, memory-mapped so that reading only its config is cheap.
- **foreign weights file**: a state dict or a publisher's wrapper of one (numpy arrays allowed
  beside the tensors). Read by :func:`read_weights_file`; unwrapped by :mod:`vgray.models.pretrained`.
- **bare state dict** (a saved-descriptor folder's ``model.pt``). Read by :func:`read_state_dict`.

Every read is ``torch.load(weights_only=True)``: no code in a file runs. Every write goes to a
temporary file that is then moved into place (:mod:`vgray.atomic`). Whether a state dict fits a
network is decided by one check, :func:`mismatches` / :func:`check_fits`, which lists every missing,
unexpected and wrongly shaped key in one line.
"""
from __future__ import annotations

import fnmatch
import os
import random
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from vgray.atomic import atomic_path
from vgray.errors import BadInput

PathLike = Union[str, os.PathLike]


# -- reading -----------------------------------------------------------------------------------

# Some publishers store numpy arrays and scalars beside the weights (cirtorch's meta; the paper's
# train.py: ``recalls`` an array, ``best_r5`` an np.float64); rebuilding them runs no code, so these
# are allowed on top of what ``weights_only`` allows (the dtype classes of the plain numeric dtypes).
_NUMPY_GLOBALS = [np.ndarray, np.dtype, (np._core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
                  np._core.multiarray._reconstruct, (np._core.multiarray.scalar, "numpy.core.multiarray.scalar"),
                  np._core.multiarray.scalar,
                  *{type(np.dtype(t)) for t in ("b1", "f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8")}]


def _torch_load(path: Path, unreadable: str, mmap: bool = False) -> Any:
    """``torch.load(weights_only=True)`` on the CPU; a file torch cannot read raises BadInput
    ``"<unreadable> (<torch's first line>)"``."""
    try:
        with torch.serialization.safe_globals(_NUMPY_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BadInput(f"{unreadable} ({first[:160]})")


def load(path: PathLike) -> Dict[str, Any]:
    """A vgray training checkpoint (``last.pt``/``best.pt``) -> its dict; BadInput when the file is
    missing, unreadable, or not a training checkpoint (no ``model`` and ``epoch``)."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"checkpoint {path}: no such file")
    obj = _torch_load(path, f"checkpoint {path} is corrupt or not a vgray checkpoint")
    if not isinstance(obj, dict) or "model" not in obj or "epoch" not in obj:
        raise BadInput(f"checkpoint {path} is not a vgray training checkpoint (no model/epoch)")
    return obj


def read_checkpoint(path: PathLike, key: str) -> Dict[str, Any]:
    """A vgray checkpoint (``model`` and ``config``) named by config ``key`` (``model.resume_from``)
    -> its dict, memory-mapped; BadInput naming ``key=path`` when it is missing or is none."""
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"{key}={path}: no such file; expected the best.pt or last.pt of a vgray train run")
    obj = _torch_load(p, f"{key}={path} cannot be read as a vgray checkpoint", mmap=True)
    if not (isinstance(obj, dict) and isinstance(obj.get("model"), dict) and isinstance(obj.get("config"), dict)):
        raise BadInput(f"{key}={path} is not a vgray checkpoint (no model and config); expected the best.pt "
                       f"or last.pt of a vgray train run")
    return obj


def made_for(checkpoint: Mapping[str, Any]) -> Dict[str, Any]:
    """The ``model`` section of the config a checkpoint was made with (``{}`` when it has none)."""
    config = checkpoint.get("config")
    model = config.get("model") if isinstance(config, dict) else None
    return model if isinstance(model, dict) else {}


def read_weights_file(path: PathLike, missing: Optional[str] = None) -> Dict[str, Any]:
    """Any weights file (a state dict, a publisher's wrapper of one, a vgray checkpoint) -> its dict.
    ``missing`` is the line to raise when there is no such file (default: one naming the path)."""
    p = Path(path)
    if not p.is_file():
        raise BadInput(missing or f"weights file {path}: no such file")
    obj = _torch_load(p, f"weights file {p} cannot be read as a torch checkpoint")
    if not isinstance(obj, dict):
        raise BadInput(f"weights file {p} holds a {type(obj).__name__}, not a state dict or vgray checkpoint")
    return obj


def read_state_dict(path: PathLike, what: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """A file holding one state dict (parameter name -> tensor) -> that dict. ``what`` names the file
    in errors (default: its path)."""
    p = Path(path)
    what = what or str(p)
    if not p.is_file():
        raise BadInput(f"{what}: no such file")
    obj = _torch_load(p, f"{what} cannot be read as a state dict")
    if not (isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values())):
        raise BadInput(f"{what} is not a state dict (parameter names -> tensors)")
    return obj


# -- writing -----------------------------------------------------------------------------------

def save(path: PathLike, payload: Dict[str, Any]) -> None:
    """Write ``payload`` with ``torch.save`` to a temporary file, then ``os.replace``: a reader sees
    the old file or the new one."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


# -- fitting a state dict to a network ---------------------------------------------------------

class Mismatch(NamedTuple):
    """One way a loaded state dict differs from a module's: ``kind`` is ``missing`` (the module has
    ``key``, the file not), ``unexpected`` (the other way round) or ``shape``."""
    kind: str
    key: str
    have: tuple = ()  # shape in the loaded state dict (kind "shape")
    want: tuple = ()  # shape in the module (kind "shape")

    def __str__(self) -> str:
        if self.kind == "shape":
            return f"{self.key} has shape {self.have}, expected {self.want}"
        return f"{self.kind} {self.key}"


def _matches(key: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def mismatches(own: Mapping[str, Any], loaded: Mapping[str, Any], ignore: Sequence[str] = (),
               optional: Sequence[str] = ()) -> List[Mismatch]:
    """Every difference between ``own`` (a module's state dict) and ``loaded``: first the keys of
    ``own`` missing from ``loaded`` or of another shape there, in the module's order (so that the
    first layer that differs comes first), then the keys ``own`` lacks, in ``loaded``'s order.
    Keys matching a glob of ``ignore`` (``"fc.*"``) are compared on neither side; keys of ``own``
    matching ``optional`` may be missing."""
    found = []
    for key, value in own.items():
        if _matches(key, ignore):
            continue
        if key not in loaded:
            if not _matches(key, optional):
                found.append(Mismatch("missing", key))
            continue
        have, want = tuple(getattr(loaded[key], "shape", ())), tuple(value.shape)
        if have != want:
            found.append(Mismatch("shape", key, have, want))
    found += [Mismatch("unexpected", k) for k in loaded if k not in own and not _matches(k, ignore)]
    return found


def refuse(what: str, found: Sequence[Mismatch], shown: int = 3) -> None:
    """Raise BadInput ``"<what>: <first mismatches>; ... (and N more)"`` unless ``found`` is empty."""
    if not found:
        return
    listed = "; ".join(str(m) for m in found[:shown])
    more = f" (and {len(found) - shown} more)" if len(found) > shown else ""
    raise BadInput(f"{what}: {listed}{more}")


def check_fits(own: Mapping[str, Any], loaded: Mapping[str, Any], what: str, ignore: Sequence[str] = (),
               optional: Sequence[str] = ()) -> None:
    """:func:`mismatches`, refused with one line (:func:`refuse`); ``what`` says what does not fit
    what (``"weights file w.pth does not fit vit_base_patch16_224"``)."""
    refuse(what, mismatches(own, loaded, ignore, optional))


def load_fitting(module: torch.nn.Module, state: Mapping[str, Any], what: str, optional: Sequence[str] = ()) -> None:
    """Load ``state`` into ``module`` after :func:`check_fits`; keys matching ``optional`` may be
    absent (they keep the module's values)."""
    check_fits(module.state_dict(), state, what, optional=optional)
    module.load_state_dict(state, strict=not optional)


# -- random number generators ------------------------------------------------------------------

def rng_state(generator: np.random.Generator) -> Dict[str, Any]:
    """Every RNG state a training run draws from (Python, numpy's global and ``generator``, torch,
    CUDA), as plain data that ``weights_only`` loading accepts."""
    return {
        "python": random.getstate(),
        "numpy_global": _np_global_state(),
        "numpy": generator.bit_generator.state,
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: Dict[str, Any], generator: np.random.Generator) -> None:
    """Restore what :func:`rng_state` saved, ``generator``'s state included."""
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy_global"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    generator.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"])
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for index, saved in cuda_states_to_restore(state.get("cuda") or [], visible):
        torch.cuda.set_rng_state(saved, index)


def cuda_states_to_restore(saved: List[Any], visible: int) -> List[Tuple[int, Any]]:
    """``(ordinal, state)`` of the saved CUDA RNG states that this process can restore: one per GPU
    it sees, as many as were saved. A run saved with more GPUs visible than now (or none now)
    restores the ones that exist; with fewer saved, the other GPUs keep their states."""
    return list(enumerate(saved[:visible]))


def _np_global_state():
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return (kind, keys.tolist(), int(pos), int(has_gauss), float(cached))


def _tuples(x):
    """``random.setstate`` wants tuples; a round trip may have turned them into lists."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x
