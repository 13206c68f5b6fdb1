"""Positives: database images within a distance of each query on the UTM plane, or within a number
of frames of it in a sequence (:func:`positives_within_frames`).

Soft positives (25 m) decide whether a retrieval is right; hard positives (10 m) are the training
positives. faiss range search on float32 would lose the last metre at UTM magnitudes (4e6 m), so
coordinates are centred first, the search radius widened by a metre, and the candidates filtered
exactly in float64.
"""

from __future__ import annotations

import os
from typing import List, Sequence

import faiss
import numpy as np

from vgray.errors import BadInput


def positives_within(db_utm: np.ndarray, q_utm: np.ndarray, threshold: float) -> List[np.ndarray]:
    """For each query, the database indices with distance <= ``threshold`` (metres), nearest first
    (ties by index). ``db_utm`` (n, 2) and ``q_utm`` (m, 2) float64 east/north."""
    db = np.asarray(db_utm, dtype=np.float64).reshape(-1, 2)
    q = np.asarray(q_utm, dtype=np.float64).reshape(-1, 2)
    if len(q) == 0:
        return []
    if len(db) == 0:
        return [np.empty(0, dtype=np.int64) for _ in range(len(q))]
    origin = db.mean(axis=0)
    index = faiss.IndexFlatL2(2)
    index.add((db - origin).astype(np.float32))
    # Squared radius with a metre of slack against float32 rounding; exact check below.
    lims, _, ids = index.range_search((q - origin).astype(np.float32), float((threshold + 1.0) ** 2))
    out = []
    for i in range(len(q)):
        cand = ids[lims[i] : lims[i + 1]].astype(np.int64)
        dist = np.hypot(*(db[cand] - q[i]).T) if len(cand) else np.empty(0)
        keep = dist <= threshold
        cand, dist = cand[keep], dist[keep]
        out.append(cand[np.lexsort((cand, dist))])
    return out


def frame_number(path: str) -> int:
    """The frame number of a sequence image (Nordland and its variants), read from its file *name*:

    - the ``pano_id`` field (the 8th ``@`` field) when it is an integer: the VG downloader's
      ``download_nordland.py`` names frame ``i`` ``@0@<north>@@@@@<i>@@@@@@@@.jpg``, counting the
      kept frames of each season from 0 in the same order, so that database and query frame ``i``
      are the same place;
    - else the file's stem when it is all digits, as in the publishers' lists (``ref/0000123.jpg``).

    :class:`BadInput` naming the file otherwise."""
    name = os.path.basename(path)
    fields = name.split("@")
    if len(fields) > 8 and fields[7].strip().isdigit():
        return int(fields[7])
    stem = os.path.splitext(name)[0]
    if stem.isdigit():
        return int(stem)
    raise BadInput(
        f"test.positives=frames: image {path} carries no frame number; allowed: an integer "
        f"pano_id field (@east@north@zone@letter@lat@lon@FRAME@...@.jpg, as the VG downloader names "
        f"Nordland) or a name of digits (0000123.jpg)"
    )


def check_frame_numbers(paths: Sequence[str]) -> None:
    """:class:`BadInput` (:func:`frame_number`'s) for the first of ``paths`` without a frame number:
    ``test.positives=frames`` checked on the names before any image is read."""
    for path in paths:
        frame_number(path)


def positives_within_frames(db_paths: Sequence[str], q_paths: Sequence[str], frames: int) -> List[np.ndarray]:
    """For each query, the database indices whose frame number (:func:`frame_number`) is within
    ``frames`` of the query's, nearest frame first (ties by index)."""
    db = np.asarray([frame_number(p) for p in db_paths], dtype=np.int64)
    q = np.asarray([frame_number(p) for p in q_paths], dtype=np.int64)
    order = np.argsort(db, kind="stable")
    sorted_db = db[order]
    lo = np.searchsorted(sorted_db, q - frames, side="left")
    hi = np.searchsorted(sorted_db, q + frames, side="right")
    out = []
    for i in range(len(q)):
        cand = order[lo[i] : hi[i]]
        out.append(cand[np.lexsort((cand, np.abs(db[cand] - q[i])))])
    return out
