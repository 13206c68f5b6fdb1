"""MixVPR, SALAD and BoQ: the whole networks their authors release, each a ``VPRModel`` of a
``backbone`` and an ``aggregator`` (see :mod:`vgray.models.foreign` for the layouts).

The backbones, as the authors' code names them:

- MixVPR (amaralibey/MixVPR, models/backbones/resnet.py): torchvision's ResNet kept whole as
  ``backbone.model`` with ``fc``, ``avgpool`` and the cropped ``layer4`` set to None, so its keys are
  ``backbone.model.{conv1,bn1,layer1,layer2,layer3}.…`` (vgray: ``backbone.body.{0,1,4,5,6}``).
- BoQ (amaralibey/Bag-of-Queries, src/backbones.py): ``backbone.net = Sequential(conv1, bn1, relu,
  maxpool, layer1, layer2, layer3)``, the indices vgray's ``backbone.body`` has; its DINOv2 is the
  torch hub model as ``backbone.dino.…``, run block by block *without* the final norm (its weights are
  in the file, unused): vgray's ``model.dinov2_final_norm=false``.
- SALAD (serizba/salad, models/backbones/dinov2.py): the torch hub DINOv2 as ``backbone.model.…``,
  every block, then the final norm (``norm_layer=True`` in its hubconf, main.py and eval.py).

DINOv2's hub names are timm's (vgray: ``backbone.vit.…``) but for ``mask_token`` (masked modelling,
dropped) and ViT-g's SwiGLU ``mlp.w12``/``mlp.w3`` (timm's ``mlp.fc1``/``mlp.fc2``); the positional
embedding, made for 518 x 518, is resampled to the input by the backbone when loading. The heads have
vgray's names under ``aggregator.`` (vgray: ``aggregation.``): the arithmetic is the same.
"""

from __future__ import annotations

import re
from typing import Callable, Optional, Tuple

from vgray.models.foreign.base import Converted, Layout, State

# torchvision ResNet children -> index in vgray's backbone.body (the authors' Sequential for BoQ).
_RESNET_INDEX = {"conv1": 0, "bn1": 1, "layer1": 4, "layer2": 5, "layer3": 6, "layer4": 7}
# (bottleneck blocks?, blocks in layer3) -> architecture, as vgray names its backbones.
_RESNETS = {
    (False, 2): "resnet18",
    (False, 6): "resnet34",
    (True, 6): "resnet50",
    (True, 23): "resnet101",
    (True, 36): "resnet152",
}
# DINOv2 embedding width -> (vgray backbone, encoder depth).
_DINOV2 = {
    384: ("dinov2_vits14", 12),
    768: ("dinov2_vitb14", 12),
    1024: ("dinov2_vitl14", 24),
    1536: ("dinov2_vitg14", 40),
}
_DINOV2_TOPS = {"cls_token", "pos_embed", "mask_token", "patch_embed", "blocks", "norm"}

_MIXVPR = re.compile(r"^(mix\.\d+\.mix\.[013]|channel_proj|row_proj)\.(weight|bias)$")
_SALAD = re.compile(r"^((token_features\.[02]|cluster_features\.[03]|score\.[03])\.(weight|bias)|dust_bin)$")
_BOQ = re.compile(
    r"^(proj_c|norm_input|fc|boqs\.\d+\.(encoder|queries|self_attn|norm_q|cross_attn|norm_out))"
    r"(\..+)?$"
)


def _under(state: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _split(state: dict, backbones: Tuple[str, ...]) -> Optional[Tuple[dict, dict]]:
    """(the backbone's keys, the aggregator's keys) without their prefixes, when every key is under
    one of ``backbones`` or ``aggregator.`` (else None)."""
    for prefix in backbones:
        body, head = _under(state, prefix), _under(state, "aggregator.")
        if body and head and len(body) + len(head) == len(state):
            return body, head
    return None


# -- backbones --------------------------------------------------------------------------------


def _is_resnet(body: dict) -> bool:
    return "conv1.weight" in body and all(k.split(".", 1)[0] in _RESNET_INDEX for k in body)


def _is_resnet_sequential(body: dict) -> bool:
    return "0.weight" in body and all(k.split(".", 1)[0] in {"0", "1", "4", "5", "6", "7"} for k in body)


def _is_dinov2(body: dict) -> bool:
    return "pos_embed" in body and all(k.split(".", 1)[0] in _DINOV2_TOPS for k in body)


def _resnet_made(state: State) -> str:
    blocks = {k.split(".")[3] for k in state if k.startswith("backbone.body.6.")}
    arch = _RESNETS.get(("backbone.body.4.0.conv3.weight" in state, len(blocks)), "a ResNet")
    return arch + ("conv5" if any(k.startswith("backbone.body.7.") for k in state) else "conv4")


def _resnet(body: dict, named: bool) -> Tuple[State, str]:
    """A ResNet's keys (torchvision child names, or the indices of BoQ's Sequential) -> vgray's."""
    out = {}
    for key, value in body.items():
        top, rest = key.split(".", 1)
        out[f"backbone.body.{_RESNET_INDEX[top] if named else top}.{rest}"] = value
    return out, f"model.backbone={_resnet_made(out)}"


def _dinov2(body: dict, final_norm: bool) -> Tuple[State, str]:
    """The torch hub DINOv2's keys -> vgray's ``backbone.vit.`` (timm's names); without ``final_norm``
    its ``norm`` (unused by the publisher's forward) is left out, as vgray's network has none then."""
    out = {}
    for key, value in body.items():
        parts = key.split(".")
        if key == "mask_token" or (parts[0] == "norm" and not final_norm):
            continue
        if parts[0] == "blocks" and len(parts) > 3 and parts[2] == "mlp":
            parts[3] = {"w12": "fc1", "w3": "fc2"}.get(parts[3], parts[3])
        out["backbone.vit." + ".".join(parts)] = value
    width = body["pos_embed"].shape[-1]
    name, depth = _DINOV2.get(width, (f"(a DINOv2 of width {width})", None))
    blocks = len({k.split(".")[1] for k in body if k.startswith("blocks.")})
    made = [f"model.backbone={name}", f"model.trunc_te={'null' if blocks == depth else blocks}"]
    return out, ", ".join(made + [f"model.dinov2_final_norm={str(final_norm).lower()}"])


def _backbone(body: dict, final_norm: bool) -> Tuple[State, str]:
    if _is_dinov2(body):
        return _dinov2(body, final_norm)
    return _resnet(body, named=not _is_resnet_sequential(body))


def _claims(backbones: Tuple[str, ...], head_key: re.Pattern, needs: str) -> Callable[[dict, dict], bool]:
    def claims(obj: dict, state: dict) -> bool:
        split = _split(state, backbones)
        if split is None:
            return False
        body, head = split
        return (
            needs in head
            and all(head_key.match(k) for k in head)
            and (_is_resnet(body) or _is_resnet_sequential(body) or _is_dinov2(body))
        )

    return claims


def _head(head: dict) -> State:
    return {f"aggregation.{k}": v for k, v in head.items()}


# -- the three layouts ------------------------------------------------------------------------


def _mixvpr(obj: dict, state: dict, origin: str) -> Converted:
    split = _split(state, ("backbone.model.",))
    assert split is not None  # the layout claimed the file (_claims)
    body, head = split
    backbone, made = _backbone(body, final_norm=True)
    n = head["row_proj.weight"].shape[1]
    side = int(round(n**0.5))
    size = f"[{side}, {side}]" if side * side == n else f"[h, w] with h * w = {n}"
    depth = len({k.split(".")[1] for k in head if k.startswith("mix.")})
    ratio = head["mix.0.mix.1.weight"].shape[0] / n if depth else 1.0
    made += (
        f", model.aggregation=mixvpr, model.mixvpr_map_size={size}, "
        f"model.mixvpr_out_channels={head['channel_proj.weight'].shape[0]}, "
        f"model.mixvpr_out_rows={head['row_proj.weight'].shape[0]}, model.mixvpr_depth={depth}, "
        f"model.mixvpr_mlp_ratio={ratio:g}, model.fc_output_dim=null"
    )
    return Converted({**backbone, **_head(head)}, made=made)


def _salad(obj: dict, state: dict, origin: str) -> Converted:
    split = _split(state, ("backbone.model.",))
    assert split is not None  # the layout claimed the file (_claims)
    body, head = split
    backbone, made = _backbone(body, final_norm=True)
    made += (
        f", model.aggregation=salad, model.salad_clusters={head['score.3.weight'].shape[0]}, "
        f"model.salad_cluster_dim={head['cluster_features.3.weight'].shape[0]}, "
        f"model.salad_token_dim={head['token_features.2.weight'].shape[0]}, model.fc_output_dim=null"
    )
    return Converted({**backbone, **_head(head)}, made=made)


def _boq(obj: dict, state: dict, origin: str) -> Converted:
    split = _split(state, ("backbone.net.", "backbone.dino."))
    assert split is not None  # the layout claimed the file (_claims)
    body, head = split
    backbone, made = _backbone(body, final_norm=False)
    layers = len({k.split(".")[1] for k in head if k.startswith("boqs.")})
    queries = head["boqs.0.queries"].shape[1] if "boqs.0.queries" in head else "?"
    made += (
        f", model.aggregation=boq, model.boq_proj_channels={head['proj_c.weight'].shape[0]}, "
        f"model.boq_queries={queries}, model.boq_layers={layers}, "
        f"model.boq_row_dim={head['fc.weight'].shape[0]}, model.fc_output_dim=null"
    )
    return Converted({**backbone, **_head(head)}, made=made)


MIXVPR = Layout("MixVPR (amaralibey/MixVPR)", _claims(("backbone.model.",), _MIXVPR, "row_proj.weight"), _mixvpr)
SALAD = Layout("SALAD (serizba/salad)", _claims(("backbone.model.",), _SALAD, "dust_bin"), _salad)
BOQ = Layout(
    "BoQ (amaralibey/Bag-of-Queries)", _claims(("backbone.net.", "backbone.dino."), _BOQ, "proj_c.weight"), _boq
)
