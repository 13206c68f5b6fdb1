"""Backbones, aggregations and the network that joins them (the paper's Fig. 1, left half)."""

from vgray.models.network import GeoLocalizationNet, build_model

__all__ = ["GeoLocalizationNet", "build_model"]
