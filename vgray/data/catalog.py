"""The known datasets as data: for each, its layout on disk and the published sizes of every split's
database and queries, with where each figure comes from; and ``vgray datasets check``'s work:
detect the layout of a folder, index its splits and set the counts against the published ones.

A figure is what the publisher's own files say, and the source is named beside it. Where no
publisher file we could read gives a figure, it is ``None`` ("unknown") and never guessed: a
check then reports the count it found without a verdict on it. The paper's Table 2 (Berton et al.,
CVPR 2022) could not be read from a stored copy here, so the paper's six carry the figures that
the publishers' lists and download scripts give, and ``None`` elsewhere.

Counted from files (array lengths from the ``.npy`` headers): serizba/salad ``datasets/`` holds the
ground-truth lists that GSV-Cities, MixVPR, SALAD and BoQ evaluate on (Pitts30k val/test, Pitts250k
test queries, MSLS val and test, Nordland, SPED). Read from code: gmberton/VPR-datasets-downloader
(the VG format's downloader: which splits a dataset gets, how Eynsham's database is cut).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from vgray.errors import BadInput

ROLES = ("database", "queries")

SALAD = "serizba/salad datasets/"
DOWNLOADER = "gmberton/VPR-datasets-downloader "


@dataclass(frozen=True)
class Known:
    """One known dataset: ``sizes[split][role]`` the published image counts (``None``: unknown),
    ``sources[split]`` where that split's figures come from, ``layouts`` the layouts on disk the
    counts hold for (``vg``: the VG format, ``lists``: ground-truth lists, ``msls_raw``: MSLS as
    Mapillary ships it): another layout of the same images may hold other counts (Nordland's VG copy
    is another split), so a check compares only within these; ``paper`` whether it is one of the
    benchmark paper's six."""

    name: str
    title: str
    layouts: tuple
    sizes: Dict[str, Dict[str, Optional[int]]]
    sources: Dict[str, str]
    paper: bool = False
    note: str = ""
    aliases: tuple = field(default_factory=tuple)

    def published(self, split: str, role: str) -> Optional[int]:
        return self.sizes.get(split, {}).get(role)


def _sizes(**splits) -> Dict[str, Dict[str, Optional[int]]]:
    return {s: {"database": v[0], "queries": v[1]} for s, v in splits.items()}


CATALOG: Dict[str, Known] = {
    k.name: k
    for k in [
        # -- the paper's six ------------------------------------------------------------------------
        Known(
            "pitts30k",
            "Pitts30k",
            ("vg", "lists"),
            _sizes(train=(None, None), val=(10000, 7608), test=(10000, 6816)),
            {
                "train": f"unknown: {DOWNLOADER}format_pitts30k.py writes it from pitts30k_train.mat, which is not public",
                "val": f"{SALAD}Pittsburgh/pitts30k_val_{{db,q}}Images.npy",
                "test": f"{SALAD}Pittsburgh/pitts30k_test_{{db,q}}Images.npy",
            },
            paper=True,
            aliases=("pitts30k", "pittsburgh30k"),
        ),
        Known(
            "msls",
            "Mapillary SLS (MSLS)",
            ("msls_raw", "lists"),
            _sizes(val=(None, 747), test=(36565, 1135)),
            {
                "val": f"{SALAD}msls_val/msls_val_qImages.npy (747 queries, 740 of them evaluated: msls_val_qIdx.npy); "
                "the database list is not in the stored copy",
                "test": f"{SALAD}msls_test/msls_test_{{db,q}}Images.npy (no public ground truth)",
            },
            paper=True,
            aliases=("msls", "mapillary_sls", "mapillary"),
            note="the VG-format copy (format_mapillary.py) links test/ to val/; which queries are scored is the "
            "split's query set (data.msls_queries)",
        ),
        Known(
            "tokyo247",
            "Tokyo 24/7",
            ("vg",),
            _sizes(test=(None, None)),
            {"test": f"unknown: {DOWNLOADER}format_tokyo247.py formats it from tokyo247.mat, which is not public"},
            paper=True,
            aliases=("tokyo247", "tokyo24_7", "tokyo"),
        ),
        Known(
            "san_francisco",
            "R-SF (San Francisco Landmark)",
            ("vg",),
            _sizes(test=(None, 598)),
            {
                "test": f"queries: {DOWNLOADER}download_san_francisco.py reads their poses from "
                "reference_poses_addTM_all_598.txt; database: unknown"
            },
            paper=True,
            aliases=("san_francisco", "sf", "r-sf", "rsf"),
        ),
        Known(
            "eynsham",
            "Eynsham",
            ("vg",),
            _sizes(test=(23935, None)),
            {
                "test": f"database: {DOWNLOADER}download_eynsham.py (history) takes the first 4,787 panoramas x 5 tiles; "
                "queries: unknown"
            },
            paper=True,
        ),
        Known(
            "st_lucia",
            "St Lucia",
            ("vg",),
            _sizes(test=(None, None)),
            {
                "test": f"unknown: {DOWNLOADER}download_st_lucia.py (history) takes the first pass as database and the "
                "last as queries, frame counts not stated"
            },
            paper=True,
            aliases=("st_lucia", "stlucia"),
        ),
        # -- further sets ---------------------------------------------------------------------------
        Known(
            "pitts250k",
            "Pitts250k",
            ("vg", "lists"),
            _sizes(train=(None, None), val=(None, None), test=(None, 8280)),
            {
                "train": "unknown",
                "val": "unknown",
                "test": f"queries: {SALAD}Pittsburgh/pitts250k_test_qImages.npy; database: unknown (list not stored)",
            },
        ),
        Known(
            "nordland",
            "Nordland",
            ("lists",),
            _sizes(test=(27592, 2760)),
            {"test": f"{SALAD}Nordland/Nordland_{{db,q}}Images.npy (VPR-Bench split, as GSV-Cities/SALAD/BoQ test)"},
            note=f"{DOWNLOADER}download_nordland.py writes another split (Patch-NetVLAD's: summer database, winter "
            "queries, positives within 10 frames); its counts are not stated",
        ),
        Known(
            "sped",
            "SPED",
            ("lists", "vg"),
            _sizes(test=(607, 607)),
            {
                "test": f"{SALAD}SPED/SPED_{{db,q}}Images.npy; {DOWNLOADER}download_sped.py pairs the same SPEDTEST "
                "ref/ and query/ one to one (it asserts equal counts)"
            },
        ),
        Known(
            "amstertime",
            "AmsterTime",
            ("vg",),
            _sizes(test=(None, None)),
            {"test": f"unknown: {DOWNLOADER}download_amstertime.py pairs database and queries one to one"},
        ),
        Known("svox", "SVOX", ("vg",), _sizes(test=(None, None)), {"test": "unknown"}),
        Known(
            "sf_xl",
            "SF-XL (San Francisco eXtra Large)",
            ("vg",),
            _sizes(train=(None, None), val=(None, None), test=(None, None)),
            {
                "train": "unknown",
                "val": "unknown",
                "test": "unknown (gmberton/CosPlace README: about 1 TB in all; no image counts)",
            },
            aliases=("sf_xl", "sfxl", "sf-xl"),
        ),
    ]
}


def known(name: str) -> Known:
    """The entry named ``name`` (a key or alias, any case); BadInput listing the names otherwise."""
    key = name.lower().replace(" ", "_").replace("/", "")
    for entry in CATALOG.values():
        if key == entry.name or key in entry.aliases:
            return entry
    raise BadInput(f"--name {name!r} is not a known dataset; choose one of: {', '.join(CATALOG)}")


def catalog_rows() -> List[Dict]:
    """One row per known dataset, split and role: what ``vgray datasets list`` prints (and ``--json`` gives)."""
    rows = []
    for e in CATALOG.values():
        for split, roles in e.sizes.items():
            rows.append(
                {
                    "name": e.name,
                    "title": e.title,
                    "paper": e.paper,
                    "layouts": list(e.layouts),
                    "split": split,
                    "database": roles["database"],
                    "queries": roles["queries"],
                    "source": e.sources.get(split, "unknown"),
                    "note": e.note,
                }
            )
    return rows


# -- vgray datasets check --------------------------------------------------------------------------


def detect_layout(root: str) -> str:
    """``vg``, ``lists``, ``gsv_cities`` or ``msls_raw`` for the dataset at ``root``; BadInput when
    it is no folder or none of them."""
    from vgray.data.dataset import SPLITS
    from vgray.data.ground_truth import find_list_set

    path = Path(root).expanduser()
    if "::" not in root and not path.exists() and find_list_set(root, "test") is None:
        raise BadInput(f"datasets check {root}: no such folder")
    if any((path / "images" / s).is_dir() or (path / s).is_dir() for s in SPLITS):
        return "vg"
    if any(find_list_set(root, s) is not None for s in SPLITS):
        return "lists"
    if (path / "Dataframes").is_dir() and (path / "Images").is_dir():
        return "gsv_cities"
    is_msls_raw: Optional[Callable[[Path], bool]]
    try:
        from vgray.data.msls import is_msls_raw  # written alongside; absent in older trees
    except ImportError:
        is_msls_raw = None
    if is_msls_raw is not None and is_msls_raw(path):
        return "msls_raw"
    raise BadInput(
        f"datasets check {root}: not a dataset; expected a VG-format folder (images/{{train,val,test}}/"
        f"{{database,queries}}/), ground-truth lists (NAME_dbImages.npy, NAME_qImages.npy, NAME_gt.npy), "
        f"a GSV-Cities folder (Dataframes/, Images/) or MSLS as Mapillary ships it"
    )


def _splits_present(root: str, layout: str) -> List[str]:
    from vgray.data.dataset import SPLITS
    from vgray.data.ground_truth import find_list_set

    path = Path(root).expanduser()
    if layout == "vg":
        return [s for s in SPLITS if (path / "images" / s).is_dir() or (path / s).is_dir()]
    if layout == "lists":
        found, seen = [], set()
        for s in ("test", "val"):  # evaluation sets; a folder's one list set is its test split
            lists = find_list_set(root, s)
            if lists is not None and str(lists) not in seen:
                seen.add(str(lists))
                found.append(s)
        return found
    return ["val"]  # msls_raw: the split with public ground truth (cph and sf)


def guess(root: str, counts: Dict[str, Dict[str, int]]) -> Optional[Known]:
    """The known dataset ``root`` most likely is: the folder's name matches a name or alias, else
    every published count of some entry equals the one found. ``None`` when neither."""
    stem = Path(root.split("::")[0]).expanduser().resolve().name.lower()
    for e in CATALOG.values():
        if stem == e.name or stem in e.aliases:
            return e
    for e in CATALOG.values():
        figures = [(s, r, e.published(s, r)) for s in counts for r in ROLES if e.published(s, r) is not None]
        if figures and all(counts.get(s, {}).get(r) == n for s, r, n in figures):
            return e
    return None


def check(
    root: str,
    name: Optional[str] = None,
    progress: Optional[Callable[[str, int], None]] = None,
    positives: bool = True,
    rule: str = "auto",
    frames: int = 10,
) -> Dict:
    """Index every split of the dataset at ``root`` and set its counts against the published ones.

    Returns ``{"root", "layout", "dataset", "splits": {split: {"database", "queries",
    "published_database", "published_queries", "queries_without_positives", "query_set",
    "positives"}}, "mismatches": [...], "agrees"}``; a mismatch is a published count (not None)
    that differs from the one found. ``progress(what, files seen)`` while a folder is indexed;
    ``rule``/``frames`` decide the positives as ``test.positives``/``test.positive_frames`` do
    (``frames`` for Nordland and other sequences)."""
    from vgray.data import dataset as ds

    if root.startswith("synthetic:"):  # the embedded world: its folder (generated on first use)
        root = str(ds.resolve_root(root))
    layout = detect_layout(root)
    if layout == "gsv_cities":
        raise BadInput(
            f"datasets check {root}: a GSV-Cities folder holds place-labelled training images, no "
            f"database/queries splits to count; check the VG-format or list sets it is tested on"
        )
    entry = known(name) if name else None
    splits: Dict[str, Dict[str, Any]] = {}
    for split in _splits_present(root, layout):
        if layout == "vg" and progress is not None:
            # Index each folder here, with the progress bar; open_split then reads the cached index.
            top = ds.split_dir(Path(root).expanduser(), split)
            for role in ROLES:
                if (top / role).is_dir():

                    def report(n: int, what: str = f"{split}/{role}") -> None:
                        progress(what, n)

                    ds.index_images(top / role, report)
        s = ds.open_split(root, split)
        used, without = None, None
        if positives:
            pos, used = s.evaluation_positives(rule, frames=frames)
            without = int(sum(len(p) == 0 for p in pos))
        splits[split] = {
            "database": len(s.database),
            "queries": len(s.queries),
            "queries_without_positives": without,
            "positives": used,
            "query_set": getattr(s, "query_set", "all"),
        }
    if not splits:
        raise BadInput(f"datasets check {root}: no split found (train, val or test)")
    entry = entry or guess(root, {s: {r: v[r] for r in ROLES} for s, v in splits.items()})
    comparable = entry is not None and layout in entry.layouts
    mismatches = []
    for split, v in splits.items():
        for role in ROLES:
            want = entry.published(split, role) if comparable and entry is not None else None
            v[f"published_{role}"] = want
            if want is not None and want != v[role]:
                mismatches.append(f"{split}/{role}: {v[role]} found, {want} published")
    return {
        "root": root,
        "layout": layout,
        "dataset": entry.name if entry else None,
        "published_layouts": list(entry.layouts) if entry else None,
        "compared": comparable,
        "splits": splits,
        "mismatches": mismatches,
        "agrees": not mismatches,
    }
