"""Reading datasets in the VG format (the format of the public VPR datasets downloader).

``ROOT/[images/]{train,val,test}/{database,queries}/**/*.{jpg,jpeg,png}``, file names
``@UTM_east@UTM_north@zone@letter@lat@lon@pano_id@tile@heading@pitch@roll@height@timestamp@note@.jpg``.
Only east and north are required, and fields come from the file *name* only (a directory may hold
``@``). The file list of a split is indexed once into a parquet file in the user cache, keyed by the
folder's path and validated by the modification times of its directories, so that a folder of a
million images is not walked on every run and a changed folder is indexed again.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vgray.atomic import atomic_path
from vgray.errors import BadInput
from vgray.paths import cache_dir

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
SPLITS = ("train", "val", "test")
INDEX_VERSION = 1


def parse_name(path: str) -> tuple:
    """``(utm_east, utm_north, note)`` from a VG file name; BadInput when it carries no coordinates."""
    name = os.path.basename(path)
    fields = name.split("@")
    try:
        east, north = float(fields[1]), float(fields[2])
    except (IndexError, ValueError):
        raise BadInput(f"image {path}: the file name carries no UTM coordinates; expected "
                       f"@UTM_east@UTM_north@zone@letter@lat@lon@pano_id@tile@heading@pitch@roll@height@timestamp@note@.jpg")
    if not (np.isfinite(east) and np.isfinite(north)):
        raise BadInput(f"image {path}: UTM coordinates must be finite numbers")
    note = fields[14] if len(fields) > 15 else ""
    return east, north, note


@dataclass
class ImageSet:
    """The database or the queries of one split: paths in search order, with their UTM positions."""
    paths: List[str]
    utm: np.ndarray  # (n, 2) float64, east/north metres
    notes: List[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class Split:
    """One split of a dataset: ``database`` and ``queries``; with ``ground_truth`` (a layout whose
    files define the positives, :mod:`vgray.data.ground_truth`), each query's positive database
    indices as the file ``ground_truth_file`` gives them."""
    root: Path
    name: str
    database: ImageSet
    queries: ImageSet
    ground_truth: Optional[List[np.ndarray]] = None
    ground_truth_file: Optional[str] = None

    def evaluation_positives(self, rule: str = "auto", threshold: float = 25.0, frames: int = 10) -> tuple:
        """``(positives per query, the rule as recorded)`` for deciding whether a retrieval is right.

        ``rule`` (``test.positives``): ``files`` the layout's ground-truth files; ``radius`` the
        database images within ``threshold`` metres; ``frames`` those within ``frames`` frames of
        the query (:func:`vgray.data.positives.frame_number`); ``auto`` files where the layout has
        them, else radius."""
        from vgray.data.positives import positives_within, positives_within_frames
        if rule == "auto":
            rule = "files" if self.ground_truth is not None else "radius"
        if rule == "files":
            if self.ground_truth is None:
                raise BadInput(f"test.positives=files: dataset {self.root} is in the VG format and has no "
                               f"ground-truth files; choose auto, radius or frames")
            return self.ground_truth, f"files {self.ground_truth_file}"
        if rule == "frames":
            return (positives_within_frames(self.database.paths, self.queries.paths, frames),
                    f"frames ±{frames}")
        if rule != "radius":
            raise BadInput(f"test.positives={rule!r} is not allowed; choose auto, radius, frames or files")
        if self.ground_truth is not None:
            raise BadInput(f"test.positives=radius: dataset {self.root} is given by ground-truth lists, which carry "
                           f"no coordinates; choose auto (its files), files or frames")
        return positives_within(self.database.utm, self.queries.utm, threshold), f"radius {threshold:g} m"

    def soft_positives(self, threshold: float = 25.0) -> List[np.ndarray]:
        """Per query, the database indices within ``threshold`` metres (evaluation), nearest first."""
        from vgray.data.positives import positives_within
        return positives_within(self.database.utm, self.queries.utm, threshold)

    def hard_positives(self, threshold: float = 10.0) -> List[np.ndarray]:
        """Per query, the database indices within ``threshold`` metres (training), nearest first."""
        from vgray.data.positives import positives_within
        return positives_within(self.database.utm, self.queries.utm, threshold)


def resolve_root(root: str) -> Path:
    """``synthetic:<preset>`` -> the embedded dataset (generated on first use); else the folder."""
    if root.startswith("synthetic:"):
        from vgray.data import synthetic
        return synthetic.ensure(root.split(":", 1)[1])
    path = Path(os.path.expandvars(os.path.expanduser(root)))
    if not path.exists():
        raise BadInput(f"data.root={root}: no such folder; give a dataset folder in the VG format, "
                       f"ground-truth lists (FOLDER/NAME for FOLDER/NAME_dbImages.npy, or IMAGES::LISTS) "
                       f"or synthetic:tiny|small|large")
    if not path.is_dir():
        raise BadInput(f"data.root={root}: not a folder; give a dataset folder in the VG format")
    return path


def split_dir(root: Path, split: str) -> Path:
    """``ROOT/images/SPLIT`` or ``ROOT/SPLIT``; BadInput naming the splits found when absent."""
    for candidate in (root / "images" / split, root / split):
        if candidate.is_dir():
            return candidate
    found = [s for s in SPLITS if (root / "images" / s).is_dir() or (root / s).is_dir()]
    if not found and (root / "Dataframes").is_dir() and (root / "Images").is_dir():
        raise BadInput(f"dataset {root} is in the GSV-Cities layout (Dataframes/, Images/): place-labelled "
                       f"training images with no '{split}' split; train on it with data.layout=gsv_cities and "
                       f"train.regime=places, and evaluate on a VG-format folder (images/{split}/)")
    raise BadInput(f"dataset {root}: no '{split}' split (looked for images/{split}/ and {split}/); "
                   f"splits found: {', '.join(found) or 'none'}")


def _walk(top: Path):
    """All image files under ``top`` (sorted, relative to it) and every directory's mtime."""
    files, dirs = [], {}
    stack = [top]
    while stack:
        d = stack.pop()
        try:
            dirs[str(d.relative_to(top))] = d.stat().st_mtime_ns
            entries = list(os.scandir(d))
        except OSError as exc:
            raise BadInput(f"dataset folder {d}: cannot be read ({exc.strerror})")
        for e in entries:
            if e.is_dir(follow_symlinks=True):
                stack.append(Path(e.path))
            elif e.name.lower().endswith(IMAGE_EXTENSIONS):
                files.append(os.path.relpath(e.path, top))
    files.sort()
    return files, dirs


def _dirs_unchanged(top: Path, dirs: Dict[str, int]) -> bool:
    # Adding, removing or renaming an entry changes its directory's mtime, so stat-ing the
    # directories (a handful, even for a million images) tells whether the index still holds.
    for rel, mtime in dirs.items():
        try:
            if (top / rel).stat().st_mtime_ns != mtime:
                return False
        except OSError:
            return False
    return True


def index_cache_path(top: Path) -> Path:
    """Where the file index of the image folder ``top`` is cached (in the user cache directory)."""
    digest = hashlib.sha1(str(top.resolve()).encode()).hexdigest()[:16]
    return cache_dir() / "index" / f"{top.name}-{digest}.parquet"


def _read_index(path: Path, top: Path) -> Optional[pa.Table]:
    try:
        table = pq.read_table(path)
        meta = json.loads(table.schema.metadata[b"vgray"])
    except Exception:  # missing, partial or from another version: index again
        return None
    if meta.get("version") != INDEX_VERSION or meta.get("top") != str(top.resolve()):
        return None
    return table if _dirs_unchanged(top, meta["dirs"]) else None


def index_images(top: Path) -> ImageSet:
    """The images under ``top`` (a database/ or queries/ folder), from the cached index when valid."""
    cache = index_cache_path(top)
    table = _read_index(cache, top)
    if table is None:
        files, dirs = _walk(top)
        parsed = [parse_name(str(top / f)) for f in files]
        table = pa.table({
            "path": pa.array(files, pa.string()),
            "utm_east": pa.array([p[0] for p in parsed], pa.float64()),
            "utm_north": pa.array([p[1] for p in parsed], pa.float64()),
            "note": pa.array([p[2] for p in parsed], pa.string()),
        })
        meta = {"version": INDEX_VERSION, "top": str(top.resolve()), "dirs": dirs}
        table = table.replace_schema_metadata({b"vgray": json.dumps(meta).encode()})
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp:  # readers never see a half-written index
            pq.write_table(table, tmp)
    rel = table.column("path").to_pylist()
    utm = np.stack([table.column("utm_east").to_numpy(), table.column("utm_north").to_numpy()], axis=1)
    return ImageSet(paths=[os.path.join(str(top), r) for r in rel], utm=utm.astype(np.float64),
                    notes=table.column("note").to_pylist())


def open_split(root: str | Path, split: str = "test") -> Split:
    """Read one split of a dataset (``root`` a folder, ``synthetic:<preset>``, or a form naming
    ground-truth lists: :func:`vgray.data.ground_truth.find_list_set`)."""
    from vgray.data.ground_truth import find_list_set, read_list_set
    lists = find_list_set(str(root), split)
    if lists is not None:
        db, queries, positives, source = read_list_set(lists, split)
        nan = np.full((1, 2), np.nan)
        return Split(root=lists.images, name=split,
                     database=ImageSet(db, np.repeat(nan, len(db), axis=0), [""] * len(db)),
                     queries=ImageSet(queries, np.repeat(nan, len(queries), axis=0), [""] * len(queries)),
                     ground_truth=positives, ground_truth_file=source.name)
    path = resolve_root(str(root)) if not isinstance(root, Path) else root
    if not path.is_dir():
        raise BadInput(f"data.root={root}: no such folder")
    top = split_dir(path, split)
    sets = {}
    for role in ("database", "queries"):
        folder = top / role
        if not folder.is_dir():
            raise BadInput(f"dataset {path}: split '{split}' has no {role}/ folder ({folder})")
        images = index_images(folder)
        if len(images) == 0:
            raise BadInput(f"dataset folder {folder} holds no images (.jpg, .jpeg, .png)")
        sets[role] = images
    return Split(root=path, name=split, database=sets["database"], queries=sets["queries"])
