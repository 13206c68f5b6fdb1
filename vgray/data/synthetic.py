"""A procedural city photographed along its streets: vgray's offline geo-localization dataset.

Nothing can be downloaded where vgray is tested, so this module renders its own dataset in the
VG benchmark format (Berton et al., CVPR 2022)::

    OUT/images/{train,val,test}/{database,queries}/
        @east@north@zone@band@lat@lon@pano@@heading@@@@@note@.jpg

Each split is its own neighbourhood (own streets, own buildings) placed a few hundred metres away
from the others in UTM zone 33T, so train/val/test never share a place. Within a neighbourhood:

* the street plan is a jittered Manhattan grid, drawn on a 1 m occupancy map of buildings (lots of
  random frontage, some set back, which opens alleys) and a 0.5 m ground map (asphalt, kerbs,
  sidewalks, lane dashes, zebra crossings, paved courtyards);
* images are rendered with a vectorised Wolfenstein-style raycaster: per image column one ray is
  marched through the occupancy map (DDA), the wall spans rows by 1/distance, façades are
  procedural per building (plaster/brick/panels/glass, window grids, cornices, shop fronts with
  signs, doors, posters), the floor is cast onto the ground map, above the walls is a sky with
  clouds, and distance fog limits how far a view reaches;
* the database is a Street-View-like capture: a camera every ``spacing`` metres along every street
  centreline, several headings per place (like Pitts30k's views per place), same daylight;
* queries are taken a few metres off database places, with heading/pitch/height/field-of-view
  jitter, under changed conditions: sun position, exposure, gamma, colour cast, dusk and night
  (dark, blue-tinted, lit windows), blur and sensor noise. Their ``note`` field
  (``night|day`` + ``_forward|_sideways|_backward`` + ``_synth``, MSLS's vocabulary) says how each
  was taken.

Everything is a function of ``(preset, seed)``: each image draws from its own random stream keyed
by (seed, split, kind, index), so the bytes do not depend on how the work is split among
processes. :func:`generate` writes a dataset atomically; :func:`ensure` keeps one per
(preset, seed) in vgray's cache, safely under concurrent callers.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vgray.errors import BadInput
from vgray.paths import cache_dir

__all__ = ["VERSION", "PRESETS", "Preset", "SplitSpec", "generate", "ensure", "MARKER"]

#: Bumped whenever the rendered bytes change, so cached datasets of an older look are not reused.
VERSION = 1
#: Written last into a finished dataset; its presence means "complete".
MARKER = "vgray_synthetic.json"

SPLITS = ("train", "val", "test")

# UTM placement: zone 33T (central meridian 15°E, latitude band 40-48°N). The neighbourhoods sit
# near the central meridian at about 41.9°N, laid out west to east with GAP_M metres between them.
UTM_ZONE = 33
UTM_BAND = "T"
ORIGIN_EAST = 500_000.0
ORIGIN_NORTH = 4_640_000.0
GAP_M = 500.0


@dataclass(frozen=True)
class SplitSpec:
    """One neighbourhood: ``blocks_x`` x ``blocks_y`` city blocks and ``queries`` query images."""

    blocks_x: int
    blocks_y: int
    queries: int


@dataclass(frozen=True)
class Preset:
    """Size and capture parameters of a synthetic dataset.

    ``height`` x ``width`` is the JPEG size; ``hfov_deg`` the database camera's horizontal field of
    view; ``spacing_m`` the distance between database places along a street; ``headings`` the
    number of database views per place (evenly spaced, the first along the street); ``night_frac``
    the share of night queries; ``processes`` whether rendering uses all cores.
    """

    name: str
    height: int
    width: int
    train: SplitSpec
    val: SplitSpec
    test: SplitSpec
    hfov_deg: float = 80.0
    spacing_m: float = 10.0
    headings: int = 4
    night_frac: float = 0.15
    processes: bool = False

    def split(self, name: str) -> SplitSpec:
        """The :class:`SplitSpec` of split ``name`` (train, val or test)."""
        return getattr(self, name)


PRESETS: dict[str, Preset] = {
    # Builds in a few seconds on one core; what the test suite uses.
    "tiny": Preset("tiny", 96, 128, train=SplitSpec(3, 3, 100), val=SplitSpec(2, 2, 100),
                   test=SplitSpec(4, 4, 150)),
    # A couple of thousand database images per train split, for quick real runs.
    "small": Preset("small", 180, 240, train=SplitSpec(6, 6, 500), val=SplitSpec(5, 5, 300),
                    test=SplitSpec(5, 5, 300), processes=True),
    # For scale benchmarks only: over 100,000 database images in test.
    "large": Preset("large", 120, 160, train=SplitSpec(12, 12, 1000), val=SplitSpec(8, 8, 500),
                    test=SplitSpec(50, 50, 2000), processes=True),
}


# --------------------------------------------------------------------------------------------
# Small numeric helpers
# --------------------------------------------------------------------------------------------

def _hash(*keys: np.ndarray) -> np.ndarray:
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


def utm_to_latlon(east: float, north: float, zone: int = UTM_ZONE) -> tuple[float, float]:
    """WGS84 latitude/longitude (degrees) of a northern-hemisphere UTM point (Snyder's series).

    Accurate to well under a metre within a zone, which is all a file name needs.
    """
    k0, a, e2 = 0.9996, 6378137.0, 0.00669437999014
    ep2 = e2 / (1 - e2)
    e1 = (1 - math.sqrt(1 - e2)) / (1 + math.sqrt(1 - e2))
    x, m = east - 500_000.0, north / k0
    mu = m / (a * (1 - e2 / 4 - 3 * e2 ** 2 / 64 - 5 * e2 ** 3 / 256))
    phi1 = (mu + (3 * e1 / 2 - 27 * e1 ** 3 / 32) * math.sin(2 * mu)
            + (21 * e1 ** 2 / 16 - 55 * e1 ** 4 / 32) * math.sin(4 * mu)
            + (151 * e1 ** 3 / 96) * math.sin(6 * mu) + (1097 * e1 ** 4 / 512) * math.sin(8 * mu))
    s, c, t = math.sin(phi1), math.cos(phi1), math.tan(phi1)
    c1, t1 = ep2 * c * c, t * t
    n1 = a / math.sqrt(1 - e2 * s * s)
    r1 = a * (1 - e2) / (1 - e2 * s * s) ** 1.5
    d = x / (n1 * k0)
    lat = phi1 - (n1 * t / r1) * (
        d ** 2 / 2 - (5 + 3 * t1 + 10 * c1 - 4 * c1 ** 2 - 9 * ep2) * d ** 4 / 24
        + (61 + 90 * t1 + 298 * c1 + 45 * t1 ** 2 - 252 * ep2 - 3 * c1 ** 2) * d ** 6 / 720)
    lon = (d - (1 + 2 * t1 + c1) * d ** 3 / 6
           + (5 - 2 * c1 + 28 * t1 - 3 * c1 ** 2 + 8 * ep2 + 24 * t1 ** 2) * d ** 5 / 120) / c
    return math.degrees(lat), (zone - 1) * 6 - 180 + 3 + math.degrees(lon)


# --------------------------------------------------------------------------------------------
# The world: street plan, occupancy map, ground map, building styles
# --------------------------------------------------------------------------------------------

# Façade materials.
PLASTER, BRICK, PANEL, GLASS, DECOR = 0, 1, 2, 3, 4
# Ground classes of the 0.5 m ground map, and their daylight colours.
# Roads are surfaced per street segment (between two crossings), as real ones are: fresh and
# worn asphalt, stone setts, concrete slabs, brick pavers; sidewalks likewise.
G_ROAD, G_SIDEWALK, G_PAVING, G_MARK, G_KERB = 0, 1, 2, 3, 4
G_WORN, G_SETTS, G_CONCRETE, G_PAVERS = 5, 6, 7, 8       # other road surfaces
G_SIDEWALK2, G_SIDEWALK3 = 9, 10                          # other sidewalks
ROAD_KINDS = np.array([G_ROAD, G_WORN, G_SETTS, G_CONCRETE, G_PAVERS], np.uint8)
SIDEWALK_KINDS = np.array([G_SIDEWALK, G_SIDEWALK2, G_SIDEWALK3], np.uint8)
GROUND_RGB = np.array([[0.27, 0.27, 0.29], [0.58, 0.56, 0.53], [0.50, 0.44, 0.38],
                       [0.88, 0.88, 0.84], [0.70, 0.70, 0.68],
                       [0.40, 0.40, 0.40], [0.44, 0.39, 0.34], [0.60, 0.60, 0.57],
                       [0.55, 0.33, 0.26], [0.66, 0.52, 0.44], [0.45, 0.47, 0.50]], np.float32)
# Joint spacing (m) of each ground class's pattern (0: none), and how dark the joints are.
GROUND_JOINT = np.array([0, 1.0, 0.6, 0, 0, 0, 0.22, 3.0, 0.3, 0.5, 0.8], np.float32)
# Façade colours are drawn around a small palette of common city hues, so that colour alone is
# ambiguous (as in real streets) and a place is told apart by its combination of features.
WALL_PALETTE = np.array([
    [0.80, 0.74, 0.62], [0.72, 0.40, 0.30], [0.62, 0.60, 0.58], [0.86, 0.84, 0.80],
    [0.80, 0.62, 0.38], [0.55, 0.32, 0.25], [0.70, 0.70, 0.62], [0.58, 0.64, 0.68],
    [0.84, 0.72, 0.66], [0.45, 0.42, 0.40], [0.76, 0.58, 0.50], [0.66, 0.70, 0.58],
], np.float32)
SIGN_PALETTE = np.array([
    [0.80, 0.12, 0.10], [0.10, 0.30, 0.70], [0.10, 0.55, 0.25], [0.95, 0.75, 0.10],
    [0.15, 0.15, 0.15], [0.90, 0.90, 0.88], [0.55, 0.15, 0.55], [0.95, 0.45, 0.10],
], np.float32)

WALL_FREE_HUE = 0.5
DISTRICT_M = 80.0


def _hsv(h, s, v) -> np.ndarray:
    """RGB (N, 3) of HSV colours given as arrays in [0, 1]."""
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    return np.stack([r, g, b], 1)


MARGIN_M = 30        # ring of buildings around the streets, so that every ray ends on a wall
SIDEWALK_M = 2.5


@dataclass
class World:
    """One neighbourhood. Local metres: x east, y north, origin at the map's south-west corner."""

    split_index: int
    east0: float                 # UTM easting/northing of the local origin
    north0: float
    occ: np.ndarray              # (Ny, Nx) int32, 1 m cells: 0 = open ground, k > 0 = building k
    ground: np.ndarray           # (2Ny, 2Nx) uint8, 0.5 m cells: G_* ground classes
    xs: np.ndarray               # centre x of north-south streets
    ys: np.ndarray               # centre y of east-west streets
    widths_x: np.ndarray         # their widths
    widths_y: np.ndarray
    b: dict                      # building style tables, each indexed by building id


def _street_plan(rng: np.random.Generator, n_blocks: int) -> tuple[np.ndarray, np.ndarray, int]:
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
        if hi - (a + w) < 7:     # never leave a sliver
            w = hi - a
        out.append((a, a + w))
        a += w
    return out


def build_world(preset: Preset, seed: int, split_index: int) -> World:
    """The neighbourhood of split ``split_index`` (0 train, 1 val, 2 test); deterministic."""
    spec = preset.split(SPLITS[split_index])
    rng = np.random.default_rng([seed, split_index, 0x5EED])
    xs, wx, nx = _street_plan(rng, spec.blocks_x)
    ys, wy, ny = _street_plan(rng, spec.blocks_y)

    # Open ground: the streets. Everything else starts as one building per lot.
    cx = np.arange(nx) + 0.5
    cy = np.arange(ny) + 0.5
    street_x = (np.abs(cx[None, :] - xs[:, None]) < wx[:, None] / 2).any(0)     # (nx,)
    street_y = (np.abs(cy[None, :] - ys[:, None]) < wy[:, None] / 2).any(0)     # (ny,)
    occ = np.zeros((ny, nx), np.int32)

    spans_x = _false_runs(street_x)
    spans_y = _false_runs(street_y)
    bid = 0
    centre = [(0.0, 0.0)]           # lot centres, to give nearby buildings a shared style
    for (y0, y1) in spans_y:
        for (x0, x1) in spans_x:
            # A block is a grid of lots: frontages along x, depths along y.
            for (ly0, ly1) in _lots(rng, y0, y1):
                for (lx0, lx1) in _lots(rng, x0, x1):
                    bid += 1
                    centre.append(((lx0 + lx1) / 2, (ly0 + ly1) / 2))
                    # One lot in five is set back from its neighbours, opening alleys and
                    # glimpses of the buildings behind.
                    inset = int(rng.integers(1, 4)) if rng.random() < 0.2 else 0
                    occ[ly0 + inset:ly1 - inset, lx0 + inset:lx1 - inset] = bid
    n_b = bid + 1

    # Ground map at 0.5 m: road inside the street bands, a sidewalk along each band's edge (with a
    # kerb line), paving wherever open ground is inside a block (set-back lots, alleys).
    gx = np.arange(2 * nx) / 2 + 0.25
    gy = np.arange(2 * ny) / 2 + 0.25
    dxs = np.abs(gx[None, :] - xs[:, None]) - wx[:, None] / 2        # <0 inside street band
    dys = np.abs(gy[None, :] - ys[:, None]) - wy[:, None] / 2
    in_x = (dxs < 0).any(0)
    in_y = (dys < 0).any(0)
    edge_x = ((dxs > -SIDEWALK_M) & (dxs < 0)).any(0)
    edge_y = ((dys > -SIDEWALK_M) & (dys < 0)).any(0)
    kerb_x = ((dxs > -SIDEWALK_M - 0.5) & (dxs <= -SIDEWALK_M)).any(0)
    kerb_y = ((dys > -SIDEWALK_M - 0.5) & (dys <= -SIDEWALK_M)).any(0)
    road = in_x[None, :] | in_y[:, None]
    ground = np.full((2 * ny, 2 * nx), G_PAVING, np.uint8)
    # Surface of each segment: N-S street i between E-W streets j and j+1 (and vice versa).
    ix = np.abs(gx[None, :] - xs[:, None]).argmin(0)             # nearest N-S street, per column
    iy = np.abs(gy[None, :] - ys[:, None]).argmin(0)             # nearest E-W street, per row
    jy = np.searchsorted(ys, gy)                                 # segment along a N-S street
    jx = np.searchsorted(xs, gx)
    seg_ns = rng.choice(ROAD_KINDS, size=(len(xs), len(ys) + 1), p=[0.4, 0.2, 0.15, 0.1, 0.15])
    seg_ew = rng.choice(ROAD_KINDS, size=(len(ys), len(xs) + 1), p=[0.4, 0.2, 0.15, 0.1, 0.15])
    walk_ns = rng.choice(SIDEWALK_KINDS, size=(len(xs), len(ys) + 1))
    walk_ew = rng.choice(SIDEWALK_KINDS, size=(len(ys), len(xs) + 1))
    ns = in_x[None, :] & ~in_y[:, None]
    ew = in_y[:, None] & ~in_x[None, :]
    ground[road] = G_ROAD                                        # crossings: asphalt
    ground[ns] = seg_ns[ix[None, :], jy[:, None]][ns]
    ground[ew] = seg_ew[iy[:, None], jx[None, :]][ew]
    # Sidewalks run along the blocks; at crossings the road continues.
    ns_sw = in_x[None, :] & edge_x[None, :] & ~in_y[:, None]
    ew_sw = in_y[:, None] & edge_y[:, None] & ~in_x[None, :]
    ground[ns_sw] = walk_ns[ix[None, :], jy[:, None]][ns_sw]
    ground[ew_sw] = walk_ew[iy[:, None], jx[None, :]][ew_sw]
    ns_kerb = in_x[None, :] & kerb_x[None, :] & ~in_y[:, None]
    ew_kerb = in_y[:, None] & kerb_y[:, None] & ~in_x[None, :]
    ground[ns_kerb | ew_kerb] = G_KERB
    # Lane dashes (3 m on, 3 m off) along street centres, away from crossings.
    near_cx = (np.abs(gx[None, :] - xs[:, None]) < 0.25).any(0)
    near_cy = (np.abs(gy[None, :] - ys[:, None]) < 0.25).any(0)
    dash_y = (gy % 6.0) < 3.0
    dash_x = (gx % 6.0) < 3.0
    ground[(near_cx[None, :] & dash_y[:, None] & ~in_y[:, None])] = G_MARK
    ground[(near_cy[:, None] & dash_x[None, :] & ~in_x[None, :])] = G_MARK
    # Zebra crossings just outside each intersection (stripes 0.5 m, every 1 m).
    across_y = ((dys > 0.5) & (dys < 3.5)).any(0)          # rows just beyond an E-W street
    across_x = ((dxs > 0.5) & (dxs < 3.5)).any(0)          # columns just beyond a N-S street
    stripe_x = (gx % 1.0) < 0.5
    stripe_y = (gy % 1.0) < 0.5
    inner_x = (dxs < -SIDEWALK_M - 0.5).any(0)             # carriageway of N-S streets
    inner_y = (dys < -SIDEWALK_M - 0.5).any(0)
    ground[across_y[:, None] & inner_x[None, :] & stripe_x[None, :]] = G_MARK
    ground[across_x[None, :] & inner_y[:, None] & stripe_y[:, None]] = G_MARK

    # Building styles. Heights follow a skewed distribution: mostly 3-6 storeys, a few towers.
    r = np.random.default_rng([seed, split_index, 0xB1D])
    # Districts (about 80 m across) have a character: a hue family and a typical height, as
    # real quarters do; it also makes look-alike places more often near each other.
    cen = np.array(centre)
    dist_id = (np.floor(cen[:, 0] / DISTRICT_M) * 7919
               + np.floor(cen[:, 1] / DISTRICT_M)).astype(np.int64)
    d_hue = _hash(dist_id, seed, split_index, 1)
    d_tall = 0.6 + 1.0 * _hash(dist_id, seed, split_index, 2)
    floors = np.clip(np.round(r.gamma(3.0, 1.6, n_b) * d_tall), 1, 18)
    floor_h = r.uniform(2.9, 3.8, n_b)
    ground_h = floor_h * r.uniform(1.1, 1.5, n_b)
    material = r.choice(5, size=n_b, p=[0.32, 0.22, 0.15, 0.11, 0.20])
    # Half the façades take a common city colour, half a free hue (painted plaster: ochre,
    # pink, yellow, green...), so that streets differ in their colours as much as in shape.
    common = WALL_PALETTE[r.integers(0, len(WALL_PALETTE), n_b)] * r.uniform(0.85, 1.1, (n_b, 1))
    free = _hsv((d_hue + r.normal(0, 0.06, n_b)) % 1.0, r.uniform(0.2, 0.6, n_b),
                r.uniform(0.5, 0.92, n_b))
    wall = np.where((r.random(n_b) < WALL_FREE_HUE)[:, None], free, common)
    wall = np.clip(wall + r.normal(0, 0.035, (n_b, 3)), 0.05, 0.97)
    glass_tint = np.array([0.35, 0.45, 0.55]) * r.uniform(0.6, 1.2, (n_b, 1))
    wall[material == GLASS] = glass_tint[material == GLASS]
    deco_angle = r.choice(np.arange(6) * np.pi / 8, n_b)        # 0, 22.5, ..., 112.5 degrees
    trim = np.clip(wall * r.choice([0.6, 0.75, 1.25], size=(n_b, 1)) + r.normal(0, 0.04, (n_b, 3)),
                   0.03, 0.98)
    b = dict(
        height=(ground_h + (floors - 1) * floor_h + r.uniform(0.3, 1.2, n_b)).astype(np.float32),
        floor_h=floor_h.astype(np.float32),
        ground_h=ground_h.astype(np.float32),
        win_sp=r.uniform(1.8, 4.2, n_b).astype(np.float32),
        win_w=r.uniform(0.3, 0.7, n_b).astype(np.float32),
        win_h=r.uniform(0.35, 0.7, n_b).astype(np.float32),
        phase=r.uniform(0, 10, n_b).astype(np.float32),
        material=material.astype(np.int8),
        wall=wall.astype(np.float32),
        trim=trim.astype(np.float32),
        glass=np.clip(np.array([0.20, 0.25, 0.32]) * r.uniform(0.5, 1.5, (n_b, 1))
                      + r.normal(0, 0.03, (n_b, 3)), 0.02, 0.9).astype(np.float32),
        cornice=(r.random(n_b) < 0.5),
        pilaster=(r.random(n_b) < 0.25),
        shop=(r.random(n_b) < 0.55),
        sign=SIGN_PALETTE[r.integers(0, len(SIGN_PALETTE), n_b)].astype(np.float32),
        sign_fg=SIGN_PALETTE[r.integers(0, len(SIGN_PALETTE), n_b)].astype(np.float32),
        awning=(r.random(n_b) < 0.3),
        poster_u=r.uniform(0, 30, n_b).astype(np.float32),
        poster=SIGN_PALETTE[r.integers(0, len(SIGN_PALETTE), n_b)].astype(np.float32),
        grime=r.uniform(0.02, 0.12, n_b).astype(np.float32),
        # Decorated façades (tiles, painted bands, lattices): a stripe pattern of its own period
        # and angle, crossed by a second one for a checker/lattice on some.
        deco_period=r.uniform(0.35, 1.6, n_b).astype(np.float32),
        deco_cos=np.cos(deco_angle).astype(np.float32),
        deco_sin=np.sin(deco_angle).astype(np.float32),
        deco_cross=(r.random(n_b) < 0.4),
        deco=_hsv(r.uniform(0, 1, n_b), r.uniform(0.3, 0.8, n_b),
                  r.uniform(0.3, 0.9, n_b)).astype(np.float32),
    )
    b["parts"] = _part_colours(b)
    # The splits lie west to east with GAP_M between them; each one's width depends on the preset.
    east0 = ORIGIN_EAST
    for k in range(split_index):
        east0 += _extent(preset, seed, k) + GAP_M
    return World(split_index, east0, ORIGIN_NORTH, occ, ground, xs, ys, wx, wy, b)


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
    return _street_plan(rng, spec.blocks_x)[2]


# --------------------------------------------------------------------------------------------
# Capture plan: where each image is taken from, and under what conditions
# --------------------------------------------------------------------------------------------

# Per-image capture parameters, one array each (struct of arrays, so batches stay vectorised).
CAM_FIELDS = ("x", "y", "heading", "cam_h", "pitch", "hfov",
              "night", "sun_az", "sun_el", "ambient", "exposure", "gamma",
              "gain_r", "gain_g", "gain_b", "haze", "blur", "noise", "cloud_seed")


def database_places(world: World, preset: Preset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Places of the database capture: every ``spacing_m`` along every street centreline.

    Returns ``x``, ``y`` (local metres) and ``axis`` (0: place on a north-south street, 1:
    east-west). Places of east-west streets closer than half a spacing to a north-south street
    are dropped, since the crossing is already covered.
    """
    s = preset.spacing_m
    px, py, ax = [], [], []
    y_run = np.arange(world.ys[0], world.ys[-1] + 1e-6, s)
    for x in world.xs:
        px.append(np.full_like(y_run, x))
        py.append(y_run)
        ax.append(np.zeros(len(y_run), np.int8))
    x_run = np.arange(world.xs[0], world.xs[-1] + 1e-6, s)
    keep = np.abs(x_run[:, None] - world.xs[None, :]).min(1) >= s / 2
    x_run = x_run[keep]
    for y in world.ys:
        px.append(x_run)
        py.append(np.full_like(x_run, y))
        ax.append(np.ones(len(x_run), np.int8))
    return np.concatenate(px), np.concatenate(py), np.concatenate(ax)


def _daylight(n: int) -> dict:
    """The database's capture conditions: one fixed sunny morning, neutral camera."""
    z, o = np.zeros(n), np.ones(n)
    return dict(night=z, sun_az=o * 135.0, sun_el=o * 40.0, ambient=o * 0.55, exposure=o,
                gamma=o, gain_r=o, gain_g=o, gain_b=o, haze=o * 1.0, blur=z, noise=o * 0.006)


def capture_plan(world: World, preset: Preset, seed: int, kind: str) -> dict:
    """Capture parameters of every image of one split's ``kind`` ("database" or "queries").

    Also returns ``note`` (file-name note per image) and ``place`` (database place index: for a
    query, the place it was taken near).
    """
    px, py, ax = database_places(world, preset)
    spec = preset.split(SPLITS[world.split_index])
    rng = np.random.default_rng([seed, world.split_index, 0xCA9, int(kind == "queries")])
    if kind == "database":
        k = preset.headings
        n = len(px) * k
        place = np.repeat(np.arange(len(px)), k)
        # First view along the street, then evenly round (for 4: along, right, back, left).
        street_dir = np.where(ax == 0, 0.0, 90.0)
        heading = (np.repeat(street_dir, k) + np.tile(np.arange(k) * 360.0 / k, len(px))) % 360
        plan = dict(x=px[place], y=py[place], heading=heading, cam_h=np.full(n, 2.5),
                    pitch=np.zeros(n), hfov=np.full(n, preset.hfov_deg), **_daylight(n))
        plan["cloud_seed"] = rng.integers(0, 2 ** 31, n)
        plan["note"] = np.array(["day_forward_synth"] * n)
        plan["place"] = place
        return plan

    n = spec.queries
    place = rng.integers(0, len(px), n)
    along = rng.uniform(-4.0, 4.0, n)           # a few metres off the database place ...
    across = rng.uniform(-2.0, 2.0, n)          # ... and off the centreline (another lane)
    travel = np.where(ax[place] == 0, 0.0, 90.0) + 180.0 * rng.integers(0, 2, n)
    rad = np.radians(travel)
    x = px[place] + along * np.sin(rad) + across * np.cos(rad)
    y = py[place] + along * np.cos(rad) - across * np.sin(rad)
    # Stay on the street network: past the outermost crossings lie the boundary buildings.
    x = np.clip(x, world.xs[0] - 2.5, world.xs[-1] + 2.5)
    y = np.clip(y, world.ys[0] - 2.5, world.ys[-1] + 2.5)
    view = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])               # front, side, back
    offset = np.choose(view, [np.zeros(n), rng.choice([-90.0, 90.0], n), np.full(n, 180.0)])
    heading = (travel + offset + np.clip(rng.normal(0, 8.0, n), -20, 20)) % 360
    night = rng.random(n) < preset.night_frac
    dusk = ~night & (rng.random(n) < 0.15)
    # Phone and dash cameras auto-expose, so daytime brightness varies little; at dusk the camera
    # mostly compensates (warm, noisier); at night it cannot.
    exposure = np.exp(rng.normal(0, 0.04, n))
    exposure[night] *= 0.35
    exposure[dusk] *= 0.9
    cast = np.exp(rng.normal(0, 0.04, (n, 3)))                   # white balance / colour shift
    cast[night] *= np.array([0.75, 0.85, 1.25])                   # cold LED street light
    cast[dusk] *= np.array([1.2, 0.95, 0.8])                      # warm evening light
    plan = dict(
        x=x, y=y, heading=heading, cam_h=rng.uniform(1.6, 2.5, n),   # pedestrian / car height
        pitch=rng.normal(0, 0.02, n) * preset.height,                  # horizon shift, pixels
        hfov=preset.hfov_deg * np.exp(rng.normal(0, 0.05, n)),
        night=night.astype(float),
        # Another hour of the day: the sun within 35 degrees of the database's, another height.
        sun_az=135.0 + rng.uniform(-35, 35, n), sun_el=rng.uniform(25, 55, n),
        ambient=rng.uniform(0.5, 0.65, n),                           # higher: hazier, flatter
        exposure=exposure, gamma=np.exp(rng.normal(0, 0.04, n)),
        gain_r=cast[:, 0], gain_g=cast[:, 1], gain_b=cast[:, 2],
        haze=np.exp(rng.normal(0, 0.25, n)),
        blur=np.where(rng.random(n) < 0.3, rng.uniform(0.3, 1.0, n), 0.0) * preset.height / 120,
        noise=rng.uniform(0.004, 0.02, n) + 0.01 * dusk + 0.03 * night,
        cloud_seed=rng.integers(0, 2 ** 31, n),
    )
    vname = np.array(["forward", "sideways", "backward"])[view]
    plan["note"] = np.char.add(np.char.add(np.where(night, "night_", "day_"), vname), "_synth")
    plan["place"] = place
    return plan


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

MAX_DIST_M = 180.0   # rays end here (the fog has swallowed everything by then)
FOG_M = 110.0        # daylight fog length at haze 1
SKY_DAY = (np.array([0.80, 0.86, 0.92], np.float32), np.array([0.33, 0.53, 0.84], np.float32))
SKY_NIGHT = (np.array([0.09, 0.09, 0.14], np.float32), np.array([0.01, 0.015, 0.04], np.float32))
LIT_WINDOW = np.array([1.0, 0.78, 0.45], np.float32)


def _cast(occ: np.ndarray, ox, oy, dx, dy):
    """March rays through the 1 m occupancy map (DDA); all rays at once, finished ones dropped.

    ``(dx, dy)`` need not be unit vectors: with ``forward + t * right`` per image column the
    returned distance is the depth along the view axis, which is what perspective needs (no
    fish-eye). Returns depth (inf if nothing within ``MAX_DIST_M``), building id (0: none), side
    (0: hit a face normal to x, 1: normal to y) and the hit point's coordinate along the wall.
    """
    n = ox.size
    ny, nx = occ.shape
    mx = np.floor(ox).astype(np.int32)
    my = np.floor(oy).astype(np.int32)
    with np.errstate(divide="ignore"):
        ddx = np.where(dx == 0, 1e30, np.abs(1.0 / dx))
        ddy = np.where(dy == 0, 1e30, np.abs(1.0 / dy))
    stx = np.where(dx < 0, -1, 1).astype(np.int32)
    sty = np.where(dy < 0, -1, 1).astype(np.int32)
    sdx = np.where(dx < 0, ox - mx, mx + 1 - ox) * ddx
    sdy = np.where(dy < 0, oy - my, my + 1 - oy) * ddy
    depth = np.full(n, np.inf)
    bid = np.zeros(n, np.int32)
    side = np.zeros(n, np.int8)
    idx = np.arange(n)
    while idx.size:
        go_x = sdx < sdy
        d = np.where(go_x, sdx, sdy)                # depth at which the next cell is entered
        mx = mx + np.where(go_x, stx, 0)
        my = my + np.where(go_x, 0, sty)
        sdx = np.where(go_x, sdx + ddx, sdx)
        sdy = np.where(go_x, sdy, sdy + ddy)
        b = occ[np.clip(my, 0, ny - 1), np.clip(mx, 0, nx - 1)]
        hit = b > 0
        done = hit | (d > MAX_DIST_M)
        if done.any():
            h = idx[hit]
            depth[h], bid[h], side[h] = d[hit], b[hit], np.where(go_x[hit], 0, 1)
            keep = ~done
            idx, mx, my, sdx, sdy = idx[keep], mx[keep], my[keep], sdx[keep], sdy[keep]
            ddx, ddy, stx, sty = ddx[keep], ddy[keep], stx[keep], sty[keep]
    fin = np.isfinite(depth)
    dc = np.where(fin, depth, 0.0)
    u = np.where(side == 0, oy + dc * dy, ox + dc * dx)
    return depth, bid, side, u


# Façade parts: each building has one colour per part (see ``_part_colours``); a pixel's colour is
# its part's colour times a scalar brightness, so shading needs one gather per pixel.
(P_WALL, P_PANE, P_FRAME, P_TRIM, P_DISPLAY, P_SIGN, P_LETTER, P_AWNING, P_AWNING2, P_DOOR,
 P_POSTER, P_DECOR) = range(12)
N_PARTS = 12


def _part_colours(b: dict) -> np.ndarray:
    """(n_buildings * N_PARTS, 3) table of every building's part colours."""
    n = len(b["wall"])
    t = np.empty((n, N_PARTS, 3), np.float32)
    t[:, P_WALL] = b["wall"]
    t[:, P_PANE] = b["glass"]
    t[:, P_FRAME] = np.clip(b["trim"] * 1.1, 0, 1)
    t[:, P_TRIM] = b["trim"]
    t[:, P_DISPLAY] = b["glass"] * 0.8 + 0.15 * b["sign"]
    t[:, P_SIGN] = b["sign"]
    same = (b["sign_fg"] == b["sign"]).all(1, keepdims=True)
    t[:, P_LETTER] = np.where(same, 1 - b["sign"], b["sign_fg"])
    t[:, P_AWNING] = b["sign"]
    t[:, P_AWNING2] = 0.9
    t[:, P_DOOR] = (0.25, 0.17, 0.12)
    t[:, P_POSTER] = b["poster"]
    t[:, P_DECOR] = b["deco"]
    return t.reshape(-1, 3)


def _facade(b: dict, bbc, uc, col, vv):
    """Part id (N,) uint8 and brightness (N,) of façade pixels.

    ``bbc`` and ``uc`` are per image column (building id, coordinate along the wall in metres);
    ``col`` maps each pixel to its column and ``vv`` is its height above the ground (m).
    Everything is procedural: window grids, storey cornices, pilasters, parapets, the
    material's small-scale pattern, shop fronts with signs and awnings, doors and posters on the
    ground floor. Also returns the pixels' lit-at-night candidates and window indices. What
    depends on the column only is computed once per column.
    """
    # Per column.
    fhc, ghc, hgtc, wsc = b["floor_h"][bbc], b["ground_h"][bbc], b["height"][bbc], b["win_sp"][bbc]
    matc = b["material"][bbc]
    u2 = uc + b["phase"][bbc]
    fu = u2 / wsc
    iuc = np.floor(fu)
    tuc = fu - iuc
    auc = np.abs(tuc - 0.5)
    grimec = b["grime"][bbc]
    streakc = grimec * _hash(bbc, np.floor(u2 * 3.0), 11)
    stainc = np.floor(u2 * 0.7)
    bay = u2 % 6.0
    shopc = b["shop"][bbc]
    displayc = shopc & (bay > 0.35) & (bay < 5.4)
    letterc = ((u2 * 2.5) % 1.0 < 0.7) & (_hash(bbc, np.floor(u2 * 2.5), 5) < 0.55)
    awn_c = np.where(np.floor(u2 * 2.0) % 2 == 0, P_AWNING, P_AWNING2).astype(np.uint8)
    awningc = shopc & b["awning"][bbc]
    doorc = ~shopc & (iuc % 3 == 1) & (auc * wsc < 0.6)
    puc = (u2 % 30.0) - b["poster_u"][bbc]
    posterc = np.abs(puc) < 0.6
    wwc = b["win_w"][bbc] / 2
    whc = b["win_h"][bbc] / 2
    pilc = b["pilaster"][bbc] & (tuc < 0.07)

    # Per pixel.
    bb, fh, gh, hgt, mat = bbc[col], fhc[col], ghc[col], hgtc[col], matc[col]
    iu, tu, au = iuc[col], tuc[col], auc[col]
    upper = vv >= gh
    fv = (vv - gh) / fh
    iv = np.floor(fv)
    tv = fv - iv
    part = np.zeros(vv.shape, np.uint8)
    grime = grimec[col]
    mult = 1.0 + grime * (2.0 * _hash(bb, stainc[col], np.floor(vv * 0.5)) - 1.0)
    mult *= 1.0 - streakc[col] * np.clip(1.2 - (hgt - vv) / 3, 0, 1)
    m = np.flatnonzero(mat == BRICK)
    if m.size:
        row = np.floor(vv[m] * 4.0)
        bu = u2[col[m]] * 2.0 + 0.5 * (row % 2)
        mortar = ((vv[m] * 4.0) % 1.0 < 0.16) | (bu % 1.0 < 0.08)
        mult[m] *= np.where(mortar, 0.72, 0.9 + 0.2 * _hash(bb[m], row, np.floor(bu)))
    m = np.flatnonzero(mat == PANEL)
    if m.size:
        mult[m] *= np.where((u2[col[m]] % 1.5 < 0.07) | (vv[m] % (fh[m] / 2) < 0.07), 0.72, 1.0)
    m = np.flatnonzero(mat == DECOR)
    if m.size:
        bm, um, vm = bb[m], u2[col[m]], vv[m]
        per, cs, sn = b["deco_period"][bm], b["deco_cos"][bm], b["deco_sin"][bm]
        a = ((um * cs + vm * sn) / per) % 1.0 < 0.5
        x = ((vm * cs - um * sn) / per) % 1.0 < 0.5
        on = np.where(b["deco_cross"][bm], a ^ x, a)
        part[m[on]] = P_DECOR
    glass = mat == GLASS
    g = np.flatnonzero(glass)
    if g.size:
        mull = (tu[g] < 0.06) | (tv[g] < 0.08)
        part[g] = np.where(mull, P_FRAME, P_PANE)
        mult[g] *= np.where(mull, 0.8, 0.85 + 0.35 * np.clip(vv[g] / hgt[g], 0, 1)
                            + 0.3 * _hash(bb[g], iu[g], iv[g]))

    # Windows on the upper storeys (glass buildings are all window already).
    ww, wh = wwc[col], whc[col]
    av = np.abs(tv - 0.5)
    framed = upper & (vv < hgt - 0.9) & ~glass & (au < ww + 0.12 / wsc[col]) & (av < wh + 0.12 / fh)
    win = framed & (au < ww) & (av < wh)
    part[framed] = P_FRAME
    w = np.flatnonzero(win)
    part[w] = P_PANE
    mult[w] = 0.55 + 0.9 * _hash(bb[w], iu[w], iv[w], 3) + 0.25 * (tv[w] - 0.5)

    # Storey cornices, pilasters, parapet, the band above the ground floor.
    trim = (b["cornice"][bb] & upper & (tv < 0.07)) | (pilc[col] & upper) \
        | (vv > hgt - 0.45) | ((vv >= gh - 0.25) & (vv < gh))
    part[trim] = P_TRIM

    # Ground floor: a shop front (display windows, a sign with "lettering", maybe an awning), or
    # a plain front with doors; posters here and there.
    gf = np.flatnonzero(vv < gh - 0.25)
    if gf.size:
        cg, vg, gg = col[gf], vv[gf], gh[gf]
        pg = part[gf]
        mg = mult[gf]
        shop = shopc[cg]
        display = displayc[cg] & (vg > 0.45) & (vg < gg * 0.64)
        sign = shop & (vg >= gg * 0.70) & (vg < gg * 0.92)
        letter = sign & letterc[cg] & (vg >= gg * 0.74) & (vg < gg * 0.88)
        awning = awningc[cg] & (vg >= gg * 0.62) & (vg < gg * 0.70)
        door = doorc[cg] & (vg < 2.3)
        poster = posterc[cg] & ~display & ~door & (vg > 0.9) & (vg < 2.3)
        pg[display] = P_DISPLAY
        mg[display] = 0.8 + 0.5 * _hash(bb[gf][display], np.floor(u2[cg[display]] * 1.5), 9)
        pg[sign] = P_SIGN
        pg[letter] = P_LETTER
        pg[awning] = awn_c[cg[awning]]
        pg[door] = P_DOOR
        pg[poster] = P_POSTER
        mg[poster] = 0.7 + 0.5 * _hash(bb[gf][poster], np.floor(vg[poster] * 3),
                                       np.floor(puc[cg[poster]] * 3))
        part[gf] = pg
        mult[gf] = mg
    lit = win | (part == P_DISPLAY) | (glass & (part == P_PANE))
    return part, mult.astype(np.float32), lit, iu, iv


def _ground(world: World, gx, gy, night):
    """Albedo (N, 3) of ground points at local (x, y) metres, and night lamp-light (N,)."""
    gmap = world.ground
    i = np.clip(np.floor(gy * 2).astype(np.int64), 0, gmap.shape[0] - 1)
    j = np.clip(np.floor(gx * 2).astype(np.int64), 0, gmap.shape[1] - 1)
    cls = gmap[i, j]
    col = GROUND_RGB[cls]
    fine = _hash(np.floor(gx * 5), np.floor(gy * 5), 1)          # grain
    patch = _hash(np.floor(gx / 3), np.floor(gy / 3), 2)          # repairs, stains
    f = 1.0 + 0.10 * (fine - 0.5) + 0.16 * (patch - 0.5) * ((cls == G_ROAD) | (cls == G_WORN))
    sp = GROUND_JOINT[cls]
    j = np.flatnonzero(sp > 0)
    if j.size:                                                    # slabs, setts, pavers: joints
        s = sp[j]
        a, b = gx[j] / s, gy[j] / s
        b = b + 0.5 * (np.floor(a) % 2)                           # staggered courses
        joint = ((a % 1.0) < 0.08) | ((b % 1.0) < 0.08)
        f[j] *= np.where(joint, 0.7, 0.92 + 0.16 * _hash(np.floor(a), np.floor(b), 3))
    col = col * f[:, None]
    lamp = np.exp(-(((gx % 25.0) - 12.5) ** 2 + ((gy % 25.0) - 12.5) ** 2) / 40.0) * night
    return col.astype(np.float32), lamp.astype(np.float32)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of one (H, W, 3) image, edges clamped."""
    r = max(1, int(math.ceil(2.5 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k = (k / k.sum()).astype(np.float32)
    p = np.pad(img, ((r, r), (0, 0), (0, 0)), mode="edge")
    img = sum(k[i] * p[i:i + img.shape[0]] for i in range(2 * r + 1))
    p = np.pad(img, ((0, 0), (r, r), (0, 0)), mode="edge")
    return sum(k[i] * p[:, i:i + img.shape[1]] for i in range(2 * r + 1))


def render(world: World, cams: dict, height: int, width: int, noise_seeds) -> np.ndarray:
    """Render a batch of images; ``cams`` holds one array per :data:`CAM_FIELDS` entry.

    Returns uint8 (B, H, W, 3). ``noise_seeds`` gives each image its own sensor-noise stream.
    """
    B, H, W = len(cams["x"]), height, width
    c = {k: np.asarray(cams[k], np.float64) for k in CAM_FIELDS}
    f = (W / 2) / np.tan(np.radians(c["hfov"]) / 2)                       # focal length, px
    t = (np.arange(W) + 0.5 - W / 2)[None, :] / f[:, None]                # (B, W) tan offsets
    h = np.radians(c["heading"])
    fx, fy, rx, ry = np.sin(h), np.cos(h), np.cos(h), -np.sin(h)           # forward, right
    dx = fx[:, None] + t * rx[:, None]
    dy = fy[:, None] + t * ry[:, None]
    depth, bid, side, u = _cast(world.occ, np.repeat(c["x"], W), np.repeat(c["y"], W),
                                dx.ravel(), dy.ravel())
    # Per column (flat index b * W + w): depth, building, wall coordinate, sun on the face.
    bidc = bid
    depc = np.where(bid > 0, depth, 1e9).astype(np.float32)
    uc = u.astype(np.float32)
    nxw = np.where(side == 0, -np.sign(dx.ravel()), 0.0)                   # outward wall normal
    nyw = np.where(side == 1, -np.sign(dy.ravel()), 0.0)
    sun_az, sun_el = np.radians(c["sun_az"]), np.radians(c["sun_el"])
    night, amb = c["night"], c["ambient"]
    lam = np.maximum(nxw * np.repeat(np.sin(sun_az), W) + nyw * np.repeat(np.cos(sun_az), W), 0)
    sunc = np.repeat(amb, W) + np.repeat((1 - amb) * 1.1 * np.cos(sun_el), W) * lam
    sunc = (sunc * np.repeat(1 - 0.75 * night, W)).astype(np.float32)
    fog_len = (FOG_M / c["haze"]).astype(np.float32)
    fogc = np.exp(-depc / np.repeat(fog_len, W)).astype(np.float32)      # 1: clear, 0: fog

    rows = (np.arange(H, dtype=np.float32) + 0.5)[None, :, None]          # (1, H, 1)
    hz = (H / 2 + c["pitch"]).astype(np.float32)[:, None, None]
    f3 = f.astype(np.float32)[:, None, None]
    ch = c["cam_h"].astype(np.float32)[:, None, None]
    v = ch + (hz - rows) * depc.reshape(B, 1, W) / f3                      # height on the wall
    wall = (v >= 0) & (v < world.b["height"][bidc].reshape(B, 1, W))
    below = rows > hz
    ground = ~wall & below
    sky = ~wall & ~below

    img = np.empty((B * H * W, 3), np.float32)
    keep = np.ones(B * H * W, np.float32)      # share of the pixel not lost in the fog
    parts = world.b["parts"]

    # Walls: part colour x brightness x (ambient + sun on the face), plus lit windows at night.
    pix = np.flatnonzero(wall)
    col = (pix // (H * W)) * W + pix % W
    bb = bidc[col]
    vv = v.ravel()[pix]
    part, mult, lit, iu, iv = _facade(world.b, bidc, uc, col, vv)
    mult *= sunc[col] * (0.85 + 0.15 * np.minimum(vv / 3, 1))
    img[pix] = parts[bb * N_PARTS + part] * mult[:, None]
    keep[pix] = fogc[col]
    nb = night[pix // (H * W)] > 0
    if nb.any():
        sel = np.flatnonzero(nb & lit)
        sel = sel[_hash(bb[sel], iu[sel], iv[sel], 7) < 0.4]
        glow = 0.45 + 0.55 * _hash(bb[sel], iu[sel], iv[sel], 8)
        img[pix[sel]] += glow[:, None] * LIT_WINDOW
        sel = np.flatnonzero(nb & ((part == P_SIGN) | (part == P_LETTER)))
        img[pix[sel]] += 0.5 * parts[bb[sel] * N_PARTS + part[sel]]

    # Ground: cast each pixel onto the ground plane, look the point up in the ground map.
    pix = np.flatnonzero(ground)
    bi, ri = pix // (H * W), (pix // W) % H
    col = bi * W + pix % W
    z = (c["cam_h"][bi] * f[bi]) / (rows.ravel()[ri] - hz.ravel()[bi])
    gx = c["x"][bi] + z * dx.ravel()[col]
    gy = c["y"][bi] + z * dy.ravel()[col]
    alb, lamp = _ground(world, gx, gy, night[bi])
    light = (amb + (1 - amb) * 1.2 * np.sin(sun_el)) * (1 - 0.8 * night)
    img[pix] = alb * (light[bi] + 0.6 * lamp).astype(np.float32)[:, None]
    keep[pix] = np.exp(-z / fog_len[bi])

    # Sky: horizon-to-zenith gradient and soft clouds that differ per capture.
    hor = SKY_DAY[0][None] * (1 - night[:, None]) + SKY_NIGHT[0][None] * night[:, None]   # (B, 3)
    zen = SKY_DAY[1][None] * (1 - night[:, None]) + SKY_NIGHT[1][None] * night[:, None]
    pix = np.flatnonzero(sky)
    bi, ri = pix // (H * W), (pix // W) % H
    col = bi * W + pix % W
    el = np.clip(np.arctan((hz.ravel()[bi] - rows.ravel()[ri]) / f[bi]) / (np.pi / 2), 0, 1)
    az = h[bi] + np.arctan(t.ravel()[col])
    cs = np.asarray(cams["cloud_seed"], np.int64)
    ph = np.stack([_hash(cs, k) * 2 * np.pi for k in range(4)], 1)[bi]
    cloud = (np.sin(3 * az + ph[:, 0]) * np.sin(9 * el + ph[:, 1])
             + 0.6 * np.sin(7 * az + 13 * el + ph[:, 2])
             + 0.4 * np.sin(17 * az - 5 * el + ph[:, 3]))
    cloud = (np.clip(cloud - 0.3, 0, 1) * (1 - night[bi]) * 0.7).astype(np.float32)[:, None]
    s = (el ** 0.6).astype(np.float32)[:, None]
    img[pix] = (hor[bi] * (1 - s) + zen[bi] * s) * (1 - cloud) + 0.95 * cloud

    # Distance fog towards the horizon colour, then the camera: exposure, colour cast, gamma,
    # blur, sensor noise.
    img = img.reshape(B, H, W, 3)
    keep = keep.reshape(B, H, W, 1)
    img = img * keep + hor.astype(np.float32)[:, None, None, :] * (1 - keep)
    gains = np.stack([c["gain_r"], c["gain_g"], c["gain_b"]], 1) * c["exposure"][:, None]
    img *= gains[:, None, None, :].astype(np.float32)
    np.clip(img, 0, 1, out=img)
    img **= (1.0 / c["gamma"])[:, None, None, None].astype(np.float32)
    out = np.empty((B, H, W, 3), np.uint8)
    table = _noise_table(H, W)
    for k in range(B):
        im = img[k]
        if c["blur"][k] > 0.05:
            im = _blur(im, c["blur"][k])
        oy, ox = np.random.default_rng(noise_seeds[k]).integers(0, NOISE_PAD, 2)
        im = im * 255 + (table[oy:oy + H, ox:ox + W] * np.float32(255 * c["noise"][k]) + 0.5)
        out[k] = np.clip(im, 0, 255)
    return out


NOISE_PAD = 61
_NOISE: dict = {}


def _noise_table(h: int, w: int) -> np.ndarray:
    """A fixed field of Gaussian sensor noise; each image reads it at its own random offset.

    Drawing fresh normals per image costs more than rendering it; a shared field read at one of
    61 x 61 offsets is as good for this purpose, and as deterministic.
    """
    if (h, w) not in _NOISE:
        rng = np.random.default_rng(0x401CE)
        _NOISE[(h, w)] = rng.standard_normal((h + NOISE_PAD, w + NOISE_PAD, 3), dtype=np.float32)
    return _NOISE[(h, w)]


# --------------------------------------------------------------------------------------------
# Writing the dataset
# --------------------------------------------------------------------------------------------

KINDS = ("database", "queries")
JPEG_QUALITY = 90
BATCH = 32                   # images rendered together (amortises numpy's per-call overhead)
CHUNK = 512                  # images per multiprocessing task

_CACHE: dict = {}            # per process: (preset, seed, split) -> (world, {kind: plan})


def _world_and_plans(preset: Preset, seed: int, split_index: int):
    key = (preset, seed, split_index)
    if key not in _CACHE:
        _CACHE.clear()       # one neighbourhood at a time: the large one is big
        world = build_world(preset, seed, split_index)
        _CACHE[key] = world, {k: capture_plan(world, preset, seed, k) for k in KINDS}
    return _CACHE[key]


def _name(world: World, split: str, kind: str, i: int, plan: dict) -> str:
    """VG file name of image ``i``: @east@north@zone@band@lat@lon@pano@tile@heading@...@note@.jpg"""
    east = world.east0 + float(plan["x"][i])
    north = world.north0 + float(plan["y"][i])
    lat, lon = utm_to_latlon(east, north)
    if kind == "database":
        pano = f"synth{split}p{int(plan['place'][i]):06d}"
    else:
        pano = f"synth{split}q{i:06d}"
    heading = int(round(float(plan["heading"][i]))) % 360
    return (f"@{east:.2f}@{north:.2f}@{UTM_ZONE}@{UTM_BAND}@{lat:.6f}@{lon:.6f}@{pano}@@{heading}"
            f"@@@@@{plan['note'][i]}@.jpg")


def _render_range(job: tuple) -> int:
    """Render and write images ``start:stop`` of one split's database or queries (a pool task)."""
    preset_name, seed, split_index, kind, start, stop, root = job
    from PIL import Image

    preset = PRESETS[preset_name]
    world, plans = _world_and_plans(preset, seed, split_index)
    plan = plans[kind]
    split = SPLITS[split_index]
    folder = Path(root) / "images" / split / kind
    k_kind = KINDS.index(kind)
    for a in range(start, stop, BATCH):
        idx = np.arange(a, min(a + BATCH, stop))
        cams = {f: np.asarray(plan[f])[idx] for f in CAM_FIELDS}
        seeds = [[seed, split_index, k_kind, int(i), 0x5E5] for i in idx]
        imgs = render(world, cams, preset.height, preset.width, seeds)
        for i, im in zip(idx, imgs):
            Image.fromarray(im).save(folder / _name(world, split, kind, int(i), plan), "JPEG",
                                     quality=JPEG_QUALITY)
    return stop - start


def _check(preset: str, seed) -> int:
    """Validate a preset name and seed; returns the seed as an int."""
    if preset not in PRESETS:
        raise BadInput(f"unknown synthetic preset {preset!r}; allowed: {', '.join(PRESETS)}")
    try:
        seed_int = int(seed)
    except (TypeError, ValueError):
        seed_int = -1
    if seed_int < 0 or seed_int != seed:
        raise BadInput(f"synthetic seed must be a non-negative integer, got {seed!r}")
    return seed_int


def _read_marker(out: Path) -> dict | None:
    try:
        return json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _matches(marker: dict | None, preset: str, seed: int) -> bool:
    return bool(marker) and marker.get("preset") == preset and marker.get("seed") == seed \
        and marker.get("version") == VERSION


def generate(out, preset: str = "tiny", seed: int = 0, progress: bool = False) -> Path:
    """Write the synthetic dataset ``preset`` (a :data:`PRESETS` key) for ``seed`` into ``out``.

    The dataset is rendered into a temporary sibling folder, :data:`MARKER` is written last, and
    the folder is moved into place with one ``os.replace``, so ``out`` is either absent/empty or
    complete. If ``out`` already holds this preset/seed/version, returns at once. Raises
    :class:`~vgray.errors.BadInput` if ``out`` holds anything else. Returns ``out`` as a Path.
    """
    seed = _check(preset, seed)
    out = Path(out).expanduser().absolute()
    if out.exists():
        if not out.is_dir():
            raise BadInput(f"synthetic dataset folder {out} exists and is not a folder")
        marker = _read_marker(out)
        if _matches(marker, preset, seed):
            return out
        if marker is not None:
            raise BadInput(f"{out} holds synthetic preset {marker.get('preset')!r} seed "
                           f"{marker.get('seed')} version {marker.get('version')}, not {preset!r} "
                           f"seed {seed} version {VERSION}; use another folder")
        if any(out.iterdir()):
            raise BadInput(f"{out} is not empty and is not a vgray synthetic dataset; "
                           f"pass a new or empty folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    p = PRESETS[preset]
    t0 = time.time()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        counts, jobs = {}, []
        for si, split in enumerate(SPLITS):
            world = build_world(p, seed, si)
            counts[split] = {}
            for kind in KINDS:
                n = len(capture_plan(world, p, seed, kind)["x"])
                counts[split][kind] = n
                (tmp / "images" / split / kind).mkdir(parents=True)
                jobs += [(preset, seed, si, kind, a, min(a + CHUNK, n), str(tmp))
                         for a in range(0, n, CHUNK)]
        total = sum(j[5] - j[4] for j in jobs)
        done = 0
        if p.processes and (os.cpu_count() or 1) > 1:
            import multiprocessing as mp

            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            with ctx.Pool(os.cpu_count()) as pool:
                for n in pool.imap_unordered(_render_range, jobs):
                    done += n
                    if progress:
                        print(f"synthetic {preset}: {done}/{total} images", file=sys.stderr)
        else:
            for job in jobs:
                done += _render_range(job)
                if progress:
                    print(f"synthetic {preset}: {done}/{total} images", file=sys.stderr)
        _CACHE.clear()
        marker = dict(format="vgray-synthetic", preset=preset, seed=seed, version=VERSION,
                      image_size=[p.height, p.width], utm_zone=f"{UTM_ZONE}{UTM_BAND}",
                      counts=counts, preset_params=dataclasses.asdict(p),
                      build_seconds=round(time.time() - t0, 2))
        (tmp / MARKER).write_text(json.dumps(marker, indent=1))
        try:
            os.replace(tmp, out)         # atomic; only succeeds onto a missing or empty folder
        except OSError:
            # Someone else finished first (same folder, not through ensure's lock).
            if _matches(_read_marker(out), preset, seed):
                return out
            raise
        if progress:
            print(f"synthetic {preset}: wrote {out} in {time.time() - t0:.1f} s", file=sys.stderr)
        return out
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def ensure(preset: str, seed: int = 0, progress: bool = False) -> Path:
    """The synthetic dataset ``preset``/``seed`` in vgray's cache, generated on first use.

    Lives in ``cache_dir()/synthetic/<preset>-s<seed>-v<VERSION>``. Concurrent callers
    (processes, or threads each opening the lock) serialise on an ``flock``-ed lock file, so it is
    rendered once; temporary folders left by a killed run are removed.
    """
    seed = _check(preset, seed)
    root = cache_dir() / "synthetic"
    root.mkdir(parents=True, exist_ok=True)
    out = root / f"{preset}-s{seed}-v{VERSION}"
    if _matches(_read_marker(out), preset, seed):
        return out
    with open(root / f"{out.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            # Under the lock nobody else renders this dataset: temporary folders of it are
            # leftovers of a killed run.
            for stale in root.glob(f".{out.name}.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
            return generate(out, preset, seed, progress=progress)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
