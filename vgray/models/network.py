"""The network of the paper's Fig. 1: backbone -> aggregation -> optional FC (+L2).

Components are built from their registries and injected; what each takes and gives is declared by
its class (:mod:`vgray.models.components`). ``features_dim`` is derived from those declarations and
checked with a dry forward pass at build time, never written into the config.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
from pathlib import Path
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from vgray.checkpoint import load_fitting, made_for, read_checkpoint
from vgray.errors import BadInput, memory_failure, shown
from vgray.models.aggregations import AGGREGATIONS  # importing the packages fills the registries
from vgray.models.backbones import BACKBONES
from vgray.models.components import Aggregation, Backbone
from vgray.models.foreign import load_network_file
from vgray.models.pretrained import is_named_source, load_network_head, read_pretrained_file
from vgray.registry import add_config_check


@add_config_check
def check_components(cfg) -> None:
    """The aggregation can pool what the backbone gives, at an input size the backbone takes."""
    check_pairing(cfg.model.backbone, cfg.model.aggregation, cfg.data.image_size)


def fitting_backbones(aggregation: str) -> list:
    """The backbones ``aggregation`` can pool, read from what each declares: the backbone's
    ``output`` among the aggregation's ``inputs``, and every fact in its ``needs`` registered."""
    kind = AGGREGATIONS.type_of(aggregation)
    return [
        name
        for name in BACKBONES.names()
        if BACKBONES.type_of(name).output in kind.inputs and all(BACKBONES.info(name).get(f) for f, _ in kind.needs)
    ]


def check_pairing(backbone: str, aggregation: str, image_size=None) -> None:
    """BadInput naming ``model.aggregation`` and the backbones it fits when ``aggregation`` cannot
    pool what ``backbone`` gives (its declared ``output``, the facts the aggregation ``needs``), or
    when ``image_size`` is not one the backbone takes; run at config load and again when the
    network is built, so that no command reaches a forward pass with a pair that cannot work."""
    kind = AGGREGATIONS.type_of(aggregation)
    info = BACKBONES.info(backbone)
    for fact, gives in kind.needs:
        if not info.get(fact):
            raise BadInput(
                f"model.aggregation={aggregation} needs {gives}, which model.backbone={backbone} lacks; allowed: "
                + ", ".join(fitting_backbones(aggregation))
            )
    output = info["type"].output
    if output not in kind.inputs:
        raise BadInput(
            f"model.aggregation={aggregation} cannot pool the {output} of "
            f"model.backbone={backbone}; allowed: "
            + ", ".join(n for n in AGGREGATIONS.names() if output in AGGREGATIONS.type_of(n).inputs)
            + f" (model.aggregation={aggregation} fits model.backbone: {', '.join(fitting_backbones(aggregation))})"
        )
    sizes = info.get("input_sizes")
    if sizes and image_size is not None and tuple(image_size) not in sizes:
        raise BadInput(
            f"model.backbone={backbone} needs data.resize (times resize_fraction) in "
            f"{sorted(sizes)}, not {list(image_size)}"
        )


@add_config_check
def check_sync_bn(cfg) -> None:
    """``train.sync_bn`` needs BatchNorm layers to synchronise (ViTs, DINOv2 and VGG-16 have none)."""
    if cfg.train.sync_bn and not _has_batchnorm(
        cfg.model.backbone, cfg.model.aggregation, json.dumps(dataclasses.asdict(cfg.model), sort_keys=True)
    ):
        raise BadInput(
            f"train.sync_bn=true: model.backbone={cfg.model.backbone} with model.aggregation="
            f"{cfg.model.aggregation} has no BatchNorm layer to synchronise; set train.sync_bn=false"
        )


@functools.lru_cache(maxsize=32)
def _has_batchnorm(backbone: str, aggregation: str, model_json: str) -> bool:
    from vgray.config import ModelConfig

    model_cfg = ModelConfig(**json.loads(model_json))
    with torch.device("meta"):
        backbone_net = BACKBONES.create(backbone, pretrained="none", **_backbone_extra(model_cfg, None))
        aggregation_net = AGGREGATIONS.create(aggregation, backbone_net.out_channels, model_cfg)
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for net in (backbone_net, aggregation_net) for m in net.modules()
    )


# The keys that size the layers an aggregation keeps from the checkpoint it starts from.
_START_KEYS = ("netvlad_clusters", "fc_output_dim")


def check_start(model_cfg, made: Optional[dict], source: str) -> None:
    """Refuse to train an aggregation that declares ``starts_from`` (CRN: ``netvlad``) unless it
    starts from a checkpoint of that aggregation and the same backbone and sizes.

    ``model_cfg`` is the config's ``model`` section; ``made`` the ``model`` section of the starting
    checkpoint's config (a dict), or None when there is no checkpoint to start from; ``source``
    names that checkpoint in messages (``"model.resume_from=best.pt"``). Other aggregations pass.
    """
    m = model_cfg
    start = AGGREGATIONS.type_of(m.aggregation).starts_from
    if start is None:
        return
    if made is None:
        raise BadInput(
            f"model.aggregation={m.aggregation} starts from a {start} checkpoint: set model.resume_from "
            f"to the best.pt of a vgray train run with model.aggregation={start}, "
            f"model.backbone={m.backbone}"
        )
    if made.get("aggregation") != start or made.get("backbone") != m.backbone:
        raise BadInput(
            f"{source} was trained with model.aggregation={made.get('aggregation')}, "
            f"model.backbone={made.get('backbone')}; {m.aggregation} needs a {start} checkpoint of "
            f"model.backbone={m.backbone}"
        )
    for key in _START_KEYS:
        if made.get(key) != getattr(m, key):
            have, want = json.dumps(made.get(key)), json.dumps(getattr(m, key))
            raise BadInput(
                f"{source} has model.{key}={have} but this config {want}; {m.aggregation} keeps "
                f"the layers it starts from, so set model.{key}={have}"
            )


class GeoLocalizationNet(nn.Module):
    """Images (B, 3, H, W) -> descriptors (B, features_dim)."""

    def __init__(
        self, backbone: Backbone, aggregation: Aggregation, l2: str = "before_pool", fc_output_dim: int | None = None
    ):
        super().__init__()
        self.backbone = backbone
        self.aggregation = aggregation
        # model.l2 applies to the pooling aggregations only; NetVLAD normalises on its own.
        self.l2 = l2 if aggregation.pooling else "none"
        self.fc = nn.Linear(aggregation.output_dim, fc_output_dim) if fc_output_dim else None
        self.features_dim = fc_output_dim or aggregation.output_dim

    def forward_local(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's local features (B, C, h, w); a transformer's patch tokens as a grid."""
        return self.backbone.feature_map(self.backbone(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.backbone(images)
        # A transformer's tokens go as a sequence to cls/seqpool, as a patch grid to the others.
        if not self.aggregation.takes_tokens:
            x = self.backbone.feature_map(x)
        if self.l2 == "before_pool":
            x = F.normalize(x, p=2, dim=1)
        x = self.aggregation(x)
        if self.l2 == "after_pool":
            x = F.normalize(x, p=2, dim=1)
        if self.fc is not None:
            x = F.normalize(self.fc(x), p=2, dim=1)
        return x

    @property
    def mean(self):
        return self.backbone.mean

    @property
    def std(self):
        return self.backbone.std

    def param_groups(self, train_cfg):
        """Optimizer parameter groups, as the aggregation declares them (default: the trainable
        parameters at ``train.lr``; CRN trains its reweighting layer at another rate)."""
        return self.aggregation.param_groups(self, train_cfg)

    def needs_init(self) -> bool:
        """True when the aggregation wants initialising from local features (NetVLAD's k-means)."""
        return self.aggregation.needs_init

    def check_shapes(self, size=(64, 64)) -> None:
        """A dry forward pass: the declared channels and descriptor size must be what comes out."""
        was_training = self.training
        self.eval()
        with torch.no_grad():
            x = torch.zeros(1, 3, *size)
            local = self.forward_local(x)
            out = self(x)
        self.train(was_training)
        if local.shape[1] != self.backbone.out_channels:
            raise RuntimeError(
                f"backbone {self.backbone.arch} declares {self.backbone.out_channels} "
                f"channels but outputs {local.shape[1]}"
            )
        if out.shape != (1, self.features_dim):
            raise RuntimeError(f"network declares {self.features_dim}-d descriptors but outputs {tuple(out.shape)}")


def build_model(model_cfg, load_weights: bool = True, image_size=None) -> GeoLocalizationNet:
    """The network that ``model_cfg`` (a :class:`vgray.config.ModelConfig`) describes.

    ``model.pretrained`` is ``none``, a named source (``imagenet``), or a file: a vgray checkpoint
    (``best.pt``: the whole network), a whole-network state dict, or a state dict of the backbone's
    source architecture. ``model.resume_from`` is a vgray checkpoint of this architecture whose
    weights start the network (loaded before a ``pretrained`` file, which wins); an aggregation that
    declares ``starts_from`` (CRN) needs one of that aggregation (:func:`check_start`), and its keys
    in ``fresh_on_resume`` may be absent from it. ``load_weights=False`` skips any loading (for
    profiling). ``image_size`` (``cfg.data.image_size``) sizes the transformers (positional
    embedding, patch grid; default: their smallest allowed size); CNNs take any size and ignore it.
    """
    pretrained = model_cfg.pretrained if load_weights else "none"
    resume_from = model_cfg.resume_from if load_weights else None
    # A checkpoint to resume from holds the backbone's weights: no named source to download first.
    source = pretrained if is_named_source(pretrained) and resume_from is None else "none"
    check_pairing(model_cfg.backbone, model_cfg.aggregation)  # before anything is built or loaded
    extra = _backbone_extra(model_cfg, image_size)
    with _fits_memory(model_cfg):
        backbone = BACKBONES.create(model_cfg.backbone, pretrained=source, **extra)
        aggregation = AGGREGATIONS.create(model_cfg.aggregation, backbone.out_channels, model_cfg)
        model = GeoLocalizationNet(backbone, aggregation, l2=model_cfg.l2, fc_output_dim=model_cfg.fc_output_dim)
    # CNNs take any size: a tiny dry pass, unless the aggregation is sized for the input's map (MixVPR).
    model.check_shapes(
        extra.get("image_size") or (tuple(image_size) if image_size and aggregation.fixed_grid else (64, 64))
    )
    if source != "none":
        load_network_head(model, model_cfg)  # GeM's p and whitening of the off-the-shelf GeM networks
    if resume_from is not None:
        _load_resume(model, model_cfg, resume_from)
    if pretrained != "none" and not is_named_source(pretrained):
        _load_file(model, pretrained)
    backbone.init_aggregation(model.aggregation, model_cfg.aggregation)  # CCT's ImageNet SeqPool layer
    return model


@contextlib.contextmanager
def _fits_memory(model_cfg) -> Iterator[None]:
    """The network's layers are built inside: a size the config asks for that this machine cannot
    hold (``model.fc_output_dim``, ``model.netvlad_clusters`` near 2**31) is refused in one line
    naming the model keys set away from their defaults, not left as an allocator's traceback."""
    try:
        yield
    except (MemoryError, RuntimeError) as exc:
        size = memory_failure(exc)
        if size is None:
            raise
        keys = ["backbone", "aggregation"] + [
            f.name
            for f in dataclasses.fields(model_cfg)
            if f.name not in ("backbone", "aggregation")
            and f.default is not dataclasses.MISSING
            and getattr(model_cfg, f.name) != f.default
            and isinstance(getattr(model_cfg, f.name), (int, float, list))
        ]
        said = ", ".join(f"model.{k}={_plain(getattr(model_cfg, k))}" for k in keys)
        raise BadInput(f"{said}: the network does not fit in this machine's memory{size}; give smaller sizes") from None


def _plain(value: object) -> str:
    return value if isinstance(value, str) else shown(value, 40)


def _backbone_extra(model_cfg, image_size) -> dict:
    """What a transformer backbone is built with (sized, truncated and frozen by the config); CNNs: nothing."""
    info = BACKBONES.info(model_cfg.backbone)
    if info["type"].output != "tokens":
        return {}
    extra = dict(
        image_size=tuple(image_size or min(info.get("input_sizes") or [(224, 224)])),
        trunc_te=model_cfg.trunc_te,
        freeze_te=model_cfg.freeze_te,
    )
    extra.update((key, getattr(model_cfg, key)) for key in info.get("model_keys", ()))  # DINOv2's train_blocks
    return extra


def _made(made: dict) -> str:
    return f" (made for backbone={made.get('backbone')}, aggregation={made.get('aggregation')})" if made else ""


def _load_resume(model: GeoLocalizationNet, model_cfg, path: str) -> None:
    ck = read_checkpoint(path, "model.resume_from")
    made = made_for(ck)
    check_start(model_cfg, made, f"model.resume_from={path}")
    fresh = tuple(f"aggregation.{prefix}*" for prefix in model.aggregation.fresh_on_resume)
    load_fitting(model, ck["model"], f"model.resume_from={path} does not fit this network{_made(made)}", fresh)


def _load_file(model: GeoLocalizationNet, path: str) -> None:
    # The file's layout (vgray's, the paper's, CosPlace's, a backbone's) is read from its keys.
    load_network_file(model, read_pretrained_file(path), str(Path(path)))
