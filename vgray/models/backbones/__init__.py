"""Backbones: images -> local features. One file per family: :mod:`.cnn` (ResNet, VGG16, AlexNet),
:mod:`.vit` (ViT-B/16), :mod:`.cct` (CCT-14/7x2), :mod:`.dinov2` (DINOv2 ViT-S/B/L/G 14), with the
transformers' shared keys in :mod:`.tokens`.

Each file subclasses :class:`vgray.models.components.Backbone` (or ``TokenBackbone``; the interface
is documented there) and registers a builder ``(pretrained, **sizes) -> backbone`` in
:data:`vgray.registry.BACKBONES` with its class as ``type``, its ``out_channels`` and, for
transformers, its ``input_sizes``. The members import the registry from :mod:`vgray.registry`,
never from this package.
"""

from vgray.models.backbones import (  # noqa: F401
    cct,
    cnn,
    dinov2,  # noqa: F401
    vit,
)
from vgray.models.components import Backbone
from vgray.registry import BACKBONES

__all__ = ["BACKBONES", "create_backbone"]


def create_backbone(name: str, pretrained: str = "none") -> Backbone:
    """Build a registered backbone; ``pretrained`` is ``none`` or a named source (files: see network)."""
    return BACKBONES.create(name, pretrained=pretrained)
