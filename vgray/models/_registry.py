"""One registry per component family, keyed by the names the YAML uses (as timm's ``register_model``)."""
from __future__ import annotations

import fnmatch
from typing import Any, Callable, Dict, List

from vgray.errors import BadInput


class Registry:
    """Maps a YAML name to a builder plus static facts about it (``info``).

    ``create(name, ...)`` calls the builder; an unknown name raises :class:`BadInput` that lists the
    valid names, so a typo in a config is caught at load time.
    """

    def __init__(self, family: str):
        self.family = family
        self._builders: Dict[str, Callable] = {}
        self._info: Dict[str, Dict[str, Any]] = {}

    def register(self, name: str, **info) -> Callable:
        def decorator(builder: Callable) -> Callable:
            if name in self._builders:
                raise ValueError(f"{self.family} '{name}' registered twice")
            self._builders[name] = builder
            self._info[name] = info
            return builder
        return decorator

    def names(self, pattern: str = "*") -> List[str]:
        return sorted(n for n in self._builders if fnmatch.fnmatch(n, pattern))

    def check(self, name: str) -> None:
        if name not in self._builders:
            raise BadInput(f"unknown {self.family} '{name}'; choose one of: {', '.join(self.names())}")

    def info(self, name: str) -> Dict[str, Any]:
        self.check(name)
        return self._info[name]

    def create(self, name: str, *args, **kwargs):
        self.check(name)
        return self._builders[name](*args, **kwargs)

    def __contains__(self, name: str) -> bool:
        return name in self._builders
