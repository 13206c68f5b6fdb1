"""Rendering: a vectorised Wolfenstein-style raycaster over the world's occupancy map.

Per image column one ray is marched through the 1 m occupancy map (DDA); the wall spans rows by
1/distance and is shaded by the procedural façade; the floor is cast onto the ground map; above
the walls is a sky with clouds; distance fog limits how far a view reaches; then the camera adds
exposure, colour cast, gamma, blur and sensor noise.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np

from vgray.data.synthetic.capture import CAM_FIELDS
from vgray.data.synthetic.facade import N_PARTS, P_LETTER, P_SIGN, facade
from vgray.data.synthetic.ground import ground_albedo
from vgray.data.synthetic.procedural import hash01
from vgray.data.synthetic.world import World

MAX_DIST_M = 180.0  # rays end here (the fog has swallowed everything by then)
FOG_M = 110.0  # daylight fog length at haze 1
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
        d = np.where(go_x, sdx, sdy)  # depth at which the next cell is entered
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


def render(world: World, cams: dict, height: int, width: int, noise_seeds) -> np.ndarray:
    """Render a batch of images; ``cams`` holds one array per :data:`CAM_FIELDS` entry.

    Returns uint8 (B, H, W, 3). ``noise_seeds`` gives each image its own sensor-noise stream.
    """
    B, H, W = len(cams["x"]), height, width
    c = {k: np.asarray(cams[k], np.float64) for k in CAM_FIELDS}
    view = _view(world, c, B, H, W)
    img = np.empty((B * H * W, 3), np.float32)
    keep = np.ones(B * H * W, np.float32)  # share of the pixel not lost in the fog
    _shade_walls(world, c, view, img, keep)
    _shade_ground(world, c, view, img, keep)
    hor = _shade_sky(c, cams["cloud_seed"], view, img)
    return _camera(c, img, keep, hor, noise_seeds, B, H, W)


def _view(world: World, c: dict, B: int, H: int, W: int) -> SimpleNamespace:
    """Where each column's ray meets a wall (depth, building, coordinate along the wall, sun on
    the face, fog), and which pixels see wall, ground or sky."""
    v = SimpleNamespace(B=B, H=H, W=W)
    v.f = f = (W / 2) / np.tan(np.radians(c["hfov"]) / 2)  # focal length, px
    v.t = t = (np.arange(W) + 0.5 - W / 2)[None, :] / f[:, None]  # (B, W) tan offsets
    v.h = h = np.radians(c["heading"])
    fx, fy, rx, ry = np.sin(h), np.cos(h), np.cos(h), -np.sin(h)  # forward, right
    v.dx = dx = fx[:, None] + t * rx[:, None]
    v.dy = dy = fy[:, None] + t * ry[:, None]
    depth, bid, side, u = _cast(world.occ, np.repeat(c["x"], W), np.repeat(c["y"], W), dx.ravel(), dy.ravel())
    # Per column (flat index b * W + w): depth, building, wall coordinate, sun on the face.
    v.bidc = bid
    v.depc = depc = np.where(bid > 0, depth, 1e9).astype(np.float32)
    v.uc = u.astype(np.float32)
    nxw = np.where(side == 0, -np.sign(dx.ravel()), 0.0)  # outward wall normal
    nyw = np.where(side == 1, -np.sign(dy.ravel()), 0.0)
    sun_az, sun_el = np.radians(c["sun_az"]), np.radians(c["sun_el"])
    night, amb = c["night"], c["ambient"]
    lam = np.maximum(nxw * np.repeat(np.sin(sun_az), W) + nyw * np.repeat(np.cos(sun_az), W), 0)
    sunc = np.repeat(amb, W) + np.repeat((1 - amb) * 1.1 * np.cos(sun_el), W) * lam
    v.sunc = (sunc * np.repeat(1 - 0.75 * night, W)).astype(np.float32)
    v.fog_len = fog_len = (FOG_M / c["haze"]).astype(np.float32)
    v.fogc = np.exp(-depc / np.repeat(fog_len, W)).astype(np.float32)  # 1: clear, 0: fog

    v.rows = rows = (np.arange(H, dtype=np.float32) + 0.5)[None, :, None]  # (1, H, 1)
    v.hz = hz = (H / 2 + c["pitch"]).astype(np.float32)[:, None, None]
    f3 = f.astype(np.float32)[:, None, None]
    ch = c["cam_h"].astype(np.float32)[:, None, None]
    v.vv = ch + (hz - rows) * depc.reshape(B, 1, W) / f3  # height on the wall
    v.wall = wall = (v.vv >= 0) & (v.vv < world.b["height"][bid].reshape(B, 1, W))
    below = rows > hz
    v.ground = ~wall & below
    v.sky = ~wall & ~below
    return v


def _shade_walls(world: World, c: dict, v: SimpleNamespace, img, keep) -> None:
    """Walls: part colour x brightness x (ambient + sun on the face), plus lit windows at night."""
    H, W = v.H, v.W
    parts = world.b["parts"]
    night = c["night"]
    pix = np.flatnonzero(v.wall)
    col = (pix // (H * W)) * W + pix % W
    bb = v.bidc[col]
    vv = v.vv.ravel()[pix]
    part, mult, lit, iu, iv = facade(world.b, v.bidc, v.uc, col, vv)
    mult *= v.sunc[col] * (0.85 + 0.15 * np.minimum(vv / 3, 1))
    img[pix] = parts[bb * N_PARTS + part] * mult[:, None]
    keep[pix] = v.fogc[col]
    nb = night[pix // (H * W)] > 0
    if nb.any():
        sel = np.flatnonzero(nb & lit)
        sel = sel[hash01(bb[sel], iu[sel], iv[sel], 7) < 0.4]
        glow = 0.45 + 0.55 * hash01(bb[sel], iu[sel], iv[sel], 8)
        img[pix[sel]] += glow[:, None] * LIT_WINDOW
        sel = np.flatnonzero(nb & ((part == P_SIGN) | (part == P_LETTER)))
        img[pix[sel]] += 0.5 * parts[bb[sel] * N_PARTS + part[sel]]


def _shade_ground(world: World, c: dict, v: SimpleNamespace, img, keep) -> None:
    """Ground: cast each pixel onto the ground plane, look the point up in the ground map."""
    H, W, f, hz = v.H, v.W, v.f, v.hz
    night, amb = c["night"], c["ambient"]
    sun_el = np.radians(c["sun_el"])
    pix = np.flatnonzero(v.ground)
    bi, ri = pix // (H * W), (pix // W) % H
    col = bi * W + pix % W
    z = (c["cam_h"][bi] * f[bi]) / (v.rows.ravel()[ri] - hz.ravel()[bi])
    gx = c["x"][bi] + z * v.dx.ravel()[col]
    gy = c["y"][bi] + z * v.dy.ravel()[col]
    alb, lamp = ground_albedo(world.ground, gx, gy, night[bi])
    light = (amb + (1 - amb) * 1.2 * np.sin(sun_el)) * (1 - 0.8 * night)
    img[pix] = alb * (light[bi] + 0.6 * lamp).astype(np.float32)[:, None]
    keep[pix] = np.exp(-z / v.fog_len[bi])


def _shade_sky(c: dict, cloud_seed, v: SimpleNamespace, img) -> np.ndarray:
    """Sky: horizon-to-zenith gradient and soft clouds that differ per capture. Returns each
    image's horizon colour (B, 3), which the fog fades towards."""
    H, W, f = v.H, v.W, v.f
    night = c["night"]
    hor = SKY_DAY[0][None] * (1 - night[:, None]) + SKY_NIGHT[0][None] * night[:, None]  # (B, 3)
    zen = SKY_DAY[1][None] * (1 - night[:, None]) + SKY_NIGHT[1][None] * night[:, None]
    pix = np.flatnonzero(v.sky)
    bi, ri = pix // (H * W), (pix // W) % H
    col = bi * W + pix % W
    el = np.clip(np.arctan((v.hz.ravel()[bi] - v.rows.ravel()[ri]) / f[bi]) / (np.pi / 2), 0, 1)
    az = v.h[bi] + np.arctan(v.t.ravel()[col])
    cs = np.asarray(cloud_seed, np.int64)
    ph = np.stack([hash01(cs, k) * 2 * np.pi for k in range(4)], 1)[bi]
    cloud = (
        np.sin(3 * az + ph[:, 0]) * np.sin(9 * el + ph[:, 1])
        + 0.6 * np.sin(7 * az + 13 * el + ph[:, 2])
        + 0.4 * np.sin(17 * az - 5 * el + ph[:, 3])
    )
    cloud = (np.clip(cloud - 0.3, 0, 1) * (1 - night[bi]) * 0.7).astype(np.float32)[:, None]
    s = (el**0.6).astype(np.float32)[:, None]
    img[pix] = (hor[bi] * (1 - s) + zen[bi] * s) * (1 - cloud) + 0.95 * cloud
    return hor


def _camera(c: dict, img, keep, hor, noise_seeds, B: int, H: int, W: int) -> np.ndarray:
    """Distance fog towards the horizon colour, then the camera: exposure, colour cast, gamma,
    blur, sensor noise; uint8 (B, H, W, 3)."""
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
        im = im * 255 + (table[oy : oy + H, ox : ox + W] * np.float32(255 * c["noise"][k]) + 0.5)
        out[k] = np.clip(im, 0, 255)
    return out


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of one (H, W, 3) image, edges clamped."""
    r = max(1, int(math.ceil(2.5 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k = (k / k.sum()).astype(np.float32)
    p = np.pad(img, ((r, r), (0, 0), (0, 0)), mode="edge")
    img = sum(k[i] * p[i : i + img.shape[0]] for i in range(2 * r + 1))
    p = np.pad(img, ((0, 0), (r, r), (0, 0)), mode="edge")
    return sum(k[i] * p[:, i : i + img.shape[1]] for i in range(2 * r + 1))


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
