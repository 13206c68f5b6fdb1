"""Prediction grids: each query beside its top-k database images, right ones framed green, wrong red.

As the peers of Berton et al., "Deep Visual Geo-localization Benchmark" (CVPR 2022) save them: a
candidate is right when it lies within ``test.positive_dist_threshold`` metres of the query; the
distance in metres is written under it. Written by ``vgray eval --save-predictions N``.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from vgray.data.dataset import Split

TILE = (96, 72)  # (width, height) of every image in a grid
BORDER = 4  # frame width in pixels
MARGIN = 6
TEXT_H = 16
GREEN = (0, 170, 0)
RED = (210, 0, 0)
QUERY = (40, 90, 220)


def tile_box(i: int) -> Tuple[int, int, int, int]:
    """Outer (left, top, right, bottom) of the frame of tile ``i`` (0: the query, then the candidates)."""
    w, h = TILE[0] + 2 * BORDER, TILE[1] + 2 * BORDER
    left = MARGIN + i * (w + MARGIN)
    return left, MARGIN, left + w - 1, MARGIN + h - 1


def failures(predictions: np.ndarray, positives: Sequence[np.ndarray]) -> np.ndarray:
    """Queries whose top-1 prediction is not a positive (a skipped query, ``-1``, is a failure)."""
    return np.asarray(
        [i for i, p in enumerate(positives) if predictions[i, 0] not in set(np.asarray(p).tolist())], dtype=np.int64
    )


def _tile(path: str) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB").resize(TILE)


def draw_grid(
    split: Split, query: int, candidates: Sequence[int], threshold: float, positives: Optional[np.ndarray] = None
) -> Image.Image:
    """The query and its ``candidates`` (database ids, ``-1`` for none) side by side: green when a
    candidate is one of the query's ``positives`` (default: within ``threshold`` metres), under
    each its distance in metres (or, without coordinates, ``positive``/``wrong``)."""
    right_ids = None if positives is None else set(np.asarray(positives).tolist())
    _, _, right, bottom = tile_box(len(candidates))
    canvas = Image.new("RGB", (right + 1 + MARGIN, bottom + 1 + TEXT_H + MARGIN), "white")
    draw = ImageDraw.Draw(canvas)
    q_utm = split.queries.utm[query]
    items: List[Tuple[Optional[str], Tuple[int, int, int], str]] = [(split.queries.paths[query], QUERY, "query")]
    for c in candidates:
        if c < 0:
            items.append((None, RED, "none"))
            continue
        dist = float(np.linalg.norm(split.database.utm[c] - q_utm))
        right = dist <= threshold if right_ids is None else c in right_ids
        label = f"{dist:.1f} m" if np.isfinite(dist) else ("positive" if right else "wrong")
        items.append((split.database.paths[c], GREEN if right else RED, label))
    for i, (path, colour, label) in enumerate(items):
        box = tile_box(i)
        draw.rectangle(box, fill=colour)
        if path is not None:
            canvas.paste(_tile(path), (box[0] + BORDER, box[1] + BORDER))
        draw.text((box[0], box[3] + 3), label, fill="black")
    return canvas


def save_predictions(
    split: Split,
    predictions: np.ndarray,
    positives: Sequence[np.ndarray],
    threshold: float,
    out_dir: str | Path,
    n: int,
    k: int,
    failures_only: bool = False,
) -> List[Path]:
    """Write ``out_dir/<rank>_<query-file-stem>.png`` for the first ``n`` queries (or failures)."""
    queries = failures(predictions, positives) if failures_only else np.arange(len(split.queries))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for rank, q in enumerate(queries[:n]):
        path = out / f"{rank}_{Path(split.queries.paths[q]).stem}.png"
        draw_grid(split, int(q), [int(c) for c in predictions[q, :k]], threshold, positives[q]).save(path)
        written.append(path)
    return written


def best_kept_model(directory: str | Path, rows, table) -> Tuple[dict, dict, Path]:
    """The best config of ``table`` (highest mean of its first recall column) that has a kept
    model, its row and the model ``directory/models/<trial>.pt``; :class:`BadInput` when the
    sweep kept none."""
    from vgray.errors import BadInput
    from vgray.report.rows import finished

    models = Path(directory) / "models"
    kept = {p.stem: p for p in models.glob("*.pt")} if models.is_dir() else {}
    if not kept:
        raise BadInput(
            f"--predictions: {directory} holds no kept models ({models}/<trial>.pt); set keep_models: true "
            f"in the sweep YAML and run the sweep again (the tables and figures are written)"
        )
    column = table.recall[0]
    for entry in sorted(table.entries, key=lambda e: -e.get(column, float("-inf"))):
        group = sorted((r for r in finished(rows) if r["config_key"] == entry["config_key"]), key=lambda r: r["seed"])
        for row in group:
            if str(row.get("trial_name")) in kept:
                return entry, row, kept[str(row["trial_name"])]
    raise BadInput(
        f"--predictions: no finished trial of {directory} kept a model (models/ holds "
        f"{', '.join(sorted(kept)[:3])}); set keep_models: true in the sweep YAML"
    )


def report_grids(directory: str | Path, rows, table, out: Path, n: int, failures_only: bool = False):
    """Evaluate the best config's kept model on its test split and write ``out/predictions/``
    (grids left there by an earlier report are removed first). Returns a :class:`Grids`."""
    from vgray.checkpoint import read_checkpoint
    from vgray.config import load_config
    from vgray.evaluate.evaluate import evaluate
    from vgray.report.html import Grids

    entry, row, path = best_kept_model(directory, rows, table)
    config = read_checkpoint(str(path), "--predictions model")["config"]
    config.setdefault("model", {}).update(pretrained=str(path), resume_from=None)
    cfg = load_config(base=config)
    keep: dict = {}
    evaluate(cfg, progress=False, keep=keep)
    folder = out / "predictions"
    for old in folder.glob("*_*.png") if folder.is_dir() else []:
        old.unlink()
    k = min(5, max(cfg.test.recall_values))
    files = save_predictions(
        keep["split"],
        keep["predictions"],
        keep["positives"],
        cfg.test.positive_dist_threshold,
        folder,
        n,
        k=k,
        failures_only=failures_only,
    )
    shown = ", ".join(f"{key}={entry.get(key)}" for key in table.varied) or "the only config"
    return Grids(
        files,
        trial=str(row["trial_name"]),
        config=shown,
        threshold=cfg.test.positive_dist_threshold,
        k=k,
        failures_only=failures_only,
        queries=len(keep["split"].queries),
    )
