"""Numeric helpers of the procedural world: a coordinate hash and HSV colours."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import numpy.typing as npt


def hash01(*keys: npt.ArrayLike) -> np.ndarray:
    """Deterministic per-element hash of integer arrays to floats in [0, 1) (lowbias32 mixing).

    Procedural textures need "random but fixed" values per window, brick or paving tile; hashing
    their integer coordinates gives that without storing any texture.
    """
    h = np.uint32(0x9E3779B9)
    with np.errstate(over="ignore"):
        for k in keys:
            h = (h ^ np.asarray(k).astype(np.int64).astype(np.uint32)) * np.uint32(0x7FEB352D)
            h = h ^ (h >> np.uint32(15))
            h = h * np.uint32(0x846CA68B)
            h = h ^ (h >> np.uint32(16))
    return h.astype(np.float32) * np.float32(1.0 / 4294967296.0)


def hsv_to_rgb(h, s, v) -> np.ndarray:
    """RGB (N, 3) of HSV colours given as arrays in [0, 1]."""
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    return np.stack([r, g, b], 1)
