"""Whole-network weights files of other publishers, recognised from their keys and renamed to vgray's.

``model.pretrained: FILE`` takes any of these layouts, tried in this order (no flag says which):

1. **vgray checkpoint** (``best.pt``): ``{"model": state, "config": ...}`` (the config says what it
   was made for).
2. **vgray network state dict**: ``backbone.body.N…``, ``aggregation.…``, ``fc.…``.
3. **the paper's** (gmberton/deep-visual-geo-localization-benchmark): its train.py checkpoint
   ``{"model_state_dict": {"module.backbone.N…": ...}, "best_r5": np.float64, "recalls": np.ndarray,
   ...}`` or a bare state dict of its ``GeoLocalizationNet``. The backbone is ``Sequential`` of the
   torchvision children (vgray: ``backbone.body.N``). GeM, SPoC, MAC and R-MAC are wrapped in
   ``Sequential(L2Norm, pool, Flatten)`` (``model.l2=before_pool``: GeM's p is ``aggregation.1.p``) or
   ``Sequential(pool, [L2Norm,] Flatten)`` (``aggregation.0.p``); ``--fc_output_dim`` wraps the
   aggregation again, ``Sequential(aggregation, Linear, L2Norm)``, so everything shifts under
   ``aggregation.0.`` and the FC is ``aggregation.1.``. NetVLAD (``conv.weight``, ``centroids``) has no
   ``initialized`` buffer: it is set here, so that k-means does not run again over trained clusters.
   CRN's filters are ``crn.filter_{3_3,5_5,7_7}`` and its accumulation ``crn.acc_w`` a fixed sum
   (weight 1, bias 0, no gradient), which vgray computes without a layer. RRM's LayerNorms are
   ``ln1``/``ln2``. DataParallel's ``module.`` prefix is stripped.
4. **CosPlace / EigenPlaces** (gmberton/CosPlace, gmberton/EigenPlaces released ``*_cosplace.pth``,
   ``*_eigenplaces.pth``): ``backbone.N…`` as above and ``aggregation = Sequential(L2Norm, GeM,
   Flatten, Linear, L2Norm)``: ``aggregation.1.p``, ``aggregation.3.weight``/``bias``. That is vgray's
   conv5 (or VGG16) + ``gem`` + ``model.l2=before_pool`` + ``model.fc_output_dim``.
5. **backbone source state dict** (torchvision, timm, the CCT authors'): loaded into the backbone by
   its own ``load_source_state_dict``.

The paper's transformer networks (HuggingFace ViT inside its ``VitWrapper``, its CCT copy) are not
converted: their files are refused as fitting no layout. A file that fits a layout but not the
configured network is refused with one line saying what it was made for, read from its keys
(backbone from the first convolution and the block counts, NetVLAD clusters, FC size, channels).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch
from torch import nn

from vgray.checkpoint import made_for, mismatches, refuse
from vgray.errors import BadInput
from vgray.registry import BACKBONES

State = Dict[str, torch.Tensor]

_DIGIT_BACKBONE = re.compile(r"^backbone\.(\d+)\.(.+)$")
# The paper's names inside its NetVLAD / CRN / RRM / pooling wrappers -> vgray's.
_PAPER_INNER = [
    (re.compile(r"^[01]\.p$"), "p"),
    (re.compile(r"^(conv\.weight|centroids)$"), r"\1"),
    (re.compile(r"^crn\.filter_3_3\.(weight|bias)$"), r"crn.filters.0.\1"),
    (re.compile(r"^crn\.filter_5_5\.(weight|bias)$"), r"crn.filters.1.\1"),
    (re.compile(r"^crn\.filter_7_7\.(weight|bias)$"), r"crn.filters.2.\1"),
    (re.compile(r"^ln1\.(weight|bias)$"), r"norm_in.\1"),
    (re.compile(r"^ln2\.(weight|bias)$"), r"norm_out.\1"),
    (re.compile(r"^(fc[12]\.(weight|bias))$"), r"\1"),
]
_GMBERTON_HEAD = {"aggregation.1.p": "aggregation.p", "aggregation.3.weight": "fc.weight",
                  "aggregation.3.bias": "fc.bias"}
# Top-level names of the backbone source layouts: torchvision ResNet/VGG/AlexNet, timm ViT, CCT.
_SOURCE_TOPS = {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc", "features", "classifier",
                "cls_token", "pos_embed", "patch_embed", "blocks", "norm", "head", "fc_norm", "pre_logits",
                "tokenizer"}


@dataclass(frozen=True)
class Converted:
    """A file in vgray's names: ``state`` for the whole network, ``l2`` where the file says where its
    pooling normalised (None: it does not say), ``made`` the config keys it was made for, or None to
    read them from ``state``."""
    state: State
    l2: Optional[str] = None
    made: Optional[str] = None


@dataclass(frozen=True)
class Layout:
    """One known layout: ``claims`` says from the keys whether a file is in it (the state dict already
    unwrapped), ``convert`` renames it (None: loaded by the backbone itself)."""
    name: str
    claims: Callable[[dict, dict], bool]
    convert: Optional[Callable[[dict, dict, str], Converted]]


def _unwrap(obj: dict) -> dict:
    """The state dict inside a publisher's wrapper (``model_state_dict``, ``state_dict``), without
    DataParallel's ``module.`` prefix."""
    for key in ("model_state_dict", "state_dict"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def _is_vgray_checkpoint(obj: dict, state: dict) -> bool:
    return isinstance(obj.get("model"), dict)


def _is_vgray_network(obj: dict, state: dict) -> bool:
    # The paper's HuggingFace ViT (backbone.vit_model.…) is not converted: it must fit no layout.
    return (any(k.startswith("backbone.") for k in state)
            and not any(_DIGIT_BACKBONE.match(k) or k.startswith("backbone.vit_model.") for k in state))


def _paper_head(state: dict) -> Optional[Converted]:
    """The paper's aggregation (and FC) keys renamed, or None when a key is not one of its names."""
    has_fc = "aggregation.1.weight" in state and "aggregation.1.bias" in state
    prefix = "aggregation.0." if has_fc else "aggregation."
    head, l2 = {}, None
    for key, value in state.items():
        if key.startswith("backbone."):
            continue
        if has_fc and key in ("aggregation.1.weight", "aggregation.1.bias"):
            head["fc." + key.rsplit(".", 1)[1]] = value
            continue
        if not key.startswith(prefix):
            return None
        inner = key[len(prefix):]
        if inner.startswith("crn.acc_w."):
            continue  # the fixed sum, checked by the caller
        for pattern, name in _PAPER_INNER:
            if pattern.match(inner):
                head["aggregation." + pattern.sub(name, inner)] = value
                if name == "p":  # L2Norm before the pool puts GeM second in its Sequential
                    l2 = "before_pool" if inner.startswith("1.") else "after_pool or none"
                break
        else:
            return None
    if "aggregation.centroids" in head:
        head["aggregation.initialized"] = torch.ones((), dtype=torch.bool)
    return Converted(head, l2)


def _cnn_backbone(state: dict) -> State:
    return {f"backbone.body.{m.group(1)}.{m.group(2)}": v for k, v in state.items()
            if (m := _DIGIT_BACKBONE.match(k))}


def _is_paper(obj: dict, state: dict) -> bool:
    return any(_DIGIT_BACKBONE.match(k) for k in state) and _paper_head(state) is not None


def _paper(obj: dict, state: dict, origin: str) -> Converted:
    head = _paper_head(state)
    for part, want in (("weight", 1.0), ("bias", 0.0)):
        acc = next((v for k, v in state.items() if k.endswith(f"crn.acc_w.{part}")), None)
        if acc is not None and not torch.all(acc == want):
            raise BadInput(f"model.pretrained={origin}: its CRN accumulation crn.acc_w.{part} is not the fixed "
                           f"{want:g} of the paper's code; vgray's CRN sums the context filters with weight 1")
    return Converted({**_cnn_backbone(state), **head.state}, head.l2)


def _is_gmberton(obj: dict, state: dict) -> bool:
    head = {k for k in state if k.startswith("aggregation.")}
    return any(_DIGIT_BACKBONE.match(k) for k in state) and head == set(_GMBERTON_HEAD)


def _gmberton(obj: dict, state: dict, origin: str) -> Converted:
    head = {_GMBERTON_HEAD[k]: v for k, v in state.items() if k in _GMBERTON_HEAD}
    return Converted({**_cnn_backbone(state), **head}, "before_pool")


def _is_source(obj: dict, state: dict) -> bool:
    tops = {k.split(".", 1)[0] for k in state}
    return not any(k.startswith(("backbone.", "aggregation.")) for k in state) and bool(tops & _SOURCE_TOPS)


def _vgray_checkpoint(obj: dict, state: dict, origin: str) -> Converted:
    made = made_for(obj)
    return Converted(obj["model"], made=(f"backbone={made.get('backbone')}, aggregation={made.get('aggregation')}"
                                         if made else None))


LAYOUTS = [
    Layout("vgray checkpoint", _is_vgray_checkpoint, _vgray_checkpoint),
    Layout("vgray network state dict", _is_vgray_network, lambda obj, state, origin: Converted(state)),
    Layout("the paper's (deep-visual-geo-localization-benchmark)", _is_paper, _paper),
    Layout("CosPlace/EigenPlaces", _is_gmberton, _gmberton),
    Layout("backbone state dict (torchvision, timm, CCT)", _is_source, None),
]


# -- what a file was made for, from its keys -----------------------------------------------------

_RESNETS = {(False, 2): "resnet18", (False, 6): "resnet34", (True, 6): "resnet50", (True, 23): "resnet101",
            (True, 36): "resnet152"}


def _backbone_of(state: State) -> Optional[str]:
    """The vgray backbone name a converted CNN state dict was made for (None: not a CNN vgray knows)."""
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
    return "spoc, mac or rmac"


def describe(state: State) -> str:
    """``model.backbone=…, model.aggregation=…, …``: the config keys a network state dict (vgray names)
    was made for, read from its keys and shapes."""
    backbone = _backbone_of(state)
    centroids = state.get("aggregation.centroids")
    fc = state.get("fc.weight")
    if backbone is None:
        channels = centroids.shape[1] if centroids is not None else fc.shape[1] if fc is not None else "?"
        backbone = f"(a backbone of {channels} channels)"
    parts = [f"model.backbone={backbone}", f"model.aggregation={_aggregation_of(state)}"]
    if centroids is not None:
        parts.append(f"model.netvlad_clusters={centroids.shape[0]}")
    parts.append(f"model.fc_output_dim={fc.shape[0] if fc is not None else 'null'}")
    return ", ".join(parts)


def _refuse_misfit(model: nn.Module, layout: Layout, conv: Converted, origin: str) -> None:
    found = mismatches(model.state_dict(), conv.state)
    if conv.made is not None or layout.convert is _vgray_checkpoint:  # a vgray checkpoint says it itself
        refuse(f"checkpoint {origin} does not fit this network" + (f" (made for {conv.made})" if conv.made else ""),
               found)
        return
    wrong_l2 = (conv.l2 == "before_pool") != (model.l2 == "before_pool")
    if not found and not (conv.l2 and wrong_l2):
        return
    made = describe(conv.state)
    backbone = _backbone_of(conv.state)
    missing = f" (vgray has no {backbone} backbone)" if backbone and backbone not in BACKBONES.names() else ""
    l2 = f", model.l2={conv.l2}" if conv.l2 else ""
    first = f"; first difference: {found[0]}" if found else ""
    raise BadInput(f"model.pretrained={origin} ({layout.name} layout) is a network made for {made}{l2}{missing}: "
                   f"set those (it does not fit this network{first})")


def load_network_file(model: nn.Module, obj: dict, origin: str) -> str:
    """Load the weights file ``obj`` (its dict, as read by :mod:`vgray.checkpoint`) named ``origin`` into
    ``model`` (a :class:`vgray.models.network.GeoLocalizationNet`), in whichever of :data:`LAYOUTS` it
    is; returns that layout's name. BadInput when it is in none (naming the layouts tried and its first
    keys) or does not fit the network (naming what it was made for)."""
    state = _unwrap(obj)
    for layout in LAYOUTS:
        if not layout.claims(obj, state):
            continue
        if layout.convert is None:
            model.backbone.load_source_state_dict(state, origin)
            return layout.name
        conv = layout.convert(obj, state, origin)
        _refuse_misfit(model, layout, conv, origin)
        model.load_state_dict(conv.state)
        return layout.name
    first = ", ".join(list(state)[:3]) or "none (an empty dict)"
    raise BadInput(f"model.pretrained={origin} fits no known layout (tried: {'; '.join(x.name for x in LAYOUTS)}); "
                   f"its first keys: {first}")
