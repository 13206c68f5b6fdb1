"""The known datasets as data: for each, its layout on disk and the published sizes of every split's
database and queries, with where each figure comes from; and ``vgray datasets check``'s work:
detect the layout of a folder, index its splits and set the counts against the published ones.

A figure is what a publisher states, and the source is named beside it. Where no source gives a
figure, it is ``None`` ("unknown") and never guessed: a check then reports the count it found
without a verdict on it. A figure is exact (``rounded_to`` 1) or rounded as its source prints it:
the benchmark paper's Table 2 (Berton et al., CVPR 2022, "Summary of the datasets") gives the six
datasets' sizes as ``24K``, ``6.8K`` or ``1.05M``; such a figure keeps the precision it was printed
with (``24K``: rounded to 1,000) and a count agrees with it when it rounds to it (23,500 <= n <
24,500), never by equality. An exact figure from a publisher's files is kept where there is one.
Table 2's first column counts train and val together (Pitts30k's ``20K / 15K`` is 10,000 + 10,000
database images): it is catalogued as the split ``train+val`` and compared with the sum of a
folder's train and val.

Counted from files (array lengths from the ``.npy`` headers): serizba/salad ``datasets/`` holds the
ground-truth lists that GSV-Cities, MixVPR, SALAD and BoQ evaluate on (Pitts30k val/test, Pitts250k
test queries, MSLS test, Nordland, SPED); amaralibey/gsv-cities and amaralibey/MixVPR
``datasets/msls_val/`` MSLS val's queries (``msls_val_qImages.npy``: 747 candidates;
``msls_val_qIdx.npy``: the 740 scored, those with a database image within 25 m). Read from code:
gmberton/VPR-datasets-downloader (the VG format's downloader: which splits a dataset gets, how
Eynsham's database is cut). MSLS val's 18,871 database images: mapillary/mapillary_sls
``evaluate.py`` loads 18,871 database images and 747 queries for val (mapillary_sls issues #31 and
#35), 6,315 in San Francisco and 12,556 in Copenhagen (VPR-datasets-downloader issue #18); the 740
scored queries hold positives up to database index 18,862 in ``msls_val_pIdx.npy``.

MSLS val distinguishes two query counts: the candidates (747: what ``msls_val_qImages.npy`` lists
beside a ``_qIdx`` selection, and what MSLS's raw files flag for subtask ``all``, panoramas left
out) and the scored queries (740: those with a positive). A check compares each with its own kind:
a layout's candidate list (``Split.candidates``) against the candidates, and the queries with a
positive against the scored. BoQ's ``msls_val_qImages.npy`` lists only the queries it scores
(its loader scores every listed query against ``msls_val_gt_25m.npy``), so there the query file
has no candidate list to compare, and its queries are compared as scored ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from vgray.errors import BadInput

ROLES = ("database", "queries")
FIGURES = ("database", "queries", "scored")  # what a split's sizes give: scored queries where published
COMBINED = "train+val"  # Table 2's first column: train and val counted together

SALAD = "serizba/salad datasets/"
DOWNLOADER = "gmberton/VPR-datasets-downloader "
TABLE2 = "paper Table 2 (Berton et al., CVPR 2022), as printed"


@dataclass(frozen=True)
class Figure:
    """A published count: ``value``, and ``rounded_to`` the precision its source printed it with
    (1: exact; 1,000 for ``24K``; 10,000 for ``1.05M``); ``printed`` as the source prints it."""

    value: int
    rounded_to: int = 1
    printed: str = ""

    @property
    def exact(self) -> bool:
        return self.rounded_to == 1

    def bounds(self) -> Tuple[int, int]:
        """``(low, high)``: the counts that agree, ``low <= n < high`` (``high = low + 1`` when exact)."""
        if self.exact:
            return self.value, self.value + 1
        half = self.rounded_to // 2
        return self.value - half, self.value + half

    def agrees(self, n: int) -> bool:
        low, high = self.bounds()
        return low <= n < high

    def text(self) -> str:
        """``10,000`` when exact; ``~24K`` (rounded, as printed) otherwise."""
        return f"{self.value:,}" if self.exact else f"~{self.printed or f'{self.value:,}'}"

    def explain(self) -> str:
        """The figure with what agrees with it: ``607``, ``~24K (23,500 to 24,499)``."""
        low, high = self.bounds()
        return f"{self.value}" if self.exact else f"{self.text()} ({low:,} to {high - 1:,})"


def table2(printed: str) -> Figure:
    """A figure as Table 2 prints it: ``24K`` -> 24,000 rounded to 1,000, ``6.8K`` -> 6,800 rounded
    to 100, ``1.05M`` -> 1,050,000 rounded to 10,000, ``315`` -> exactly 315."""
    unit = {"K": 1000, "M": 1000000}.get(printed[-1:].upper(), 1)
    digits = Decimal(printed[:-1] if unit > 1 else printed)
    decimals = max(-digits.as_tuple().exponent, 0)  # type: ignore[operator]
    return Figure(int(digits * unit), max(unit // 10**decimals, 1), printed)


def _exact(n: Optional[int]) -> Optional[Figure]:
    return None if n is None else Figure(n)


@dataclass(frozen=True)
class Sizes:
    """The published sizes of one split in the ``layouts`` they hold for: ``database``, ``queries``
    (every query listed; MSLS val's candidates) and ``scored`` (the queries scored, where a source
    states it apart), each a :class:`Figure` or None (unknown); ``source`` where they come from."""

    split: str
    layouts: tuple
    database: Optional[Figure]
    queries: Optional[Figure]
    source: str
    scored: Optional[Figure] = None

    def get(self, role: str) -> Optional[Figure]:
        return getattr(self, role) if role in FIGURES else None


def exact(split: str, layouts: tuple, database, queries, source: str, scored=None) -> Sizes:
    return Sizes(split, layouts, _exact(database), _exact(queries), source, _exact(scored))


def printed(split: str, database, queries, source: str = TABLE2) -> Sizes:
    """A split's sizes as Table 2 prints them (strings), or an exact count (int) where a publisher
    gives one, for the VG format the paper's datasets were formatted in."""
    fig = lambda v: Figure(v) if isinstance(v, int) else table2(v)  # noqa: E731
    return Sizes(split, ("vg",), fig(database), fig(queries), source)


@dataclass(frozen=True)
class Known:
    """One known dataset: ``sizes`` its published figures, one :class:`Sizes` per split and group of
    layouts (``vg``: the VG format, ``lists``: ground-truth lists, ``msls_raw``: MSLS as Mapillary
    ships it): another layout of the same images may hold other counts (Nordland's VG copy is
    another split; MSLS's ``test`` lists are its challenge set, while the VG copy's test is val), so
    a check compares only a figure published for the folder's layout; ``paper`` whether it is one
    of the benchmark paper's six."""

    name: str
    title: str
    sizes: Tuple[Sizes, ...]
    paper: bool = False
    note: str = ""
    aliases: tuple = field(default_factory=tuple)

    @property
    def layouts(self) -> tuple:
        """Every layout some figure of it is published for."""
        return tuple(dict.fromkeys(layout for s in self.sizes for layout in s.layouts))

    def figure(self, split: str, role: str, layout: Optional[str] = None) -> Optional[Figure]:
        """The published figure of ``split``'s ``role`` in ``layout`` (any layout when None): an
        exact one before a rounded one; None when unknown."""
        found = [
            f
            for s in self.sizes
            if s.split == split and (layout is None or layout in s.layouts)
            for f in [s.get(role)]
            if f is not None
        ]
        return min(found, key=lambda f: f.rounded_to) if found else None

    def published(self, split: str, role: str, layout: Optional[str] = None) -> Optional[int]:
        f = self.figure(split, role, layout)
        return None if f is None else f.value


CATALOG: Dict[str, Known] = {
    k.name: k
    for k in [
        # -- the paper's six ------------------------------------------------------------------------
        Known(
            "pitts30k",
            "Pitts30k",
            (
                printed(COMBINED, "20K", "15K", f"{TABLE2} (train and val together); {DOWNLOADER}format_pitts30k.py"),
                exact("val", ("vg", "lists"), 10000, 7608, f"{SALAD}Pittsburgh/pitts30k_val_{{db,q}}Images.npy"),
                exact(
                    "test",
                    ("vg", "lists"),
                    10000,
                    6816,
                    f"{SALAD}Pittsburgh/pitts30k_test_{{db,q}}Images.npy (Table 2: 10K / 6.8K)",
                ),
            ),
            paper=True,
            aliases=("pitts30k", "pittsburgh30k"),
        ),
        Known(
            "msls",
            "Mapillary SLS (MSLS)",
            (
                printed(COMBINED, "934K", "514K", f"{TABLE2} (train and val together)"),
                exact(
                    "val",
                    ("msls_raw", "lists"),
                    18871,
                    747,
                    "queries: amaralibey/MixVPR datasets/msls_val/msls_val_qImages.npy (747 candidates) and "
                    "msls_val_qIdx.npy (740 scored: a database image within 25 m); database: "
                    "mapillary/mapillary_sls evaluate.py loads 18,871 (its issues #31, #35; SF 6,315 + CPH "
                    f"12,556: {DOWNLOADER}issue #18)",
                    scored=740,
                ),
                printed(
                    "test",
                    "19K",
                    "11K",
                    f"{TABLE2}: MSLS val as the paper reports it (format_mapillary.py links test/ to val/; "
                    "every non-panorama query)",
                ),
                exact(
                    "test",
                    ("lists",),
                    36565,
                    1135,
                    f"{SALAD}msls_test/msls_test_{{db,q}}Images.npy (MSLS's challenge set, no public ground truth)",
                ),
            ),
            paper=True,
            aliases=("msls", "mapillary_sls", "mapillary"),
            note="the VG-format copy (format_mapillary.py) links test/ to val/; which queries are scored is the "
            "split's query set (data.msls_queries)",
        ),
        Known(
            "tokyo247",
            "Tokyo 24/7",
            (printed("test", "75K", "315"),),
            paper=True,
            aliases=("tokyo247", "tokyo24_7", "tokyo"),
        ),
        Known(
            "san_francisco",
            "R-SF (San Francisco Landmark)",
            (
                printed(
                    "test",
                    "1.05M",
                    598,
                    f"{TABLE2}; queries: {DOWNLOADER}download_san_francisco.py reads their poses from "
                    "reference_poses_addTM_all_598.txt",
                ),
            ),
            paper=True,
            aliases=("san_francisco", "sf", "r-sf", "rsf"),
        ),
        Known(
            "eynsham",
            "Eynsham",
            (
                printed(
                    "test",
                    23935,
                    "24K",
                    f"database: {DOWNLOADER}download_eynsham.py (history) takes the first 4,787 panoramas x 5 "
                    f"tiles (Table 2: 24K); queries: {TABLE2}",
                ),
            ),
            paper=True,
        ),
        Known(
            "st_lucia",
            "St Lucia",
            (printed("test", "1.5K", "1.5K"),),
            paper=True,
            aliases=("st_lucia", "stlucia"),
        ),
        # -- further sets ---------------------------------------------------------------------------
        Known(
            "pitts250k",
            "Pitts250k",
            (
                exact("train", ("vg", "lists"), None, None, "unknown"),
                exact("val", ("vg", "lists"), None, None, "unknown"),
                exact(
                    "test",
                    ("vg", "lists"),
                    None,
                    8280,
                    f"queries: {SALAD}Pittsburgh/pitts250k_test_qImages.npy; database: unknown (list not stored)",
                ),
            ),
        ),
        Known(
            "nordland",
            "Nordland",
            (
                exact(
                    "test",
                    ("lists",),
                    27592,
                    2760,
                    f"{SALAD}Nordland/Nordland_{{db,q}}Images.npy (VPR-Bench split, as GSV-Cities/SALAD/BoQ test)",
                ),
            ),
            note=f"{DOWNLOADER}download_nordland.py writes another split (Patch-NetVLAD's: summer database, winter "
            "queries, positives within 10 frames); its counts are not stated",
        ),
        Known(
            "sped",
            "SPED",
            (
                exact(
                    "test",
                    ("lists", "vg"),
                    607,
                    607,
                    f"{SALAD}SPED/SPED_{{db,q}}Images.npy; {DOWNLOADER}download_sped.py pairs the same SPEDTEST "
                    "ref/ and query/ one to one (it asserts equal counts)",
                ),
            ),
        ),
        Known(
            "amstertime",
            "AmsterTime",
            (
                exact(
                    "test",
                    ("vg",),
                    None,
                    None,
                    f"unknown: {DOWNLOADER}download_amstertime.py pairs database and queries one to one",
                ),
            ),
        ),
        Known("svox", "SVOX", (exact("test", ("vg",), None, None, "unknown"),)),
        Known(
            "sf_xl",
            "SF-XL (San Francisco eXtra Large)",
            (
                exact("train", ("vg",), None, None, "unknown"),
                exact("val", ("vg",), None, None, "unknown"),
                exact(
                    "test",
                    ("vg",),
                    None,
                    None,
                    "unknown (gmberton/CosPlace README: about 1 TB in all; no image counts)",
                ),
            ),
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
    """One row per known dataset, split and group of layouts: what ``vgray datasets list`` prints
    (and ``--json`` gives). ``database``, ``queries`` and ``scored`` are the figures' values (None:
    unknown); ``*_rounded_to`` their precision (1: exact; 1,000: printed as ``24K``) and ``*_text``
    as shown (``~24K`` for a rounded one, ``?`` for an unknown one)."""
    rows = []
    for e in CATALOG.values():
        for sizes in e.sizes:
            row: Dict[str, Any] = {
                "name": e.name,
                "title": e.title,
                "paper": e.paper,
                "layouts": list(sizes.layouts),
                "split": sizes.split,
            }
            for role in FIGURES:
                f = sizes.get(role)
                row[role] = None if f is None else f.value
                row[f"{role}_rounded_to"] = None if f is None else f.rounded_to
                row[f"{role}_text"] = "?" if f is None else f.text()
            row.update(source=sizes.source or "unknown", note=e.note)
            rows.append(row)
    return rows


LIST_LEGEND = (
    "* one of the paper's six; ~ rounded as the paper's Table 2 prints it (a count agrees when it rounds "
    "to it); ? unknown (no source states it); scored: queries scored, where a source states it apart"
)


def catalog_lines(rows: List[Dict]) -> List[str]:
    """``vgray datasets list``'s table of :func:`catalog_rows`."""
    lines = [f"{'name':<16}{'layouts':<15}{'split':<10}{'database':>11}{'queries':>10}{'scored':>8}  source"]
    for r in rows:
        scored = "" if r["scored"] is None else r["scored_text"]
        lines.append(
            f"{r['name'] + ('*' if r['paper'] else ''):<16}{','.join(r['layouts']):<15}{r['split']:<10}"
            f"{r['database_text']:>11}{r['queries_text']:>10}{scored:>8}  {r['source']}"
        )
    lines.append(LIST_LEGEND)
    return lines


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
    from vgray.data.msls import is_msls_raw

    if is_msls_raw(path):
        return "msls_raw"
    raise BadInput(
        f"datasets check {root}: not a dataset; expected a VG-format folder (images/{{train,val,test}}/"
        f"{{database,queries}}/), ground-truth lists (NAME_dbImages.npy, NAME_qImages.npy, NAME_gt.npy "
        f"or NAME_gt_25m.npy), "
        f"a GSV-Cities folder (Dataframes/, Images/) or MSLS as Mapillary ships it"
    )


def _splits_present(root: str, layout: str) -> Dict[str, str]:
    """``{label: split to open}`` of the splits at ``root``. A list set is labelled by its NAME
    (``msls_val`` -> val, ``pitts30k_test`` -> test: :func:`~vgray.data.ground_truth.split_of_name`),
    a name that says none (``SPED``, ``Nordland``) as test; MSLS's raw layout: val, the split with
    public ground truth (cph and sf)."""
    from vgray.data.dataset import SPLITS
    from vgray.data.ground_truth import find_list_set, split_of_name

    path = Path(root).expanduser()
    if layout == "vg":
        return {s: s for s in SPLITS if (path / "images" / s).is_dir() or (path / s).is_dir()}
    if layout == "lists":
        found: Dict[str, str] = {}
        seen = set()
        for s in ("test", "val"):  # evaluation sets
            lists = find_list_set(root, s)
            if lists is not None and str(lists.prefix) not in seen:
                seen.add(str(lists.prefix))
                named = split_of_name(lists.name)
                found.setdefault(named if named in ("val", "test") else s, s)
        return found
    return {"val": "val"}


def _stems(root: str, layout: str) -> List[str]:
    """The names ``root`` goes by: its folder's, and for lists each list set's, without a split
    suffix (``msls_val`` and ``msls-val`` -> ``msls``)."""
    from vgray.data.ground_truth import find_list_set, split_of_name

    names = [Path(root.split("::")[0]).expanduser().resolve().name]
    if layout == "lists":
        for s in ("test", "val"):
            lists = find_list_set(root, s)
            if lists is not None:
                names.append(lists.name)
    stems = []
    for n in names:
        n = n.lower()
        split = split_of_name(n)
        stems += [n] + ([n[: -len(split) - 1]] if split else [])
    return stems


def _found(entry: Optional[Known], label: str, layout: str, role: str, v: Dict) -> Optional[int]:
    """The count of ``v`` (a split's counts) that the published ``role`` is set against, like with
    like; None when it has none. ``queries``: the layout's candidate list where it has one apart
    from the queries evaluated (MSLS val's 747), else every query listed; but where a source
    publishes the scored queries apart and the layout lists only the scored ones (BoQ's
    ``msls_val_qImages.npy``), no candidates to compare. ``scored``: the queries with a positive."""
    if role == "database":
        return v["database"]
    if role == "scored":
        return v["scored"]
    if v["candidates"] is not None:
        return v["candidates"]
    if entry is not None and entry.figure(label, "scored", layout) is not None:
        return None
    return v["queries"]


def guess(root: str, layout: str, splits: Dict[str, Dict]) -> Optional[Known]:
    """The known dataset ``root`` most likely is: a name it goes by (:func:`_stems`) matches a name
    or alias, else every published figure of some entry in this layout agrees with the count found.
    ``None`` when neither."""
    stems = _stems(root, layout)
    for e in CATALOG.values():
        if any(stem == e.name or stem in e.aliases for stem in stems):
            return e
    for e in CATALOG.values():
        pairs = [
            (f, n)
            for label, v in splits.items()
            for role in FIGURES
            for f, n in [(e.figure(label, role, layout), _found(e, label, layout, role, v))]
            if f is not None and n is not None
        ]
        if pairs and all(f.agrees(n) for f, n in pairs):
            return e
    return None


def _count(root: str, layout: str, split: str, progress, positives: bool, rule: str, frames: int) -> Dict:
    """One split's counts: ``database``, ``queries`` (evaluated), ``candidates`` (the layout's
    candidate list, or None), ``scored`` and ``queries_without_positives`` (None without
    ``positives``), the rule used and the query set."""
    from vgray.data import dataset as ds

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
        pos, used = s.evaluation_positives(rule, frames=frames)  # which refuses a rule the split cannot decide
        without = int(sum(len(p) == 0 for p in pos))
    return {
        "database": len(s.database),
        "queries": len(s.queries),
        "candidates": s.candidates,
        "scored": None if without is None else len(s.queries) - without,
        "queries_without_positives": without,
        "positives": used,
        "query_set": getattr(s, "query_set", "all"),
    }


def _compare(entry: Optional[Known], layout: str, splits: Dict[str, Dict]) -> List[str]:
    """Set each split's counts against ``entry``'s figures for ``layout`` (None: nothing to compare),
    recording ``published_<role>``, ``published_<role>_rounded_to``, ``published_<role>_text`` and
    ``compared_<role>`` (the count set against it) in each split's dict; the mismatches, one line each.
    The Table 2 figures of train and val together are set against the sum of both, under ``combined``."""
    mismatches = []
    for label, v in splits.items():
        for role in FIGURES:
            f = entry.figure(label, role, layout) if entry is not None else None
            n = _found(entry, label, layout, role, v) if f is not None else None
            v[f"published_{role}"] = None if f is None else f.value
            v[f"published_{role}_rounded_to"] = None if f is None else f.rounded_to
            v[f"published_{role}_text"] = "?" if f is None else f.text()
            v[f"compared_{role}"] = n
            if f is not None and n is not None and not f.agrees(n):
                mismatches.append(f"{label}/{role}: {n} found, {f.explain()} published")
    return mismatches


def _combined(entry: Optional[Known], layout: str, splits: Dict[str, Dict], mismatches: List[str]) -> Dict:
    """``{"train+val": {role: count, published_<role>: ...}}`` where ``entry`` publishes train and val
    together for ``layout`` and the folder holds both; else empty."""
    if entry is None or not {"train", "val"} <= set(splits):
        return {}
    out: Dict[str, Any] = {}
    for role in ROLES:
        f = entry.figure(COMBINED, role, layout)
        if f is None:
            continue
        n = splits["train"][role] + splits["val"][role]
        out.update({role: n, f"published_{role}": f.value, f"published_{role}_text": f.text()})
        out[f"published_{role}_rounded_to"] = f.rounded_to
        if not f.agrees(n):
            mismatches.append(f"{COMBINED}/{role}: {n} found, {f.explain()} published")
    return {COMBINED: out} if out else {}


def check(
    root: str,
    name: Optional[str] = None,
    progress: Optional[Callable[[str, int], None]] = None,
    positives: bool = True,
    rule: str = "auto",
    frames: int = 10,
) -> Dict:
    """Index every split of the dataset at ``root`` and set its counts against the published ones.

    Returns ``{"root", "layout", "dataset", "splits": {split: {"database", "queries", "candidates",
    "scored", "published_database", "published_queries", "published_scored", ...,
    "queries_without_positives", "query_set", "positives"}}, "combined", "mismatches", "agrees"}``;
    a mismatch is a published figure (not None) that the count of its kind does not agree with
    (exactly, or within a rounded figure's rounding). ``progress(what, files seen)`` while a folder
    is indexed; ``rule``/``frames`` decide the positives as ``test.positives``/``test.positive_frames``
    do (``frames`` for Nordland and other sequences)."""
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
    splits = {
        label: _count(root, layout, split, progress, positives, rule, frames)
        for label, split in _splits_present(root, layout).items()
    }
    if not splits:
        raise BadInput(f"datasets check {root}: no split found (train, val or test)")
    entry = entry or guess(root, layout, splits)
    comparable = entry is not None and layout in entry.layouts
    mismatches = _compare(entry if comparable else None, layout, splits)
    combined = _combined(entry if comparable else None, layout, splits, mismatches)
    return {
        "root": root,
        "layout": layout,
        "dataset": entry.name if entry else None,
        "published_layouts": list(entry.layouts) if entry else None,
        "compared": comparable,
        "splits": splits,
        "combined": combined,
        "mismatches": mismatches,
        "agrees": not mismatches,
    }


def _verdict(v: Dict, role: str) -> str:
    want, n = v[f"published_{role}"], v[f"compared_{role}"]
    if want is None:
        return ""
    if n is None:
        return "  not compared (no count of this kind here)"
    return "  ok" if Figure(want, v[f"published_{role}_rounded_to"]).agrees(n) else "  DIFFERS"


def check_lines(report: Dict) -> List[str]:
    """``vgray datasets check``'s lines for the :func:`check` ``report``."""
    lines = [f"{report['root']}: layout {report['layout']}, dataset {report['dataset'] or 'not recognised'}"]
    if report["dataset"] and not report["compared"]:
        lines.append(
            f"  (its published counts are for the layouts {', '.join(report['published_layouts'])}: not compared)"
        )
    for split, v in report["splits"].items():
        shown = {
            "database": v["database"],
            "queries": v["candidates"] if v["candidates"] is not None else v["queries"],
            "scored": v["scored"],
        }
        for role in FIGURES:
            if role == "scored" and v["published_scored"] is None:
                continue
            found = "?" if shown[role] is None else f"{shown[role]:,}"
            what = " (candidates)" if role == "queries" and v["candidates"] is not None else ""
            lines.append(
                f"  {split}/{role:<9} {found:>10} found  {v[f'published_{role}_text']:>10} published"
                f"{_verdict(v, role)}{what}"
            )
        if v["queries_without_positives"] is not None:
            lines.append(f"  {split} queries without positives: {v['queries_without_positives']:,} ({v['positives']})")
        lines.append(f"  {split} query set: {v['query_set']} (the queries scored; for MSLS see data.msls_queries)")
    for split, v in report.get("combined", {}).items():
        for role in ROLES:
            if f"published_{role}" in v:
                ok = Figure(v[f"published_{role}"], v[f"published_{role}_rounded_to"]).agrees(v[role])
                lines.append(
                    f"  {split}/{role:<9} {v[role]:>10,} found  {v[f'published_{role}_text']:>10} published"
                    f"{'  ok' if ok else '  DIFFERS'} (train and val together)"
                )
    return lines
