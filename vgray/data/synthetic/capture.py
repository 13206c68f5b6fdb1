"""The capture plan: where each image of a split is taken from, and under what conditions.

The database is a Street-View-like capture along every street; queries are taken a few metres off
database places under changed conditions (another hour, dusk or night, another camera).
"""

from __future__ import annotations

import numpy as np

from vgray.data.synthetic.presets import SPLITS, Preset
from vgray.data.synthetic.world import World, street_grid

# Per-image capture parameters, one array each (struct of arrays, so batches stay vectorised).
CAM_FIELDS = (
    "x",
    "y",
    "heading",
    "cam_h",
    "pitch",
    "hfov",
    "night",
    "sun_az",
    "sun_el",
    "ambient",
    "exposure",
    "gamma",
    "gain_r",
    "gain_g",
    "gain_b",
    "haze",
    "blur",
    "noise",
    "cloud_seed",
)


def database_places(world: World, preset: Preset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Places of the database capture: every ``spacing_m`` along every street centreline.

    Returns ``x``, ``y`` (local metres) and ``axis`` (0: place on a north-south street, 1:
    east-west). Places of east-west streets closer than half a spacing to a north-south street
    are dropped, since the crossing is already covered.
    """
    return _places(world.xs, world.ys, preset.spacing_m)


def image_count(preset: Preset, seed: int, split_index: int, kind: str) -> int:
    """How many images :func:`capture_plan` gives a split's ``kind``, from the street plan alone
    (no occupancy or ground map is built): cheap for a world of a million images."""
    if kind == "queries":
        return preset.split(SPLITS[split_index]).queries
    xs, ys = street_grid(preset, seed, split_index)
    return len(_places(xs, ys, preset.spacing_m)[0]) * preset.headings


def _places(xs: np.ndarray, ys: np.ndarray, s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`database_places` of the streets centred on ``xs`` (north-south) and ``ys``."""
    px, py, ax = [], [], []
    y_run = np.arange(ys[0], ys[-1] + 1e-6, s)
    for x in xs:
        px.append(np.full_like(y_run, x))
        py.append(y_run)
        ax.append(np.zeros(len(y_run), np.int8))
    x_run = np.arange(xs[0], xs[-1] + 1e-6, s)
    keep = np.abs(x_run[:, None] - xs[None, :]).min(1) >= s / 2
    x_run = x_run[keep]
    for y in ys:
        px.append(x_run)
        py.append(np.full_like(x_run, y))
        ax.append(np.ones(len(x_run), np.int8))
    return np.concatenate(px), np.concatenate(py), np.concatenate(ax)


def _daylight(n: int) -> dict:
    """The database's capture conditions: one fixed sunny morning, neutral camera."""
    z, o = np.zeros(n), np.ones(n)
    return dict(
        night=z,
        sun_az=o * 135.0,
        sun_el=o * 40.0,
        ambient=o * 0.55,
        exposure=o,
        gamma=o,
        gain_r=o,
        gain_g=o,
        gain_b=o,
        haze=o * 1.0,
        blur=z,
        noise=o * 0.006,
    )


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
        plan = dict(
            x=px[place],
            y=py[place],
            heading=heading,
            cam_h=np.full(n, 2.5),
            pitch=np.zeros(n),
            hfov=np.full(n, preset.hfov_deg),
            **_daylight(n),
        )
        plan["cloud_seed"] = rng.integers(0, 2**31, n)
        plan["note"] = np.array(["day_forward_synth"] * n)
        plan["place"] = place
        return plan

    n = spec.queries
    place = rng.integers(0, len(px), n)
    along = rng.uniform(-4.0, 4.0, n)  # a few metres off the database place ...
    across = rng.uniform(-2.0, 2.0, n)  # ... and off the centreline (another lane)
    travel = np.where(ax[place] == 0, 0.0, 90.0) + 180.0 * rng.integers(0, 2, n)
    rad = np.radians(travel)
    x = px[place] + along * np.sin(rad) + across * np.cos(rad)
    y = py[place] + along * np.cos(rad) - across * np.sin(rad)
    # Stay on the street network: past the outermost crossings lie the boundary buildings.
    x = np.clip(x, world.xs[0] - 2.5, world.xs[-1] + 2.5)
    y = np.clip(y, world.ys[0] - 2.5, world.ys[-1] + 2.5)
    view = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])  # front, side, back
    offset = np.choose(view, [np.zeros(n), rng.choice([-90.0, 90.0], n), np.full(n, 180.0)])
    heading = (travel + offset + np.clip(rng.normal(0, 8.0, n), -20, 20)) % 360
    night = rng.random(n) < preset.night_frac
    dusk = ~night & (rng.random(n) < 0.15)
    # Phone and dash cameras auto-expose, so daytime brightness varies little; at dusk the camera
    # mostly compensates (warm, noisier); at night it cannot.
    exposure = np.exp(rng.normal(0, 0.04, n))
    exposure[night] *= 0.35
    exposure[dusk] *= 0.9
    cast = np.exp(rng.normal(0, 0.04, (n, 3)))  # white balance / colour shift
    cast[night] *= np.array([0.75, 0.85, 1.25])  # cold LED street light
    cast[dusk] *= np.array([1.2, 0.95, 0.8])  # warm evening light
    plan = dict(
        x=x,
        y=y,
        heading=heading,
        cam_h=rng.uniform(1.6, 2.5, n),  # pedestrian / car height
        pitch=rng.normal(0, 0.02, n) * preset.height,  # horizon shift, pixels
        hfov=preset.hfov_deg * np.exp(rng.normal(0, 0.05, n)),
        night=night.astype(float),
        # Another hour of the day: the sun within 35 degrees of the database's, another height.
        sun_az=135.0 + rng.uniform(-35, 35, n),
        sun_el=rng.uniform(25, 55, n),
        ambient=rng.uniform(0.5, 0.65, n),  # higher: hazier, flatter
        exposure=exposure,
        gamma=np.exp(rng.normal(0, 0.04, n)),
        gain_r=cast[:, 0],
        gain_g=cast[:, 1],
        gain_b=cast[:, 2],
        haze=np.exp(rng.normal(0, 0.25, n)),
        blur=np.where(rng.random(n) < 0.3, rng.uniform(0.3, 1.0, n), 0.0) * preset.height / 120,
        noise=rng.uniform(0.004, 0.02, n) + 0.01 * dusk + 0.03 * night,
        cloud_seed=rng.integers(0, 2**31, n),
    )
    vname = np.array(["forward", "sideways", "backward"])[view]
    plan["note"] = np.char.add(np.char.add(np.where(night, "night_", "day_"), vname), "_synth")
    plan["place"] = place
    return plan
