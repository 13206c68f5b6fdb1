"""What the command line (:mod:`vgray.cli`) and the benchmarks (:mod:`vgray.bench`) share: an
argument parser whose usage errors are one line with exit status 2, and the printout of a command's
figures with its ``--json FILE`` copy.

It sits in the ground, below both, so that ``bench`` need not reach up into ``cli`` for them.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, Optional

from vgray.atomic import write_text
from vgray.errors import BadInput


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line with exit status 2.

    It raises :class:`~vgray.errors.BadInput`, which ``vgray.cli.main`` prints as one line on
    stderr before it exits 2 (argparse's own error() prints the usage, then exits).
    """

    def error(self, message: str):
        raise BadInput(f"{self.prog}: {message} (see {self.prog} --help)")


def format_value(value, decimals: int = 2) -> str:
    """A figure as printed: floats with ``decimals`` decimals, or 3 significant digits when that
    would print a small non-zero value as 0; anything else as ``str``."""
    if isinstance(value, float):
        if abs(value) >= 10.0 ** -decimals or value == 0:
            return f"{value:.{decimals}f}"
        return f"{value:.3g}"
    return str(value)


def write_json(path: Optional[str], figures: Dict) -> None:
    """Write ``figures`` to ``path`` as one indented JSON object (atomically, parent folders
    created); nothing when ``path`` is empty."""
    if not path:
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_text(target, json.dumps(figures, indent=2) + "\n")


def print_figures(figures: Dict, title: Optional[str] = None, json_path: Optional[str] = None,
                  decimals: int = 2) -> None:
    """Print one figure a line, names aligned, in the order of ``figures``; under ``title``
    (indented by two) when one is given. Then :func:`write_json` to ``json_path``."""
    indent = ""
    if title is not None:
        print(title)
        indent = "  "
    width = max(map(len, figures))
    for k, v in figures.items():
        print(f"{indent}{k:<{width}}  {format_value(v, decimals)}")
    write_json(json_path, figures)
