"""Reading the GSV-Cities layout (Ali-bey et al., Neurocomputing 2022; github.com/amaralibey/gsv-cities).

``ROOT/Dataframes/<city>.csv``, one row per image with the columns ``place_id, year, month,
northdeg, city_id, lat, lon, panoid`` (others are ignored), and ``ROOT/Images/<city_id>/<name>``
with the publisher's file name::

    <city_id>_<place_id:07d>_<year:04d>_<month:02d>_<northdeg:03d>_<lat>_<lon>_<panoid>.jpg

where ``lat`` and ``lon`` are written as Python writes the floats read from the CSV. A place is
``(city, place_id)``: the publisher offsets the ids of the i-th city by ``i * 10**5``; here a place
simply gets one integer label per ``(city, place_id)`` pair. Places with fewer than
``min_images`` images are dropped, as the publisher's ``min_img_per_place`` does.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from vgray.errors import BadInput

COLUMNS = ("place_id", "year", "month", "northdeg", "city_id", "lat", "lon", "panoid")


@dataclass
class PlaceSet:
    """Place-labelled training images: ``paths[i]`` shows place ``labels[i]`` (0..n_places-1)."""

    paths: List[str]
    labels: np.ndarray  # (n,) int64
    dropped: int = 0  # places left out for having too few images
    # Per place, the places it must not share a batch with (grid places whose images may be each
    # other's positives: vgray.train.places.grid_places); None: any two places may.
    neighbours: Optional[List[np.ndarray]] = None

    @property
    def n_places(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    def members(self) -> List[np.ndarray]:
        """Per place label, the indices of its images (ascending)."""
        order = np.argsort(self.labels, kind="stable")
        bounds = np.searchsorted(self.labels[order], np.arange(self.n_places + 1))
        return [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def image_name(row: Dict[str, str]) -> str:
    """The publisher's file name of the image a dataframe row describes (see the module docstring)."""
    return (
        f"{row['city_id']}_{int(row['place_id']) % 10**5:07d}_{int(row['year']):04d}_{int(row['month']):02d}_"
        f"{int(row['northdeg']):03d}_{float(row['lat'])}_{float(row['lon'])}_{row['panoid']}.jpg"
    )


def _read_city(csv_path: Path) -> List[Dict[str, str]]:
    try:
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise BadInput(f"GSV-Cities dataframe {csv_path}: no column {missing[0]}; needs {', '.join(COLUMNS)}")
            rows = list(reader)
    except OSError as exc:
        raise BadInput(f"GSV-Cities dataframe {csv_path}: cannot be read ({exc.strerror or exc})")
    for n, row in enumerate(rows, start=2):
        try:
            image_name(row)
        except (TypeError, ValueError):
            raise BadInput(
                f"GSV-Cities dataframe {csv_path} line {n}: place_id, year, month, northdeg must be "
                f"integers and lat, lon numbers"
            )
    return rows


def read_gsv_cities(root, min_images: int) -> PlaceSet:
    """The places of the GSV-Cities folder ``root`` with at least ``min_images`` images each; every
    city of ``Dataframes/`` is read (in name order). A folder without dataframes, a dataframe
    without the publisher's columns, or an image listed but absent: :class:`BadInput`."""
    root = Path(root)
    frames = sorted((root / "Dataframes").glob("*.csv")) if (root / "Dataframes").is_dir() else []
    if not frames:
        raise BadInput(
            f"data.root={root}: no Dataframes/<city>.csv; a GSV-Cities folder holds Dataframes/*.csv "
            f"and Images/<city>/ (or set data.layout=vg for a VG-format dataset)"
        )
    groups: Dict[Tuple[str, int], List[str]] = {}
    for frame in frames:
        listed: Dict[str, set] = {}
        for row in _read_city(frame):
            city = row["city_id"]
            folder = root / "Images" / city
            if city not in listed:
                listed[city] = set(os.listdir(folder)) if folder.is_dir() else set()
            name = image_name(row)
            if name not in listed[city]:
                raise BadInput(f"GSV-Cities dataframe {frame} lists {folder / name}, which does not exist")
            groups.setdefault((frame.stem, int(row["place_id"])), []).append(str(folder / name))
    kept = [key for key in sorted(groups) if len(groups[key]) >= min_images]
    paths = [p for key in kept for p in groups[key]]
    labels = np.repeat(np.arange(len(kept), dtype=np.int64), [len(groups[key]) for key in kept])
    return PlaceSet(paths=paths, labels=labels, dropped=len(groups) - len(kept))
