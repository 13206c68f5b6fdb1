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
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import faiss
import numpy as np
import pyarrow.parquet as pq
import torch

from vgray.atomic import atomic_path, write_text
from vgray.errors import BadInput

CONFIG_FILE, MODEL_FILE, DATABASE_FILE, PCA_FILE = "config.yaml", "model.pt", "database.parquet", "pca.faiss"


def write_model(out: str | os.PathLike, cfg, model: torch.nn.Module) -> None:
    """``out/config.yaml`` (the full config) and ``out/model.pt`` (the state dict as evaluated),
    each written to a temporary file and moved into place."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / CONFIG_FILE, cfg.to_yaml())
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out / MODEL_FILE) as tmp:
        torch.save(state, tmp)


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


@dataclasses.dataclass
class Database:
    """A saved descriptor folder: config, paths and UTM positions of the database, descriptor size."""
    root: Path
    cfg: object
    paths: List[str]
    utm: np.ndarray  # (n, 2) float64
    d: int

    def descriptors(self) -> np.ndarray:
        """``xb`` (n, d) float32, read only when the index is built (a cached index needs none)."""
        column = pq.read_table(self.root / DATABASE_FILE, columns=["descriptor"]).column("descriptor").combine_chunks()
        flat = column.flatten().to_numpy(zero_copy_only=False)
        return np.ascontiguousarray(flat, dtype=np.float32).reshape(len(self.paths), self.d)


def open_database(root: str | os.PathLike) -> Database:
    """Read ``DIR/config.yaml`` and ``DIR/database.parquet``; missing or foreign files are bad input."""
    from vgray.config import load_config

    root = Path(root)
    if not root.is_dir():
        raise BadInput(f"--database {root}: no such folder; write one with vgray eval --save-descriptors {root}")
    for name in (CONFIG_FILE, MODEL_FILE, DATABASE_FILE):
        if not (root / name).is_file():
            raise BadInput(f"--database {root}: no {name}; write the folder with vgray eval --save-descriptors {root}")
    try:
        cfg = load_config(root / CONFIG_FILE)
    except BadInput as exc:
        raise BadInput(f"--database {root}: {CONFIG_FILE} is not a valid vgray config ({exc})")
    try:
        d = pq.read_schema(root / DATABASE_FILE).field("descriptor").type.list_size
        table = pq.read_table(root / DATABASE_FILE, columns=["path", "utm_east", "utm_north"])
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BadInput(f"--database {root}: {DATABASE_FILE} is not a vgray descriptor table "
                       f"(path, utm_east, utm_north, descriptor): {first[:160]}")
    if len(table) == 0 or not isinstance(d, int) or d < 1:
        raise BadInput(f"--database {root}: {DATABASE_FILE} holds no descriptors")
    utm = np.stack([table.column("utm_east").to_numpy(), table.column("utm_north").to_numpy()], axis=1)
    return Database(root, cfg, table.column("path").to_pylist(), utm.astype(np.float64), d)


def index_path(db: Database) -> Path:
    """Where the index of ``db`` for its ``test.knn`` is cached (the key changes with the database file)."""
    stat = (db.root / DATABASE_FILE).stat()
    key = f"{db.cfg.test.knn}|{stat.st_size}|{stat.st_mtime_ns}|{db.d}"
    return db.root / f"index.{hashlib.sha1(key.encode()).hexdigest()[:16]}.faiss"


def cached_index(db: Database) -> faiss.Index:
    """The ``test.knn`` index of the database descriptors: read from the cache, else built and cached."""
    from vgray.evaluate.knn import build_index, fill_index

    path = index_path(db)
    if path.is_file():
        try:
            index = faiss.read_index(str(path))
            if index.ntotal == len(db.paths) and index.d == db.d:
                return index
        except RuntimeError:
            pass  # unreadable (another faiss version, a damaged file): build it again
    index = build_index(db.cfg.test.knn, db.d)
    fill_index(index, db.descriptors(), seed=db.cfg.seed)
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))
    for stale in db.root.glob("index.*.faiss"):
        if stale != path:
            stale.unlink(missing_ok=True)
    return index


def _check_photos(photos: Sequence[str]) -> None:
    from vgray.evaluate.extract import UnreadableImage, read_image
    for photo in photos:
        if not Path(photo).is_file():
            raise BadInput(f"photo {photo}: no such file")
        try:
            read_image(photo)
        except UnreadableImage as exc:
            raise BadInput(f"photo {photo} is not a readable image ({exc})")


def _load_network(db: Database):
    from vgray.models import build_model
    model = build_model(db.cfg.model, load_weights=False, image_size=db.cfg.data.image_size)
    try:
        state = torch.load(db.root / MODEL_FILE, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BadInput(f"--database {db.root}: {MODEL_FILE} does not hold this config's network ({first[:160]})")
    return model


def _position(path: str, east: float, north: float) -> Dict[str, object]:
    out: Dict[str, object] = {"utm_east": float(east), "utm_north": float(north), "utm_zone": utm_zone_from_name(path)}
    latlon = latlon_from_name(path)
    out["lat"], out["lon"] = latlon if latlon else (None, None)
    return out


def locate(photos: Sequence[str], database: str | os.PathLike, k: int = 5, progress: bool = False) -> Dict:
    """For each photo its top-``k`` database matches (path, position, descriptor distance) and the
    predicted position (the top-1's). Returns one JSON-ready dict."""
    from vgray.evaluate.evaluate import query_descriptors
    from vgray.evaluate.extract import Runtime, extract_descriptors
    from vgray.evaluate.knn import search
    from vgray.evaluate.methods import create_method

    if k < 1:
        raise BadInput(f"--k={k} must be at least 1")
    if not photos:
        raise BadInput("give at least one photo to locate")
    db = open_database(database)
    _check_photos(photos)
    cfg = db.cfg
    model = _load_network(db)
    method = create_method(cfg, model.mean, model.std)
    # The photos are few: no loader workers; an unreadable one was refused above.
    rt = dataclasses.replace(Runtime.from_config(cfg, progress=progress), num_workers=0, skip_corrupt=False)
    x, _ = query_descriptors(model, list(photos), method, rt, model.features_dim, extract_descriptors)
    xq = method.pool(x)  # (m, views, features_dim)
    m, views = xq.shape[:2]
    xq = xq.reshape(m * views, -1)
    if (db.root / PCA_FILE).is_file():
        from vgray.evaluate.pca import apply_pca, load_pca
        xq = apply_pca(load_pca(db.root / PCA_FILE), xq)
    if xq.shape[1] != db.d:
        raise BadInput(f"--database {db.root}: the network gives {xq.shape[1]}-d descriptors but {DATABASE_FILE} "
                       f"holds {db.d}-d ones")

    index = cached_index(db)
    D, I, _ = search(index, xq, method.search_k(min(k, len(db.paths))))
    D, I = D.reshape(m, views, -1), I.reshape(m, views, -1)
    ranked = method.merge(D, I, k)  # (m, <=k) database rows, -1 padded

    results = []
    for i, photo in enumerate(photos):
        matches = []
        for rank, row in enumerate(r for r in ranked[i] if r >= 0):
            # faiss gives squared L2; a merged image's distance is that of its nearest view.
            squared = float(D[i][I[i] == row].min())
            matches.append({"rank": rank + 1, "path": db.paths[row], "distance": math.sqrt(max(squared, 0.0)),
                            **_position(db.paths[row], *db.utm[row])})
        predicted = ({"path": matches[0]["path"], **{key: matches[0][key] for key in
                                                      ("utm_east", "utm_north", "utm_zone", "lat", "lon")}}
                     if matches else None)
        results.append({"photo": str(photo), "predicted": predicted, "matches": matches})
    return {"database": str(db.root), "database_size": len(db.paths), "knn": cfg.test.knn,
            "test_method": cfg.test.method, "features_dim": db.d, "k": k, "photos": results}


def format_table(answer: Dict) -> str:
    """The human-readable answer: per photo, the predicted position, then its ranked matches."""
    def number(v, width: int):
        return f"{'-':>{width}}" if v is None else f"{v:>{width}.6f}"

    lines = [f"database {answer['database']} ({answer['database_size']} images, kNN {answer['knn']}, "
             f"{answer['features_dim']}-d, test method {answer['test_method']})"]
    for result in answer["photos"]:
        p = result["predicted"]
        lines.append("")
        if p is None:
            lines.append(f"{result['photo']}: no match")
            continue
        zone = f" zone {p['utm_zone']}" if p["utm_zone"] else ""
        where = f"UTM {p['utm_east']:.2f} E {p['utm_north']:.2f} N{zone}"
        if p["lat"] is not None:
            where += f", lat {p['lat']:.6f} lon {p['lon']:.6f}"
        lines.append(f"{result['photo']}: predicted {where}")
        lines.append(f"  {'rank':>4}  {'distance':>9}  {'utm_east':>12}  {'utm_north':>12}  {'lat':>10}  "
                     f"{'lon':>11}  path")
        for mt in result["matches"]:
            lines.append(f"  {mt['rank']:>4}  {mt['distance']:>9.4f}  {mt['utm_east']:>12.2f}  "
                         f"{mt['utm_north']:>12.2f}  {number(mt['lat'], 10)}  {number(mt['lon'], 11)}  {mt['path']}")
    return "\n".join(lines)
