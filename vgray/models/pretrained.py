"""Pretrained weights as data, apart from the architectures (as timm's pretrained configs).

A record says where a backbone's weights come from, what they were trained with (input mean and
std) and under which licence. ``load_state_dict`` turns ``model.pretrained`` into a state dict of
the *source* architecture (the torchvision model before truncation): downloads are cached by torch
hub and verified by hash; offline, the cached file is used; with neither, it fails with one line
that says where to put the file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

import torch

from vgray.errors import BadInput

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class WeightsRecord:
    """Where a source architecture's weights come from."""
    url: str
    sha256_prefix: str  # torchvision's file names carry the first hex digits of the SHA-256
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    licence: str = "BSD-3-Clause (torchvision); ImageNet terms of access"


_TV = "https://download.pytorch.org/models/"
# (source architecture, pretrained name) -> record. Later sources (places, gldv2) add rows here.
RECORDS: Dict[tuple, WeightsRecord] = {
    ("alexnet", "imagenet"): WeightsRecord(_TV + "alexnet-owt-7be5be79.pth", "7be5be79"),
    ("vgg16", "imagenet"): WeightsRecord(_TV + "vgg16-397923af.pth", "397923af"),
    ("resnet18", "imagenet"): WeightsRecord(_TV + "resnet18-f37072fd.pth", "f37072fd"),
    ("resnet50", "imagenet"): WeightsRecord(_TV + "resnet50-0676ba61.pth", "0676ba61"),
    ("resnet101", "imagenet"): WeightsRecord(_TV + "resnet101-63fe2227.pth", "63fe2227"),
}
NAMED_SOURCES = sorted({name for _, name in RECORDS})


def is_named_source(pretrained: str) -> bool:
    return pretrained in NAMED_SOURCES


def record(arch: str, pretrained: str) -> WeightsRecord:
    try:
        return RECORDS[(arch, pretrained)]
    except KeyError:
        have = sorted(name for a, name in RECORDS if a == arch)
        raise BadInput(f"model.pretrained={pretrained}: no such weights for {arch}; "
                       f"available: none, {', '.join(have)}, or a weights file")


def _download(rec: WeightsRecord) -> Path:
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    target = checkpoints / os.path.basename(rec.url)
    if target.exists():
        return target
    checkpoints.mkdir(parents=True, exist_ok=True)
    try:
        # torch hub writes to a temporary file and moves it into place after the hash check.
        torch.hub.download_url_to_file(rec.url, str(target), hash_prefix=rec.sha256_prefix, progress=False)
    except Exception as exc:  # no network, refused, or a bad hash: say where the file goes
        raise BadInput(f"cannot download {rec.url} ({type(exc).__name__}); put that file at {target} "
                       f"or set model.pretrained to a local weights file")
    return target


def read_weights_file(path: str | os.PathLike) -> dict:
    """A weights file or vgray checkpoint, read with ``weights_only=True`` (no code runs)."""
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"model.pretrained={path}: no such file; allowed: none, "
                       f"{', '.join(NAMED_SOURCES)}, or a weights file")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BadInput(f"weights file {p} cannot be read as a torch checkpoint ({first[:160]})")
    if not isinstance(obj, dict):
        raise BadInput(f"weights file {p} holds a {type(obj).__name__}, not a state dict or vgray checkpoint")
    return obj


def source_state_dict(arch: str, pretrained: str) -> Optional[dict]:
    """State dict of the source architecture for a named source, or None for ``none``."""
    if pretrained == "none":
        return None
    path = _download(record(arch, pretrained))
    return read_weights_file(path)
