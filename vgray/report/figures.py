"""The paper's figures from a sweep's rows (Berton et al., "Deep Visual Geo-localization
Benchmark", CVPR 2022), each PNG written beside the CSV it is drawn from; error bars are the std
over seeds.

- ``augmentation``: R@1 against each varied ``train.augmentation.*`` strength, per dataset (Fig. 2)
- ``resolution``: R@1 against ``data.resize_fraction``, per dataset (Fig. 3)
- ``matching_time``: matching time per query against database size x descriptor dimension, with
  the extraction time per image as a line (Fig. 4a)
- ``knn``: R@1 against matching time for each ``test.knn`` index, labelled by index memory (Fig. 4b)
- ``pareto``: R@1 against each cost column, the Pareto front drawn (best R@1 for no more cost)

A figure the rows cannot give raises :class:`Missing` with what is missing. So does one whose x
axis would be noise: its x values (one per config) all alike, or spread over less than
:data:`MIN_SPAN` of their size (two configs at 0.3990 and 0.3995 GFLOPs). A figure made of
several (one Pareto front per cost, one curve per augmentation) leaves out those parts alone and
says why in the ``skipped`` dict it is given. :func:`caption` says what each drawn figure shows.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from vgray.atomic import write_bytes
from vgray.report.rows import datasets, finished, number
from vgray.results import COST_COLUMNS, Row, mean_std


class Missing(Exception):
    """The rows lack what a figure needs; ``str(exc)`` says what."""


MIN_SPAN = 0.01  # x values closer than this (relative to the largest) make no axis


def _num(value: float, other: Optional[float] = None) -> str:
    """``value`` with as few significant digits (4 or more, trailing zeros kept) as tell it apart
    from ``other``; as short as it goes without ``other``."""
    if other is None:
        return f"{value:.6g}"
    for digits in range(4, 16):
        if f"{value:#.{digits}g}" != f"{other:#.{digits}g}":
            return f"{value:#.{digits}g}"
    return repr(value)


def flat_axis(values: Sequence[float], name: str) -> Optional[str]:
    """Why ``values`` (a figure's x values, one per config) make no axis, or None when they do:
    one distinct value, or a spread (max - min) under :data:`MIN_SPAN` of the largest magnitude."""
    distinct = sorted(set(float(v) for v in values))
    if not distinct:
        return None
    if len(distinct) == 1:
        return f"{name} has one value ({_num(distinct[0])})"
    low, high = distinct[0], distinct[-1]
    span = (high - low) / max(abs(high), abs(low), 1e-300)
    if span < MIN_SPAN:
        return f"{name} spans {_num(low, high)}–{_num(high, low)} ({span * 100:.2g} %)"
    return None


def _check_axis(values: Sequence[float], name: str) -> None:
    why = flat_axis(values, name)
    if why:
        raise Missing(why)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series_name(row: Row, keys: Sequence[str]) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={row.get(k)}" for k in keys) or "all"


def points(rows: List[Row], x: str, y: str, series: Sequence[str]) -> List[Dict[str, Any]]:
    """Mean and std over seeds of ``y`` (and of ``x`` when it is a measured figure) for each
    config, with its series name; finished rows only."""
    groups: Dict[str, List[Row]] = {}
    for r in finished(rows):
        if number(r.get(x)) and number(r.get(y)):
            groups.setdefault(r["config_key"], []).append(r)
    out = []
    for key, group in groups.items():
        x_mean, x_std = mean_std([r[x] for r in group])
        y_mean, y_std = mean_std([r[y] for r in group])
        out.append(
            {
                "series": _series_name(group[0], series),
                "config_key": key,
                "n": len(group),
                x: x_mean,
                f"{x} std": x_std,
                y: y_mean,
                f"{y} std": y_std,
            }
        )
    return sorted(out, key=lambda p: (p["series"], p[x]))


def _write_csv(path: Path, records: List[Dict[str, Any]]) -> None:
    columns: List[str] = []
    for r in records:
        columns += [k for k in r if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(records)
    write_bytes(path, buffer.getvalue().encode())


def _save(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    write_bytes(path, buffer.getvalue())


def _curves(rows: List[Row], varied: List[str], x: str, stem: str, out: Path, xlabel: str) -> List[Path]:
    """R@1 against config key ``x``, one panel per dataset, one line per value of the other varied keys."""
    names = datasets(finished(rows))
    if not names:
        raise Missing("no finished row holds a test/<dataset>/R@1")
    others = [k for k in varied if k != x]
    found_by = {name: points(rows, x, f"test/{name}/R@1", others) for name in names}
    _check_axis([p[x] for found in found_by.values() for p in found], x)
    records = []
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.5), squeeze=False)
    for ax, name in zip(axes[0], names):
        metric = f"test/{name}/R@1"
        found = found_by[name]
        for series in dict.fromkeys(p["series"] for p in found):
            line = [p for p in found if p["series"] == series]
            ax.errorbar(
                [p[x] for p in line],
                [p[metric] for p in line],
                yerr=[p[f"{metric} std"] for p in line],
                marker="o",
                capsize=3,
                label=series,
            )
        records += [
            {
                "dataset": name,
                "series": p["series"],
                x: p[x],
                "n": p["n"],
                "R@1": p[metric],
                "R@1 std": p[f"{metric} std"],
            }
            for p in found
        ]
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("R@1 (%)")
        ax.grid(alpha=0.3)
        if others:
            ax.legend(fontsize=7)
    _write_csv(out / f"{stem}.csv", records)
    _save(fig, out / f"{stem}.png")
    return [out / f"{stem}.csv", out / f"{stem}.png"]


def _parts(draw: Dict[str, Callable[[], List[Path]]], skipped: Optional[Dict[str, str]]) -> List[Path]:
    """Draw each part of a figure made of several; a part that cannot be drawn goes into
    ``skipped`` (under its name), and :class:`Missing` with every reason when none can."""
    written, missing = [], {}
    for name, part in draw.items():
        try:
            written += part()
        except Missing as exc:
            missing[name] = str(exc)
    if not written and missing:
        raise Missing("; ".join(missing.values()))
    if skipped is not None:
        skipped.update(missing)
    return written


def augmentation(rows: List[Row], varied: List[str], out: Path, skipped: Optional[Dict[str, str]] = None) -> List[Path]:
    keys = [k for k in varied if k.startswith("train.augmentation.")]
    if not keys:
        raise Missing(
            f"it needs rows that vary a train.augmentation.* key (the sweep varies {', '.join(varied) or 'nothing'})"
        )

    def part(key: str) -> Callable[[], List[Path]]:
        name = key.rsplit(".", 1)[-1]
        return lambda: _curves(rows, varied, key, f"fig2_augmentation_{name}", out, f"{name} strength")

    return _parts({f"augmentation vs {k.rsplit('.', 1)[-1]}": part(k) for k in keys}, skipped)


def resolution(rows: List[Row], varied: List[str], out: Path, skipped: Optional[Dict[str, str]] = None) -> List[Path]:
    if "data.resize_fraction" not in varied:
        raise Missing(
            f"it needs rows that vary data.resize_fraction (the sweep varies {', '.join(varied) or 'nothing'})"
        )
    return _curves(rows, varied, "data.resize_fraction", "fig3_resolution", out, "resize fraction")


def _need(rows: List[Row], columns: Sequence[str]) -> None:
    ok = finished(rows)
    lacking = [c for c in columns if not any(number(r.get(c)) for r in ok)]
    if lacking:
        raise Missing(f"it needs the column(s) {', '.join(lacking)} in finished rows")


def matching_time(
    rows: List[Row], varied: List[str], out: Path, skipped: Optional[Dict[str, str]] = None
) -> List[Path]:
    _need(rows, ["database", "features_dim", "matching_ms", "extraction_ms"])
    records = []
    for r in finished(rows):
        if all(number(r.get(c)) for c in ("database", "features_dim", "matching_ms")):
            records.append({**r, "database x dim": float(r["database"]) * float(r["features_dim"])})
    found = points(records, "database x dim", "matching_ms", varied)
    _check_axis([p["database x dim"] for p in found], "database x dim")
    extraction = points(records, "database x dim", "extraction_ms", varied)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.errorbar(
        [p["database x dim"] for p in found],
        [p["matching_ms"] for p in found],
        yerr=[p["matching_ms std"] for p in found],
        marker="o",
        linestyle="none",
        capsize=3,
        label="matching (kNN) per query",
    )
    mean_extraction = mean_std([p["extraction_ms"] for p in extraction])[0]
    ax.axhline(mean_extraction, color="tab:red", linestyle="--", label="extraction per image")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("database size x descriptor dim")
    ax.set_ylabel("time (ms)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    by_key = {p["config_key"]: p for p in extraction}
    _write_csv(
        out / "fig4a_matching_time.csv",
        [
            {
                **p,
                "extraction_ms": by_key[p["config_key"]]["extraction_ms"],
                "extraction_ms std": by_key[p["config_key"]]["extraction_ms std"],
            }
            for p in found
        ],
    )
    _save(fig, out / "fig4a_matching_time.png")
    return [out / "fig4a_matching_time.csv", out / "fig4a_matching_time.png"]


def knn(rows: List[Row], varied: List[str], out: Path, skipped: Optional[Dict[str, str]] = None) -> List[Path]:
    if "test.knn" not in varied:
        raise Missing(f"it needs rows that vary test.knn (the sweep varies {', '.join(varied) or 'nothing'})")
    _need(rows, ["matching_ms", "index_memory_mb"])
    names = datasets(finished(rows))
    if not names:
        raise Missing("no finished row holds a test/<dataset>/R@1")
    _check_axis(
        [p["matching_ms"] for name in names for p in points(rows, "matching_ms", f"test/{name}/R@1", varied)],
        "matching_ms",
    )
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.5), squeeze=False)
    records = []
    for ax, name in zip(axes[0], names):
        metric = f"test/{name}/R@1"
        found = points(rows, "matching_ms", metric, varied)
        memory = {p["config_key"]: p for p in points(rows, "index_memory_mb", metric, varied)}
        for p in found:
            mb = memory[p["config_key"]]["index_memory_mb"] if p["config_key"] in memory else None  # not measured
            ax.errorbar(
                p["matching_ms"], p[metric], xerr=p["matching_ms std"], yerr=p[f"{metric} std"], marker="o", capsize=3
            )
            ax.annotate(
                f"{p['series']}\n{'?' if mb is None else f'{mb:.3g}'} MB",
                (p["matching_ms"], p[metric]),
                fontsize=7,
                textcoords="offset points",
                xytext=(4, 4),
            )
            records.append(
                {
                    "dataset": name,
                    "series": p["series"],
                    "n": p["n"],
                    "matching_ms": p["matching_ms"],
                    "matching_ms std": p["matching_ms std"],
                    "R@1": p[metric],
                    "R@1 std": p[f"{metric} std"],
                    "index_memory_mb": mb,
                }
            )
        ax.set_title(name)
        ax.set_xlabel("matching time per query (ms)")
        ax.set_ylabel("R@1 (%)")
        ax.grid(alpha=0.3)
    _write_csv(out / "fig4b_knn.csv", records)
    _save(fig, out / "fig4b_knn.png")
    return [out / "fig4b_knn.csv", out / "fig4b_knn.png"]


def pareto_front(costs: Sequence[float], recalls: Sequence[float]) -> List[int]:
    """Indices of the points no other point beats: none has less-or-equal cost and higher R@1
    (or equal R@1 at lower cost); sorted by cost."""
    order = sorted(range(len(costs)), key=lambda i: (costs[i], -recalls[i]))
    front, best = [], float("-inf")
    for i in order:
        if recalls[i] > best:
            front.append(i)
            best = recalls[i]
    return front


def pareto(rows: List[Row], varied: List[str], out: Path, skipped: Optional[Dict[str, str]] = None) -> List[Path]:
    names = datasets(finished(rows))
    costs = [c for c in COST_COLUMNS if any(number(r.get(c)) for r in finished(rows))]
    if not names or not costs:
        raise Missing(
            f"it needs finished rows with a test/<dataset>/R@1 and at least one cost column ({', '.join(COST_COLUMNS)})"
        )

    def part(cost: str) -> Callable[[], List[Path]]:
        return lambda: _pareto_of(rows, varied, out, names, cost)

    return _parts({f"pareto vs {c}": part(c) for c in costs}, skipped)


def workers(rows: List[Row], varied: List[str], out: Path, skipped: Optional[Dict[str, str]] = None) -> List[Path]:
    """Training time against ``train.workers`` (data-parallel workers of a trial), a line per value of
    the other varied keys, the Pareto front of the points (none faster with as few workers) in red."""
    if "train.workers" not in varied:
        raise Missing(f"it needs rows that vary train.workers (the sweep varies {', '.join(varied) or 'nothing'})")
    _need(rows, ["train_time_s"])
    x, y = "train.workers", "train_time_s"
    found = points(rows, x, y, [k for k in varied if k != x])
    _check_axis([p[x] for p in found], x)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for series in dict.fromkeys(p["series"] for p in found):
        line = [p for p in found if p["series"] == series]
        ax.errorbar(
            [p[x] for p in line],
            [p[y] for p in line],
            yerr=[p[f"{y} std"] for p in line],
            marker="o",
            capsize=3,
            label=series,
        )
    by_workers = sorted(found, key=lambda p: (p[x], p[y]))
    front = [by_workers[i] for i in pareto_front([p[x] for p in by_workers], [-p[y] for p in by_workers])]
    ax.step([p[x] for p in front], [p[y] for p in front], where="post", color="red", label="Pareto front")
    ax.set_xlabel("data-parallel workers (train.workers)")
    ax.set_ylabel("training time (s)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    front_keys = {p["config_key"] for p in front}
    _write_csv(out / "workers.csv", [{**p, "pareto": p["config_key"] in front_keys} for p in found])
    _save(fig, out / "workers.png")
    return [out / "workers.csv", out / "workers.png"]


def _pareto_of(rows: List[Row], varied: List[str], out: Path, names: List[str], cost: str) -> List[Path]:
    """One cost's Pareto fronts (a panel per dataset): ``pareto_<cost>.png`` and its CSV."""
    found_by = {name: points(rows, cost, f"test/{name}/R@1", varied) for name in names}
    _check_axis([p[cost] for found in found_by.values() for p in found], cost)
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.5), squeeze=False)
    records = []
    for ax, name in zip(axes[0], names):
        metric = f"test/{name}/R@1"
        found = found_by[name]
        front = set(pareto_front([p[cost] for p in found], [p[metric] for p in found]))
        ax.errorbar(
            [p[cost] for p in found],
            [p[metric] for p in found],
            xerr=[p[f"{cost} std"] for p in found],
            yerr=[p[f"{metric} std"] for p in found],
            marker="o",
            linestyle="none",
            capsize=3,
        )
        line = sorted((found[i] for i in front), key=lambda p: p[cost])
        ax.step(
            [p[cost] for p in line],
            [p[metric] for p in line],
            where="post",
            color="tab:red",
            label="Pareto front",
            marker="o",
            markersize=11,
            markerfacecolor="none",
        )  # circled: a one-point front shows too
        for p in found:
            ax.annotate(p["series"], (p[cost], p[metric]), fontsize=6, textcoords="offset points", xytext=(3, 3))
        records += [
            {
                "dataset": name,
                "series": p["series"],
                "n": p["n"],
                cost: p[cost],
                f"{cost} std": p[f"{cost} std"],
                "R@1": p[metric],
                "R@1 std": p[f"{metric} std"],
                "on_front": i in front,
            }
            for i, p in enumerate(found)
        ]
        ax.set_title(name)
        ax.set_xlabel(cost)
        ax.set_ylabel("R@1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    stem = f"pareto_{cost}"
    _write_csv(out / f"{stem}.csv", records)
    _save(fig, out / f"{stem}.png")
    return [out / f"{stem}.csv", out / f"{stem}.png"]


COST_UNITS = {
    "features_dim": "descriptor dimensions",
    "gflops": "GFLOPs of one image's forward pass",
    "model_size_mb": "MB of weights",
    "extraction_ms": "ms per image",
    "matching_ms": "ms per query",
    "index_memory_mb": "MB of kNN index",
    "train_time_s": "s of training",
    "epochs": "epochs trained",
    "workers": "data-parallel workers",
}
POINT = "a point is one config, its mean over the seeds with a bar of ± one std"


def caption(stem: str) -> str:
    """What the figure ``<stem>.png`` shows: its axes, what a point is, what a line means."""
    if stem.startswith("fig2_augmentation_"):
        name = stem[len("fig2_augmentation_") :]
        return (
            f"Fig. 2: test R@1 (%) against the strength of the {name} augmentation in training, a panel per "
            f"test set and a line per value of the other varied keys; {POINT}."
        )
    if stem == "fig3_resolution":
        return (
            "Fig. 3: test R@1 (%) against data.resize_fraction (images scaled by it, 1 = full size), a panel "
            f"per test set and a line per value of the other varied keys; {POINT}."
        )
    if stem == "fig4a_matching_time":
        return (
            "Fig. 4a: kNN matching time per query (ms) against database size x descriptor dimension, both "
            f"axes logarithmic; {POINT}. The dashed line is the mean extraction time per image: matching "
            "costs more than extraction where the points rise above it."
        )
    if stem == "fig4b_knn":
        return (
            "Fig. 4b: test R@1 (%) against the matching time per query (ms) of each test.knn index, a panel "
            f"per test set; {POINT}, labelled with its index's memory (MB)."
        )
    if stem.startswith("pareto_"):
        cost = stem[len("pareto_") :]
        return (
            f"Test R@1 (%) against {cost} ({COST_UNITS.get(cost, 'its unit')}), a panel per test set; {POINT}. "
            f"The red steps join the Pareto front: the configs no other beats, none having a higher R@1 for "
            f"the same or less {cost}."
        )
    if stem == "workers":
        return (
            "Training time (s) against the data-parallel workers of a trial (train.workers), a line per value "
            f"of the other varied keys; {POINT}. The red steps join the Pareto front: the configs no other "
            "trains faster with as few workers."
        )
    return stem


FIGURES: Dict[str, Callable[..., List[Path]]] = {
    "augmentation": augmentation,
    "resolution": resolution,
    "matching_time": matching_time,
    "knn": knn,
    "pareto": pareto,
    "workers": workers,
}
