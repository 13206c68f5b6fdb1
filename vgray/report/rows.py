"""What a report asks of a sweep's rows (read and checked by :func:`vgray.results.load_rows`): which
columns are config keys, which keys the sweep varied, which test sets the rows hold, which rows
finished.
"""

from __future__ import annotations

import math
from typing import Any, List

from vgray.results import Row


def is_config_column(column: str) -> bool:
    """Flattened config keys are dotted (``model.backbone``); metrics start with ``test/`` or ``val/``."""
    return "." in column and not column.startswith(("test/", "val/"))


def number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def varied_keys(rows: List[Row]) -> List[str]:
    """The config columns whose value differs between rows, in column order (the sweep's grid)."""
    columns: List[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns and is_config_column(k)]
    return [c for c in columns if len({repr(r.get(c)) for r in rows}) > 1]


def datasets(rows: List[Row], recall: int = 1) -> List[str]:
    """Test datasets with an ``test/<name>/R@<recall>`` number in some finished row."""
    out: List[str] = []
    for r in rows:
        for k, v in r.items():
            if k.startswith("test/") and k.endswith(f"/R@{recall}") and number(v):
                name = k[len("test/") : -len(f"/R@{recall}")]
                if name not in out:
                    out.append(name)
    return out


def finished(rows: List[Row]) -> List[Row]:
    return [r for r in rows if r.get("status") == "ok"]
