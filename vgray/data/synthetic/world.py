"""The world: one neighbourhood per split, a jittered Manhattan street grid with its buildings on a
1 m occupancy map, its ground on a 0.5 m map, and the buildings' styles."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vgray.data.synthetic.facade import building_styles
from vgray.data.synthetic.geo import ORIGIN_EAST, ORIGIN_NORTH
from vgray.data.synthetic.ground import ground_map
from vgray.data.synthetic.presets import SPLITS, Preset

GAP_M = 500.0  # between the neighbourhoods of two splits, west to east
MARGIN_M = 30  # ring of buildings around the streets, so that every ray ends on a wall


@dataclass
class World:
    """One neighbourhood. Local metres: x east, y north, origin at the map's south-west corner."""

    split_index: int
    east0: float  # UTM easting/northing of the local origin
    north0: float
    occ: np.ndarray  # (Ny, Nx) int32, 1 m cells: 0 = open ground, k > 0 = building k
    ground: np.ndarray  # (2Ny, 2Nx) uint8, 0.5 m cells: ground classes (``ground.G_*``)
    xs: np.ndarray  # centre x of north-south streets
    ys: np.ndarray  # centre y of east-west streets
    widths_x: np.ndarray  # their widths
    widths_y: np.ndarray
    b: dict  # building style tables, each indexed by building id


def street_plan(rng: np.random.Generator, n_blocks: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Centres and widths of ``n_blocks + 1`` parallel streets, and the map extent (m)."""
    widths = rng.choice(np.array([10, 12, 12, 14, 16, 20]), size=n_blocks + 1)
    blocks = rng.integers(28, 62, size=n_blocks)
    centres = np.empty(n_blocks + 1)
    pos = MARGIN_M + widths[0] / 2
    for i in range(n_blocks + 1):
        centres[i] = pos
        if i < n_blocks:
            pos += widths[i] / 2 + blocks[i] + widths[i + 1] / 2
    extent = int(math.ceil(pos + widths[-1] / 2 + MARGIN_M))
    return centres, widths.astype(np.float64), extent


def _lots(rng: np.random.Generator, lo: int, hi: int) -> list[tuple[int, int]]:
    """Split [lo, hi) into consecutive building frontages of 7-22 m."""
    out, a = [], lo
    while hi - a > 0:
        w = int(rng.integers(7, 23))
        if hi - (a + w) < 7:  # never leave a sliver
            w = hi - a
        out.append((a, a + w))
        a += w
    return out


def build_world(preset: Preset, seed: int, split_index: int) -> World:
    """The neighbourhood of split ``split_index`` (0 train, 1 val, 2 test); deterministic."""
    spec = preset.split(SPLITS[split_index])
    rng = np.random.default_rng([seed, split_index, 0x5EED])
    xs, wx, nx = street_plan(rng, spec.blocks_x)
    ys, wy, ny = street_plan(rng, spec.blocks_y)
    occ, centre = _occupancy(rng, xs, wx, nx, ys, wy, ny)
    ground = ground_map(rng, xs, wx, nx, ys, wy, ny)
    b = building_styles(seed, split_index, centre, len(centre))
    # The splits lie west to east with GAP_M between them; each one's width depends on the preset.
    east0 = ORIGIN_EAST
    for k in range(split_index):
        east0 += _extent(preset, seed, k) + GAP_M
    return World(split_index, east0, ORIGIN_NORTH, occ, ground, xs, ys, wx, wy, b)


def _occupancy(rng: np.random.Generator, xs, wx, nx: int, ys, wy, ny: int) -> tuple[np.ndarray, list]:
    """The (ny, nx) 1 m occupancy map (0: open ground, k > 0: building k) and the buildings' lot
    centres (index 0: a placeholder for "no building")."""
    # Open ground: the streets. Everything else starts as one building per lot.
    cx = np.arange(nx) + 0.5
    cy = np.arange(ny) + 0.5
    street_x = (np.abs(cx[None, :] - xs[:, None]) < wx[:, None] / 2).any(0)  # (nx,)
    street_y = (np.abs(cy[None, :] - ys[:, None]) < wy[:, None] / 2).any(0)  # (ny,)
    occ = np.zeros((ny, nx), np.int32)

    spans_x = _false_runs(street_x)
    spans_y = _false_runs(street_y)
    bid = 0
    centre = [(0.0, 0.0)]  # lot centres, to give nearby buildings a shared style
    for y0, y1 in spans_y:
        for x0, x1 in spans_x:
            # A block is a grid of lots: frontages along x, depths along y.
            for ly0, ly1 in _lots(rng, y0, y1):
                for lx0, lx1 in _lots(rng, x0, x1):
                    bid += 1
                    centre.append(((lx0 + lx1) / 2, (ly0 + ly1) / 2))
                    # One lot in five is set back from its neighbours, opening alleys and
                    # glimpses of the buildings behind.
                    inset = int(rng.integers(1, 4)) if rng.random() < 0.2 else 0
                    occ[ly0 + inset : ly1 - inset, lx0 + inset : lx1 - inset] = bid
    return occ, centre


def _false_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of each run of False in a 1-D boolean array."""
    m = np.r_[True, mask, True]
    d = np.diff(m.astype(np.int8))
    starts = np.flatnonzero(d == -1)
    stops = np.flatnonzero(d == 1)
    return list(zip(starts.tolist(), stops.tolist()))


def _extent(preset: Preset, seed: int, split_index: int) -> int:
    """East-west extent (m) of a split's map, without building the whole world."""
    spec = preset.split(SPLITS[split_index])
    rng = np.random.default_rng([seed, split_index, 0x5EED])
    return street_plan(rng, spec.blocks_x)[2]


def street_grid(preset: Preset, seed: int, split_index: int) -> tuple[np.ndarray, np.ndarray]:
    """Centres of the north-south (``xs``) and east-west (``ys``) streets of a split, the same as
    :func:`build_world`'s, without its maps: what the image counts need, in microseconds."""
    spec = preset.split(SPLITS[split_index])
    rng = np.random.default_rng([seed, split_index, 0x5EED])
    xs = street_plan(rng, spec.blocks_x)[0]
    ys = street_plan(rng, spec.blocks_y)[0]
    return xs, ys
