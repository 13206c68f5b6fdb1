"""The component registries: one per family, keyed by the names the YAML uses (timm's ``_registry``).

This module is a leaf of the ground: it imports nothing of vgray but :mod:`vgray.errors`. The
registries start empty; each family's package fills its registry when it is imported, one member
per file (``vgray.models.backbones``, ``vgray.models.aggregations``, ``vgray.train.losses``,
``vgray.train.mining``, ``vgray.evaluate.methods``). The config (:mod:`vgray.config`) checks a
name against a registry, and runs the member's own ``check(cfg)`` and the cross-family checks
that packages add with :func:`add_config_check`, for every family whose package is imported: the
checks that need the components run where the components are, still at load time.

Facts a member declares (passed to :meth:`Registry.register` and read with :meth:`Registry.info`):
``check``, a function ``check(cfg)`` raising :class:`~vgray.errors.BadInput` for configs it cannot
take; ``type``, the class the builder returns, whose class attributes declare what the member takes
and gives (read with :meth:`Registry.type_of`); and the family's own facts. The backbone and
aggregation interface, and their facts, are documented in one place: :mod:`vgray.models.components`.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Callable, Dict, List, Optional, TypeVar

from vgray.errors import BadInput

_Builder = TypeVar("_Builder", bound=Callable[..., Any])


class Registry:
    """Maps a YAML name to a builder plus static facts about it (``info``).

    ``create(name, ...)`` calls the builder; an unknown name raises :class:`BadInput` that lists the
    valid names, so a typo in a config is caught at load time. ``key`` is the dotted config key whose
    value names a member (``model.backbone``), when there is one.
    """

    def __init__(self, family: str, key: Optional[str] = None):
        self.family = family
        self.key = key
        self._builders: Dict[str, Callable[..., Any]] = {}
        self._info: Dict[str, Dict[str, Any]] = {}

    def register(self, name: str, **info: Any) -> Callable[[_Builder], _Builder]:
        def decorator(builder: _Builder) -> _Builder:
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

    def type_of(self, name: str) -> Any:
        """The class member ``name`` builds (its ``type`` fact), whose attributes declare its interface."""
        # Any: each family's classes (vgray.models.components) lie above the ground.
        return self.info(name)["type"]

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        self.check(name)
        return self._builders[name](*args, **kwargs)

    def filled(self) -> bool:
        """True once the family's package has been imported (it registered its members)."""
        return bool(self._builders)

    def __contains__(self, name: str) -> bool:
        return name in self._builders


BACKBONES = Registry("backbone", "model.backbone")
AGGREGATIONS = Registry("aggregation", "model.aggregation")
LOSSES = Registry("loss", "train.criterion")
MINING = Registry("mining method", "train.mining")
TEST_METHODS = Registry("test method", "test.method")
# Place-batched training (train.regime=places): pytorch-metric-learning losses and miners over batches
# of P places x K images, filled by vgray.train.places.
PLACE_LOSSES = Registry("place loss", "train.pml_loss")
PLACE_MINERS = Registry("place miner", "train.pml_miner")

FAMILIES = (BACKBONES, AGGREGATIONS, LOSSES, MINING, TEST_METHODS, PLACE_LOSSES, PLACE_MINERS)

# Checks across families (an aggregation that cannot pool a backbone's output), added by the package
# that fills the registries involved; run by the config after its own checks.
CONFIG_CHECKS: List[Callable[[Any], None]] = []


def add_config_check(check: Callable[[Any], None]) -> Callable[[Any], None]:
    """Run ``check(cfg)`` on every config loaded from now on (usable as a decorator)."""
    if check not in CONFIG_CHECKS:
        CONFIG_CHECKS.append(check)
    return check
