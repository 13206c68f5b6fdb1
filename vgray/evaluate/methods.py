"""Test-time methods (``test.method``): how database and query images are fed to the network.

``hard_resize`` (the paper's default) resizes every image to ``data.resize``. A method gives the
transform of database images and of queries; methods that turn a query into several crops (added
with the supplementary-material study) also merge their predictions.
"""
from __future__ import annotations

from vgray.data.transforms import test_transform
from vgray.models._registry import Registry

TEST_METHODS = Registry("test method")


class HardResize:
    """Every image resized to ``(H, W)`` regardless of its aspect ratio."""

    def __init__(self, image_size, mean, std):
        self.database_transform = test_transform(image_size, mean, std)
        self.query_transform = self.database_transform


TEST_METHODS.register("hard_resize")(HardResize)
