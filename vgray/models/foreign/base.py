"""What every foreign layout is made of: a :class:`Layout` claims a file from its keys and converts it
to vgray's names (a :class:`Converted`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch

State = Dict[str, torch.Tensor]


@dataclass(frozen=True)
class Converted:
    """A file in vgray's names: ``state`` for the whole network, ``l2`` where the file says where its
    pooling normalised (None: it does not say), ``made`` the config keys it was made for, or None to
    read them from ``state``; ``optional`` key prefixes of ``state`` that the network may lack (left
    out then: the paper's CCT files carry their SeqPool layer whatever they pooled with)."""

    state: State
    l2: Optional[str] = None
    made: Optional[str] = None
    optional: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Layout:
    """One known layout: ``claims`` says from the keys whether a file is in it (the state dict already
    unwrapped), ``convert`` renames it (None: loaded by the backbone itself)."""

    name: str
    claims: Callable[[dict, dict], bool]
    convert: Optional[Callable[[dict, dict, str], Converted]]


def unwrap(obj: dict) -> dict:
    """The state dict inside a publisher's wrapper (``model_state_dict``, ``state_dict``), without
    DataParallel's ``module.`` prefix."""
    for key in ("model_state_dict", "state_dict"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in obj.items()}
