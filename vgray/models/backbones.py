"""CNN backbones of the paper (Table 3), truncated and frozen as in its code.

``conv4`` keeps a ResNet up to ``layer3`` and ``conv5`` up to ``layer4``; both train from ``layer3``
on. VGG16 and AlexNet keep ``features`` without the last ReLU and max-pool; VGG16 trains only its
last conv block, AlexNet all but its first two convs. Every backbone declares its output channels;
:func:`vgray.models.network.build_model` checks the declaration with a dry forward pass.
"""
from __future__ import annotations

import torch
import torchvision
from torch import nn

from vgray.errors import BadInput
from vgray.registry import BACKBONES
from vgray.models.pretrained import IMAGENET_MEAN, IMAGENET_STD, load_source, source_state_dict



class Backbone(nn.Module):
    """A truncated network ``body``: images (B, 3, H, W) -> feature map (B, out_channels, h, w)."""

    output = "feature_map"

    def __init__(self, body: nn.Sequential, out_channels: int, arch: str, source_names,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.body = body
        # The name of each body module in the torchvision source model ("layer3", "features.28"),
        # so that a torchvision state dict file can be loaded into the truncated body.
        self.source_names = list(source_names)
        self.out_channels = out_channels
        self.arch = arch
        self.mean, self.std = tuple(mean), tuple(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def load_source_state_dict(self, state: dict, origin: str) -> None:
        """Load a state dict of the torchvision source architecture into the kept layers."""
        mapped = {}
        for key, value in self.body.state_dict().items():
            index, rest = key.split(".", 1)
            source_key = f"{self.source_names[int(index)]}.{rest}"
            if source_key not in state:
                raise BadInput(f"weights file {origin} does not fit {self.arch}: key {source_key} missing")
            if tuple(state[source_key].shape) != tuple(value.shape):
                raise BadInput(f"weights file {origin} does not fit {self.arch}: {source_key} has shape "
                               f"{tuple(state[source_key].shape)}, expected {tuple(value.shape)}")
            mapped[key] = state[source_key]
        self.body.load_state_dict(mapped)


def _source_model(arch: str, pretrained: str) -> nn.Module:
    """The torchvision model ``arch`` with the weights ``pretrained`` names (none: random init)."""
    model = getattr(torchvision.models, arch)(weights=None)
    state = source_state_dict(arch, pretrained)
    if state is not None:  # the classifier head may differ (Places365, GLDv2) or be absent (GeM nets)
        load_source(model, state, f"model.pretrained={pretrained} for {arch}")
    return model


def _freeze(modules) -> None:
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(False)


def _resnet(arch: str, stage: int, out_channels: int, pretrained: str) -> Backbone:
    model = _source_model(arch, pretrained)
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    kept = names[: 7 if stage == 4 else 8]
    # The paper trains from layer3 on; everything before it stays as pretrained.
    _freeze(getattr(model, n) for n in kept[: kept.index("layer3")])
    return Backbone(nn.Sequential(*(getattr(model, n) for n in kept)), out_channels, arch, kept)


def _vgg_like(arch: str, frozen_layers: int, out_channels: int, pretrained: str) -> Backbone:
    model = _source_model(arch, pretrained)
    layers = list(model.features.children())[:-2]  # drop the last ReLU and max-pool, as the paper
    _freeze(layers[:frozen_layers])
    return Backbone(nn.Sequential(*layers), out_channels, arch, [f"features.{i}" for i in range(len(layers))])


def _check_cnn(cfg) -> None:
    """model.trunc_te / freeze_te count transformer encoder blocks: a CNN has none."""
    for key in ("trunc_te", "freeze_te"):
        if getattr(cfg.model, key) is not None:
            raise BadInput(f"model.{key} applies to the transformer backbones (vit, cct384), not "
                           f"model.backbone={cfg.model.backbone}; leave it null")


# Declared output channels; build_model checks each against a dry forward pass.
_RESNET_CHANNELS = {("resnet18", 4): 256, ("resnet18", 5): 512, ("resnet50", 4): 1024,
                    ("resnet50", 5): 2048, ("resnet101", 4): 1024, ("resnet101", 5): 2048}
for (_arch, _stage), _channels in _RESNET_CHANNELS.items():
    BACKBONES.register(f"{_arch}conv{_stage}", output="feature_map", out_channels=_channels, check=_check_cnn)(
        lambda pretrained="none", a=_arch, s=_stage, c=_channels: _resnet(a, s, c, pretrained))

# VGG16: layers[:-5] frozen, i.e. all but the last conv block (conv5_1..conv5_3 with their ReLUs).
BACKBONES.register("vgg16", output="feature_map", out_channels=512, check=_check_cnn)(
    lambda pretrained="none": _vgg_like("vgg16", -5, 512, pretrained))
# AlexNet: the first five modules (conv1, ReLU, pool, conv2, ReLU) frozen, as the paper's code.
BACKBONES.register("alexnet", output="feature_map", out_channels=256, check=_check_cnn)(
    lambda pretrained="none": _vgg_like("alexnet", 5, 256, pretrained))


def create_backbone(name: str, pretrained: str = "none") -> Backbone:
    """Build a registered backbone; ``pretrained`` is ``none`` or a named source (files: see network)."""
    return BACKBONES.create(name, pretrained=pretrained)


# The transformer backbones (vit, cct384) register themselves in their own files.
from vgray.models import cct, transformers  # noqa: E402,F401
