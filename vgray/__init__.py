"""vgray: the Deep Visual Geo-localization Benchmark on a Ray cluster."""

__version__ = "0.4.0.dev0"
