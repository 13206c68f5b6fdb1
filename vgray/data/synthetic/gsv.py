"""The synthetic world's training images in the GSV-Cities layout (``vgray synth --layout gsv_cities``).

The same images as the VG layout's ``train`` split (same world, same capture plan, same per-image
random streams, so the same pixels), written as GSV-Cities writes a city
(:mod:`vgray.data.gsv_cities`): ``OUT/Dataframes/<city>.csv`` and ``OUT/Images/<city>/<name>.jpg``.
A place is a database place of the capture plan: its database views and the queries taken near it.
Database views are dated 2020-06, queries 2022 in a month of their own; ``northdeg`` is the heading.
The VG layout (:mod:`.write`) is untouched by this module.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from vgray.console import progress_bar
from vgray.data.gsv_cities import COLUMNS, image_name
from vgray.data.synthetic.capture import CAM_FIELDS, capture_plan
from vgray.data.synthetic.geo import utm_to_latlon
from vgray.data.synthetic.presets import PRESETS
from vgray.data.synthetic.render import render
from vgray.data.synthetic.world import build_world
from vgray.data.synthetic.write import BATCH, JPEG_QUALITY, KINDS, VERSION, check_preset
from vgray.errors import BadInput

MARKER = "vgray_synthetic_gsv.json"


def city_name(preset: str) -> str:
    """The one city of a synthetic GSV-Cities folder (``SyntheticTiny``)."""
    return f"Synthetic{preset.capitalize()}"


def _rows(world, plan: dict, kind: str, city: str) -> list:
    rows = []
    for i in range(len(plan["x"])):
        lat, lon = utm_to_latlon(world.east0 + float(plan["x"][i]), world.north0 + float(plan["y"][i]))
        query = kind == "queries"
        rows.append(
            {
                "place_id": int(plan["place"][i]),
                "year": 2022 if query else 2020,
                "month": 1 + i % 12 if query else 6,
                "northdeg": int(round(float(plan["heading"][i]))) % 360,
                "city_id": city,
                "lat": round(lat, 6),
                "lon": round(lon, 6),
                "panoid": f"synthtrain{'q' if query else 'p'}{i if query else int(plan['place'][i]):06d}",
            }
        )
    return rows


def _write_split(tmp: Path, preset_name: str, seed: int, progress: bool = False) -> int:
    """Render the train split into ``tmp`` in the GSV-Cities layout, with a bar over the images
    written when ``progress`` (:func:`vgray.console.progress_bar`); returns the image count."""
    from PIL import Image

    preset = PRESETS[preset_name]
    world = build_world(preset, seed, 0)
    city = city_name(preset_name)
    images = tmp / "Images" / city
    images.mkdir(parents=True)
    (tmp / "Dataframes").mkdir()
    all_rows = []
    plans = {kind: capture_plan(world, preset, seed, kind) for kind in KINDS}
    bar = progress_bar(
        sum(len(plan["x"]) for plan in plans.values()), f"synthetic {preset_name} (gsv_cities)", "img", progress
    )
    for k_kind, kind in enumerate(KINDS):
        plan = plans[kind]
        rows = _rows(world, plan, kind, city)
        n = len(rows)
        for a in range(0, n, BATCH):
            idx = np.arange(a, min(a + BATCH, n))
            cams = {f: np.asarray(plan[f])[idx] for f in CAM_FIELDS}
            # The VG writer's seeds (split 0 = train), so the pixels are the VG train split's.
            seeds = [[seed, 0, k_kind, int(i), 0x5E5] for i in idx]
            for i, im in zip(idx, render(world, cams, preset.height, preset.width, seeds)):
                Image.fromarray(im).save(
                    images / image_name({k: str(v) for k, v in rows[i].items()}), "JPEG", quality=JPEG_QUALITY
                )
            bar.update(len(idx))
        all_rows += rows
    bar.close()
    with open(tmp / "Dataframes" / f"{city}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(COLUMNS))
        writer.writeheader()
        writer.writerows(all_rows)
    return len(all_rows)


def generate_gsv_cities(out, preset: str = "tiny", seed: int = 0, progress: bool = False) -> Path:
    """Write the train images of the synthetic world ``preset``/``seed`` into ``out`` in the
    GSV-Cities layout, atomically (a temporary sibling moved into place); a folder that already
    holds this preset/seed is returned as is, any other non-empty one refused."""
    seed = check_preset(preset, seed)
    out = Path(out).expanduser().absolute()
    wanted = {"format": "vgray-synthetic-gsv_cities", "preset": preset, "seed": seed, "version": VERSION}
    if out.exists():
        try:
            marker = json.loads((out / MARKER).read_text())
        except (OSError, ValueError):
            marker = None
        if marker is not None and {k: marker.get(k) for k in wanted} == wanted:
            return out
        if not out.is_dir() or any(out.iterdir()):
            raise BadInput(
                f"{out} is not empty and does not hold synthetic {preset!r} seed {seed} in the "
                f"GSV-Cities layout; pass a new or empty folder"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        n = _write_split(tmp, preset, seed, progress)
        (tmp / MARKER).write_text(json.dumps({**wanted, "images": n, "city": city_name(preset)}, indent=1))
        os.replace(tmp, out)
        return out
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
