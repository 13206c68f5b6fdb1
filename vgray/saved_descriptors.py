"""The saved-descriptor folder: what ``vgray eval --save-descriptors DIR`` and ``vgray extract --out
DIR`` write and ``vgray locate --database DIR`` and ``vgray bench knn --descriptors DIR`` read.

==========================  ========================================================================
``database.parquet``        one row per database image in search order: ``path`` (as found on
                            disk), ``utm_east``, ``utm_north`` (float64), ``descriptor`` (fixed-size
                            list of float32); :func:`descriptor_table`
``queries.parquet``         the same for the queries; multi-crop test methods add a ``crop`` (int8)
                            column after ``path``, one row per query and crop
``config.yaml``             the full config the descriptors were made with
``model.pt``                the network's state dict exactly as evaluated (NetVLAD's clusters
                            included); :func:`write_model`, :func:`load_model`
``pca.faiss``               the faiss PCAMatrix applied before the search (``model.pca_dim``);
                            :func:`save_pca`, :func:`load_pca`
``index.<key>.faiss``       locate's cached ``test.knn`` index; :func:`index_path`
``database.index.faiss``    ``vgray extract --index``: the database shards in a faiss index
==========================  ========================================================================

Every file is written to a temporary name and moved into place. Part of the ground (it imports
only :mod:`vgray.atomic`, :mod:`vgray.checkpoint`, :mod:`vgray.config` and :mod:`vgray.errors`), so
that evaluation, locate and the Ray extraction share it without importing each other.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, NamedTuple, Optional, Protocol, Sequence, Tuple

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from vgray.atomic import atomic_path, commit, temp_name, write_text
from vgray.checkpoint import load_fitting, read_state_dict
from vgray.errors import BadInput, faiss_message, shown
from vgray.paths import check_input

if TYPE_CHECKING:
    import numpy.typing as npt

    from vgray.config import Config

CONFIG_FILE, MODEL_FILE, PCA_FILE = "config.yaml", "model.pt", "pca.faiss"
DATABASE_FILE, QUERIES_FILE = "database.parquet", "queries.parquet"
INDEX_FILE = "database.index.faiss"  # vgray extract --index


class _Located(Protocol):
    """Images with their positions, such as :class:`~vgray.data.dataset.ImageSet`."""

    @property
    def paths(self) -> Sequence[str]: ...

    @property
    def utm(self) -> np.ndarray: ...


def descriptor_table(
    images: _Located, rows: np.ndarray, descriptors: np.ndarray, crop: Optional[np.ndarray] = None
) -> pa.Table:
    """The ``--save-descriptors`` schema for rows ``rows`` of ``images`` (anything with ``paths``
    and ``utm`` (n, 2), such as :class:`~vgray.data.dataset.ImageSet`) and their ``descriptors``
    (len(rows), d): path, utm_east, utm_north (float64), descriptor (float32 list); with ``crop``
    (multi-crop test methods), a ``crop`` column (int8) after ``path``."""
    d = descriptors.shape[1]
    flat = pa.array(np.ascontiguousarray(descriptors, dtype=np.float32).reshape(-1))
    # images.paths: a list, or vgray.data.dataset.Paths (Arrow strings, taken without a str per row)
    paths: Any = images.paths
    arrow = hasattr(paths, "to_arrow")
    path = paths.take(rows).to_arrow() if arrow else pa.array([paths[i] for i in rows], pa.string())
    columns = {"path": path}
    if crop is not None:
        columns["crop"] = pa.array(crop, pa.int8())
    columns.update(
        {
            "utm_east": pa.array(images.utm[rows, 0], pa.float64()),
            "utm_north": pa.array(images.utm[rows, 1], pa.float64()),
            "descriptor": pa.FixedSizeListArray.from_arrays(flat, d),
        }
    )
    return pa.table(columns)


class AtomicParquet:
    """A parquet file written in pieces to a temporary name and moved into place when complete."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.tmp = temp_name(self.path)
        self.writer: Optional[pq.ParquetWriter] = None
        self.made_dir = False

    def write(self, table: pa.Table) -> None:
        """Append ``table`` (the first one fixes the schema)."""
        if self.writer is None:
            self.made_dir = not self.path.parent.exists()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(self.tmp, table.schema)
        self.writer.write_table(table)

    def close(self) -> None:
        """Finish the file and move it into place."""
        if self.writer is not None:
            self.writer.close()
            commit(self.tmp, self.path)

    def abort(self) -> None:
        """Remove what was written (and the folder, if this file made it and it is empty)."""
        if self.writer is not None:
            self.writer.close()
            self.tmp.unlink(missing_ok=True)
            if self.made_dir and not any(self.path.parent.iterdir()):
                self.path.parent.rmdir()


class DescriptorWriter:
    """``DIR/database.parquet`` and ``DIR/queries.parquet`` (and ``DIR/pca.faiss``) of one
    evaluation: database rows appended as they come, everything moved into place by
    :meth:`finish`, or nothing left behind by :meth:`abort`."""

    def __init__(self, out: str | os.PathLike[str]):
        self.out = Path(out)
        self.database = AtomicParquet(self.out / DATABASE_FILE)
        self.queries = AtomicParquet(self.out / QUERIES_FILE)

    def add_database(self, images: _Located, rows: np.ndarray, xb: np.ndarray) -> None:
        """Append database rows ``rows`` of ``images`` with their descriptors ``xb``."""
        self.database.write(descriptor_table(images, rows, xb))

    def finish(
        self,
        images: _Located,
        rows: np.ndarray,
        xq: np.ndarray,
        views: int,
        pca: Optional[faiss.VectorTransform] = None,
    ) -> None:
        """Write the queries (``rows`` of ``images``; ``xq`` holds ``views`` rows per query,
        query-major: a ``crop`` column when more than one) and ``pca``, then move every file into place."""
        crop = np.tile(np.arange(views), len(rows)) if views > 1 else None
        self.queries.write(descriptor_table(images, np.repeat(rows, views), xq, crop))
        if pca is not None:
            save_pca(pca, self.out / PCA_FILE)
        self.database.close()
        self.queries.close()

    def abort(self) -> None:
        """Remove the partial files."""
        self.database.abort()
        self.queries.abort()


def descriptor_matrix(table: pa.Table) -> np.ndarray:
    """The ``descriptor`` column of a descriptor table as ``(n, d)`` float32 (a table
    :func:`read_descriptor_table` checked: no nulls, one length)."""
    column = table.column("descriptor").combine_chunks()
    if not pa.types.is_fixed_size_list(column.type):  # a plain list column, as other tools write
        return np.stack(column.to_numpy(zero_copy_only=False)).astype(np.float32)
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(flat, dtype=np.float32).reshape(len(table), column.type.list_size)


# -- reading a descriptor table: every way it can be wrong is one line ---------------------------

# What each column of a descriptor table may be (the writer's types, and what other tools write
# for the same values: a large string, integer coordinates, a plain list of float64).
ALLOWED = {
    "path": "a string",
    "utm_east": "a number (float64)",
    "utm_north": "a number (float64)",
    "descriptor": "a fixed-size list of float32",
    "crop": "an integer",
}


def _type_fits(name: str, t: pa.DataType) -> bool:
    if name == "path":
        return bool(pa.types.is_string(t) or pa.types.is_large_string(t))
    if name in ("utm_east", "utm_north"):
        return bool(pa.types.is_floating(t) or pa.types.is_integer(t))
    if name == "descriptor":
        return bool(
            (pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t))
            and pa.types.is_floating(t.value_type)
        )
    return bool(pa.types.is_integer(t))  # crop


def descriptor_dim(
    path: str | os.PathLike[str], what: str, columns: Sequence[str] = ("path", "utm_east", "utm_north", "descriptor")
) -> int:
    """Check the schema of the descriptor table at ``path`` (each of ``columns`` present, of an
    allowed type) without reading its rows; returns the descriptor size when it is fixed by the
    type (a fixed-size list), else 0. ``what`` names the file in the one-line BadInput."""
    try:
        schema = pq.read_schema(path)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BadInput(
            f"{what} is not a vgray descriptor table (a parquet file of path, utm_east, utm_north, "
            f"descriptor): {first[:160]}"
        )
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise BadInput(
            f"{what} lacks the columns {', '.join(missing)}; "
            f"a vgray descriptor table has path, utm_east, utm_north, descriptor"
        )
    for name in list(columns) + (["crop"] if "crop" in schema.names else []):
        t = schema.field(name).type
        if not _type_fits(name, t):
            raise BadInput(f"{what}: column {name} is of type {str(t)[:60]}; allowed: {ALLOWED[name]}")
    t = schema.field("descriptor").type if "descriptor" in columns else None
    return t.list_size if t is not None and pa.types.is_fixed_size_list(t) else 0


def _row(table: pa.Table, i: int) -> str:
    """``row 3 ('@...@.jpg')``: a row named for a message (with its file name when the table has one)."""
    path = table.column("path")[i].as_py() if "path" in table.column_names else None
    return f"row {i} ({shown(os.path.basename(path), 60)})" if isinstance(path, str) else f"row {i}"


def _first(mask: npt.ArrayLike) -> int:
    return int(np.flatnonzero(mask)[0])


def check_rows(
    table: pa.Table, what: str, dim: Optional[int] = None
) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """Check the rows of a descriptor ``table`` read from the file ``what`` names (its schema passed
    :func:`descriptor_dim`): at least one row, no nulls, descriptors all of one size (``dim`` when
    given) and finite, coordinates finite in every row or absent (NaN) in every row (a set given by
    ground-truth lists has none). Returns ``(x (n, d) float32 or None, utm (n, 2) float64 or None)``
    for the columns the table holds."""
    if len(table) == 0:
        raise BadInput(f"{what} holds no rows; expected one row per image")
    for name in table.column_names:
        column = table.column(name)
        if column.null_count:
            i = _first(column.is_null().to_numpy(zero_copy_only=False))
            raise BadInput(
                f"{what}: column {name} is null in {_row(table, i)}; allowed: {ALLOWED.get(name, 'a value')} "
                f"in every row"
            )
    x = utm = None
    if "descriptor" in table.column_names:
        column = table.column("descriptor").combine_chunks()
        values = column.flatten()
        if values.null_count:
            sizes = pc.list_value_length(column).to_numpy(zero_copy_only=False)
            owner = np.searchsorted(np.cumsum(sizes), _first(values.is_null().to_numpy(zero_copy_only=False)), "right")
            raise BadInput(f"{what}: the descriptor of {_row(table, int(owner))} holds a null; allowed: numbers")
        sizes = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        want = dim or int(sizes[0])
        if want < 1 or (sizes != want).any():
            i = _first(sizes != want) if want >= 1 else 0
            raise BadInput(
                f"{what}: the descriptor of {_row(table, i)} has {int(sizes[i])} values; allowed: "
                f"{want}, the size of this table's descriptors"
            )
        x = descriptor_matrix(table)
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            i = _first(bad)
            value = x[i][~np.isfinite(x[i])][0]
            raise BadInput(f"{what}: the descriptor of {_row(table, i)} holds {value}; allowed: finite numbers")
    if "utm_east" in table.column_names and "utm_north" in table.column_names:
        utm = np.stack([table.column("utm_east").to_numpy(), table.column("utm_north").to_numpy()], axis=1).astype(
            np.float64
        )
        finite, absent = np.isfinite(utm).all(axis=1), np.isnan(utm).all(axis=1)
        if not (finite.all() or absent.all()):
            i = _first(~finite & ~absent) if (~finite & ~absent).any() else _first(~finite)
            raise BadInput(
                f"{what}: {_row(table, i)} has utm_east={utm[i, 0]}, utm_north={utm[i, 1]}; allowed: "
                f"finite coordinates in every row, or NaN in every row (a set without coordinates)"
            )
    return x, utm


class CheckedTable(NamedTuple):
    """A descriptor table that passed every check, with its descriptors and coordinates as arrays
    (None for a column not read)."""

    table: pa.Table
    x: Optional[np.ndarray]  # (n, d) float32
    utm: Optional[np.ndarray]  # (n, 2) float64


def read_descriptor_table(
    path: str | os.PathLike[str],
    what: str,
    columns: Sequence[str] = ("path", "utm_east", "utm_north", "descriptor"),
    dim: Optional[int] = None,
) -> CheckedTable:
    """The one reader of descriptor tables: ``columns`` of the parquet file at ``path``, after
    :func:`descriptor_dim` (schema) and :func:`check_rows` (values, ``dim`` the descriptor size
    required); ``what`` names the file in errors."""
    descriptor_dim(path, what, columns)
    try:
        table = pq.read_table(path, columns=list(columns))
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BadInput(f"{what} cannot be read ({first[:160]})")
    return CheckedTable(table, *check_rows(table, what, dim))


def read_descriptors(path: str | os.PathLike[str], flag: str = "--descriptors") -> Tuple[np.ndarray, np.ndarray]:
    """``(x (n, d) float32, utm (n, 2) float64)`` of a single-view descriptor table; a missing,
    foreign or multi-crop file is bad input, named after ``flag`` (the option that gave it)."""
    path = check_input(path, flag)
    if not path.is_file():
        raise BadInput(f"{flag}: {path} does not exist; write it with vgray eval --save-descriptors DIR")
    what = f"{flag}: {path}"
    try:
        names = pq.read_schema(path).names
    except Exception:
        names = []  # the reader below names what is wrong with the file
    if "crop" in names:
        raise BadInput(
            f"{flag}: {path} holds several crops per query (test.method nearest_crop or "
            f"maj_voting); save the descriptors with a single-view test method"
        )
    checked = read_descriptor_table(
        path,
        what,
        ("path", "utm_east", "utm_north", "descriptor") if "path" in names else ("utm_east", "utm_north", "descriptor"),
    )  # path: optional for other tools
    assert checked.x is not None and checked.utm is not None  # their columns were read
    return checked.x, checked.utm


def write_model(out: str | os.PathLike[str], cfg: Config, model: torch.nn.Module) -> None:
    """``out/config.yaml`` (the full config) and ``out/model.pt`` (the state dict as evaluated),
    each written to a temporary file and moved into place."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / CONFIG_FILE, cfg.to_yaml())
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out / MODEL_FILE) as tmp:
        torch.save(state, tmp)


def load_model(root: str | os.PathLike[str], model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with the weights of ``root/model.pt``; a file that does not hold that network is
    bad input naming the folder."""
    what = f"--database {Path(root)}: {MODEL_FILE}"
    state = read_state_dict(Path(root) / MODEL_FILE, what)
    load_fitting(model, state, f"{what} does not hold this config's network")
    return model


def save_pca(pca: faiss.VectorTransform, path: str | os.PathLike[str]) -> None:
    """Write ``pca`` to ``path`` atomically (a temporary file moved into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        faiss.write_VectorTransform(pca, str(tmp))


def load_pca(path: str | os.PathLike[str]) -> faiss.PCAMatrix:
    """The PCA saved at ``path``; a missing or foreign file is bad input naming it."""
    path = check_input(path, "PCA file")
    if not path.is_file():
        raise BadInput(f"PCA file {path} does not exist")
    try:
        pca = faiss.read_VectorTransform(str(path))  # already the concrete class, owning its data
    except RuntimeError as exc:
        raise BadInput(f"PCA file {path} cannot be read: {faiss_message(exc)}")
    if not isinstance(pca, faiss.PCAMatrix):
        raise BadInput(f"PCA file {path} holds a {type(pca).__name__}, not a PCA")
    return pca


@dataclasses.dataclass
class Database:
    """A saved descriptor folder: config, paths and UTM positions of the database, descriptor size."""

    root: Path
    cfg: Config
    paths: List[str]
    utm: np.ndarray  # (n, 2) float64
    d: int

    def descriptors(self) -> np.ndarray:
        """``xb`` (n, d) float32, read (and checked: no nulls, ``d`` values each, finite) only when
        the index is built (a cached index needs none: it was built from a checked file, and a
        changed file gets another cache key)."""
        what = f"--database {self.root}: {DATABASE_FILE}"
        x = read_descriptor_table(self.root / DATABASE_FILE, what, ("path", "descriptor"), dim=self.d).x
        assert x is not None  # its column was read
        if len(x) != len(self.paths):
            raise BadInput(f"{what} changed while it was read ({len(self.paths)} rows, now {len(x)})")
        return x

    def pca(self) -> Optional[faiss.PCAMatrix]:
        """The PCA the descriptors were projected with, or None when they were not."""
        return load_pca(self.root / PCA_FILE) if (self.root / PCA_FILE).is_file() else None


def expected_dim(cfg: Config, root: Path) -> Optional[int]:
    """The descriptor size a folder's config fixes without building its network: the PCA's output
    (``pca.faiss``, else ``model.pca_dim``) or ``model.fc_output_dim``; None when only the network knows."""
    if (root / PCA_FILE).is_file():
        return load_pca(root / PCA_FILE).d_out
    return cfg.model.pca_dim or cfg.model.fc_output_dim


def open_database(root: str | os.PathLike[str]) -> Database:
    """Read ``DIR/config.yaml`` and ``DIR/database.parquet`` (its paths and coordinates, checked by
    :func:`read_descriptor_table`; the descriptors are read when an index is built); missing or
    foreign files are bad input."""
    from vgray.config import load_config, read_yaml

    root = check_input(root, "--database", "in_dir")
    if not root.is_dir():
        raise BadInput(f"--database {root}: no such folder; write one with vgray eval --save-descriptors {root}")
    for name in (CONFIG_FILE, MODEL_FILE, DATABASE_FILE):
        if not check_input(root / name, f"--database {root}:").is_file():
            raise BadInput(f"--database {root}: no {name}; write the folder with vgray eval --save-descriptors {root}")
    try:
        # A folder written before data.resize_order existed holds descriptors of PIL-resized images
        # (the key's pil): photos located against it must be made the same way.
        tree = read_yaml(root / CONFIG_FILE)
        data = tree.get("data") if isinstance(tree, dict) else None
        legacy = [("data.resize_order", "pil")] if isinstance(data, dict) and "resize_order" not in data else []
        cfg = load_config(root / CONFIG_FILE, overrides=legacy)
    except BadInput as exc:
        raise BadInput(f"--database {root}: {CONFIG_FILE} is not a valid vgray config ({exc})")
    what = f"--database {root}: {DATABASE_FILE}"
    d = descriptor_dim(root / DATABASE_FILE, what)
    want = expected_dim(cfg, root)
    if d and want and d != want:
        raise BadInput(
            f"{what} holds {d}-d descriptors; allowed: {want}-d, the size its {CONFIG_FILE} and "
            f"{PCA_FILE if (root / PCA_FILE).is_file() else 'config'} give"
        )
    checked = read_descriptor_table(root / DATABASE_FILE, what, ("path", "utm_east", "utm_north"))
    if not d:  # a plain list column: its size is that of the rows (checked when they are read)
        first = pq.read_table(root / DATABASE_FILE, columns=["descriptor"]).slice(0, 1).column("descriptor")
        d = len(first[0].as_py() or [])
    assert checked.utm is not None  # its columns were read
    return Database(root, cfg, checked.table.column("path").to_pylist(), checked.utm, want or d)


def index_path(db: Database) -> Path:
    """Where the index of ``db`` for its ``test.knn`` is cached: ``index.<key>.faiss``, the key
    hashing the index string and the size and modification time of ``database.parquet``, so that a
    changed database or another ``test.knn`` gets a new file."""
    stat = (db.root / DATABASE_FILE).stat()
    key = f"{db.cfg.test.knn}|{stat.st_size}|{stat.st_mtime_ns}|{db.d}"
    return db.root / f"index.{hashlib.sha1(key.encode()).hexdigest()[:16]}.faiss"


def stale_indexes(db: Database) -> List[Path]:
    """The cached index files of ``db`` other than the current :func:`index_path`."""
    current = index_path(db)
    return [p for p in db.root.glob("index.*.faiss") if p != current]
