"""Benchmarks (``vgray bench NAME``): each measures vgray against a baseline in the same run and
prints the ratio last. Run on demand, never in the test suite."""
from __future__ import annotations

import importlib
from typing import List

from vgray.errors import BadInput

# name -> module in vgray.bench with a ``main(argv)``
BENCHMARKS = {"extract": "vgray.bench.extract", "mining": "vgray.bench.mining", "train": "vgray.bench.train",
              "sweep": "vgray.bench.sweep", "knn": "vgray.bench.knn",
              "search": "vgray.bench.search"}


def actor_counts(text: str) -> List[int]:
    """``--actors 1,2,4`` as a list of counts of at least 1; anything else is refused."""
    try:
        counts = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise BadInput(f"--actors={text!r}: give a comma-separated list of actor counts of at least 1, e.g. 1,2,4")
    return counts


def bench_parser(name: str, defaults: str):
    """The options every benchmark shares: ``--set`` config overrides and ``--json FILE``."""
    from vgray.cli import _Parser
    p = _Parser(prog=f"vgray bench {name}")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"config overrides (default: {defaults})")
    p.add_argument("--json", metavar="FILE", help="also write the figures to FILE as one JSON object")
    return p


def print_figures(figures: dict, json_path=None) -> None:
    """One figure a line, the ratio last (benchmarks put it last in ``figures``)."""
    import json
    width = max(map(len, figures))
    for k, v in figures.items():
        print(f"{k:<{width}}  {v:.3f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(figures, f, indent=2)


def run_benchmark(name: str, argv: List[str]) -> None:
    if name == "list":
        print("\n".join(sorted(BENCHMARKS)))
        return
    if name not in BENCHMARKS:
        raise BadInput(f"unknown benchmark '{name}'; choose one of: {', '.join(sorted(BENCHMARKS))}")
    importlib.import_module(BENCHMARKS[name]).main(argv)
