"""The paper's networks (gmberton/deep-visual-geo-localization-benchmark) and CosPlace / EigenPlaces,
which share its ``backbone.N…`` names: see :mod:`vgray.models.foreign` for the layouts."""

from __future__ import annotations

import re
from typing import Optional

import torch

from vgray.errors import BadInput
from vgray.models.foreign.base import Converted, Layout, State

DIGIT_BACKBONE = re.compile(r"^backbone\.(\d+)\.(.+)$")
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
_GMBERTON_HEAD = {
    "aggregation.1.p": "aggregation.p",
    "aggregation.3.weight": "fc.weight",
    "aggregation.3.bias": "fc.bias",
}


def paper_head(state: dict) -> Optional[Converted]:
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
        inner = key[len(prefix) :]
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
    return {f"backbone.body.{m.group(1)}.{m.group(2)}": v for k, v in state.items() if (m := DIGIT_BACKBONE.match(k))}


def _is_paper(obj: dict, state: dict) -> bool:
    return any(DIGIT_BACKBONE.match(k) for k in state) and paper_head(state) is not None


def _paper(obj: dict, state: dict, origin: str) -> Converted:
    head = paper_head(state)
    assert head is not None  # a file this layout claims has the paper's head (_is_paper)
    for part, want in (("weight", 1.0), ("bias", 0.0)):
        acc = next((v for k, v in state.items() if k.endswith(f"crn.acc_w.{part}")), None)
        if acc is not None and not torch.all(acc == want):
            raise BadInput(
                f"model.pretrained={origin}: its CRN accumulation crn.acc_w.{part} is not the fixed "
                f"{want:g} of the paper's code; vgray's CRN sums the context filters with weight 1"
            )
    return Converted({**_cnn_backbone(state), **head.state}, head.l2)


def _is_gmberton(obj: dict, state: dict) -> bool:
    head = {k for k in state if k.startswith("aggregation.")}
    return any(DIGIT_BACKBONE.match(k) for k in state) and head == set(_GMBERTON_HEAD)


def _gmberton(obj: dict, state: dict, origin: str) -> Converted:
    head = {_GMBERTON_HEAD[k]: v for k, v in state.items() if k in _GMBERTON_HEAD}
    return Converted({**_cnn_backbone(state), **head}, "before_pool")


PAPER = Layout("the paper's (deep-visual-geo-localization-benchmark)", _is_paper, _paper)
COSPLACE = Layout("CosPlace/EigenPlaces", _is_gmberton, _gmberton)
