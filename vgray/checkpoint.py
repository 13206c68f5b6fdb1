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
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, NoReturn, Optional, Sequence, Tuple, Union, cast

import numpy as np
import numpy._core.multiarray  # loaded by numpy itself; imported for its name in _NUMPY_GLOBALS
import torch

from vgray.atomic import atomic_path
from vgray.errors import BadInput, shown
from vgray.paths import check_input

PathLike = Union[str, os.PathLike[str]]


# -- reading -----------------------------------------------------------------------------------

# Some publishers store numpy arrays and scalars beside the weights (cirtorch's meta; the paper's
# train.py: ``recalls`` an array, ``best_r5`` an np.float64); rebuilding them runs no code, so these
# are allowed on top of what ``weights_only`` allows (the dtype classes of the plain numeric dtypes).
_NUMPY_GLOBALS: List[Union[Callable[..., Any], Tuple[Callable[..., Any], str]]] = [
    np.ndarray,
    np.dtype,
    (np._core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
    np._core.multiarray._reconstruct,
    (np._core.multiarray.scalar, "numpy.core.multiarray.scalar"),
    np._core.multiarray.scalar,
    *{type(np.dtype(t)) for t in ("b1", "f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8")},
]


def _torch_load(path: Path, unreadable: str, mmap: bool = False) -> Any:
    """``torch.load(weights_only=True)`` on the CPU; a file torch cannot read raises BadInput
    ``"<unreadable> (<torch's first line>)"``."""
    try:
        with torch.serialization.safe_globals(_NUMPY_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # torch colours part of its message
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if refused:  # a pickled object that is not data: loading it could run code, so none is loaded
            raise BadInput(
                f"{unreadable} (it holds a {shown(refused.group(1), 60)} object; allowed: tensors, numbers, "
                f"strings, lists and dicts, loaded with torch.load(weights_only=True))"
            )
        first = (text.strip().splitlines() or [type(exc).__name__])[0]
        raise BadInput(f"{unreadable} ({first[:160]})")


def load(path: PathLike) -> Dict[str, Any]:
    """A vgray training checkpoint (``last.pt``/``best.pt``) -> its dict; BadInput when the file is
    missing, unreadable, or not a whole training checkpoint (:func:`check_checkpoint` with
    ``resumable``: every entry a resumed run reads, of the type it reads)."""
    path = check_input(path, "checkpoint")
    if not path.is_file():
        raise BadInput(f"checkpoint {path}: no such file")
    obj = _torch_load(path, f"checkpoint {path} is corrupt or not a vgray checkpoint")
    return check_checkpoint(obj, f"checkpoint {path}", resumable=True)


def read_checkpoint(path: PathLike, key: str) -> Dict[str, Any]:
    """A vgray checkpoint (``model`` and ``config``) named by config ``key`` (``model.resume_from``)
    -> its dict, memory-mapped and checked (:func:`check_checkpoint`); BadInput naming ``key=path``
    when it is missing or is none."""
    p = check_input(path, key)
    if not p.is_file():
        raise BadInput(f"{key}={path}: no such file; expected the best.pt or last.pt of a vgray train run")
    obj = _torch_load(p, f"{key}={path} cannot be read as a vgray checkpoint", mmap=True)
    if not (isinstance(obj, dict) and "model" in obj and "config" in obj):
        raise BadInput(
            f"{key}={path} is not a vgray checkpoint (no model and config); expected the best.pt "
            f"or last.pt of a vgray train run"
        )
    return check_checkpoint(obj, f"{key}={path}", resumable=False)


# -- what a vgray checkpoint holds ---------------------------------------------------------------

MODEL_ENTRIES = ("model", "config")
RESUME_ENTRIES = ("model", "config", "optimizer", "mining", "epoch", "best_r5", "not_improved", "history", "rng")


def _is_int(v: object) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_number(v: object) -> bool:
    return _is_int(v) or isinstance(v, (float, np.floating))


def _a(value: object) -> str:
    """``a list``, ``a str 'abc'``: what a wrong value is, for a message (cut to a short length)."""
    name = type(value).__name__
    if value is None:
        return "None"
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    article = "an" if name[:1] in "aeiou" else "a"
    if isinstance(value, (str, bytes, int, float, bool, np.generic)):
        return f"{article} {name} {shown(value, 40)}"
    return f"{article} {name}"


class _Refuse:
    """Raises the one line ``"<what>: <entry> is <value>; allowed: <allowed>"``."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __call__(self, entry: str, value: object, allowed: str) -> NoReturn:
        raise BadInput(f"{self.what}: {entry} is {_a(value)}; allowed: {allowed}")


def check_checkpoint(obj: Any, what: str, resumable: bool) -> Dict[str, Any]:
    """The one structure check of vgray checkpoints, before anything is built from one: a dict;
    ``model`` a state dict (names -> tensors); ``config`` a mapping that :func:`vgray.config.load_config`
    accepts; with ``resumable`` (``last.pt`` for ``--resume``) also ``optimizer`` (a torch optimizer
    state), ``mining`` (a mapping), ``epoch`` and ``not_improved`` (integers >= 0), ``best_r5`` (a
    number in [-1, 100]), ``history`` (one mapping of numbers per epoch) and ``rng`` (states that
    each generator accepts, tried on fresh generators). Returns ``obj``; BadInput naming ``what``, the
    entry and what is allowed."""
    refuse = _Refuse(what)
    if not isinstance(obj, dict):
        raise BadInput(f"{what} holds {_a(obj)}, not a vgray checkpoint (a dict of {', '.join(MODEL_ENTRIES)}, ...)")
    needed = RESUME_ENTRIES if resumable else MODEL_ENTRIES
    missing = [k for k in needed if k not in obj]
    if missing:
        kind = "a resumable vgray checkpoint (last.pt)" if resumable else "a vgray checkpoint"
        raise BadInput(f"{what} lacks {', '.join(missing)}; {kind} holds {', '.join(needed)}")
    _check_state_dict(obj["model"], "model", refuse)
    _check_config(obj["config"], what, refuse)
    if resumable:
        _check_training_state(obj, refuse)
    return obj


def _check_state_dict(state: object, entry: str, refuse: _Refuse) -> None:
    if not isinstance(state, dict) or not state:
        refuse(entry, state, "a state dict (parameter names -> tensors)")
    _check_entries(state, entry, refuse, tensors=True)


def _check_entries(mapping: Dict[Any, Any], entry: str, refuse: _Refuse, tensors: bool) -> None:
    """Every key of ``mapping`` a string, no tensor of a kind no network holds (complex); with
    ``tensors``, every value a tensor (a state dict; a weights file's top also holds other entries)."""
    for k, v in mapping.items():
        if not isinstance(k, str):
            refuse(f"a key of {entry}", k, "parameter names (strings)")
        item = f"{entry}[{shown(k, 60)}]" if entry != "the file" else shown(k, 60)
        if tensors and not isinstance(v, torch.Tensor):
            refuse(item, v, "a tensor")
        if weight_kind(v) == "complex":  # the kinds a network holds: floating, integer, bool
            refuse(item, v, WEIGHTS_ALLOWED)


# -- the one weights check: what kind of number each tensor holds -----------------------------------

# Floating tensors (parameters, most buffers), integer ones (BatchNorm's num_batches_tracked) and
# bool ones (NetVLAD's initialized flag); whether a file's tensor is the kind the network's own is,
# is decided by :func:`mismatches`. Complex tensors are no network's weights.
WEIGHTS_ALLOWED = (
    "floating-point tensors (integer or bool ones only where the network's own are, such as num_batches_tracked)"
)


def weight_kind(value: object) -> Optional[str]:
    """``floating``, ``integer``, ``complex`` or ``bool``: the kind of number a tensor or numpy array
    holds; None for anything else."""
    if isinstance(value, torch.Tensor):
        dtype = value.dtype
        if dtype == torch.bool:
            return "bool"
        return "complex" if dtype.is_complex else "floating" if dtype.is_floating_point else "integer"
    if isinstance(value, (np.ndarray, np.generic)):
        return {"f": "floating", "i": "integer", "u": "integer", "c": "complex", "b": "bool"}.get(value.dtype.kind)
    return None


def _weights_dtype(value: object) -> str:
    return str(getattr(value, "dtype", type(value).__name__)).removeprefix("torch.")


def _check_config(config: object, what: str, refuse: _Refuse) -> None:
    if not isinstance(config, dict):
        refuse("config", config, "the run's config as a mapping of sections")
    from vgray.config import load_config  # the ground's schema: sections, keys, types

    try:
        load_config(base=config)
    except BadInput as exc:
        raise BadInput(f"{what}: config is not a valid vgray config ({exc})")


def _check_training_state(obj: Dict[str, Any], refuse: _Refuse) -> None:
    for entry in ("epoch", "not_improved"):
        if not _is_int(obj[entry]) or obj[entry] < 0:
            refuse(entry, obj[entry], "an integer >= 0")
    r5 = obj["best_r5"]
    if not _is_number(r5) or not -1 <= r5 <= 100:
        refuse("best_r5", r5, "a number in [-1, 100] (a recall in percent; -1 before the first epoch)")
    history = obj["history"]
    if not isinstance(history, list) or len(history) != obj["epoch"]:
        refuse("history", history, f"a list of one mapping of metrics per epoch ({obj['epoch']}, as epoch says)")
    for i, metrics in enumerate(history):
        if not isinstance(metrics, dict):
            refuse(f"history[{i}]", metrics, "a mapping of metric names to numbers")
        for k, v in metrics.items():
            if not isinstance(k, str) or not _is_number(v):
                refuse(f"history[{i}][{shown(k, 40)}]", v, "a number")
    if history and "train_time_s" not in history[-1]:
        refuse(f"history[{len(history) - 1}]", history[-1], "a mapping holding train_time_s")
    _check_optimizer(obj["optimizer"], refuse)
    _check_mining(obj["mining"], refuse)
    _check_rng(obj["rng"], refuse)


def _check_optimizer(state: object, refuse: _Refuse) -> None:
    allowed = "a torch optimizer state (state: a mapping, param_groups: a list of mappings with params)"
    if (
        not isinstance(state, dict)
        or not isinstance(state.get("state"), dict)
        or not isinstance(state.get("param_groups"), list)
        or not state["param_groups"]
    ):
        refuse("optimizer", state, allowed)
    for i, group in enumerate(state["param_groups"]):
        if (
            not isinstance(group, dict)
            or not isinstance(group.get("params"), list)
            or not all(_is_int(p) for p in group["params"])
        ):
            refuse(f"optimizer.param_groups[{i}]", group, "a mapping whose params is a list of parameter ids")
    for pid, per in state["state"].items():
        if not isinstance(per, dict):
            refuse(f"optimizer.state[{shown(pid, 20)}]", per, "a mapping of tensors")
        for k, v in per.items():
            if not (isinstance(v, torch.Tensor) or _is_number(v) or v is None):
                refuse(f"optimizer.state[{shown(pid, 20)}][{shown(k, 40)}]", v, "a tensor or a number")


def _check_mining(state: object, refuse: _Refuse) -> None:
    if not isinstance(state, dict):
        refuse("mining", state, "a mapping (the miner's cache; empty for most mining methods)")
    if "queries" in state or "negatives" in state:  # partial mining's cache of hard negatives
        queries, negatives = state.get("queries"), state.get("negatives")
        if not isinstance(queries, list) or not all(_is_int(q) for q in queries):
            refuse("mining.queries", queries, "a list of query ids")
        if not isinstance(negatives, list) or len(negatives) != len(queries):
            refuse("mining.negatives", negatives, f"a list of {len(queries)} lists of database ids, one per query")
        for i, row in enumerate(negatives):
            if not isinstance(row, list) or not all(_is_int(n) for n in row):
                refuse(f"mining.negatives[{i}]", row, "a list of database ids")


def _check_rng(state: object, refuse: _Refuse) -> None:
    """Every saved RNG state is tried on a fresh generator of its kind: a state that one would
    refuse is refused here, and this process's generators are untouched."""
    if not isinstance(state, dict):
        refuse("rng", state, "a mapping of RNG states (python, numpy_global, numpy, torch, cuda)")
    missing = [k for k in ("python", "numpy_global", "numpy", "torch") if k not in state]
    if missing:
        refuse("rng", state, f"a mapping holding {', '.join(missing)} too")
    trials: Dict[str, Tuple[str, Callable[[Any], object]]] = {
        "python": ("a Python random state (random.getstate())", lambda v: random.Random().setstate(_tuples(v))),
        "numpy_global": (
            "numpy's global state (kind, 624 keys, pos, has_gauss, cached)",
            lambda v: np.random.RandomState().set_state((v[0], np.asarray(v[1], dtype=np.uint32), *v[2:])),
        ),
        "numpy": ("a numpy Generator state (bit_generator.state)", _try_bit_generator),
        "torch": ("a torch CPU RNG state (a uint8 tensor)", lambda v: torch.Generator().set_state(v)),
    }
    for entry, (allowed, trial) in trials.items():
        value = state[entry]
        try:
            if entry == "torch" and not isinstance(value, torch.Tensor):
                raise TypeError
            trial(value)
        except Exception:
            refuse(f"rng.{entry}", value, allowed)
    cuda = state.get("cuda") or []
    if not isinstance(cuda, list) or not all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in cuda):
        refuse("rng.cuda", cuda, "a list of CUDA RNG states (uint8 tensors), one per GPU")


def _try_bit_generator(value: object) -> None:
    if not isinstance(value, dict) or not isinstance(value.get("bit_generator"), str):
        raise TypeError("not a bit generator state")
    kind = getattr(np.random, value["bit_generator"], None)
    if not (isinstance(kind, type) and issubclass(kind, np.random.BitGenerator)):
        raise TypeError("not a numpy bit generator")
    kind().state = value


def made_for(checkpoint: Mapping[str, Any]) -> Dict[str, Any]:
    """The ``model`` section of the config a checkpoint was made with (``{}`` when it has none)."""
    config = checkpoint.get("config")
    model = config.get("model") if isinstance(config, dict) else None
    return model if isinstance(model, dict) else {}


def read_weights_file(path: PathLike, missing: Optional[str] = None) -> Dict[str, Any]:
    """Any weights file (a state dict, a publisher's wrapper of one, a vgray checkpoint) -> its dict.
    ``missing`` is the line to raise when there is no such file (default: one naming the path)."""
    p = check_input(path, "weights file")
    if not p.is_file():
        raise BadInput(missing or f"weights file {path}: no such file")
    obj = _torch_load(p, f"weights file {p} cannot be read as a torch checkpoint")
    if not isinstance(obj, dict):
        raise BadInput(f"weights file {p} holds a {type(obj).__name__}, not a state dict or vgray checkpoint")
    _check_weights_keys(obj, f"weights file {p}")
    return obj


# Where a weights file keeps its state dict: at its top, or wrapped by its publisher or by vgray.
WRAPPERS = ("model_state_dict", "state_dict", "model")


def _check_weights_keys(obj: Dict[Any, Any], what: str) -> None:
    """As a weights file is read, before any layout is tried on it: every key of the file, and of
    the state dict it wraps (:data:`WRAPPERS`), a string; no complex tensor there."""
    refuse = _Refuse(what)
    _check_entries(obj, "the file", refuse, tensors=False)
    for name in WRAPPERS:
        if isinstance(obj.get(name), dict):
            _check_entries(obj[name], name, refuse, tensors=False)


def read_state_dict(path: PathLike, what: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """A file holding one state dict (parameter name -> tensor) -> that dict. ``what`` names the file
    in errors (default: its path)."""
    p = check_input(path, what or "state dict file")
    what = what or str(p)
    if not p.is_file():
        raise BadInput(f"{what}: no such file")
    obj = _torch_load(p, f"{what} cannot be read as a state dict")
    if not (isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values())):
        raise BadInput(f"{what} is not a state dict (parameter names -> tensors)")
    _check_state_dict(obj, "the state dict", _Refuse(what))
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
    have: Tuple[Any, ...] = ()  # shape in the loaded state dict (kind "shape"); its dtype ("dtype")
    want: Tuple[Any, ...] = ()  # shape in the module (kind "shape"); its dtype ("dtype")

    def __str__(self) -> str:
        if self.kind == "shape":
            return f"{self.key} has shape {self.have}, expected {self.want}"
        if self.kind == "dtype":
            return f"{self.key} is a {self.have[0]} tensor where the network has {self.want[0]}"
        if self.kind == "key":
            return f"a key {self.key} is not a string"
        return f"{self.kind} {self.key}"


def _matches(key: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def mismatches(
    own: Mapping[str, Any], loaded: Mapping[str, Any], ignore: Sequence[str] = (), optional: Sequence[str] = ()
) -> List[Mismatch]:
    """Every difference between ``own`` (a module's state dict) and ``loaded``: first the keys of
    ``own`` missing from ``loaded`` or of another shape there, in the module's order (so that the
    first layer that differs comes first), then the keys ``own`` lacks, in ``loaded``'s order.
    Keys matching a glob of ``ignore`` (``"fc.*"``) are compared on neither side; keys of ``own``
    matching ``optional`` may be missing. The weights check comes first: a key that is not a string
    (kind ``key``), then a tensor of another kind of number than the module's (kind ``dtype``: an
    integer, complex or bool tensor for a floating parameter), in the module's order."""
    odd = [k for k in loaded if not isinstance(k, str)]
    if odd:
        return [Mismatch("key", shown(k, 40)) for k in odd]
    kinds = [
        Mismatch("dtype", key, (_weights_dtype(loaded[key]),), (_weights_dtype(value),))
        for key, value in own.items()
        if key in loaded and not _matches(key, ignore) and weight_kind(loaded[key]) != weight_kind(value)
    ]
    if kinds:
        return kinds
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
    allowed = {"dtype": f"; allowed: {WEIGHTS_ALLOWED}", "key": "; allowed: parameter names (strings)"}
    listed = "; ".join(str(m) for m in found[:shown])
    more = f" (and {len(found) - shown} more)" if len(found) > shown else ""
    raise BadInput(f"{what}: {listed}{more}{allowed.get(found[0].kind, '')}")


def check_fits(
    own: Mapping[str, Any],
    loaded: Mapping[str, Any],
    what: str,
    ignore: Sequence[str] = (),
    optional: Sequence[str] = (),
) -> None:
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


def _np_global_state() -> Tuple[str, List[int], int, int, float]:
    # numpy's stubs give get_state() (legacy=True by default) the type of get_state(legacy=False).
    state = cast(Tuple[str, np.ndarray, int, int, float], np.random.get_state())
    kind, keys, pos, has_gauss, cached = state
    return (kind, keys.tolist(), int(pos), int(has_gauss), float(cached))


def _tuples(x: Any) -> Any:
    """``random.setstate`` wants tuples; a round trip may have turned them into lists."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x
