"""The paper's transformer networks (gmberton/deep-visual-geo-localization-benchmark, its
model/network.py and model/cct/), renamed to vgray's ``vit`` and ``cct384``: see
:mod:`vgray.models.foreign` for the layouts.

ViT-B/16: the paper wraps HuggingFace's ``ViTModel`` in its ``VitWrapper`` (``backbone.vit_model.…``)
and pools ``last_hidden_state``, the tokens after the final LayerNorm: the patch tokens for gem and
netvlad, the class token for anything else (cls; the aggregation is then an identity). The
architecture is timm's in other names: ``embeddings.cls_token``, ``embeddings.position_embeddings``
and ``embeddings.patch_embeddings.projection`` are ``cls_token``, ``pos_embed`` and
``patch_embed.proj``; ``encoder.layer.N`` is ``blocks.N``, where the separate
``attention.attention.{query,key,value}`` are stacked, in that order, into ``attn.qkv`` (timm splits
its rows so), ``attention.output.dense`` is ``attn.proj``, ``intermediate.dense`` and
``output.dense`` are ``mlp.fc1`` and ``mlp.fc2``, ``layernorm_before``/``layernorm_after`` are
``norm1``/``norm2``; the final ``layernorm`` (kept: ``last_hidden_state`` is after it) is ``norm``.
HuggingFace's tanh ``pooler.dense``, which the paper never used, is left out. HuggingFace's
LayerNorms have eps 1e-12 where timm's have 1e-6: descriptors agree to about 1e-6.

CCT-14/7x2: the paper's copy of the CCT authors' model (``backbone.tokenizer.conv_layers.N.0``,
``backbone.classifier.{positional_emb, blocks.N…, norm, attention_pool}``, without the ImageNet
classifier ``fc``), in the authors' names, which vgray's cct reads from their own files too: each
block's ``pre_norm``, ``self_attn.{qkv,proj}``, ``linear1``, ``norm1``, ``linear2`` are
``norm_attn``, ``attn.{qkv,proj}``, ``mlp.fc1``, ``norm_mlp``, ``mlp.fc2``. It pools the first
token (cls), with ``classifier.attention_pool`` (seqpool, vgray's ``aggregation.attention``) or
hands all tokens to gem and netvlad. ``attention_pool`` is in every file, whatever it pooled with:
it is loaded when the network pools with seqpool, else left out.

Both: the paper cut the encoder before training (``--trunc_te``; its 0 meant no cut), so the blocks
in the file are ``model.trunc_te``. The gem and netvlad heads and the FC are in the paper's names
(:func:`vgray.models.foreign.paper.paper_head`); its NetVLAD on tokens is a Conv1d, whose weight
(K, C, 1) becomes the 1 x 1 Conv2d's (K, C, 1, 1). One arithmetic difference stays: the paper's
``l2=before_pool`` ``L2Norm`` got the token sequence (B, T, C) and normalised its dim 1, the tokens,
where vgray normalises the channels: such a gem file is refused (vgray cannot give its descriptors).
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple

import torch

from vgray.errors import BadInput
from vgray.models.foreign.base import Converted, Layout, State
from vgray.models.foreign.paper import paper_head

VIT = "backbone.vit_model."
CCT = ("backbone.tokenizer.conv_layers.", "backbone.classifier.")
# Backbone keys of these layouts only: the "vgray network state dict" layout leaves them alone.
PREFIXES = (VIT, *CCT)
VIT_DEPTH, CCT_DEPTH = 12, 14

_VIT_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_VIT_BLOCK = {
    "layernorm_before": "norm1",
    "attention.output.dense": "attn.proj",
    "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}
_QKV = ("query", "key", "value")
_VIT_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")

# The CCT authors' names (the paper's copy keeps them) -> vgray's cct.
_CCT_TOP = {
    "tokenizer.conv_layers.0.0.weight": "tokenizer.0.weight",
    "tokenizer.conv_layers.1.0.weight": "tokenizer.3.weight",
    "classifier.positional_emb": "pos_embed",
    "classifier.norm.weight": "norm.weight",
    "classifier.norm.bias": "norm.bias",
}
_CCT_BLOCK = {
    "pre_norm": "norm_attn",
    "self_attn.qkv": "attn.qkv",
    "self_attn.proj": "attn.proj",
    "linear1": "mlp.fc1",
    "norm1": "norm_mlp",
    "linear2": "mlp.fc2",
}
_CCT_LAYER = re.compile(r"^classifier\.blocks\.(\d+)\.(.+)\.(weight|bias)$")
_SEQPOOL = "classifier.attention_pool."


def vit_to_timm(hf: State) -> State:
    """A HuggingFace ``ViTModel`` state dict in timm's ViT names (pooler left out, query, key and
    value stacked into qkv). A key of neither layout keeps its name, to be reported as unexpected."""
    out: State = {}
    qkv: Dict[Tuple[str, str], Dict[str, torch.Tensor]] = {}
    for key, value in hf.items():
        if key.startswith("pooler."):
            continue
        m = _VIT_LAYER.match(key)
        module = m.group(2) if m else ""
        if key in _VIT_TOP:
            out[_VIT_TOP[key]] = value
        elif module.startswith("attention.attention.") and module.rsplit(".", 1)[1] in _QKV:
            assert m is not None  # module is m's group
            qkv.setdefault((m.group(1), m.group(3)), {})[module.rsplit(".", 1)[1]] = value
        elif module in _VIT_BLOCK:
            assert m is not None  # module is m's group
            out[f"blocks.{m.group(1)}.{_VIT_BLOCK[module]}.{m.group(3)}"] = value
        else:
            out[key] = value
    for (block, param), parts in qkv.items():
        if len(parts) == len(_QKV):
            out[f"blocks.{block}.attn.qkv.{param}"] = torch.cat([parts[name] for name in _QKV])
        else:  # not all three: left in HuggingFace's names, reported as unexpected
            out.update({f"encoder.layer.{block}.attention.attention.{name}.{param}": v for name, v in parts.items()})
    return out


def cct_to_vgray(cct: State) -> Tuple[State, State]:
    """A state dict in the CCT authors' names (the paper's backbone without its ``backbone.``) ->
    (vgray's cct names, the SeqPool layer as ``weight``/``bias``). Unknown keys keep their names."""
    own, pool = {}, {}
    for key, value in cct.items():
        m = _CCT_LAYER.match(key)
        if key in _CCT_TOP:
            own[_CCT_TOP[key]] = value
        elif key.startswith(_SEQPOOL):
            pool[key[len(_SEQPOOL) :]] = value
        elif m and m.group(2) in _CCT_BLOCK:
            own[f"blocks.{m.group(1)}.{_CCT_BLOCK[m.group(2)]}.{m.group(3)}"] = value
        else:
            own[key] = value
    return own, pool


def _head(state: dict) -> Optional[Converted]:
    """The paper's aggregation and FC in vgray's names (None: a key that is not one of them)."""
    head = paper_head(state)
    if head is None:
        return None
    conv = head.state.get("aggregation.conv.weight")
    if conv is None or conv.dim() != 3:
        return head
    return Converted({**head.state, "aggregation.conv.weight": conv.unsqueeze(-1)}, head.l2)


def _only(state: dict, prefixes: Tuple[str, ...]) -> bool:
    backbone = [k for k in state if k.startswith("backbone.")]
    return bool(backbone) and all(k.startswith(prefixes) for k in backbone) and _head(state) is not None


def _is_paper_vit(obj: dict, state: dict) -> bool:
    return _only(state, (VIT,))


def _is_paper_cct(obj: dict, state: dict) -> bool:
    return _only(state, CCT)


def _reproducible(head: Optional[Converted], origin: str) -> Converted:
    """The head, unless it is GeM after the paper's token-wise L2Norm, which vgray cannot reproduce."""
    assert head is not None  # a file these layouts claim has the paper's head (_only)
    if head.l2 == "before_pool":
        raise BadInput(
            f"model.pretrained={origin}: the paper's transformer + GeM with its L2Norm before the pool "
            f"normalised over the tokens, not the channels, so vgray cannot give its descriptors; "
            f"allowed: its transformer files with cls, seqpool, netvlad, or gem with l2 after_pool or none"
        )
    return head


def _paper_vit(obj: dict, state: dict, origin: str) -> Converted:
    head = _reproducible(_head(state), origin)
    timm_state = vit_to_timm({k[len(VIT) :]: v for k, v in state.items() if k.startswith(VIT)})
    return Converted({**{f"backbone.vit.{k}": v for k, v in timm_state.items()}, **head.state}, head.l2)


def _paper_cct(obj: dict, state: dict, origin: str) -> Converted:
    head = _reproducible(_head(state), origin)
    own, pool = cct_to_vgray({k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")})
    converted = {f"backbone.{k}": v for k, v in own.items()}
    if any(k.startswith("aggregation.") for k in head.state):  # gem or netvlad: SeqPool unused
        return Converted({**converted, **head.state}, head.l2)
    converted.update((f"aggregation.attention.{k}", v) for k, v in pool.items())
    return Converted({**converted, **head.state}, head.l2, optional=("aggregation.attention.",))


def token_backbone(state: State) -> Optional[str]:
    """``vit`` or ``cct384`` for a converted state dict (vgray's names) of those, else None."""
    if "backbone.vit.cls_token" in state:
        return "vit"
    if "backbone.tokenizer.0.weight" in state:
        return "cct384"
    return None


def token_keys(state: State) -> List[str]:
    """The transformer keys a converted state dict was made for: ``model.trunc_te`` (the blocks it
    holds) and, for ViT, ``data.resize`` (from its positional embedding)."""
    backbone = token_backbone(state)
    if backbone is None:
        return []
    prefix = "backbone.vit.blocks." if backbone == "vit" else "backbone.blocks."
    blocks = len({k[len(prefix) :].split(".", 1)[0] for k in state if k.startswith(prefix)})
    full = VIT_DEPTH if backbone == "vit" else CCT_DEPTH
    keys = [f"model.trunc_te={blocks if blocks < full else 'null'}"]
    pos = state.get("backbone.vit.pos_embed")
    if pos is not None and pos.dim() == 3:
        side = round((pos.shape[1] - 1) ** 0.5) * 16
        keys.append(f"data.resize=[{side},{side}]")
    return keys


PAPER_VIT = Layout("the paper's ViT (HuggingFace ViTModel in its VitWrapper)", _is_paper_vit, _paper_vit)
PAPER_CCT = Layout("the paper's CCT (cct_14_7x2_384)", _is_paper_cct, _paper_cct)
