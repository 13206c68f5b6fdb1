"""Evaluation sets defined by ground-truth lists: the NumPy files shipped with GSV-Cities and its
successors (MixVPR, SALAD, BoQ) for Pitts30k/250k, MSLS val, Nordland and SPED.

A list set ``NAME`` is a group of files that share a path prefix:

- ``NAME_dbImages.npy`` and ``NAME_qImages.npy``: 1-D arrays of image paths (str), relative to the
  dataset folder (``ref/0000123.jpg``, ``train_val/cph/query/images/<key>.jpg``), in search order;
- the positives, in one of two forms: ``NAME_gt.npy``, per query the database indices that are
  right (an object array of integer arrays, or a 2-D integer array, one row per query), or MSLS's
  ``NAME_qIdx.npy`` (the indices into ``qImages`` of the queries evaluated: 740 of MSLS val's 747)
  with ``NAME_pIdx.npy`` (the positives of each of those, in the same order). BoQ
  (amaralibey/Bag-of-Queries, ``src/dataloaders/mapillary_sls.py`` and ``pittsburgh.py``) names
  the first form ``NAME_gt_25m.npy`` (``msls_val_gt_25m.npy``, ``pitts30k_val_gt_25m.npy``; loaded
  with the image lists and every listed query scored, as for ``NAME_gt.npy``): it is read where
  ``NAME_gt.npy`` is absent.

When both forms are present the ``qIdx``/``pIdx`` one is used, as the publishers' MSLS loader does.
A set holding both ``NAME_gt.npy`` and ``NAME_gt_25m.npy`` is refused: no publisher ships both
(GSV-Cities, MixVPR and SALAD ship ``_gt``, BoQ ``_gt_25m``), and which of two differing files is
right cannot be told from them.

A data root names a list set in one of these forms (:func:`find_list_set`); a test set in
``test.datasets``, ``data.val_root`` and ``data.root`` all take them:

- ``FOLDER`` holding the images and the lists beside them, and no VG split folder: its one list set,
  or, when it holds several (``pitts30k_val``, ``pitts30k_test``), the one whose name ends with
  ``_<split>`` (``_test`` for ``vgray eval``'s default ``test.split``);
- ``FOLDER/NAME`` (or the path of one of its files, ``FOLDER/NAME_gt.npy``): that set, images
  relative to ``FOLDER``;
- ``IMAGES::LISTS``: images relative to the folder ``IMAGES``, lists named by ``LISTS`` in either
  form above (a prefix such as ``~/salad/datasets/Pittsburgh/pitts30k_test``, or a folder), or a bare
  ``NAME`` looked up in ``IMAGES``; for the lists as the publishers ship them, apart from the images.

Object arrays in ``.npy`` files are pickles, and ``numpy.load(allow_pickle=True)`` runs whatever a
file holds. :func:`load_list` never does: an object array is rebuilt by :class:`NumericUnpickler`,
which allows only the callables NumPy needs to rebuild arrays of numbers and strings, and refuses
any other in one line before anything of it runs.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np

from vgray.errors import BadInput

DB_SUFFIX, Q_SUFFIX, GT_SUFFIX, QIDX_SUFFIX, PIDX_SUFFIX = (
    "_dbImages.npy",
    "_qImages.npy",
    "_gt.npy",
    "_qIdx.npy",
    "_pIdx.npy",
)
GT25_SUFFIX = "_gt_25m.npy"  # BoQ's name for NAME_gt.npy (positives within 25 m)
LIST_SUFFIXES = (DB_SUFFIX, Q_SUFFIX, GT_SUFFIX, GT25_SUFFIX, QIDX_SUFFIX, PIDX_SUFFIX)
SEPARATOR = "::"
ALLOWED_TEXT = (
    "numeric NumPy arrays (integer, float, bool), strings, and object arrays of those, as numpy.save writes them"
)


def _pickle_callables() -> dict:
    """``(module, name) -> object`` of the only globals a list's pickle may name: what NumPy 1.x and
    2.x write for an array (``_reconstruct``, ``ndarray``, ``dtype``), a NumPy scalar (``scalar``),
    and the bytes of protocol-2 pickles (``_codecs.encode``). Taken from live objects, so that no
    private module is imported."""
    import codecs

    reconstruct = np.zeros(1).__reduce__()[0]
    scalar = np.int64(0).__reduce__()[0]
    allowed: dict[tuple[str, str], object] = {("_codecs", "encode"): codecs.encode}
    for module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = reconstruct
        allowed[(module, "scalar")] = scalar
    for module in (
        "numpy",
        "numpy.core.multiarray",
        "numpy._core.multiarray",
        "numpy.core.numeric",
        "numpy._core.numeric",
    ):
        allowed[(module, "ndarray")] = np.ndarray
        allowed[(module, "dtype")] = np.dtype
    return allowed


class NumericUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds NumPy arrays of numbers and strings and nothing else: a global
    other than :func:`_pickle_callables`' is refused (:class:`BadInput` naming ``source``) before
    it is looked up, let alone called."""

    allowed = _pickle_callables()

    def __init__(self, file, source: str):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str):
        found = self.allowed.get((module, name))
        if found is None:
            raise BadInput(
                f"ground-truth list {self.source}: its pickle names {module}.{name}, which is "
                f"refused (nothing of it ran); allowed: {ALLOWED_TEXT}"
            )
        return found

    def persistent_load(self, pid):
        raise BadInput(
            f"ground-truth list {self.source}: its pickle holds a persistent id, which is refused; "
            f"allowed: {ALLOWED_TEXT}"
        )


def _numeric(value) -> bool:
    """True for what an object array of a list may hold: numbers, strings, numeric arrays, lists of numbers."""
    if isinstance(value, (bool, int, float, str, np.integer, np.floating, np.bool_, np.str_)):
        return True
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "biufUS" or (value.dtype.kind == "O" and all(_numeric(v) for v in value.flat))
    if isinstance(value, (list, tuple)):
        return all(isinstance(v, (bool, int, float, np.integer, np.floating)) for v in value)
    return False


def load_list(path: Path) -> np.ndarray:
    """The array of the ``.npy`` file ``path``; an object array rebuilt by :class:`NumericUnpickler`
    and checked to hold only numbers and strings. BadInput naming the file otherwise."""
    try:
        return np.load(path, allow_pickle=False)
    except OSError as exc:
        raise BadInput(f"ground-truth list {path}: cannot be read ({exc.strerror or exc})")
    except ValueError as exc:
        if "allow_pickle" not in str(exc):
            raise BadInput(f"ground-truth list {path}: not a .npy file ({exc}); allowed: {ALLOWED_TEXT}")
    except Exception as exc:  # empty, truncated
        raise BadInput(
            f"ground-truth list {path}: not a readable .npy file ({type(exc).__name__}: {exc}); allowed: {ALLOWED_TEXT}"
        )
    fmt = np.lib.format
    with open(path, "rb") as f:
        try:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = fmt.read_array_header_2_0(f)
            else:
                raise ValueError(f"format version {version} is not read for object arrays")
            array = NumericUnpickler(f, str(path)).load()
        except BadInput:
            raise
        except Exception as exc:  # truncated, corrupt: still nothing but allowed callables ran
            raise BadInput(
                f"ground-truth list {path}: not a readable .npy object array ({exc}); allowed: {ALLOWED_TEXT}"
            )
    if not isinstance(array, np.ndarray) or array.shape != tuple(shape) or not _numeric(array):
        raise BadInput(
            f"ground-truth list {path}: holds {type(array).__name__} values other than numbers "
            f"and strings; allowed: {ALLOWED_TEXT}"
        )
    return array


@dataclass(frozen=True)
class ListSet:
    """A ground-truth list set: the files ``prefix`` + suffix, image paths relative to ``images``."""

    images: Path
    prefix: Path

    @property
    def name(self) -> str:
        return self.prefix.name

    def file(self, suffix: str) -> Path:
        return Path(str(self.prefix) + suffix)


def _expand(text: str) -> Path:
    return Path(os.path.expandvars(os.path.expanduser(text.strip())))


def _strip_suffix(path: Path) -> Optional[Path]:
    for suffix in LIST_SUFFIXES:
        if path.name.endswith(suffix) and len(path.name) > len(suffix):
            return path.with_name(path.name[: -len(suffix)])
    return None


def _has_vg_split(folder: Path) -> bool:
    return any((folder / "images" / s).is_dir() or (folder / s).is_dir() for s in ("train", "val", "test"))


def _sets_in(folder: Path) -> List[str]:
    return sorted(p.name[: -len(DB_SUFFIX)] for p in folder.glob("*" + DB_SUFFIX) if len(p.name) > len(DB_SUFFIX))


def _choose(folder: Path, split: str, root: str) -> Path:
    """The list set of ``folder`` for ``split``: its only one, or the one named ``*_<split>``."""
    names = _sets_in(folder)
    if not names:
        raise BadInput(f"data root {root}: no ground-truth lists (*{DB_SUFFIX}) in {folder}")
    if len(names) == 1:
        return folder / names[0]
    fitting = [n for n in names if n.lower().endswith("_" + split)]
    if len(fitting) == 1:
        return folder / fitting[0]
    raise BadInput(
        f"data root {root}: {folder} holds the ground-truth list sets {', '.join(names)}, and "
        f"{'none' if not fitting else 'several'} named *_{split}; name one: {folder}/NAME"
    )


def _lists_prefix(text: str, images: Optional[Path], split: str, root: str) -> Optional[Path]:
    """The prefix that ``text`` names (a list file, a prefix, a folder of lists, or with ``images`` a
    bare name in it); None when it names none."""
    path = _expand(text)
    stripped = _strip_suffix(path) if path.is_file() else None
    if stripped is not None:
        return stripped
    if Path(str(path) + DB_SUFFIX).is_file():
        return path
    if images is not None and not path.is_absolute() and Path(str(images / path) + DB_SUFFIX).is_file():
        return images / path
    if path.is_dir() and (images is not None or not _has_vg_split(path)) and _sets_in(path):
        return _choose(path, split, root)
    return None


def find_list_set(root: str, split: str) -> Optional[ListSet]:
    """The ground-truth list set that the data root ``root`` names for ``split`` (see the module's
    doc for the forms), or None when ``root`` is not one (a VG-format folder, ``synthetic:...``)."""
    if root.startswith("synthetic:"):
        return None
    if SEPARATOR in root:
        left, right = root.split(SEPARATOR, 1)
        images = _expand(left)
        if not images.is_dir():
            raise BadInput(f"data root {root}: the image folder {images} (before {SEPARATOR}) is not a folder")
        prefix = _lists_prefix(right, images, split, root)
        if prefix is None:
            raise BadInput(
                f"data root {root}: {right.strip()} (after {SEPARATOR}) names no ground-truth lists; "
                f"give a prefix (DIR/NAME for DIR/NAME{DB_SUFFIX}), a list file, or a folder of lists"
            )
        return ListSet(images=images, prefix=prefix)
    prefix = _lists_prefix(root, None, split, root)
    return None if prefix is None else ListSet(images=prefix.parent, prefix=prefix)


def _paths(lists: ListSet, suffix: str) -> List[str]:
    path = lists.file(suffix)
    if not path.is_file():
        raise BadInput(
            f"ground-truth lists {lists.prefix}: {path.name} is missing; a list set needs "
            f"NAME{DB_SUFFIX}, NAME{Q_SUFFIX} and NAME{GT_SUFFIX} (or NAME{GT25_SUFFIX}, or NAME{QIDX_SUFFIX} "
            f"with NAME{PIDX_SUFFIX})"
        )
    array = load_list(path)
    if array.ndim != 1 or not all(isinstance(v, (str, np.str_)) for v in array.tolist()):
        raise BadInput(
            f"ground-truth list {path}: must be a 1-D array of image paths (strings), "
            f"not {array.dtype} of shape {array.shape}"
        )
    return [str(v) for v in array.tolist()]


def _indices(path: Path, array, what: str, high: int, row: Optional[int] = None) -> np.ndarray:
    """``array`` as int64 indices in [0, high); BadInput naming ``path`` otherwise."""
    where = f" (entry {row})" if row is not None else ""
    a = np.asarray(array)
    if a.dtype.kind == "f" and a.size and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
        a = a.astype(np.int64)
    if a.size and a.dtype.kind not in "iu":
        raise BadInput(f"ground-truth list {path}{where}: {what} must be integers, not {a.dtype}")
    a = a.astype(np.int64).ravel()
    bad = a[(a < 0) | (a >= high)]
    if len(bad):
        raise BadInput(
            f"ground-truth list {path}{where}: {what} {int(bad[0])} is out of range; allowed: 0 to {high - 1}"
        )
    return a


def _gt_file(lists: ListSet) -> Path:
    """The per-query positives file of ``lists``: ``NAME_gt.npy``, else BoQ's ``NAME_gt_25m.npy``
    (the plain name when neither is there, for the messages); BadInput when both are there."""
    plain, boq = lists.file(GT_SUFFIX), lists.file(GT25_SUFFIX)
    if plain.is_file() and boq.is_file():
        raise BadInput(
            f"ground-truth lists {lists.prefix}: both {plain.name} and {boq.name} are there, and no "
            f"publisher ships both (GSV-Cities, MixVPR, SALAD: {GT_SUFFIX[1:]}; BoQ: {GT25_SUFFIX[1:]}); "
            f"keep the one that belongs to these image lists"
        )
    return boq if boq.is_file() else plain


def _positives(lists: ListSet, queries: int, database: int):
    """``(query rows kept, positives per kept query, the positives' file)`` of either form."""
    qidx_file, pidx_file, gt_file = lists.file(QIDX_SUFFIX), lists.file(PIDX_SUFFIX), _gt_file(lists)
    if qidx_file.is_file():
        if not pidx_file.is_file():
            raise BadInput(
                f"ground-truth lists {lists.prefix}: {qidx_file.name} needs {pidx_file.name} (the "
                f"positives of those queries), which is missing"
            )
        rows = _indices(qidx_file, load_list(qidx_file), "query index", queries)
        source = pidx_file
    elif gt_file.is_file():
        rows, source = np.arange(queries, dtype=np.int64), gt_file
    else:
        raise BadInput(
            f"ground-truth lists {lists.prefix}: no positives: expected {gt_file.name} (or BoQ's "
            f"{lists.file(GT25_SUFFIX).name}), or {qidx_file.name} with {pidx_file.name} (MSLS test's "
            f"lists have none: its positives are not public)"
        )
    gt = load_list(source)
    entries = list(gt) if gt.ndim >= 1 else []
    if gt.ndim == 0 or len(entries) != len(rows):
        raise BadInput(
            f"ground-truth list {source}: holds positives for {len(entries)} queries, but there are "
            f"{len(rows)} queries ({'its ' + qidx_file.name if source == pidx_file else Q_SUFFIX[1:]}); "
            f"allowed: one entry per query"
        )
    return rows, [_indices(source, e, "database index", database, row=i) for i, e in enumerate(entries)], source


def _on_disk(lists: ListSet, relative: List[str], suffix: str) -> List[str]:
    paths = [os.path.join(str(lists.images), r) for r in relative]
    missing = [r for r, p in zip(relative, paths) if not os.path.isfile(p)]
    if missing:
        raise BadInput(
            f"ground-truth list {lists.file(suffix)}: {len(missing)} of its {len(paths)} images are not "
            f"on disk under {lists.images} (e.g. {missing[0]}); allowed: paths relative to the dataset "
            f"folder, every one present"
        )
    return paths


def read_list_set(lists: ListSet, split: str):
    """``(database paths, query paths, positives per query, positives file, query set, candidates)``
    of ``lists``: every list read with :func:`load_list` and checked (sizes, index ranges, images on
    disk) before use. The query set names the queries evaluated: ``qIdx 740 of 747`` for a ``_qIdx``
    selection, else ``all N``; ``candidates`` the length of ``qImages`` where a ``_qIdx`` list
    selects from it (MSLS val's 747), else None (every listed query is evaluated)."""
    if split == "train":
        raise BadInput(
            f"ground-truth lists {lists.prefix}: an evaluation set, with no train split; train on a "
            f"VG-format dataset (or data.layout=gsv_cities) and give these lists as data.val_root "
            f"or in test.datasets"
        )
    db = _paths(lists, DB_SUFFIX)
    q = _paths(lists, Q_SUFFIX)
    if not db or not q:
        raise BadInput(f"ground-truth lists {lists.prefix}: {'no database images' if not db else 'no queries'}")
    rows, positives, source = _positives(lists, len(q), len(db))
    db_paths = _on_disk(lists, db, DB_SUFFIX)
    q_paths = _on_disk(lists, [q[i] for i in rows], Q_SUFFIX)
    selected = source == lists.file(PIDX_SUFFIX)
    query_set = f"qIdx {len(rows)} of {len(q)}" if selected else f"all {len(q)}"
    return db_paths, q_paths, positives, source, query_set, (len(q) if selected else None)


def split_of_name(name: str) -> Optional[str]:
    """The split a list set's NAME says it is (``msls_val`` -> ``val``, ``pitts30k_test`` ->
    ``test``, ``pitts30k-val`` -> ``val``); None when the name says none (``SPED``, ``Nordland``)."""
    lower = name.lower()
    for split in ("train", "val", "test"):
        if lower.endswith(("_" + split, "-" + split)):
            return split
    return None
