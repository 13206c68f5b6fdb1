"""Benchmarks (``vgray bench NAME``): each measures vgray against a baseline in the same run and
prints the ratio last. Run on demand, never in the test suite.

A new benchmark is a module ``vgray/bench/<name>.py`` with a ``main(argv)`` that builds its options
on :func:`bench_parser` and ends with :func:`print_figures`, listed in :data:`BENCHMARKS`.
"""

from __future__ import annotations

import importlib
from typing import List, Optional

from vgray import console, values
from vgray.errors import BadInput
from vgray.paths import path_type

# name -> module in vgray.bench with a ``main(argv)``
BENCHMARKS = {
    "extract": "vgray.bench.extract",
    "mining": "vgray.bench.mining",
    "train": "vgray.bench.train",
    "sweep": "vgray.bench.sweep",
    "knn": "vgray.bench.knn",
    "search": "vgray.bench.search",
    "index": "vgray.bench.index",
    "scale": "vgray.bench.scale",
    "ddp": "vgray.bench.ddp",
}


def actor_counts(text: str) -> List[int]:
    """``--actors 1,2,4`` as a list of counts of at least 1; anything else is refused."""
    try:
        counts = values.count_list(text, "--actors")  # the number door: integers of at most a C int
    except BadInput:
        counts = []
    if not counts or min(counts) < 1:
        raise BadInput(f"--actors={text!r}: give a comma-separated list of actor counts of at least 1, e.g. 1,2,4")
    return counts


def bench_parser(name: str, defaults: str) -> console.Parser:
    """The options every benchmark shares: ``--set`` config overrides (``defaults`` says what runs
    without them) and ``--json FILE``; usage errors exit 2 in one line, as ``vgray``'s own."""
    p = console.Parser(prog=f"vgray bench {name}")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"config overrides (default: {defaults})",
    )
    # Through the path door as the options are read: not after the benchmark ran.
    p.add_argument(
        "--json",
        metavar="FILE",
        type=path_type("--json", "out_file"),
        help="also write the figures to FILE as one JSON object",
    )
    return p


def print_figures(figures: dict, json_path: Optional[str] = None) -> None:
    """One figure a line with three decimals, the ratio last (benchmarks put it last in
    ``figures``); the same object into ``json_path`` when given."""
    console.print_figures(figures, json_path=json_path, decimals=3)


def run_benchmark(name: str, argv: List[str]) -> None:
    """Run benchmark ``name`` (a :data:`BENCHMARKS` key; ``list`` prints them) with its options ``argv``."""
    if name == "list":
        print("\n".join(sorted(BENCHMARKS)))
        return
    if name not in BENCHMARKS:
        raise BadInput(f"unknown benchmark '{name}'; choose one of: {', '.join(sorted(BENCHMARKS))}")
    importlib.import_module(BENCHMARKS[name]).main(argv)
