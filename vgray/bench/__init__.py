"""Benchmarks (``vgray bench NAME``): each measures vgray against a baseline in the same run and
prints the ratio last. Run on demand, never in the test suite."""
from __future__ import annotations

import importlib
from typing import List

from vgray.errors import BadInput

# name -> module in vgray.bench with a ``main(argv)``
BENCHMARKS = {"extract": "vgray.bench.extract", "mining": "vgray.bench.mining", "train": "vgray.bench.train"}


def run_benchmark(name: str, argv: List[str]) -> None:
    if name == "list":
        print("\n".join(sorted(BENCHMARKS)))
        return
    if name not in BENCHMARKS:
        raise BadInput(f"unknown benchmark '{name}'; choose one of: {', '.join(sorted(BENCHMARKS))}")
    importlib.import_module(BENCHMARKS[name]).main(argv)
