"""Datasets in the VG format, positives, transforms, and the synthetic world."""

from vgray.data.dataset import ImageSet, Split, open_split, parse_name, resolve_root

__all__ = ["ImageSet", "Split", "open_split", "parse_name", "resolve_root"]
