"""CNN backbones of the paper (Table 3), truncated and frozen as in its code.

``conv4`` keeps a ResNet up to ``layer3`` and ``conv5`` up to ``layer4``; both train from ``layer3``
on. VGG16 and AlexNet keep ``features`` without the last ReLU and max-pool; VGG16 trains only its
last conv block, AlexNet all but its first two convs. Every backbone declares its output channels;
:func:`vgray.models.network.build_model` checks the declaration with a dry forward pass.
"""

from __future__ import annotations

from typing import cast

import torch
import torchvision
from torch import nn

from vgray.checkpoint import check_fits
from vgray.errors import BadInput
from vgray.models.components import Backbone
from vgray.models.pretrained import IMAGENET_MEAN, IMAGENET_STD, load_source, source_state_dict
from vgray.registry import BACKBONES


class CNNBackbone(Backbone):
    """A truncated torchvision network ``body``: images (B, 3, H, W) -> feature map (B, out_channels, h, w)."""

    def __init__(
        self, body: nn.Sequential, out_channels: int, arch: str, source_names, mean=IMAGENET_MEAN, std=IMAGENET_STD
    ):
        super().__init__(arch, out_channels, mean, std)
        self.body = body
        # The name of each body module in the torchvision source model ("layer3", "features.28"),
        # so that a torchvision state dict file can be loaded into the truncated body.
        self.source_names = list(source_names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def load_source_state_dict(self, state: dict, origin: str) -> None:
        """Load a state dict of the torchvision source architecture into the kept layers; the
        layers cut off (a ResNet's layer4 for conv4, the classifier) are left out of the check."""
        body_state = self.body.state_dict()
        source_of = {}  # "6.0.conv1.weight" -> "layer3.0.conv1.weight"
        for key in body_state:
            index, rest = key.split(".", 1)
            source_of[key] = f"{self.source_names[int(index)]}.{rest}"
        kept = {k: v for k, v in state.items() if k.startswith(tuple(f"{n}." for n in self.source_names))}
        check_fits(
            {source_of[k]: v for k, v in body_state.items()}, kept, f"weights file {origin} does not fit {self.arch}"
        )
        self.body.load_state_dict({key: kept[source] for key, source in source_of.items()})


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


def _resnet(arch: str, stage: int, out_channels: int, pretrained: str) -> CNNBackbone:
    model = _source_model(arch, pretrained)
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    kept = names[: 7 if stage == 4 else 8]
    # The paper trains from layer3 on; everything before it stays as pretrained.
    _freeze(getattr(model, n) for n in kept[: kept.index("layer3")])
    return CNNBackbone(nn.Sequential(*(getattr(model, n) for n in kept)), out_channels, arch, kept)


def _vgg_like(arch: str, frozen_layers: int, out_channels: int, pretrained: str) -> CNNBackbone:
    model = _source_model(arch, pretrained)
    features = cast(nn.Sequential, model.features)  # VGG's and AlexNet's convolutional part
    layers = list(features.children())[:-2]  # drop the last ReLU and max-pool, as the paper
    _freeze(layers[:frozen_layers])
    return CNNBackbone(nn.Sequential(*layers), out_channels, arch, [f"features.{i}" for i in range(len(layers))])


def _check_cnn(cfg) -> None:
    """model.trunc_te / freeze_te count transformer encoder blocks: a CNN has none."""
    for key in ("trunc_te", "freeze_te"):
        if getattr(cfg.model, key) is not None:
            raise BadInput(
                f"model.{key} applies to the transformer backbones (vit, cct384), not "
                f"model.backbone={cfg.model.backbone}; leave it null"
            )


# Declared output channels; build_model checks each against a dry forward pass.
_RESNET_CHANNELS = {
    ("resnet18", 4): 256,
    ("resnet18", 5): 512,
    ("resnet50", 4): 1024,
    ("resnet50", 5): 2048,
    ("resnet101", 4): 1024,
    ("resnet101", 5): 2048,
    ("resnet152", 4): 1024,
    ("resnet152", 5): 2048,
}  # 152: CosPlace's, not the paper's
for (_arch, _stage), _channels in _RESNET_CHANNELS.items():
    BACKBONES.register(f"{_arch}conv{_stage}", type=CNNBackbone, out_channels=_channels, check=_check_cnn)(
        lambda pretrained="none", a=_arch, s=_stage, c=_channels: _resnet(a, s, c, pretrained)
    )

# VGG16: layers[:-5] frozen, i.e. all but the last conv block (conv5_1..conv5_3 with their ReLUs).
BACKBONES.register("vgg16", type=CNNBackbone, out_channels=512, check=_check_cnn)(
    lambda pretrained="none": _vgg_like("vgg16", -5, 512, pretrained)
)
# AlexNet: the first five modules (conv1, ReLU, pool, conv2, ReLU) frozen, as the paper's code.
BACKBONES.register("alexnet", type=CNNBackbone, out_channels=256, check=_check_cnn)(
    lambda pretrained="none": _vgg_like("alexnet", 5, 256, pretrained)
)
