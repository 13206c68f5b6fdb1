"""Which layout a weights file is in, and loading it into a network (or refusing it in one line)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Optional, cast

from torch import nn

from vgray.checkpoint import check_checkpoint, made_for, mismatches, refuse
from vgray.errors import BadInput
from vgray.models.foreign.base import Converted, Layout, State, unwrap
from vgray.models.foreign.paper import COSPLACE, DIGIT_BACKBONE, PAPER
from vgray.models.foreign.paper_transformers import PAPER_CCT, PAPER_VIT, PREFIXES, token_backbone, token_keys
from vgray.models.foreign.vpr import BOQ, MIXVPR, SALAD
from vgray.registry import BACKBONES

if TYPE_CHECKING:
    from vgray.models.components import Backbone

# Top-level names of the backbone source layouts: torchvision ResNet/VGG/AlexNet, timm ViT, CCT.
_SOURCE_TOPS = {
    "conv1",
    "bn1",
    "layer1",
    "layer2",
    "layer3",
    "layer4",
    "fc",
    "features",
    "classifier",
    "cls_token",
    "pos_embed",
    "patch_embed",
    "blocks",
    "norm",
    "head",
    "fc_norm",
    "pre_logits",
    "tokenizer",
}


def _is_vgray_checkpoint(obj: dict, state: dict) -> bool:
    return isinstance(obj.get("model"), dict)


def _is_vgray_network(obj: dict, state: dict) -> bool:
    # The paper's CNNs (backbone.N…) and transformers (backbone.vit_model.…, CCT's backbone.classifier.…)
    # are converted by their own layouts.
    return any(k.startswith("backbone.") for k in state) and not any(
        DIGIT_BACKBONE.match(k) or k.startswith(PREFIXES) for k in state
    )


def _is_source(obj: dict, state: dict) -> bool:
    tops = {k.split(".", 1)[0] for k in state}
    return not any(k.startswith(("backbone.", "aggregation.")) for k in state) and bool(tops & _SOURCE_TOPS)


def _vgray_checkpoint(obj: dict, state: dict, origin: str) -> Converted:
    if "config" in obj:  # a vgray checkpoint's entries, checked as every vgray checkpoint read is
        check_checkpoint(obj, f"model.pretrained={origin}", resumable=False)
    made = made_for(obj)
    return Converted(
        obj["model"], made=(f"backbone={made.get('backbone')}, aggregation={made.get('aggregation')}" if made else None)
    )


LAYOUTS = [
    Layout("vgray checkpoint", _is_vgray_checkpoint, _vgray_checkpoint),
    MIXVPR,
    SALAD,
    BOQ,  # before vgray's own: their backbone.… keys would be taken for its names
    Layout("vgray network state dict", _is_vgray_network, lambda obj, state, origin: Converted(state)),
    PAPER,
    COSPLACE,
    PAPER_VIT,
    PAPER_CCT,
    Layout("backbone state dict (torchvision, timm, CCT)", _is_source, None),
]


# -- what a file was made for, from its keys -----------------------------------------------------

_RESNETS = {
    (False, 2): "resnet18",
    (False, 6): "resnet34",
    (True, 6): "resnet50",
    (True, 23): "resnet101",
    (True, 36): "resnet152",
}


def _backbone_of(state: State) -> Optional[str]:
    """The vgray backbone name a converted state dict was made for (None: not a backbone vgray knows)."""
    if token_backbone(state):
        return token_backbone(state)
    first = state.get("backbone.body.0.weight")
    if first is None or first.dim() != 4:
        return None
    kernel = tuple(first.shape[-2:])
    if kernel == (11, 11):
        return "alexnet"
    if kernel == (3, 3):
        return "vgg16"
    blocks = {k.split(".")[3] for k in state if k.startswith("backbone.body.6.")}
    arch = _RESNETS.get(("backbone.body.4.0.conv3.weight" in state, len(blocks)))
    if arch is None:
        return None
    return arch + ("conv5" if any(k.startswith("backbone.body.7.") for k in state) else "conv4")


def _aggregation_of(state: State) -> str:
    if any(k.startswith("aggregation.crn.") for k in state):
        return "crn"
    if "aggregation.centroids" in state:
        return "netvlad"
    if "aggregation.norm_in.weight" in state:
        return "rrm"
    if "aggregation.p" in state:
        return "gem"
    if "aggregation.attention.weight" in state:  # the paper's CCT files carry it whatever they pooled with
        return "seqpool or cls"
    return "cls" if token_backbone(state) else "spoc, mac or rmac"


def describe(state: State) -> str:
    """``model.backbone=…, model.aggregation=…, …``: the config keys a network state dict (vgray names)
    was made for, read from its keys and shapes."""
    backbone = _backbone_of(state)
    centroids = state.get("aggregation.centroids")
    fc = state.get("fc.weight")
    if backbone is None:
        channels = centroids.shape[1] if centroids is not None else fc.shape[1] if fc is not None else "?"
        backbone = f"(a backbone of {channels} channels)"
    parts = [f"model.backbone={backbone}", *token_keys(state), f"model.aggregation={_aggregation_of(state)}"]
    if centroids is not None:
        parts.append(f"model.netvlad_clusters={centroids.shape[0]}")
    parts.append(f"model.fc_output_dim={fc.shape[0] if fc is not None else 'null'}")
    return ", ".join(parts)


def _fitting(model: nn.Module, conv: Converted) -> State:
    """``conv.state`` without the keys under ``conv.optional`` that the network lacks."""
    if not conv.optional:
        return conv.state
    own = model.state_dict()
    return {k: v for k, v in conv.state.items() if k in own or not k.startswith(conv.optional)}


def _refuse_misfit(model: nn.Module, layout: Layout, conv: Converted, origin: str) -> None:
    found = mismatches(model.state_dict(), _fitting(model, conv))
    if layout.convert is _vgray_checkpoint:  # a vgray checkpoint says it itself
        refuse(
            f"checkpoint {origin} does not fit this network" + (f" (made for {conv.made})" if conv.made else ""), found
        )
        return
    wrong_l2 = (conv.l2 == "before_pool") != (model.l2 == "before_pool")
    if not found and not (conv.l2 and wrong_l2):
        return
    made = conv.made or describe(conv.state)  # the layout's own reading of its keys, if it gives one
    backbone = None if conv.made else _backbone_of(conv.state)
    missing = f" (vgray has no {backbone} backbone)" if backbone and backbone not in BACKBONES.names() else ""
    l2 = f", model.l2={conv.l2}" if conv.l2 else ""
    first = f"; first difference: {found[0]}" if found else ""
    raise BadInput(
        f"model.pretrained={origin} ({layout.name} layout) is a network made for {made}{l2}{missing}: "
        f"set those (it does not fit this network{first})"
    )


def load_network_file(model: nn.Module, obj: dict, origin: str) -> str:
    """Load the weights file ``obj`` (its dict, as read by :mod:`vgray.checkpoint`) named ``origin`` into
    ``model`` (a :class:`vgray.models.network.GeoLocalizationNet`), in whichever of :data:`LAYOUTS` it
    is; returns that layout's name. BadInput when it is in none (naming the layouts tried and its first
    keys) or does not fit the network (naming what it was made for)."""
    state = unwrap(obj)
    backbone = cast("Backbone", model.backbone)  # model is a GeoLocalizationNet
    for layout in LAYOUTS:
        if not layout.claims(obj, state):
            continue
        if layout.convert is None:
            backbone.load_source_state_dict(state, origin)
            return layout.name
        conv = layout.convert(obj, state, origin)
        conv = replace(conv, state=backbone.adapt_network_state(conv.state, "backbone."))  # DINOv2's grid
        _refuse_misfit(model, layout, conv, origin)
        model.load_state_dict(_fitting(model, conv))
        return layout.name
    first = ", ".join(list(state)[:3]) or "none (an empty dict)"
    raise BadInput(
        f"model.pretrained={origin} fits no known layout (tried: {'; '.join(x.name for x in LAYOUTS)}); "
        f"its first keys: {first}"
    )
