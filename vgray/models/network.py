"""The network of the paper's Fig. 1: backbone -> aggregation -> optional FC (+L2).

Components are built from their registries and injected; ``features_dim`` is derived from what the
components declare and checked with a dry forward pass at build time, never written into the config.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vgray.errors import BadInput
from vgray.models.aggregations import AGGREGATIONS
from vgray.models.backbones import BACKBONES, Backbone
from vgray.models.pretrained import is_named_source, load_network_head, read_weights_file
from vgray.registry import add_config_check


@add_config_check
def check_components(cfg) -> None:
    """The aggregation can pool what the backbone gives, at an input size the backbone takes."""
    backbone = BACKBONES.info(cfg.model.backbone)
    aggregation = AGGREGATIONS.info(cfg.model.aggregation)
    if backbone["output"] not in aggregation["inputs"]:
        raise BadInput(
            f"model.aggregation={cfg.model.aggregation} cannot pool the {backbone['output']} of "
            f"model.backbone={cfg.model.backbone}; allowed: "
            + ", ".join(n for n in AGGREGATIONS.names() if backbone["output"] in AGGREGATIONS.info(n)["inputs"]))
    sizes = backbone.get("input_sizes")
    if sizes and tuple(cfg.data.image_size) not in sizes:
        raise BadInput(f"model.backbone={cfg.model.backbone} needs data.resize (times resize_fraction) in "
                       f"{sorted(sizes)}, not {list(cfg.data.image_size)}")


class GeoLocalizationNet(nn.Module):
    """Images (B, 3, H, W) -> descriptors (B, features_dim)."""

    def __init__(self, backbone: Backbone, aggregation: nn.Module, l2: str = "before_pool",
                 fc_output_dim: int | None = None, pooling: bool = True):
        super().__init__()
        self.backbone = backbone
        self.aggregation = aggregation
        # model.l2 applies to the pooling aggregations only; NetVLAD normalises on its own.
        self.l2 = l2 if pooling else "none"
        self.fc = nn.Linear(aggregation.output_dim, fc_output_dim) if fc_output_dim else None
        self.features_dim = fc_output_dim or aggregation.output_dim
        # A transformer's tokens go as a sequence to cls/seqpool, as a patch grid to the others.
        self.as_map = backbone.output == "tokens" and not getattr(aggregation, "takes_tokens", False)

    def forward_local(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's local features (B, C, h, w); a transformer's patch tokens as a grid."""
        x = self.backbone(images)
        return self.backbone.feature_map(x) if self.backbone.output == "tokens" else x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.backbone(images)
        if self.as_map:
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
        """Optimizer parameter groups: the trainable parameters at ``train.lr``, unless the
        aggregation asks for its own groups (CRN trains its reweighting layer at another rate)."""
        if hasattr(self.aggregation, "param_groups"):
            return self.aggregation.param_groups(self, train_cfg)
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def needs_init(self) -> bool:
        """True when the aggregation wants initialising from local features (NetVLAD's k-means)."""
        return bool(getattr(self.aggregation, "needs_init", False))

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
            raise RuntimeError(f"backbone {self.backbone.arch} declares {self.backbone.out_channels} "
                               f"channels but outputs {local.shape[1]}")
        if out.shape != (1, self.features_dim):
            raise RuntimeError(f"network declares {self.features_dim}-d descriptors but outputs {tuple(out.shape)}")


def build_model(model_cfg, load_weights: bool = True, image_size=None) -> GeoLocalizationNet:
    """The network that ``model_cfg`` (a :class:`vgray.config.ModelConfig`) describes.

    ``model.pretrained`` is ``none``, a named source (``imagenet``), or a file: a vgray checkpoint
    (``best.pt``: the whole network), a whole-network state dict, or a state dict of the backbone's
    torchvision source architecture. ``model.resume_from`` is a vgray checkpoint of this architecture
    whose weights start the network (loaded before a ``pretrained`` file, which wins); keys that the
    aggregation declares in ``fresh_on_resume`` may be absent from it (CRN's reweighting layer, when
    it starts from a NetVLAD checkpoint). ``load_weights=False`` skips any loading (for profiling).
    ``image_size`` (``cfg.data.image_size``) sizes the transformers (positional embedding, patch
    grid; default: their smallest allowed size); CNNs take any size and ignore it.
    """
    pretrained = model_cfg.pretrained if load_weights else "none"
    resume_from = model_cfg.resume_from if load_weights else None
    # A checkpoint to resume from holds the backbone's weights: no named source to download first.
    source = pretrained if is_named_source(pretrained) and resume_from is None else "none"
    extra = {}
    info = BACKBONES.info(model_cfg.backbone)
    if info["output"] == "tokens":  # transformers: sized at build time, truncated and frozen by config
        extra = dict(image_size=tuple(image_size or min(info["input_sizes"])),
                     trunc_te=model_cfg.trunc_te, freeze_te=model_cfg.freeze_te)
    backbone = BACKBONES.create(model_cfg.backbone, pretrained=source, **extra)
    agg_info = AGGREGATIONS.info(model_cfg.aggregation)
    aggregation = AGGREGATIONS.create(model_cfg.aggregation, backbone.out_channels, model_cfg)
    model = GeoLocalizationNet(backbone, aggregation, l2=model_cfg.l2,
                               fc_output_dim=model_cfg.fc_output_dim, pooling=agg_info["pooling"])
    model.check_shapes(extra.get("image_size", (64, 64)))
    if source != "none":
        load_network_head(model, model_cfg)  # GeM's p and whitening of the off-the-shelf GeM networks
    if resume_from is not None:
        _load_resume(model, resume_from)
    if pretrained != "none" and not is_named_source(pretrained):
        _load_file(model, pretrained)
    if hasattr(backbone, "init_aggregation"):  # CCT hands its ImageNet SeqPool layer to seqpool
        backbone.init_aggregation(model.aggregation)
    return model


def read_checkpoint(path: str, key: str) -> dict:
    """A vgray checkpoint (``best.pt``/``last.pt``: ``model`` and ``config``) named by config ``key``;
    memory-mapped, so that reading only its config is cheap."""
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"{key}={path}: no such file; expected the best.pt or last.pt of a vgray train run")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BadInput(f"{key}={path} cannot be read as a vgray checkpoint ({first[:160]})")
    if not (isinstance(obj, dict) and isinstance(obj.get("model"), dict) and isinstance(obj.get("config"), dict)):
        raise BadInput(f"{key}={path} is not a vgray checkpoint (no model and config); expected the best.pt "
                       f"or last.pt of a vgray train run")
    return obj


def _check_fits(model: GeoLocalizationNet, state: dict, what: str, made_for: dict, fresh=()) -> None:
    """Raise BadInput unless ``state`` holds every key of ``model`` (but those starting with one of
    ``fresh``), nothing else, and the same shapes."""
    own = model.state_dict()
    missing = sorted(k for k in set(own) - set(state) if not k.startswith(tuple(fresh)))
    unexpected = sorted(set(state) - set(own))
    shape = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shape:
        made = (f" (made for backbone={made_for.get('backbone')}, aggregation={made_for.get('aggregation')})"
                if made_for else "")
        culprit = (f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}" if unexpected
                   else f"{shape[0]} has shape {tuple(state[shape[0]].shape)}")
        raise BadInput(f"{what} does not fit this network{made}: {culprit}")


def _load_resume(model: GeoLocalizationNet, path: str) -> None:
    ck = read_checkpoint(path, "model.resume_from")
    fresh = tuple(f"aggregation.{k}" for k in getattr(model.aggregation, "fresh_on_resume", ()))
    _check_fits(model, ck["model"], f"model.resume_from={path}", ck["config"].get("model", {}), fresh)
    model.load_state_dict(ck["model"], strict=not fresh)


def _load_file(model: GeoLocalizationNet, path: str) -> None:
    obj = read_weights_file(path)
    state = obj.get("model", obj) if isinstance(obj.get("model"), dict) else obj
    if any(k.startswith("backbone.") for k in state):
        made_for = obj.get("config", {}).get("model", {}) if isinstance(obj.get("config"), dict) else {}
        _check_fits(model, state, f"checkpoint {path}", made_for)
        model.load_state_dict(state)
    else:
        model.backbone.load_source_state_dict(state, str(Path(path)))
