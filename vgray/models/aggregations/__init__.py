"""Aggregations: local features (B, C, h, w) -> one global descriptor (B, D). One file each.

Each file defines its module as a subclass of :class:`vgray.models.components.Aggregation`, whose
class attributes declare what it pools and how it trains (the interface is documented there), and
registers its builder ``(in_channels, model_cfg) -> module`` in :data:`vgray.registry.AGGREGATIONS`
with that class as its ``type``; build_model checks the declared size with a dry forward pass.
The members import the registry from :mod:`vgray.registry`, never from this package.
"""

from vgray.models.aggregations import boq, cls, convap, crn, gem, mac, mixvpr, netvlad, rmac, rrm, salad, seqpool, spoc  # noqa: F401
from vgray.registry import AGGREGATIONS

__all__ = ["AGGREGATIONS"]
