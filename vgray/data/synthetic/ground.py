"""The ground of the synthetic city: a 0.5 m map of road surfaces, sidewalks, kerbs and markings,
and the albedo a camera sees where a pixel's ray meets it."""

from __future__ import annotations

import numpy as np

from vgray.data.synthetic.procedural import hash01

SIDEWALK_M = 2.5
# Ground classes of the 0.5 m ground map, and their daylight colours.
# Roads are surfaced per street segment (between two crossings), as real ones are: fresh and
# worn asphalt, stone setts, concrete slabs, brick pavers; sidewalks likewise.
G_ROAD, G_SIDEWALK, G_PAVING, G_MARK, G_KERB = 0, 1, 2, 3, 4
G_WORN, G_SETTS, G_CONCRETE, G_PAVERS = 5, 6, 7, 8  # other road surfaces
G_SIDEWALK2, G_SIDEWALK3 = 9, 10  # other sidewalks
ROAD_KINDS = np.array([G_ROAD, G_WORN, G_SETTS, G_CONCRETE, G_PAVERS], np.uint8)
SIDEWALK_KINDS = np.array([G_SIDEWALK, G_SIDEWALK2, G_SIDEWALK3], np.uint8)
GROUND_RGB = np.array(
    [
        [0.27, 0.27, 0.29],
        [0.58, 0.56, 0.53],
        [0.50, 0.44, 0.38],
        [0.88, 0.88, 0.84],
        [0.70, 0.70, 0.68],
        [0.40, 0.40, 0.40],
        [0.44, 0.39, 0.34],
        [0.60, 0.60, 0.57],
        [0.55, 0.33, 0.26],
        [0.66, 0.52, 0.44],
        [0.45, 0.47, 0.50],
    ],
    np.float32,
)
# Joint spacing (m) of each ground class's pattern (0: none), and how dark the joints are.
GROUND_JOINT = np.array([0, 1.0, 0.6, 0, 0, 0, 0.22, 3.0, 0.3, 0.5, 0.8], np.float32)


def ground_map(
    rng: np.random.Generator, xs: np.ndarray, wx: np.ndarray, nx: int, ys: np.ndarray, wy: np.ndarray, ny: int
) -> np.ndarray:
    """(2 ny, 2 nx) uint8 ground classes at 0.5 m, for streets centred at ``xs``/``ys`` (widths
    ``wx``/``wy``) on an ``nx`` x ``ny`` m map; draws each street segment's surface from ``rng``.

    Road inside the street bands, a sidewalk along each band's edge (with a kerb line), paving
    wherever open ground is inside a block (set-back lots, alleys).
    """
    gx = np.arange(2 * nx) / 2 + 0.25
    gy = np.arange(2 * ny) / 2 + 0.25
    dxs = np.abs(gx[None, :] - xs[:, None]) - wx[:, None] / 2  # <0 inside street band
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
    ix = np.abs(gx[None, :] - xs[:, None]).argmin(0)  # nearest N-S street, per column
    iy = np.abs(gy[None, :] - ys[:, None]).argmin(0)  # nearest E-W street, per row
    jy = np.searchsorted(ys, gy)  # segment along a N-S street
    jx = np.searchsorted(xs, gx)
    seg_ns = rng.choice(ROAD_KINDS, size=(len(xs), len(ys) + 1), p=[0.4, 0.2, 0.15, 0.1, 0.15])
    seg_ew = rng.choice(ROAD_KINDS, size=(len(ys), len(xs) + 1), p=[0.4, 0.2, 0.15, 0.1, 0.15])
    walk_ns = rng.choice(SIDEWALK_KINDS, size=(len(xs), len(ys) + 1))
    walk_ew = rng.choice(SIDEWALK_KINDS, size=(len(ys), len(xs) + 1))
    ns = in_x[None, :] & ~in_y[:, None]
    ew = in_y[:, None] & ~in_x[None, :]
    ground[road] = G_ROAD  # crossings: asphalt
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
    across_y = ((dys > 0.5) & (dys < 3.5)).any(0)  # rows just beyond an E-W street
    across_x = ((dxs > 0.5) & (dxs < 3.5)).any(0)  # columns just beyond a N-S street
    stripe_x = (gx % 1.0) < 0.5
    stripe_y = (gy % 1.0) < 0.5
    inner_x = (dxs < -SIDEWALK_M - 0.5).any(0)  # carriageway of N-S streets
    inner_y = (dys < -SIDEWALK_M - 0.5).any(0)
    ground[across_y[:, None] & inner_x[None, :] & stripe_x[None, :]] = G_MARK
    ground[across_x[None, :] & inner_y[:, None] & stripe_y[:, None]] = G_MARK
    return ground


def ground_albedo(gmap: np.ndarray, gx, gy, night):
    """Albedo (N, 3) of ground points at local (x, y) metres on ground map ``gmap``, and night
    lamp-light (N,)."""
    i = np.clip(np.floor(gy * 2).astype(np.int64), 0, gmap.shape[0] - 1)
    j = np.clip(np.floor(gx * 2).astype(np.int64), 0, gmap.shape[1] - 1)
    cls = gmap[i, j]
    col = GROUND_RGB[cls]
    fine = hash01(np.floor(gx * 5), np.floor(gy * 5), 1)  # grain
    patch = hash01(np.floor(gx / 3), np.floor(gy / 3), 2)  # repairs, stains
    f = 1.0 + 0.10 * (fine - 0.5) + 0.16 * (patch - 0.5) * ((cls == G_ROAD) | (cls == G_WORN))
    sp = GROUND_JOINT[cls]
    j = np.flatnonzero(sp > 0)
    if j.size:  # slabs, setts, pavers: joints
        s = sp[j]
        a, b = gx[j] / s, gy[j] / s
        b = b + 0.5 * (np.floor(a) % 2)  # staggered courses
        joint = ((a % 1.0) < 0.08) | ((b % 1.0) < 0.08)
        f[j] *= np.where(joint, 0.7, 0.92 + 0.16 * hash01(np.floor(a), np.floor(b), 3))
    col = col * f[:, None]
    lamp = np.exp(-(((gx % 25.0) - 12.5) ** 2 + ((gy % 25.0) - 12.5) ** 2) / 40.0) * night
    return col.astype(np.float32), lamp.astype(np.float32)
