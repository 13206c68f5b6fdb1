"""Aggregations: local features (B, C, h, w) -> one global descriptor (B, D). One file each.

Each file registers its builder in :data:`AGGREGATIONS` with the facts the config cross-checks use:
``inputs`` (which backbone outputs it can pool: ``feature_map``, later ``tokens``/``cls``) and
``pooling`` (True for the pooling layers that ``model.l2`` wraps: before_pool normalises the feature
map over channels, after_pool the pooled vector). A builder takes ``(in_channels, model_cfg)`` and
returns a module with ``output_dim``; build_model checks it with a dry forward pass.
"""
from vgray.registry import AGGREGATIONS

# Importing the modules registers them.
from vgray.models.aggregations import gem, netvlad  # noqa: E402,F401
from vgray.models.aggregations import crn, mac, rmac, rrm, spoc  # noqa: E402,F401
from vgray.models.aggregations import cls, seqpool  # noqa: E402,F401

__all__ = ["AGGREGATIONS"]
