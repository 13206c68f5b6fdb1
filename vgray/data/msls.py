"""Mapillary Street-level Sequences (MSLS) in its own raw layout, as Mapillary ships it.

``ROOT/train_val/<city>/{database,query}/`` holds ``images/<key>.jpg`` and four CSV files whose
rows are the same images in the same order (``mapillary_sls`` README and
``mapillary_sls/datasets/msls.py``; headers as in the released files):

- ``seq_info.csv``: ``,key,sequence_key,frame_number``;
- ``postprocessed.csv``: ``,key,easting,northing,unique_cluster,control_panel,night,view_direction``
  (UTM metres; ``night`` True/False; ``view_direction`` Forward, Backward or Sideways);
- ``raw.csv``: ``,key,lon,lat,ca,captured_at,pano`` (``ca``: compass angle, degrees; ``pano``: a
  panorama, which MSLS leaves out of every set);
- ``subtask_index.csv``: one True/False column per subtask (``all``, ``s2w``, ``w2s``, ``o2n``,
  ``n2o``, ``d2n``, ``n2d``), the images MSLS evaluates on.

Splits are MSLS's own cities (``default_cities`` in ``mapillary_sls/datasets/msls.py``): ``train``
its 22 training cities, ``val`` Copenhagen (``cph``) and San Francisco (``sf``). MSLS's test cities
ship with no coordinates (no ``postprocessed.csv``/``raw.csv``; results come from its Codalab
server only), so ``test`` here is the val cities, as the VG datasets downloader makes it
(``format_mapillary.py`` links ``msls/test`` to ``msls/val``) and as the benchmark paper reports MSLS.
Only the cities present under ``train_val/`` are read; images are in MSLS's city order, then
CSV row order.

Which val queries (``data.msls_queries``):

- ``im2im`` (default), MSLS's image-to-image evaluation (``MSLS(mode='val', task='im2im',
  seq_length=1, subtask='all')`` with ``evaluate.py``'s ``--threshold 25``): a query is evaluated
  when its ``subtask_index.csv`` ``all`` is True, it is not a panorama (``raw.csv`` ``pano``), and at
  least one database image of its city lies within 25 m; MSLS keeps the others in ``qImages`` but
  not in ``qIdx`` (``query_keys_with_no_match``). The database is the city's non-panorama images
  flagged ``all``. GSV-Cities, MixVPR and SALAD ship this set precomputed ("hardcoded the
  groundtruth for image to image evaluation"): ``msls_val_qImages.npy`` the 747 candidates,
  ``msls_val_qIdx.npy`` the 740 with a positive, ``msls_val_pIdx.npy`` their positives; their
  ``dataloaders/val/MapillaryDataset.py`` scores ``qImages[qIdx]``. The 740 are what papers report.
- ``all``: every non-panorama query of the val cities against every non-panorama database image,
  as the VG datasets downloader formats MSLS val (about 11k queries): a different, harder and
  night-heavier set, whose recalls are not comparable with the 740's.

``train`` always takes every non-panorama image (MSLS's training mode reads no subtask).
:attr:`Split.query_set` records the choice and its size (``"im2im 740 of N"``, ``"all N"``; N: every
non-panorama query of the split's cities).
Notes carry the labels in vgray's file-name note format ``night|day_<view>_<city>`` (view in lower
case, as ``format_mapillary.py`` writes it), so that ``train.mining=msls_weighted`` reads the
night and sideways labels of ``postprocessed.csv``; headings are ``raw.csv``'s ``ca``. Positives
are then the usual radius rule on the UTM coordinates; the val cities lie in different UTM zones
far apart in easting/northing, so no image of one is within metres of the other's.

The CSVs are read with pyarrow's multi-threaded CSV reader (a few seconds for MSLS's 1.6M rows),
so nothing is cached.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import csv as pa_csv

from vgray.errors import BadInput

#: ``default_cities`` of mapillary_sls/datasets/msls.py.
CITIES = {
    "train": (
        "trondheim",
        "london",
        "boston",
        "melbourne",
        "amsterdam",
        "helsinki",
        "tokyo",
        "toronto",
        "saopaulo",
        "moscow",
        "zurich",
        "paris",
        "bangkok",
        "budapest",
        "austin",
        "berlin",
        "ottawa",
        "phoenix",
        "goa",
        "amman",
        "nairobi",
        "manila",
    ),
    "val": ("cph", "sf"),
    "test": ("miami", "athens", "buenosaires", "stockholm", "bengaluru", "kampala"),
}
ROLES = {"database": "database", "queries": "query"}  # vgray's role -> MSLS's folder
#: The columns vgray reads from each file (the files hold more).
COLUMNS = {
    "seq_info.csv": ("key",),
    "postprocessed.csv": ("key", "easting", "northing", "night", "view_direction"),
    "raw.csv": ("key", "ca", "pano"),
    "subtask_index.csv": ("all",),
}
#: The full headers as MSLS releases them, named in error messages.
HEADERS = {
    "seq_info.csv": ",key,sequence_key,frame_number",
    "postprocessed.csv": ",key,easting,northing,unique_cluster,control_panel,night,view_direction",
    "raw.csv": ",key,lon,lat,ca,captured_at,pano",
    "subtask_index.csv": ",all,s2w,w2s,o2n,n2o,d2n,n2d",
}
QUERY_SETS = ("im2im", "all")
#: MSLS evaluate.py's --threshold (default 25 m): the radius that decides which im2im queries count.
IM2IM_THRESHOLD = 25.0


def is_msls_raw(path: Path) -> bool:
    """True when ``path`` is the root of MSLS's raw layout: ``train_val/<city>/query/`` with its
    ``postprocessed.csv``, for at least one city."""
    top = Path(path) / "train_val"
    if not top.is_dir():
        return False
    return any((top / city / "query" / "postprocessed.csv").is_file() for city in _known_cities())


def _known_cities() -> List[str]:
    return [c for split in ("train", "val") for c in CITIES[split]]


@dataclass
class _Images:
    """One city's database or queries as its CSVs give them, in row order."""

    paths: List[str]
    utm: np.ndarray
    notes: List[str]
    headings: np.ndarray
    pano: np.ndarray  # bool
    subtask_all: np.ndarray  # bool

    def take(self, keep: np.ndarray) -> "_Images":
        rows = np.flatnonzero(keep)
        return _Images(
            [self.paths[i] for i in rows],
            self.utm[rows],
            [self.notes[i] for i in rows],
            self.headings[rows],
            self.pano[rows],
            self.subtask_all[rows],
        )


def _read_csv(path: Path) -> pa.Table:
    """``path`` with the columns of :data:`COLUMNS` checked; BadInput naming the file otherwise."""
    name = path.name
    if not path.is_file():
        raise BadInput(
            f"MSLS file {path} is missing; each train_val/<city>/{{database,query}}/ folder needs "
            f"{', '.join(COLUMNS)} (as mapillary_sls ships them)"
        )
    strings = {c: pa.string() for c in COLUMNS[name] if c not in ("easting", "northing", "ca")}
    try:
        table = pa_csv.read_csv(path, convert_options=pa_csv.ConvertOptions(column_types=strings))
    except (pa.ArrowInvalid, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadInput(f"MSLS file {path}: cannot be read as CSV ({first}); allowed: a CSV with header {HEADERS[name]}")
    missing = [c for c in COLUMNS[name] if c not in table.column_names]
    if missing:
        raise BadInput(
            f"MSLS file {path}: missing column(s) {', '.join(missing)}; allowed: a CSV with columns "
            f"{', '.join(COLUMNS[name])} (MSLS's header: {HEADERS[name]})"
        )
    return table


def _numbers(table: pa.Table, column: str, path: Path, finite: bool) -> np.ndarray:
    col = table.column(column)
    if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type) or pa.types.is_null(col.type)):
        raise BadInput(f"MSLS file {path}: column {column} must hold numbers, not {col.type}")
    values = col.to_numpy(zero_copy_only=False).astype(np.float64)
    if finite and not np.all(np.isfinite(values)):
        row = int(np.flatnonzero(~np.isfinite(values))[0])
        raise BadInput(
            f"MSLS file {path}: column {column} is empty or not finite at data row {row + 1}; "
            f"allowed: UTM metres on every row"
        )
    return values


def _flags(table: pa.Table, column: str, path: Path) -> np.ndarray:
    values = pc.utf8_lower(pc.fill_null(table.column(column), ""))
    true, false = pc.equal(values, "true"), pc.equal(values, "false")
    bad = pc.invert(pc.or_(true, false)).to_numpy(zero_copy_only=False)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise BadInput(
            f"MSLS file {path}: column {column} holds {table.column(column)[row].as_py()!r} at data "
            f"row {row + 1}; allowed: True or False"
        )
    return true.to_numpy(zero_copy_only=False).astype(bool)


def _read_images(root: Path, city: str, role: str) -> _Images:
    """One city's ``database`` or ``queries`` (MSLS folder ``database``/``query``) from its CSVs."""
    folder = root / "train_val" / city / ROLES[role]
    tables = {name: _read_csv(folder / name) for name in COLUMNS}
    rows = {name: t.num_rows for name, t in tables.items()}
    if len(set(rows.values())) != 1:
        raise BadInput(
            f"MSLS folder {folder}: its CSVs must describe the same images row by row, but have "
            f"{', '.join(f'{n} {r}' for n, r in rows.items())} rows"
        )
    keys = tables["seq_info.csv"].column("key")
    for name in ("postprocessed.csv", "raw.csv"):
        other = tables[name].column("key")
        differ = pc.invert(pc.equal(pc.fill_null(keys, ""), pc.fill_null(other, ""))).to_numpy(zero_copy_only=False)
        if differ.any():
            row = int(np.flatnonzero(differ)[0])
            raise BadInput(
                f"MSLS file {folder / name}: key {other[row].as_py()!r} at data row {row + 1} differs "
                f"from seq_info.csv's {keys[row].as_py()!r}; allowed: the same keys in the same order"
            )
    post = tables["postprocessed.csv"]
    post_path = folder / "postprocessed.csv"
    utm = np.stack([_numbers(post, "easting", post_path, True), _numbers(post, "northing", post_path, True)], 1)
    night = _flags(post, "night", post_path)
    views = [str(v or "").lower() for v in post.column("view_direction").to_pylist()]
    notes = [f"{'night' if n else 'day'}_{v}_{city}" for n, v in zip(night.tolist(), views)]
    images = str(folder / "images")
    paths = [f"{images}/{k}.jpg" for k in keys.to_pylist()]
    return _Images(
        paths=paths,
        utm=utm,
        notes=notes,
        headings=_numbers(tables["raw.csv"], "ca", folder / "raw.csv", False),
        pano=_flags(tables["raw.csv"], "pano", folder / "raw.csv"),
        subtask_all=_flags(tables["subtask_index.csv"], "all", folder / "subtask_index.csv"),
    )


def _concat(parts: Sequence[_Images]) -> Dict[str, Any]:
    """The cities' images one after the other, as :class:`~vgray.data.dataset.ImageSet`'s fields."""
    return {
        "paths": [p for part in parts for p in part.paths],
        "utm": np.concatenate([p.utm for p in parts]).reshape(-1, 2),
        "notes": [n for part in parts for n in part.notes],
        "headings": np.concatenate([p.headings for p in parts]),
    }


def cities_present(root: Path, split: str) -> List[str]:
    """MSLS's cities of ``split`` (``test``: the val cities) found under ``root/train_val``."""
    wanted = CITIES["val" if split == "test" else split]
    return [c for c in wanted if (root / "train_val" / c).is_dir()]


def read_msls(root: Path, split: str, query_set: str = "im2im") -> Tuple[dict, dict, str, Optional[int]]:
    """``(database, queries, query set as recorded, candidates)`` of one split of the raw MSLS layout at
    ``root`` (see the module docstring for the cities, the query sets and what is left out):
    database and queries as :class:`~vgray.data.dataset.ImageSet`'s fields (``paths``, ``utm``,
    ``notes``, ``headings``), which :func:`~vgray.data.dataset.open_split` makes its Split of
    (this module does not import it: no import circle). ``query_set`` is ``data.msls_queries``
    and applies to ``val``/``test``. ``candidates``: for ``im2im``, the queries MSLS considers
    (non-panorama, subtask ``all``: MSLS val's 747) before it keeps those with a positive (740);
    None otherwise (every query read is evaluated)."""
    from vgray.data.positives import positives_within

    if query_set not in QUERY_SETS:
        raise BadInput(f"data.msls_queries={query_set!r} is not allowed; choose {' or '.join(QUERY_SETS)}")
    if split not in CITIES:
        raise BadInput(f"MSLS {root}: no split {split!r}; allowed: train, val, test (test: the val cities)")
    cities = cities_present(root, split)
    if not cities:
        wanted = CITIES["val" if split == "test" else split]
        raise BadInput(
            f"MSLS {root}: split '{split}' has none of its cities under train_val/ "
            f"(MSLS's {'val' if split == 'test' else split} cities: {', '.join(wanted)})"
        )
    databases, queries = [], []
    all_queries, candidates = 0, 0
    for city in cities:
        db = _read_images(root, city, "database")
        q = _read_images(root, city, "queries")
        db, q = db.take(~db.pano), q.take(~q.pano)  # MSLS's exclude_panos; the downloader skips them too
        all_queries += len(q.paths)
        if split != "train" and query_set == "im2im":
            db = db.take(db.subtask_all)
            q = q.take(q.subtask_all)
            candidates += len(q.paths)
            has_positive = np.array(
                [len(p) > 0 for p in positives_within(db.utm, q.utm, IM2IM_THRESHOLD)]
                if len(db.paths)
                else np.zeros(len(q.paths), bool),
                dtype=bool,
            )
            q = q.take(has_positive)
        databases.append(db)
        queries.append(q)
    database, query_images = _concat(databases), _concat(queries)
    where = f"MSLS {root} split '{split}' (cities {', '.join(cities)})"
    if len(database["paths"]) == 0:
        raise BadInput(f"{where}: no database images (all panoramas or not in subtask 'all')")
    if len(query_images["paths"]) == 0:
        raise BadInput(f"{where}: no queries for data.msls_queries={query_set}")
    kept = len(query_images["paths"])
    recorded = f"all {kept}" if split == "train" or query_set == "all" else f"im2im {kept} of {all_queries}"
    im2im = split != "train" and query_set == "im2im"
    return database, query_images, recorded, (candidates if im2im else None)
