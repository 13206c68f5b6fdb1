"""Locate new photos: what a deployed Visual Geo-localization system answers.

The database is a folder written by ``vgray eval --save-descriptors DIR``: the database descriptors
(``database.parquet``), the full config (``config.yaml``) and the network's state dict exactly as it
was evaluated (``model.pt``, NetVLAD's clusters included), plus ``pca.faiss`` when the evaluation
projected its descriptors. A photo goes through the same network and the same test-time transform
(``test.method``) as the evaluation's queries, is searched in the ``test.knn`` index of the database
descriptors, and its position is predicted as the paper's protocol does: the position of the top-1
database image. Distances are Euclidean in descriptor space (the square root of faiss's squared L2;
approximate for compressed indexes); for a query seen as several crops, that of its nearest crop.

The index is built once and cached beside the descriptors as ``DIR/index.<key>.faiss``, the key
hashing the index string and the size and modification time of ``database.parquet``: a changed
database or another ``test.knn`` builds (and atomically writes) a new one, and stale ones are removed.
The folder's files and formats live in :mod:`vgray.saved_descriptors`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Dict, Optional, Sequence

import faiss

from vgray.atomic import atomic_path
from vgray.data.images import UnreadableImage, read_image
from vgray.errors import BadInput
from vgray.evaluate.evaluate import query_descriptors
from vgray.evaluate.extract import extract_descriptors
from vgray.evaluate.knn import build_index, fill_index, search
from vgray.evaluate.methods import create_method
from vgray.evaluate.pca import apply_pca
from vgray.models import build_model
from vgray.runtime import Runtime
from vgray.saved_descriptors import DATABASE_FILE, Database, index_path, load_model, open_database, stale_indexes


def latlon_from_name(path: str) -> Optional[tuple]:
    """``(lat, lon)`` from a VG file name (fields 5 and 6), or None where the name leaves them empty."""
    fields = os.path.basename(path).split("@")
    try:
        lat, lon = float(fields[5]), float(fields[6])
    except (IndexError, ValueError):
        return None
    return (lat, lon) if math.isfinite(lat) and math.isfinite(lon) else None


def utm_zone_from_name(path: str) -> Optional[str]:
    """``"33T"`` from a VG file name (fields 3 and 4), or None where it carries no zone."""
    fields = os.path.basename(path).split("@")
    zone = "".join(fields[3:5]) if len(fields) > 4 else ""
    return zone or None


def _read_cached_index(db: Database) -> Optional[faiss.Index]:
    """The cached ``test.knn`` index of ``db``, or None when there is none that fits it."""
    path = index_path(db)
    if path.is_file():
        try:
            index = faiss.read_index(str(path))
            if index.ntotal == len(db.paths) and index.d == db.d:
                return index
        except RuntimeError:
            pass  # unreadable (another faiss version, a damaged file): build it again
    return None


def _build_and_cache(db: Database, xb) -> faiss.Index:
    """The ``test.knn`` index of the (checked) descriptors ``xb``, written atomically to the cache
    (stale ones removed): only once every check of the database and the photos has passed."""
    index = build_index(db.cfg.test.knn, db.d)
    fill_index(index, xb, seed=db.cfg.seed, progress=True)  # a bar on a terminal while a big index trains
    with atomic_path(index_path(db)) as tmp:
        faiss.write_index(index, str(tmp))
    for stale in stale_indexes(db):
        stale.unlink(missing_ok=True)
    return index


def cached_index(db: Database) -> faiss.Index:
    """The ``test.knn`` index of the database descriptors: read from the cache, else built and cached."""
    index = _read_cached_index(db)
    return index if index is not None else _build_and_cache(db, db.descriptors())


def _check_photos(photos: Sequence[str]) -> None:
    for photo in photos:
        if not Path(photo).is_file():
            raise BadInput(f"photo {photo}: no such file")
        try:
            read_image(photo)
        except UnreadableImage as exc:
            raise BadInput(f"photo {photo} is not a readable image ({exc})")


def _load_network(db: Database):
    model = build_model(db.cfg.model, load_weights=False, image_size=db.cfg.data.image_size)
    return load_model(db.root, model)


def _position(path: str, east: float, north: float) -> Dict[str, object]:
    # A set given by ground-truth lists has no coordinates (NaN): null in the answer.
    out: Dict[str, object] = {
        "utm_east": float(east) if math.isfinite(east) else None,
        "utm_north": float(north) if math.isfinite(north) else None,
        "utm_zone": utm_zone_from_name(path),
    }
    latlon = latlon_from_name(path)
    out["lat"], out["lon"] = latlon if latlon else (None, None)
    return out


def locate(photos: Sequence[str], database: str | os.PathLike, k: int = 5, progress: bool = False) -> Dict:
    """For each photo its top-``k`` database matches (path, position, descriptor distance) and the
    predicted position (the top-1's). Returns one JSON-ready dict."""
    if k < 1:
        raise BadInput(f"--k={k} must be at least 1")
    if not photos:
        raise BadInput("give at least one photo to locate")
    db = open_database(database)
    _check_photos(photos)
    # The descriptors are read and checked (nulls, size, finite) before the network is built; a
    # cached index was built from a file that passed these checks (a changed file gets a new key).
    index = _read_cached_index(db)
    xb = db.descriptors() if index is None else None
    cfg = db.cfg
    model = _load_network(db)
    method = create_method(cfg, model.mean, model.std)
    # The photos are few: no loader workers; an unreadable one was refused above.
    rt = dataclasses.replace(Runtime.from_config(cfg, progress=progress), num_workers=0, skip_corrupt=False)
    x, _ = query_descriptors(model, list(photos), method, rt, model.features_dim, extract_descriptors)
    xq = method.pool(x)  # (m, views, features_dim)
    m, views = xq.shape[:2]
    xq = xq.reshape(m * views, -1)
    pca = db.pca()
    if pca is not None:
        xq = apply_pca(pca, xq)
    if xq.shape[1] != db.d:
        raise BadInput(
            f"--database {db.root}: the network gives {xq.shape[1]}-d descriptors but {DATABASE_FILE} "
            f"holds {db.d}-d ones"
        )

    if index is None:
        index = _build_and_cache(db, xb)
    D, I, _ = search(index, xq, method.search_k(min(k, len(db.paths))))
    D, I = D.reshape(m, views, -1), I.reshape(m, views, -1)
    ranked = method.merge(D, I, k)  # (m, <=k) database rows, -1 padded

    results = []
    for i, photo in enumerate(photos):
        matches = []
        for rank, row in enumerate(r for r in ranked[i] if r >= 0):
            # faiss gives squared L2; a merged image's distance is that of its nearest view.
            squared = float(D[i][I[i] == row].min())
            matches.append(
                {
                    "rank": rank + 1,
                    "path": db.paths[row],
                    "distance": math.sqrt(max(squared, 0.0)),
                    **_position(db.paths[row], *db.utm[row]),
                }
            )
        predicted = (
            {
                "path": matches[0]["path"],
                **{key: matches[0][key] for key in ("utm_east", "utm_north", "utm_zone", "lat", "lon")},
            }
            if matches
            else None
        )
        results.append({"photo": str(photo), "predicted": predicted, "matches": matches})
    return {
        "database": str(db.root),
        "database_size": len(db.paths),
        "knn": cfg.test.knn,
        "test_method": cfg.test.method,
        "features_dim": db.d,
        "k": k,
        "photos": results,
    }


def format_table(answer: Dict) -> str:
    """The human-readable answer: per photo, the predicted position, then its ranked matches."""

    def number(v, width: int):
        return f"{'-':>{width}}" if v is None else f"{v:>{width}.6f}"

    lines = [
        f"database {answer['database']} ({answer['database_size']} images, kNN {answer['knn']}, "
        f"{answer['features_dim']}-d, test method {answer['test_method']})"
    ]
    for result in answer["photos"]:
        p = result["predicted"]
        lines.append("")
        if p is None:
            lines.append(f"{result['photo']}: no match")
            continue
        zone = f" zone {p['utm_zone']}" if p["utm_zone"] else ""
        where = (
            f"UTM {p['utm_east']:.2f} E {p['utm_north']:.2f} N{zone}"
            if p["utm_east"] is not None
            else f"{p['path']} (the database holds no coordinates)"
        )
        if p["lat"] is not None:
            where += f", lat {p['lat']:.6f} lon {p['lon']:.6f}"
        lines.append(f"{result['photo']}: predicted {where}")
        lines.append(
            f"  {'rank':>4}  {'distance':>9}  {'utm_east':>12}  {'utm_north':>12}  {'lat':>10}  {'lon':>11}  path"
        )
        for mt in result["matches"]:
            east, north = (f"{v:>12.2f}" if v is not None else f"{'-':>12}" for v in (mt["utm_east"], mt["utm_north"]))
            lines.append(
                f"  {mt['rank']:>4}  {mt['distance']:>9.4f}  {east}  "
                f"{north}  {number(mt['lat'], 10)}  {number(mt['lon'], 11)}  {mt['path']}"
            )
    return "\n".join(lines)
