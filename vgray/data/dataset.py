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
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, overload

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vgray.atomic import atomic_path
from vgray.errors import BadInput, shown
from vgray.paths import cache_dir

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
IMAGE_PATTERN = r"\.(jpg|jpeg|png)$"  # the same, for Arrow's filter (matched ignoring case)
SPLITS = ("train", "val", "test")
INDEX_VERSION = 2  # 2: the heading column
NUMBERS = ("utm_east", "utm_north", "heading")  # the index's float64 columns
PARSE_BATCH = 65536  # names parsed at once by the indexer: large enough for Arrow, small enough for memory
VG_NAME = "@UTM_east@UTM_north@zone@letter@lat@lon@pano_id@tile@heading@pitch@roll@height@timestamp@note@.jpg"


def parse_name(path: str) -> tuple:
    """``(utm_east, utm_north, note)`` from a VG file name; BadInput when it carries no coordinates.

    One name at a time (a photo given on the command line, a name in a test); a folder's names are
    parsed in bulk by :func:`parse_names`, with the same rules."""
    name = os.path.basename(path)
    fields = name.split("@")
    try:
        east, north = float(fields[1]), float(fields[2])
    except (IndexError, ValueError):
        raise BadInput(f"image {path}: the file name carries no UTM coordinates; expected {VG_NAME}")
    if not (np.isfinite(east) and np.isfinite(north)):
        raise BadInput(f"image {path}: UTM coordinates must be finite numbers")
    note = fields[14] if len(fields) > 15 else ""
    return east, north, note


def heading_of_name(name: str) -> float:
    """The heading (degrees) in field 9 of a VG file name; NaN when the field is absent, empty or
    not a finite number."""
    fields = os.path.basename(name).split("@")
    try:
        heading = float(fields[9])
    except (IndexError, ValueError):
        return float("nan")
    return heading if np.isfinite(heading) else float("nan")


def _field(split: pa.ListArray, k: int) -> tuple:
    """Field ``k`` of every split name as a string array ("" where the name has no such field),
    with the mask of the names that have it; one vectorised take, no Python loop."""
    offsets = split.offsets.to_numpy()
    lengths = np.diff(offsets)
    has = lengths > k
    index = np.where(has, offsets[:-1] + k, 0)
    values = split.values.take(pa.array(index)) if len(index) else pa.array([], pa.string())
    return pc.if_else(pa.array(has), values, ""), has


def _to_float(strings: pa.Array) -> Optional[np.ndarray]:
    """float64 of each string, or None when one is not a number (the caller then finds which)."""
    try:
        return pc.cast(strings, pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def parse_names(names: pa.Array, rel: pa.Array, top: Path) -> Dict[str, object]:
    """``utm_east``, ``utm_north``, ``heading`` and ``note`` of every file (``names`` the file names,
    ``rel`` the same files' paths relative to ``top``), parsed in bulk by Arrow: a folder of millions
    of images costs a few vectorised passes instead of one :func:`parse_name` call per file.
    BadInput names the first file (in ``rel``'s order) whose name carries no coordinates, as
    :func:`parse_name` would."""
    split = pc.split_pattern(names, "@")
    columns: Dict[str, object] = {}
    for key, k in (("utm_east", 1), ("utm_north", 2)):
        strings, has = _field(split, k)
        values = _to_float(pc.if_else(pa.array(has), strings, "x"))
        if values is None or not np.isfinite(values).all():
            # The error path only: the first file at fault, in parse_name's one line (or, where
            # Arrow is stricter than float(), e.g. about spaces, the values as parse_name reads them).
            values = np.array([parse_name(str(top / r))[k - 1] for r in rel.to_pylist()], dtype=np.float64)
        columns[key] = values
    strings, _ = _field(split, 9)
    heading = _to_float(pc.if_else(pc.equal(strings, ""), pa.scalar(None, pa.string()), strings))
    if heading is None:  # a heading field that is not a number: NaN for that image, as for none
        heading = np.array([heading_of_name(n) for n in names.to_pylist()], dtype=np.float64)
    columns["heading"] = np.where(np.isfinite(heading), heading, np.nan)
    note, _ = _field(split, 14)
    fields = pc.list_value_length(split).to_numpy(zero_copy_only=False)
    columns["note"] = pc.if_else(pa.array(fields > 15), note, "")
    return columns


class Paths(Sequence[str]):
    """Image paths held as Arrow strings under one folder (``prefix`` + each relative path): a
    million paths cost their bytes (about 100 MB), not a million Python strings (about 400 MB
    with the list); a path becomes a ``str`` only when it is read. Indexing, slicing (a slice is
    a ``Paths`` sharing the buffers), iteration, ``+`` (a list) and ``==`` with any sequence of
    strings, as a list of paths."""

    def __init__(self, prefix: str, rel: pa.Array | pa.ChunkedArray) -> None:
        self.prefix = prefix
        self.rel = rel

    def __len__(self) -> int:
        return len(self.rel)

    @overload
    def __getitem__(self, i: int) -> str: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[str]: ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step != 1:
                return list(self)[i]
            return Paths(self.prefix, self.rel.slice(start, max(stop - start, 0)))
        n = len(self)
        k = int(i) + n if int(i) < 0 else int(i)
        if not 0 <= k < n:
            raise IndexError(f"path {i} of {n}")
        return self.prefix + self.rel[k].as_py()

    def __iter__(self) -> Iterator[str]:
        prefix = self.prefix
        for s in range(0, len(self), PARSE_BATCH):
            yield from (prefix + r for r in self.rel.slice(s, PARSE_BATCH).to_pylist())

    def __add__(self, other: Sequence[str]) -> List[str]:
        return [*self, *other]

    def __radd__(self, other: Sequence[str]) -> List[str]:
        return [*other, *self]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str) or len(other) != len(self):
            return False
        return all(a == b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]  # a sequence compared by value, as a list

    def __repr__(self) -> str:
        return f"Paths({len(self)} under {self.prefix!r})"

    def take(self, indices: Sequence[int] | np.ndarray) -> "Paths":
        """The paths at ``indices``, as a ``Paths`` (one Arrow take, no Python string made)."""
        return Paths(self.prefix, self.rel.take(pa.array(np.asarray(indices, dtype=np.int64))))

    def to_arrow(self) -> pa.Array:
        """The full paths as one Arrow string array (buffers of its own)."""
        rel = self.rel.combine_chunks() if isinstance(self.rel, pa.ChunkedArray) else self.rel
        return pc.binary_join_element_wise(self.prefix, rel, "") if self.prefix else pa.concat_arrays([rel])


def take_paths(paths: Sequence[str], indices: Sequence[int] | np.ndarray) -> Sequence[str]:
    """``paths[i]`` for every ``i`` of ``indices``: a :class:`Paths` stays one (a million indices
    cost an Arrow take, not a million strings)."""
    return paths.take(indices) if isinstance(paths, Paths) else [paths[int(i)] for i in indices]


@dataclass
class ImageSet:
    """The database or the queries of one split: paths in search order, with their UTM positions."""

    paths: Sequence[str]  # a list, or Paths for an indexed folder
    utm: np.ndarray  # (n, 2) float64, east/north metres
    notes: List[str] = field(default_factory=list)
    headings: Optional[np.ndarray] = None  # (n,) float64 degrees (compass), NaN where unknown; None: not read

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
    query_set: str = "all"  # which queries of the split these are (MSLS: im2im or all), as evaluations record it
    candidates: Optional[int] = None  # the candidate queries a layout selects the evaluated ones from (MSLS val: 747)

    def check_positives(self, rule: str = "auto") -> None:
        """Refuse, before anything is extracted, a ``test.positives`` rule that this split cannot
        decide: :meth:`evaluation_positives`' refusals, made from the split's index alone (its
        layout, its file names), without computing a positive."""
        from vgray.data.positives import check_frame_numbers

        check_positives_rule(str(self.root), rule, self.ground_truth is not None)
        if rule == "frames":
            check_frame_numbers(self.database.paths)
            check_frame_numbers(self.queries.paths)

    def evaluation_positives(self, rule: str = "auto", threshold: float = 25.0, frames: int = 10) -> tuple:
        """``(positives per query, the rule as recorded)`` for deciding whether a retrieval is right.

        ``rule`` (``test.positives``): ``files`` the layout's ground-truth files; ``radius`` the
        database images within ``threshold`` metres; ``frames`` those within ``frames`` frames of
        the query (:func:`vgray.data.positives.frame_number`); ``auto`` files where the layout has
        them, else radius."""
        from vgray.data.positives import positives_within, positives_within_frames

        check_positives_rule(str(self.root), rule, self.ground_truth is not None)
        if rule == "auto":
            rule = "files" if self.ground_truth is not None else "radius"
        if rule == "files":
            assert self.ground_truth is not None  # refused above otherwise
            return self.ground_truth, f"files {self.ground_truth_file}"
        if rule == "frames":
            return (positives_within_frames(self.database.paths, self.queries.paths, frames), f"frames ±{frames}")
        return positives_within(self.database.utm, self.queries.utm, threshold), f"radius {threshold:g} m"

    def soft_positives(self, threshold: float = 25.0) -> List[np.ndarray]:
        """Per query, the database indices within ``threshold`` metres (evaluation), nearest first."""
        from vgray.data.positives import positives_within

        return positives_within(self.database.utm, self.queries.utm, threshold)

    def hard_positives(self, threshold: float = 10.0) -> List[np.ndarray]:
        """Per query, the database indices within ``threshold`` metres (training), nearest first."""
        from vgray.data.positives import positives_within

        return positives_within(self.database.utm, self.queries.utm, threshold)


POSITIVE_RULES = ("auto", "radius", "frames", "files")


def check_positives_rule(root: str, rule: str, has_files: bool) -> None:
    """Refuse a ``test.positives`` rule that a dataset cannot decide, from its layout alone:
    ``files`` needs ground-truth files (``has_files``: the root is a list set), ``radius`` needs
    coordinates (a list set has none). Frame numbers are checked on the names
    (:meth:`Split.check_positives`)."""
    if rule not in POSITIVE_RULES:
        raise BadInput(f"test.positives={rule!r} is not allowed; choose auto, radius, frames or files")
    if rule == "files" and not has_files:
        raise BadInput(
            f"test.positives=files: dataset {root} has no ground-truth files (it is in the VG format "
            f"or MSLS's own layout); choose auto, radius or frames"
        )
    if rule == "radius" and has_files:
        raise BadInput(
            f"test.positives=radius: dataset {root} is given by ground-truth lists, which carry "
            f"no coordinates; choose auto (its files), files or frames"
        )


def check_root_positives(root: str, rule: str, split: str = "test") -> None:
    """:func:`check_positives_rule` for the data root ``root`` without opening it (no index, no
    image list read): what a sweep's driver checks for every trial's test sets before Ray starts."""
    from vgray.data.ground_truth import find_list_set

    # only files and radius depend on whether the root names lists (frames needs the names: the trial's)
    lists = rule in ("files", "radius") and find_list_set(root, split) is not None
    check_positives_rule(root, rule, lists)


def resolve_root(root: str, key: str = "data.root") -> Path:
    """``synthetic:<preset>`` -> the embedded dataset (generated on first use); else the folder.
    ``key`` names where ``root`` came from in a refusal (``data.val_root``, ``test.datasets.NAME``)."""
    if root.startswith("synthetic:"):
        from vgray.data import synthetic

        return synthetic.ensure(root.split(":", 1)[1])
    path = Path(os.path.expandvars(os.path.expanduser(root)))
    if not path.exists():
        raise BadInput(
            f"{key}={root}: no such folder; give a dataset folder in the VG format, "
            f"ground-truth lists (FOLDER/NAME for FOLDER/NAME_dbImages.npy, or IMAGES::LISTS) "
            f"or synthetic:tiny|small|large"
        )
    if not path.is_dir():
        raise BadInput(f"{key}={root}: not a folder; give a dataset folder in the VG format")
    return path


def split_dir(root: Path, split: str) -> Path:
    """``ROOT/images/SPLIT`` or ``ROOT/SPLIT``; BadInput naming the splits found when absent."""
    for candidate in (root / "images" / split, root / split):
        if candidate.is_dir():
            return candidate
    found = [s for s in SPLITS if (root / "images" / s).is_dir() or (root / s).is_dir()]
    if not found and (root / "Dataframes").is_dir() and (root / "Images").is_dir():
        raise BadInput(
            f"dataset {root} is in the GSV-Cities layout (Dataframes/, Images/): place-labelled "
            f"training images with no '{split}' split; train on it with data.layout=gsv_cities and "
            f"train.regime=places, and evaluate on a VG-format folder (images/{split}/)"
        )
    raise BadInput(
        f"dataset {root}: no '{split}' split (looked for images/{split}/ and {split}/); "
        f"splits found: {', '.join(found) or 'none'}"
    )


def _walk(top: Path, progress: Optional[Callable[[int], object]] = None):
    """The index of the image files under ``top``: ``(columns, dirs)``, ``columns`` the paths
    relative to ``top`` (Arrow strings, sorted as Python sorts them) with :func:`parse_names`'s
    columns in the same order, ``dirs`` every directory's mtime.

    ``os.scandir`` without a stat per file (the entry's type comes with the listing). Each
    directory's names go to Arrow at once, where they are filtered (image extensions) and sorted;
    directories are visited in the order their ``name/`` sorts among the files, so that the files
    come out already in the order of their sorted relative paths and need no global sort. Names are
    parsed :data:`PARSE_BATCH` at a time, so that millions of paths are held as Arrow strings and
    numbers rather than Python objects, and the parse's temporary arrays stay the size of one batch.
    ``progress(files seen)`` after each directory."""
    dirs: Dict[str, int] = {}
    rel_chunks: List[pa.Array] = []
    parsed: List[Dict[str, object]] = []
    pending: List[tuple[pa.Array, pa.Array]] = []  # (names, paths relative to top)
    state = {"seen": 0, "pending": 0, "failed": False}

    def flush() -> None:
        names = pa.concat_arrays([n for n, _ in pending])
        rel = pa.concat_arrays([r for _, r in pending])
        pending.clear()
        state["pending"] = 0
        rel_chunks.append(rel)
        if not state["failed"]:
            try:
                parsed.append(parse_names(names, rel, top))
            except BadInput:  # named below: the first bad file in sorted order, as files are listed
                state["failed"] = True

    def emit(chunk, prefix: str) -> None:
        for s in range(0, len(chunk), PARSE_BATCH):  # a folder of a million names: parsed a batch at a time
            part = chunk.slice(s, PARSE_BATCH)
            part = part.combine_chunks() if isinstance(part, pa.ChunkedArray) else part
            pending.append((part, pc.binary_join_element_wise(prefix, part, "") if prefix else part))
            state["seen"] += len(part)
            state["pending"] += len(part)
            if state["pending"] >= PARSE_BATCH:
                flush()

    ancestors: List[tuple] = []  # (device, inode) of the folders being visited: a link back to one is a loop

    def visit(d: Path, prefix: str) -> None:
        try:
            st = d.stat()
            dirs[prefix.rstrip("/") or "."] = st.st_mtime_ns
            names, is_dir, regular = _list_dir(d)
        except OSError as exc:
            raise BadInput(f"dataset folder {d}: cannot be read ({exc.strerror})")
        if (st.st_dev, st.st_ino) in ancestors:
            raise BadInput(
                f"dataset folder {top}: {d} is a link back to a folder that contains it (a loop); "
                f"remove the link or point it elsewhere"
            )
        ancestors.append((st.st_dev, st.st_ino))
        if len(names):
            image = pc.match_substring_regex(names, IMAGE_PATTERN, ignore_case=True).to_numpy(zero_copy_only=False)
            image &= ~is_dir  # a folder named like an image is a folder
            _check_regular(d, names, image & ~regular)
            if not is_dir.any():
                order = pc.sort_indices(names).to_numpy()
                emit(names.take(order[image[order]]), prefix)  # one copy of the names, sorted images only
            else:
                names = names.combine_chunks()
                keys = pc.binary_join_element_wise(names, pa.array(np.where(is_dir, "/", "")), "")
                run: List[int] = []
                for i in pc.sort_indices(keys).to_numpy():
                    if is_dir[i]:
                        emit(names.take(pa.array(run, pa.int64())), prefix)
                        run = []
                        name = names[int(i)].as_py()
                        visit(d / name, f"{prefix}{name}/")
                    elif image[i]:
                        run.append(int(i))
                emit(names.take(pa.array(run, pa.int64())), prefix)
        ancestors.pop()
        if progress is not None:
            progress(state["seen"])

    visit(top, "")
    if pending:
        flush()
    pa.default_memory_pool().release_unused()  # the listing's temporaries: back to the system, not kept by Arrow
    if not rel_chunks:
        empty = np.zeros(0, np.float64)
        return {
            "path": pa.array([], pa.string()),
            "note": pa.array([], pa.string()),
            **dict.fromkeys(NUMBERS, empty),
        }, dirs
    files = pa.chunked_array(rel_chunks, pa.string())
    if state["failed"]:
        for r in files.to_pylist():
            parse_name(str(top / r))
    columns = {"path": files}
    for key in NUMBERS:
        columns[key] = np.concatenate([p[key] for p in parsed])
    columns["note"] = pa.chunked_array([p["note"] for p in parsed], pa.string())
    return columns, dirs


def _list_dir(d: Path) -> Tuple[pa.ChunkedArray, np.ndarray, np.ndarray]:
    """The names in folder ``d`` (Arrow strings, in listing order), which are folders (links
    followed) and which are regular files (links followed), in one pass of ``os.scandir`` that
    keeps no entry: a folder of a million files costs its names' bytes, not a million
    ``os.DirEntry`` objects. Names are turned into Arrow :data:`PARSE_BATCH` at a time."""
    chunks: List[pa.Array] = []
    names: List[str] = []
    is_dir, regular = bytearray(), bytearray()
    with os.scandir(d) as it:
        for e in it:
            names.append(e.name)
            folder = e.is_dir(follow_symlinks=True)
            is_dir.append(folder)
            try:
                regular.append(not folder and e.is_file(follow_symlinks=True))
            except OSError:
                regular.append(False)
            if len(names) == PARSE_BATCH:
                chunks.append(_names_array(d, names))
                names = []
    chunks.append(_names_array(d, names))
    flags = (np.frombuffer(bytes(f), np.uint8).astype(bool) for f in (is_dir, regular))
    return (pa.chunked_array(chunks, pa.string()), *flags)


def _names_array(folder: Path, names: List[str]) -> pa.Array:
    """``names`` as Arrow strings; BadInput naming the first that is not UTF-8 text (a name in
    another encoding arrives with surrogates), which the index cannot hold."""
    try:
        return pa.array(names, pa.string())
    except (UnicodeEncodeError, pa.ArrowException):
        for name in names:
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                raise BadInput(
                    f"dataset folder {folder}: the name {shown(os.fsencode(name))} is not valid UTF-8; rename "
                    f"the file (file names must be UTF-8 text)"
                )
        raise


def _check_regular(folder: Path, names: pa.ChunkedArray, bad: np.ndarray) -> None:
    """Every entry named like an image must be a regular file (or a link to one): reading a FIFO
    blocks forever, and a device or a dangling link is no image. ``bad``: the images that are not."""
    if not bad.any():
        return
    name = names[int(np.argmax(bad))].as_py()  # the first, in listing order
    path = folder / name
    what = "a link to nothing" if path.is_symlink() and not path.exists() else "not a regular file"
    raise BadInput(
        f"dataset folder {folder}: {name} is {what}; image files must be regular files "
        f"(remove it or replace it with the image)"
    )


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


def _read_index(path: Path, top: Path) -> Optional[pq.ParquetFile]:
    """The cached index of ``top`` when it is there, of this version and still valid; else None."""
    try:
        index = pq.ParquetFile(path)
        meta = json.loads(index.schema_arrow.metadata[b"vgray"])
    except Exception:  # missing, partial or from another version: index again
        return None
    if meta.get("version") != INDEX_VERSION or meta.get("top") != str(top.resolve()):
        return None
    return index if _dirs_unchanged(top, meta["dirs"]) else None


def _image_set(top: Path, batches) -> ImageSet:
    """An :class:`ImageSet` from the index's record batches: the paths stay Arrow strings
    (:class:`Paths`, the batches' own buffers), the notes a list in which each distinct note is one
    Python string, shared."""
    rel: List[pa.Array] = []
    notes: List[str] = []
    numbers: Dict[str, List[np.ndarray]] = {key: [] for key in NUMBERS}
    for batch in batches:
        rel.append(batch.column("path"))
        for key, parts in numbers.items():
            parts.append(batch.column(key).to_numpy(zero_copy_only=False))
        coded = batch.column("note").dictionary_encode()
        notes.extend(
            np.array(coded.dictionary.to_pylist() + [""], dtype=object)[
                coded.indices.fill_null(-1).to_numpy(zero_copy_only=False)
            ].tolist()
        )
    column = {k: np.concatenate(v).astype(np.float64) if v else np.zeros(0) for k, v in numbers.items()}
    pa.default_memory_pool().release_unused()  # the read's decoding buffers: back to the system
    return ImageSet(
        paths=Paths(str(top) + os.sep, pa.chunked_array(rel, pa.string())),
        utm=np.stack([column["utm_east"], column["utm_north"]], axis=1),
        notes=notes,
        headings=column["heading"],
    )


def index_images(top: Path, progress: Optional[Callable[[int], None]] = None) -> ImageSet:
    """The images under ``top`` (a database/ or queries/ folder), from the cached index when valid;
    else walked and parsed in bulk (:func:`_walk`), with ``progress(files seen)`` while it walks
    (default: the project's progress bar, :func:`vgray.console.progress_bar`), and cached for the
    next call."""
    cache = index_cache_path(top)
    index = _read_index(cache, top)
    if index is not None:
        return _image_set(top, index.iter_batches(batch_size=PARSE_BATCH))
    if progress is None:  # a command's first use of a big folder: a bar on a terminal (none in trials' logs)
        from vgray.console import progress_bar

        with progress_bar(desc=f"indexing {top}", unit=" files") as bar:
            columns, dirs = _walk(top, lambda seen: bar.update(seen - bar.n))
    else:
        columns, dirs = _walk(top, progress)
    table = pa.table(
        {
            "path": columns["path"],
            "utm_east": pa.array(columns["utm_east"], pa.float64()),
            "utm_north": pa.array(columns["utm_north"], pa.float64()),
            "heading": pa.array(columns["heading"], pa.float64()),
            "note": columns["note"],
        }
    )
    del columns
    meta = {"version": INDEX_VERSION, "top": str(top.resolve()), "dirs": dirs}
    table = table.replace_schema_metadata({b"vgray": json.dumps(meta).encode()})
    cache.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(cache) as tmp:  # readers never see a half-written index
        pq.write_table(table, tmp, row_group_size=PARSE_BATCH)
    return _image_set(top, table.to_batches(max_chunksize=PARSE_BATCH))


def open_split(root: str | Path, split: str = "test", msls_queries: str = "im2im", key: str = "data.root") -> Split:
    """Read one split of a dataset (``root`` a folder, ``synthetic:<preset>``, or a form naming
    ground-truth lists: :func:`vgray.data.ground_truth.find_list_set`). A folder in MSLS's raw
    layout (``train_val/<city>/...``) is read by :mod:`vgray.data.msls`, with ``msls_queries``
    (``data.msls_queries``: ``im2im`` or ``all``) choosing its val queries; ``Split.query_set``
    records which queries every layout gives. ``key`` names where ``root`` came from in a refusal."""
    from vgray.data.ground_truth import find_list_set, read_list_set

    lists = find_list_set(str(root), split)
    if lists is not None:
        db, queries, positives, source, query_set, candidates = read_list_set(lists, split)
        nan = np.full((1, 2), np.nan)
        return Split(
            root=lists.images,
            name=split,
            database=ImageSet(db, np.repeat(nan, len(db), axis=0), [""] * len(db)),
            queries=ImageSet(queries, np.repeat(nan, len(queries), axis=0), [""] * len(queries)),
            ground_truth=positives,
            ground_truth_file=source.name,
            query_set=query_set,
            candidates=candidates,
        )
    path = resolve_root(str(root), key) if not isinstance(root, Path) else root
    if not path.is_dir():
        raise BadInput(f"{key}={root}: no such folder")
    from vgray.data.msls import is_msls_raw, read_msls

    if is_msls_raw(path):
        database, queries, query_set, candidates = read_msls(path, split, msls_queries)
        return Split(
            root=path,
            name=split,
            database=ImageSet(**database),
            queries=ImageSet(**queries),
            query_set=query_set,
            candidates=candidates,
        )
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
    return Split(
        root=path,
        name=split,
        database=sets["database"],
        queries=sets["queries"],
        query_set=f"all {len(sets['queries'])}",
    )
