"""What the buildings of the synthetic city look like: per-building styles (materials, colours,
storeys, windows, shop fronts) and the procedural façade that shades each wall pixel."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from vgray.data.synthetic.procedural import hash01, hsv_to_rgb

# Façade materials.
PLASTER, BRICK, PANEL, GLASS, DECOR = 0, 1, 2, 3, 4
# Façade colours are drawn around a small palette of common city hues, so that colour alone is
# ambiguous (as in real streets) and a place is told apart by its combination of features.
WALL_PALETTE = np.array(
    [
        [0.80, 0.74, 0.62],
        [0.72, 0.40, 0.30],
        [0.62, 0.60, 0.58],
        [0.86, 0.84, 0.80],
        [0.80, 0.62, 0.38],
        [0.55, 0.32, 0.25],
        [0.70, 0.70, 0.62],
        [0.58, 0.64, 0.68],
        [0.84, 0.72, 0.66],
        [0.45, 0.42, 0.40],
        [0.76, 0.58, 0.50],
        [0.66, 0.70, 0.58],
    ],
    np.float32,
)
SIGN_PALETTE = np.array(
    [
        [0.80, 0.12, 0.10],
        [0.10, 0.30, 0.70],
        [0.10, 0.55, 0.25],
        [0.95, 0.75, 0.10],
        [0.15, 0.15, 0.15],
        [0.90, 0.90, 0.88],
        [0.55, 0.15, 0.55],
        [0.95, 0.45, 0.10],
    ],
    np.float32,
)

WALL_FREE_HUE = 0.5
DISTRICT_M = 80.0

# Façade parts: each building has one colour per part (see :func:`part_colours`); a pixel's colour
# is its part's colour times a scalar brightness, so shading needs one gather per pixel.
(P_WALL, P_PANE, P_FRAME, P_TRIM, P_DISPLAY, P_SIGN, P_LETTER, P_AWNING, P_AWNING2, P_DOOR, P_POSTER, P_DECOR) = range(
    12
)
N_PARTS = 12


def building_styles(seed: int, split_index: int, centre: list, n_b: int) -> dict:
    """Style tables of the ``n_b`` buildings (id 0: none) of a split, each indexed by building id.

    ``centre`` holds each building's lot centre (local metres), which places it in a district.
    Heights follow a skewed distribution: mostly 3-6 storeys, a few towers. Adds ``parts``, the
    :func:`part_colours` table.
    """
    r = np.random.default_rng([seed, split_index, 0xB1D])
    # Districts (about 80 m across) have a character: a hue family and a typical height, as
    # real quarters do; it also makes look-alike places more often near each other.
    cen = np.array(centre)
    dist_id = (np.floor(cen[:, 0] / DISTRICT_M) * 7919 + np.floor(cen[:, 1] / DISTRICT_M)).astype(np.int64)
    d_hue = hash01(dist_id, seed, split_index, 1)
    d_tall = 0.6 + 1.0 * hash01(dist_id, seed, split_index, 2)
    floors = np.clip(np.round(r.gamma(3.0, 1.6, n_b) * d_tall), 1, 18)
    floor_h = r.uniform(2.9, 3.8, n_b)
    ground_h = floor_h * r.uniform(1.1, 1.5, n_b)
    material = r.choice(5, size=n_b, p=[0.32, 0.22, 0.15, 0.11, 0.20])
    # Half the façades take a common city colour, half a free hue (painted plaster: ochre,
    # pink, yellow, green...), so that streets differ in their colours as much as in shape.
    common = WALL_PALETTE[r.integers(0, len(WALL_PALETTE), n_b)] * r.uniform(0.85, 1.1, (n_b, 1))
    free = hsv_to_rgb((d_hue + r.normal(0, 0.06, n_b)) % 1.0, r.uniform(0.2, 0.6, n_b), r.uniform(0.5, 0.92, n_b))
    wall = np.where((r.random(n_b) < WALL_FREE_HUE)[:, None], free, common)
    wall = np.clip(wall + r.normal(0, 0.035, (n_b, 3)), 0.05, 0.97)
    glass_tint = np.array([0.35, 0.45, 0.55]) * r.uniform(0.6, 1.2, (n_b, 1))
    wall[material == GLASS] = glass_tint[material == GLASS]
    deco_angle = r.choice(np.arange(6) * np.pi / 8, n_b)  # 0, 22.5, ..., 112.5 degrees
    trim = np.clip(wall * r.choice([0.6, 0.75, 1.25], size=(n_b, 1)) + r.normal(0, 0.04, (n_b, 3)), 0.03, 0.98)
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
        glass=np.clip(
            np.array([0.20, 0.25, 0.32]) * r.uniform(0.5, 1.5, (n_b, 1)) + r.normal(0, 0.03, (n_b, 3)), 0.02, 0.9
        ).astype(np.float32),
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
        deco=hsv_to_rgb(r.uniform(0, 1, n_b), r.uniform(0.3, 0.8, n_b), r.uniform(0.3, 0.9, n_b)).astype(np.float32),
    )
    b["parts"] = part_colours(b)
    return b


def part_colours(b: dict) -> np.ndarray:
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


def facade(b: dict, bbc, uc, col, vv):
    """Part id (N,) uint8 and brightness (N,) of façade pixels.

    ``bbc`` and ``uc`` are per image column (building id, coordinate along the wall in metres);
    ``col`` maps each pixel to its column and ``vv`` is its height above the ground (m).
    Everything is procedural: window grids, storey cornices, pilasters, parapets, the
    material's small-scale pattern, shop fronts with signs and awnings, doors and posters on the
    ground floor. Also returns the pixels' lit-at-night candidates and window indices. What
    depends on the column only is computed once per column.
    """
    c = _columns(b, bbc, uc)
    p = _pixels(c, col, vv)
    part = np.zeros(vv.shape, np.uint8)
    mult = _materials(b, c, p, col, vv, part)
    win = _windows_and_trim(b, c, p, col, vv, part, mult)
    _ground_floor(c, p, col, vv, part, mult)
    lit = win | (part == P_DISPLAY) | (p.glass & (part == P_PANE))
    return part, mult.astype(np.float32), lit, p.iu, p.iv


def _columns(b: dict, bbc, uc) -> SimpleNamespace:
    """What depends on the image column only: the building's storeys, window grid, ground floor."""
    c = SimpleNamespace(bbc=bbc)
    c.fhc, c.ghc, c.hgtc, c.wsc = b["floor_h"][bbc], b["ground_h"][bbc], b["height"][bbc], b["win_sp"][bbc]
    c.matc = b["material"][bbc]
    c.u2 = u2 = uc + b["phase"][bbc]
    fu = u2 / c.wsc
    c.iuc = np.floor(fu)
    c.tuc = fu - c.iuc
    c.auc = np.abs(c.tuc - 0.5)
    c.grimec = b["grime"][bbc]
    c.streakc = c.grimec * hash01(bbc, np.floor(u2 * 3.0), 11)
    c.stainc = np.floor(u2 * 0.7)
    bay = u2 % 6.0
    c.shopc = shopc = b["shop"][bbc]
    c.displayc = shopc & (bay > 0.35) & (bay < 5.4)
    c.letterc = ((u2 * 2.5) % 1.0 < 0.7) & (hash01(bbc, np.floor(u2 * 2.5), 5) < 0.55)
    c.awn_c = np.where(np.floor(u2 * 2.0) % 2 == 0, P_AWNING, P_AWNING2).astype(np.uint8)
    c.awningc = shopc & b["awning"][bbc]
    c.doorc = ~shopc & (c.iuc % 3 == 1) & (c.auc * c.wsc < 0.6)
    c.puc = (u2 % 30.0) - b["poster_u"][bbc]
    c.posterc = np.abs(c.puc) < 0.6
    c.wwc = b["win_w"][bbc] / 2
    c.whc = b["win_h"][bbc] / 2
    c.pilc = b["pilaster"][bbc] & (c.tuc < 0.07)
    return c


def _pixels(c: SimpleNamespace, col, vv) -> SimpleNamespace:
    """The per-column values each pixel needs, and its storey (``iv``) and place in it (``tv``)."""
    p = SimpleNamespace(
        bb=c.bbc[col],
        fh=c.fhc[col],
        gh=c.ghc[col],
        hgt=c.hgtc[col],
        mat=c.matc[col],
        iu=c.iuc[col],
        tu=c.tuc[col],
        au=c.auc[col],
    )
    p.upper = vv >= p.gh
    fv = (vv - p.gh) / p.fh
    p.iv = np.floor(fv)
    p.tv = fv - p.iv
    p.glass = p.mat == GLASS
    return p


def _materials(b: dict, c: SimpleNamespace, p: SimpleNamespace, col, vv, part):
    """Brightness of each pixel from grime and its material's small-scale pattern (bricks, panels,
    decorated tiles, glass curtain walls); sets ``part`` where the material decides it."""
    bb, fh, hgt, mat, u2 = p.bb, p.fh, p.hgt, p.mat, c.u2
    grime = c.grimec[col]
    mult = 1.0 + grime * (2.0 * hash01(bb, c.stainc[col], np.floor(vv * 0.5)) - 1.0)
    mult *= 1.0 - c.streakc[col] * np.clip(1.2 - (hgt - vv) / 3, 0, 1)
    m = np.flatnonzero(mat == BRICK)
    if m.size:
        row = np.floor(vv[m] * 4.0)
        bu = u2[col[m]] * 2.0 + 0.5 * (row % 2)
        mortar = ((vv[m] * 4.0) % 1.0 < 0.16) | (bu % 1.0 < 0.08)
        mult[m] *= np.where(mortar, 0.72, 0.9 + 0.2 * hash01(bb[m], row, np.floor(bu)))
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
    g = np.flatnonzero(p.glass)
    if g.size:
        tu, tv, iu, iv = p.tu, p.tv, p.iu, p.iv
        mull = (tu[g] < 0.06) | (tv[g] < 0.08)
        part[g] = np.where(mull, P_FRAME, P_PANE)
        mult[g] *= np.where(mull, 0.8, 0.85 + 0.35 * np.clip(vv[g] / hgt[g], 0, 1) + 0.3 * hash01(bb[g], iu[g], iv[g]))
    return mult


def _windows_and_trim(b: dict, c: SimpleNamespace, p: SimpleNamespace, col, vv, part, mult):
    """Windows on the upper storeys, storey cornices, pilasters, the parapet and the band above
    the ground floor; returns the window pixels (lit at night)."""
    bb, fh, hgt, upper, au, tv = p.bb, p.fh, p.hgt, p.upper, p.au, p.tv
    # Glass buildings are all window already.
    ww, wh = c.wwc[col], c.whc[col]
    av = np.abs(tv - 0.5)
    framed = upper & (vv < hgt - 0.9) & ~p.glass & (au < ww + 0.12 / c.wsc[col]) & (av < wh + 0.12 / fh)
    win = framed & (au < ww) & (av < wh)
    part[framed] = P_FRAME
    w = np.flatnonzero(win)
    part[w] = P_PANE
    mult[w] = 0.55 + 0.9 * hash01(bb[w], p.iu[w], p.iv[w], 3) + 0.25 * (tv[w] - 0.5)

    gh = p.gh
    trim = (
        (b["cornice"][bb] & upper & (tv < 0.07))
        | (c.pilc[col] & upper)
        | (vv > hgt - 0.45)
        | ((vv >= gh - 0.25) & (vv < gh))
    )
    part[trim] = P_TRIM
    return win


def _ground_floor(c: SimpleNamespace, p: SimpleNamespace, col, vv, part, mult) -> None:
    """The ground floor: a shop front (display windows, a sign with "lettering", maybe an awning),
    or a plain front with doors; posters here and there. Sets ``part`` and ``mult`` in place."""
    bb, gh, u2 = p.bb, p.gh, c.u2
    gf = np.flatnonzero(vv < gh - 0.25)
    if gf.size:
        cg, vg, gg = col[gf], vv[gf], gh[gf]
        pg = part[gf]
        mg = mult[gf]
        shop = c.shopc[cg]
        display = c.displayc[cg] & (vg > 0.45) & (vg < gg * 0.64)
        sign = shop & (vg >= gg * 0.70) & (vg < gg * 0.92)
        letter = sign & c.letterc[cg] & (vg >= gg * 0.74) & (vg < gg * 0.88)
        awning = c.awningc[cg] & (vg >= gg * 0.62) & (vg < gg * 0.70)
        door = c.doorc[cg] & (vg < 2.3)
        poster = c.posterc[cg] & ~display & ~door & (vg > 0.9) & (vg < 2.3)
        pg[display] = P_DISPLAY
        mg[display] = 0.8 + 0.5 * hash01(bb[gf][display], np.floor(u2[cg[display]] * 1.5), 9)
        pg[sign] = P_SIGN
        pg[letter] = P_LETTER
        pg[awning] = c.awn_c[cg[awning]]
        pg[door] = P_DOOR
        pg[poster] = P_POSTER
        mg[poster] = 0.7 + 0.5 * hash01(bb[gf][poster], np.floor(vg[poster] * 3), np.floor(c.puc[cg[poster]] * 3))
        part[gf] = pg
        mult[gf] = mg
