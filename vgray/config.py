"""One nested, typed config for the whole pipeline.

Sections are named after the pipeline blocks of the paper's Fig. 1: ``data``, ``model``, ``train``,
``test``, plus ``seed`` (and the execution keys ``device`` and ``precision``). Every key has a
default (the paper's protocol) and a one-line description (``vgray eval --help-config``).

A config is built once, from defaults, an optional YAML file and ``--set key=value`` overrides,
then validated as a whole: unknown keys, values of the wrong type, out-of-range values and the
paper's illegal combinations raise :class:`~vgray.errors.BadInput` naming the dotted key, before
anything runs. Derived values (descriptor size, FLOPs) are computed by the model, never written back
into the config: the dataclasses are frozen.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import re
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, Hashable, Iterable, List, Optional, Tuple, Type, TypeVar, Union, cast

import yaml

from vgray import registry, values
from vgray.errors import BadInput, shown
from vgray.registry import AGGREGATIONS, BACKBONES, LOSSES, MINING, PLACE_LOSSES, PLACE_MINERS, TEST_METHODS

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_Section = TypeVar("_Section", bound="DataclassInstance")


def _key(default: Any, help: str, **checks: Any) -> Any:
    """A config field: its default, one line of help, and optional checks.

    ``choices`` is a list of allowed values, or a component registry (:mod:`vgray.registry`): its
    names, checked once its package is imported (the family's own checks run in
    :func:`cross_check`); ``positive`` requires every number in the value to be > 0; ``range`` is an
    inclusive ``(low, high)`` pair; ``length`` the number of values of a list.
    """
    meta = {"help": help, **checks}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: json.loads(json.dumps(default)), metadata=meta)
    return field(default=default, metadata=meta)


# The largest side data.resize takes: 16384 pixels (one float image that size is 3 GiB).
MAX_SIDE = 16384


@dataclass(frozen=True)
class DataConfig:
    root: str = _key(
        "synthetic:tiny",
        "dataset folder in the VG format, synthetic:tiny|small|large, or ground-truth "
        "lists: FOLDER, FOLDER/NAME or IMAGES::LISTS (docs: the datasets guide)",
    )
    layout: str = _key(
        "vg",
        "layout of data.root: vg (the VG format), gsv_cities (Dataframes/<city>.csv + "
        "Images/<city>/; training with train.regime=places only)",
        choices=["vg", "gsv_cities"],
    )
    val_root: Optional[str] = _key(
        None,
        "VG-format dataset whose val split validates training (null: data.root's; "
        "required with data.layout=gsv_cities)",
    )
    msls_queries: str = _key(
        "im2im",
        "val/test queries of MSLS's raw layout (train_val/<city>/): im2im (MSLS's "
        "image-to-image set, 740 on its val), all (every non-panorama query, ~11k, "
        "as the VG downloader formats it); docs: the datasets guide, MSLS",
        choices=["im2im", "all"],
    )
    resize: List[int] = _key(
        [480, 640], "[H, W] of train and test images, 1 to 16384 pixels a side", range=(1, MAX_SIDE), length=2
    )
    resize_fraction: float = _key(
        1.0, "scale of both sides of resize (the paper's resolution study)", range=(1e-3, 1.0)
    )
    resize_order: str = _key(
        "paper",
        "order of resizing and normalising test, validation, mining-cache and PCA "
        "images: paper (normalise the full image, then resize the float tensor, "
        "antialiased, on the device where images are decoded: the paper's code), pil "
        "(resize the PIL image, then normalise: vgray before 2026-12); training "
        "triplets resize with PIL either way, as the paper's code does",
        choices=["paper", "pil"],
    )
    num_workers: Optional[int] = _key(
        None, "image-loading worker processes (null: one per CPU, at most 8)", range=(0, 256)
    )
    skip_corrupt: bool = _key(False, "skip unreadable images (reported by path) instead of stopping")
    decode: str = _key(
        "auto",
        "how extraction decodes images: torchvision (JPEG bytes decoded in batches on the "
        "device, nvjpeg on a GPU, then resized and normalised there; hard-resize "
        "transforms only), pil (in loader workers), auto (torchvision on a CUDA device)",
        choices=["auto", "pil", "torchvision"],
    )
    ray_threshold: int = _key(
        20000,
        "on Ray (sweep trials, vgray train --address), extract sets of more images "
        "than this through Ray Data, smaller ones in-process (0: always Ray Data)",
        range=(0, 2**31 - 1),
    )

    @property
    def image_size(self) -> Tuple[int, ...]:
        """``(H, W)`` fed to the network: ``resize`` scaled by ``resize_fraction``."""
        return tuple(max(1, round(s * self.resize_fraction)) for s in self.resize)


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = _key("resnet18conv4", "backbone (registry name)", choices=BACKBONES)
    aggregation: str = _key("netvlad", "aggregation (registry name)", choices=AGGREGATIONS)
    pretrained: str = _key(
        "imagenet",
        "none, imagenet, places, gldv2, places365_csail, radenovic_gldv1, "
        "radenovic_sfm, cosplace, eigenplaces, dinov2, mixvpr, salad, boq, or a weights "
        "file (a vgray checkpoint, the paper's, CosPlace's, MixVPR's, SALAD's, BoQ's: "
        "detected from its keys)",
    )
    netvlad_clusters: int = _key(64, "NetVLAD clusters", positive=True)
    fc_output_dim: Optional[int] = _key(None, "FC layer (then L2) after the aggregation to this size", positive=True)
    l2: str = _key(
        "before_pool", "where pooling aggregations L2-normalise", choices=["before_pool", "after_pool", "none"]
    )
    gem_p: float = _key(3.0, "initial (learnable) GeM power p", positive=True)
    pca_dim: Optional[int] = _key(
        None, "PCA of the descriptors to this size, fitted on training images (null: off)", positive=True
    )
    trunc_te: Optional[int] = _key(
        None, "transformers: keep the first N encoder blocks (null: all; 0 means 0)", range=(0, 1000)
    )
    freeze_te: Optional[int] = _key(
        None,
        "transformers: freeze the patch embedding and blocks before N "
        "(null: none frozen; 0 freezes the embedding only)",
        range=(0, 1000),
    )
    resume_from: Optional[str] = _key(
        None, "checkpoint whose weights start this model (CRN: a NetVLAD checkpoint of the same backbone)"
    )
    mixvpr_map_size: List[int] = _key(
        [20, 20],
        "MixVPR: [h, w] of the feature map it is built for; must be the "
        "backbone's at data.image_size (resnet50conv4 at 320x320: 20x20)",
        positive=True,
        length=2,
    )
    mixvpr_out_channels: int = _key(1024, "MixVPR: channel projection size (published 1024)", positive=True)
    mixvpr_out_rows: int = _key(
        4, "MixVPR: row projection size; descriptor = out_channels x out_rows (4)", positive=True
    )
    mixvpr_depth: int = _key(4, "MixVPR: Feature-Mixer blocks L (4)", positive=True)
    mixvpr_mlp_ratio: float = _key(1.0, "MixVPR: Feature-Mixer MLP hidden size / h*w (1)", positive=True)
    convap_out_channels: int = _key(
        512, "Conv-AP: channels of its 1x1 conv (GSV-Cities 512; released 128 to 2048)", positive=True
    )
    convap_pool_size: List[int] = _key(
        [2, 2],
        "Conv-AP: [s1, s2] of its adaptive average pooling; descriptor = out_channels x s1 x s2 (2x2)",
        positive=True,
        length=2,
    )
    train_blocks: Optional[int] = _key(
        None,
        "DINOv2: how many of the last encoder blocks train, the rest and the "
        "embeddings frozen (SALAD 4, BoQ 2; null: all train)",
        range=(0, 1000),
    )
    dinov2_final_norm: bool = _key(
        True,
        "DINOv2: LayerNorm the tokens after the last block, as DINOv2 and SALAD "
        "do (false: the last block's tokens, as BoQ's released network)",
    )
    salad_clusters: int = _key(
        64, "SALAD: clusters m (64); descriptor = clusters x cluster_dim + token_dim", positive=True
    )
    salad_cluster_dim: int = _key(128, "SALAD: channels l of each cluster's aggregated features (128)", positive=True)
    salad_token_dim: int = _key(256, "SALAD: size g of the global (class) token's projection (256)", positive=True)
    salad_dropout: float = _key(0.3, "SALAD: dropout in its score and feature MLPs (0.3)", range=(0.0, 0.99))
    boq_queries: int = _key(64, "BoQ: learned queries per block (64)", positive=True)
    boq_layers: int = _key(2, "BoQ: stacked blocks (2)", positive=True)
    boq_row_dim: int = _key(32, "BoQ: output rows; descriptor = proj_channels x row_dim (32)", positive=True)
    boq_proj_channels: Optional[int] = _key(
        None,
        "BoQ: channels of its 3x3 input projection (null: half the "
        "backbone's: 512 on resnet50conv4, 384 on dinov2_vitb14)",
        positive=True,
    )


@dataclass(frozen=True)
class AugmentationConfig:
    brightness: float = _key(0.0, "ColorJitter brightness on queries (0: off)", range=(0.0, 100.0))
    contrast: float = _key(0.0, "ColorJitter contrast on queries (0: off)", range=(0.0, 100.0))
    saturation: float = _key(0.0, "ColorJitter saturation on queries (0: off)", range=(0.0, 100.0))
    hue: float = _key(0.0, "ColorJitter hue on queries (0: off)", range=(0.0, 0.5))
    perspective: float = _key(0.0, "RandomPerspective distortion scale on queries (0: off)", range=(0.0, 1.0))
    rotation: float = _key(0.0, "RandomRotation degrees on queries (0: off)", range=(0.0, 180.0))
    resized_crop: float = _key(
        0.0, "RandomResizedCrop on queries, scale down to 1 - strength (0: off)", range=(0.0, 0.99)
    )
    horizontal_flip: bool = _key(False, "flip the whole triplet horizontally with probability 0.5")


@dataclass(frozen=True)
class TrainConfig:
    mining: str = _key("partial", "negative mining (random, partial, full, msls_weighted)", choices=MINING)
    criterion: str = _key("triplet", "loss (triplet, sare_joint, sare_ind)", choices=LOSSES)
    margin: float = _key(0.1, "triplet margin", positive=True)
    optimizer: str = _key(
        "adam",
        "optimizer: adam, adamw (BoQ, SALAD), sgd (momentum 0.9; the paper's, MixVPR)",
        choices=["adam", "adamw", "sgd"],
    )
    lr: float = _key(1e-5, "learning rate", positive=True)
    weight_decay: Optional[float] = _key(
        None, "weight decay (null: 0 for adam, 0.01 for adamw, 0.001 for sgd)", range=(0.0, 1.0)
    )
    warmup_steps: int = _key(
        0,
        "linear learning-rate warm-up over this many optimizer steps (0: none; MixVPR 650, BoQ 10 epochs' steps)",
        range=(0, 2**31 - 1),
    )
    lr_milestones: List[int] = _key(
        [],
        "epochs after which the learning rate is multiplied by lr_gamma "
        "(MultiStepLR; MixVPR [5, 10, 15], BoQ [10, 20])",
        positive=True,
    )
    lr_gamma: float = _key(
        0.1, "learning-rate factor at each of lr_milestones (MixVPR 1/3, BoQ 0.1)", range=(1e-6, 1.0)
    )
    batch_size: int = _key(4, "triplets per batch", positive=True)
    negs_num_per_query: int = _key(10, "negatives per triplet", positive=True)
    neg_samples_num: int = _key(1000, "database images sampled per refresh (partial mining)", positive=True)
    queries_per_epoch: int = _key(5000, "training queries per epoch", positive=True)
    cache_refresh_rate: int = _key(1000, "queries between mining-cache refreshes", positive=True)
    epochs: int = _key(1000, "epoch cap (early stopping usually ends first)", positive=True)
    patience: int = _key(3, "epochs without val R@5 gain before stopping", positive=True)
    positive_dist_threshold: float = _key(10.0, "hard positives for training, metres", positive=True)
    lr_crn_layer: float = _key(5e-3, "CRN: learning rate of the contextual reweighting layer", positive=True)
    lr_crn_net: float = _key(5e-4, "CRN: learning rate of the rest of the network", positive=True)
    memory_budget_mb: Optional[float] = _key(
        None,
        "largest mining cache a refresh may hold; full mining refuses a bigger database (null: no limit)",
        positive=True,
    )
    regime: str = _key(
        "triplets",
        "training regime: triplets (the paper's, with offline mining), places "
        "(batches of P places x K images, pytorch-metric-learning loss and miner)",
        choices=["triplets", "places"],
    )
    places_per_batch: int = _key(16, "places regime: places per batch (P)", positive=True)
    images_per_place: int = _key(4, "places regime: images per place (K; GSV-Cities: 4)", range=(2, 1000))
    place_size_m: float = _key(
        10.0, "places regime on a VG-format set: UTM grid cell of one place, metres", positive=True
    )
    place_heading_deg: Optional[float] = _key(
        None,
        "places regime on a VG-format set: heading bin of one place, "
        "degrees, bins centred on 0 (CosPlace's alpha; null: headings "
        "ignored)",
        range=(1e-6, 360.0),
    )
    batches_per_epoch: Optional[int] = _key(
        None, "places regime: batches per epoch (null: every place once)", positive=True
    )
    place_batching: str = _key(
        "random",
        "places regime: which places share a batch: random (GSV-Cities), proxy "
        "(each batch a place and its P-1 nearest places by mean descriptor of the "
        "last epoch, as GPM builds hard batches)",
        choices=["random", "proxy"],
    )
    pml_loss: str = _key(
        "multi_similarity", "places regime: loss (multi_similarity, contrastive, triplet, circle)", choices=PLACE_LOSSES
    )
    pml_miner: str = _key(
        "multi_similarity",
        "places regime: miner (multi_similarity, triplet_margin, pair_margin, none)",
        choices=PLACE_MINERS,
    )
    ms_alpha: float = _key(1.0, "multi-similarity loss alpha (GSV-Cities: 1)", positive=True)
    ms_beta: float = _key(50.0, "multi-similarity loss beta (GSV-Cities: 50)", positive=True)
    ms_base: float = _key(0.0, "multi-similarity loss base (GSV-Cities: 0)", range=(-1.0, 1.0))
    miner_margin: float = _key(
        0.1, "multi-similarity miner epsilon / triplet miner margin (GSV-Cities: 0.1)", range=(0.0, 10.0)
    )
    workers: int = _key(
        1,
        "data-parallel workers of one run (Ray Train, DDP: the global batch split over them, the same "
        "optimisation as one worker with the whole batch; 1: one process, no Ray needed)",
        positive=True,
    )
    sync_bn: bool = _key(
        False,
        "with workers > 1: BatchNorm statistics over the whole batch (SyncBatchNorm, GPUs only); "
        "off, as in the paper: each worker normalises its part of the batch",
    )
    ddp_backend: str = _key(
        "auto",
        "with workers > 1: torch.distributed backend (auto: nccl on GPUs, gloo on CPUs)",
        choices=["auto", "gloo", "nccl"],
    )
    augmentation: AugmentationConfig = field(
        default_factory=AugmentationConfig, metadata={"help": "query augmentations"}
    )


@dataclass(frozen=True)
class TestConfig:
    split: str = _key("test", "split that vgray eval scores", choices=["train", "val", "test"])
    method: str = _key("hard_resize", "test-time method", choices=TEST_METHODS)
    recall_values: List[int] = _key([1, 5, 10, 20], "N of recall@N", positive=True)
    positive_dist_threshold: float = _key(25.0, "a retrieval is right within this many metres", positive=True)
    positives: str = _key(
        "auto",
        "which database images are right: radius (within positive_dist_threshold "
        "metres), frames (within positive_frames frames: sequences such as Nordland), "
        "files (a ground-truth layout's lists), auto (files where the layout has them, "
        "else radius)",
        choices=["auto", "radius", "frames", "files"],
    )
    positive_frames: int = _key(
        10,
        "test.positives=frames: a retrieval is right within this many frames "
        "(Nordland: 1; 10 as BoQ and the VG downloader's Nordland)",
        range=(0, 2**31 - 1),
    )
    majority_weight: float = _key(0.01, "maj_voting: weight of a crop's vote for a database image", range=(0.0, 1e6))
    knn: str = _key("Flat", "faiss index_factory string of the kNN index")
    batch_size: int = _key(32, "images per extraction batch", positive=True)
    compile: bool = _key(False, "torch.compile the network for extraction (inductor; compiled once per model)")
    memory_budget_mb: Optional[float] = _key(
        None,
        "stream the database in chunks when its descriptors exceed this (Flat only; null: no limit)",
        positive=True,
    )
    datasets: Dict[str, str] = _key(
        {}, "test sets after training, {name: root}; default: the training dataset's own test split"
    )


@dataclass(frozen=True)
class Config:
    """The whole config: the sections ``data``, ``model``, ``train`` and ``test``, and ``seed``,
    ``device``, ``precision``; frozen (``replace`` makes a validated copy)."""

    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "dataset and images"})
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "network"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "training protocol"})
    test: TestConfig = field(default_factory=TestConfig, metadata={"help": "evaluation protocol"})
    seed: int = _key(0, "random seed", range=(0, 2**32 - 1))
    device: str = _key("auto", "auto (cuda when available), cpu, cuda, cuda:N")
    precision: str = _key(
        "auto", "auto (bf16 autocast on a GPU, fp32 on the CPU), fp32, bf16", choices=["auto", "fp32", "bf16"]
    )

    # -- views -------------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> Dict[str, Any]:
        """``{"model.backbone": ..., ...}`` for every leaf key."""
        return flatten(self.to_dict())

    def key(self) -> str:
        """Stable hash of the config without the seed (rows of repeated runs share it)."""
        flat = {k: v for k, v in self.flat().items() if k != "seed"}
        return hashlib.sha1(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:12]

    def replace(self, **dotted: Any) -> "Config":
        """A copy with dotted keys changed (``cfg.replace(**{"model.l2": "none"})``), validated."""
        tree = self.to_dict()
        for k, v in dotted.items():
            _set_dotted(tree, k, v)
        return from_dict(tree)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# -- building a config -----------------------------------------------------------------------


def flatten(tree: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and _section_type(prefix + k) is not None:
            out.update(flatten(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out


def _section_type(dotted: str) -> Optional[type]:
    """The dataclass a dotted key names, or None when it names a leaf (or nothing)."""
    cls: type = Config
    for part in dotted.split("."):
        hints = _hints(cls)
        if part not in hints or not dataclasses.is_dataclass(hints[part]):
            return None
        cls = hints[part]
    return cls


_HINTS: Dict[type, Dict[str, Any]] = {}


def _hints(cls: type) -> Dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def all_keys() -> Dict[str, dataclasses.Field[Any]]:
    """Every leaf key, dotted, with its dataclass field (for help and for sweep-key checks)."""
    out: Dict[str, dataclasses.Field[Any]] = {}

    def walk(cls: Type[DataclassInstance], prefix: str) -> None:
        for f in dataclasses.fields(cls):
            t = _hints(cls)[f.name]
            if dataclasses.is_dataclass(t):  # a section: its annotation is its class
                walk(cast("Type[DataclassInstance]", t), prefix + f.name + ".")
            else:
                out[prefix + f.name] = f

    walk(Config, "")
    return out


def _unknown(key: str, valid: Iterable[str]) -> BadInput:
    near = difflib.get_close_matches(key, list(valid), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(near)}?" if near else ""
    return BadInput(f"unknown config key '{key}'{hint} (vgray eval --help-config lists them)")


def _set_dotted(tree: Dict[str, Any], dotted: str, value: Any) -> None:
    keys = all_keys()
    if dotted not in keys and _section_type(dotted) is None:
        raise _unknown(dotted, keys)
    node = tree
    parts = dotted.split(".")
    for i, p in enumerate(parts[:-1]):
        if node.get(p) is None:  # absent, or a section set to null (its defaults) by an earlier --set
            node[p] = {}
        elif not isinstance(node[p], dict):
            section = ".".join(parts[: i + 1])
            raise BadInput(
                f"{section}={shown(node[p])} is a section, not a value: set its keys "
                f"({dotted}=...) or give it a mapping"
            )
        node = node[p]
    node[parts[-1]] = value


def _merge(base: Dict[str, Any], update: Dict[str, Any], prefix: str = "") -> None:
    if not isinstance(update, dict):
        raise BadInput(
            f"config section '{prefix.rstrip('.') or '<top>'}' must be a mapping, not {type(update).__name__}"
        )
    for k, v in update.items():
        dotted = prefix + str(k)
        if isinstance(base.get(k), dict) and _section_type(dotted) is not None:
            _merge(base[k], v, dotted + ".")
        else:
            base[k] = v


def _expand(value: str) -> str:
    """Environment variables (``${VGRAY_DATASETS}``) and ``~`` in path-like strings."""
    out = os.path.expandvars(value)
    unresolved = re.search(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", out)
    if unresolved:
        raise BadInput(f"environment variable {unresolved.group(1)} in '{value}' is not set")
    return os.path.expanduser(out) if out.startswith("~") else out


def _coerce(dotted: str, value: Any, t: Any) -> Any:
    """``value`` checked against the annotated type ``t`` (an int is accepted for a float)."""
    origin = typing.get_origin(t)
    args = typing.get_args(t)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        return _coerce(dotted, value, next(a for a in args if a is not type(None)))
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise BadInput(f"{dotted}={shown(value)} must be a list of {args[0].__name__}")
        return [_coerce(dotted, v, args[0]) for v in value]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise BadInput(f"{dotted}={shown(value)} must be a mapping")
        return {str(k): _coerce(f"{dotted}.{k}", v, args[1]) for k, v in value.items()}
    if t is bool:
        if not isinstance(value, bool):
            raise BadInput(f"{dotted}={shown(value)} must be true or false")
        return value
    if t is int:  # the number door: an integer of 64 bits at most
        return values.check_integer(value, dotted)
    if t is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        return values.check_real(value, dotted)  # finite: NaN passes every comparison-based check below
    if t is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise BadInput(f"{dotted}={shown(value)} must be a string")
        values.refuse_empty(value, dotted, hint="leave the key out (or null where it allows) for its default")
        return _expand(str(value))
    raise TypeError(f"unsupported config type {t} for {dotted}")


def _numbers(value: object) -> List[float]:
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _numbers(v)]
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def _check_field(dotted: str, f: dataclasses.Field[Any], value: Any) -> None:
    meta = f.metadata
    if value is None:
        return
    choices = meta.get("choices")
    if isinstance(choices, registry.Registry) and not choices.filled():
        choices = None  # the family's package is not imported here: nothing of it will be built
    if choices is not None:
        allowed = choices.names() if isinstance(choices, registry.Registry) else choices
        if value not in allowed:
            raise BadInput(f"{dotted}={shown(value)} is not allowed; choose one of: {', '.join(map(str, allowed))}")
    low, high = meta.get("range", (None, None))
    for x in _numbers(value):  # the number door's bounds; a count (an integer without a range) fits a C int
        count = isinstance(x, int) and "range" not in meta
        values.check_bounds(
            x,
            dotted,
            low,
            values.COUNT_MAX if count else high,
            positive=bool(meta.get("positive")),
            interval="range" in meta,
            whole=value,
        )
    if "length" in meta and len(value) != meta["length"]:
        raise BadInput(f"{dotted}={shown(value)} must have {meta['length']} values")


def _build(cls: Type[_Section], tree: Dict[str, Any], prefix: str) -> _Section:
    hints = _hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    for k in tree:
        if k not in names:
            raise _unknown(prefix + str(k), all_keys())
    kwargs = {}
    for name, f in names.items():
        dotted = prefix + name
        t = hints[name]
        if dataclasses.is_dataclass(t):
            section = tree.get(name)
            if section is not None and not isinstance(section, dict):
                example = next(iter(f.name for f in dataclasses.fields(t)))
                raise BadInput(
                    f"{dotted}={shown(section)} is a section, not a value: set its keys "
                    f"({dotted}.{example}=...) or give it a mapping"
                )
            # a section: its annotation is its class
            kwargs[name] = _build(cast("Type[DataclassInstance]", t), section or {}, dotted + ".")
            continue
        if name in tree:
            value = _coerce(dotted, tree[name], t)
        else:
            value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        _check_field(dotted, f, value)
        kwargs[name] = value
    return cls(**kwargs)


def from_dict(tree: Dict[str, Any]) -> Config:
    """A validated :class:`Config` from a (possibly partial) nested dict."""
    if not isinstance(tree, dict):
        raise BadInput(f"a config must be a mapping of sections, not {type(tree).__name__}")
    cfg = _build(Config, tree, "")
    cross_check(cfg)
    return cfg


def parse_override(text: str) -> Tuple[str, Any]:
    """``"model.backbone=vgg16"`` -> ``("model.backbone", "vgg16")``; the value is read as YAML."""
    if "=" not in text:
        raise BadInput(f"--set {text!r} must look like key=value (e.g. model.backbone=vgg16)")
    key, raw = text.split("=", 1)
    value = parse_yaml(raw, f"--set {key.strip()}: value {shown(raw)}") if raw.strip() else ""
    return key.strip(), value


MAX_YAML_NODES = 100_000  # a config, a sweep file or a plan is a few hundred nodes


class _Loader(yaml.SafeLoader):
    """The safe loader, refusing a key given twice in one mapping (PyYAML keeps the last silently).
    Merge keys (``<<: *base``) may be overridden, as YAML means them to be."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Dict[Hashable, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: Dict[Hashable, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    continue  # the base class names an unhashable key
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"key {shown(key)} is given twice (lines {seen[key] + 1} and "
                        f"{key_node.start_mark.line + 1}); give each key once",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: yaml.Node, limit: int) -> int:
    """The number of nodes ``node`` stands for once its aliases are expanded (each alias counts
    the whole node it names), computed on the composed graph without expanding it; stops early past
    ``limit``. A billion-laughs document of 1 KB stands for 10⁹ nodes."""
    memo: Dict[int, int] = {}

    def size(n: yaml.Node) -> int:
        key = id(n)
        if key in memo:
            return memo[key]
        memo[key] = limit + 1  # a cycle (a recursive alias) counts as too big
        total = 1
        if isinstance(n, yaml.SequenceNode):
            children = n.value
        elif isinstance(n, yaml.MappingNode):
            children = [c for pair in n.value for c in pair]
        else:
            children = []
        for child in children:
            total += size(child)
            if total > limit:
                break
        memo[key] = total
        return total

    return size(node)


def parse_yaml(text: str, where: str) -> Any:
    """YAML text -> Python values with the safe loader, refusing (:class:`BadInput` naming ``where``)
    malformed text, a key given twice, and aliases that expand past :data:`MAX_YAML_NODES` nodes,
    before anything is expanded."""
    loader = None
    try:
        loader = _Loader(text)  # the reader refuses control characters here
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, MAX_YAML_NODES) > MAX_YAML_NODES:
            raise BadInput(
                f"{where}: its anchors and aliases expand to more than {MAX_YAML_NODES:,} values; "
                f"a config or sweep file is a few hundred (write the values out, or use base:)"
            )
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise BadInput(f"{where}{line}: not valid YAML ({problem})")
    except RecursionError:
        raise BadInput(f"{where}: nested too deeply to be a config or sweep file")
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml(path: str | os.PathLike[str], what: str = "config") -> Any:
    """Parse a YAML file (:func:`parse_yaml`); unreadable, not UTF-8, malformed or empty files (no
    document, or only ``null``) are bad input."""
    from vgray.paths import check_input  # the one path door: a FIFO, a folder, a NUL byte refused

    p = check_input(path, f"{what} file")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise BadInput(f"{what} file {p}: cannot be read ({exc.strerror or exc})")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(
            f"{what} file {p}: not UTF-8 text (byte {exc.start} is {data[exc.start]:#04x}); save it as UTF-8"
        )
    tree = parse_yaml(text, f"{what} file {p}")
    if tree is None:  # the empty-value rule: an empty file is not "the defaults"
        raise BadInput(
            f"{what} file {p} is empty (no YAML document); an empty file is refused, not read as the "
            f"defaults: give at least one key"
        )
    return tree


def load_config(
    path: Optional[str | os.PathLike[str]] = None,
    overrides: Iterable[Union[str, Tuple[str, Any]]] = (),
    base: Optional[Dict[str, Any]] = None,
) -> Config:
    """Defaults, then ``base`` (a dict), then the YAML file at ``path``, then ``--set`` overrides.

    ``overrides`` holds ``"key=value"`` strings or ``(key, value)`` pairs. Returns the validated,
    frozen :class:`Config`; a bad file, key, value or combination raises
    :class:`~vgray.errors.BadInput` naming it (``load_config(overrides=["model.backbone=vgg16"])``).
    """
    tree = Config().to_dict()
    if base:
        _merge(tree, base)
    if path is not None:
        loaded = read_yaml(path)
        if loaded is not None:
            try:
                _merge(tree, loaded)
            except BadInput as exc:
                raise BadInput(f"config file {path}: {exc}")
    for item in overrides:
        key, value = parse_override(item) if isinstance(item, str) else item
        _set_dotted(tree, key, value)
    return from_dict(tree)


# -- the paper's cross-checks ----------------------------------------------------------------


def _check_workers(cfg: "Config") -> None:
    """``train.workers`` > 1: every worker needs a part of each batch (the places regime: an equal
    part, for pytorch-metric-learning's gathers), and the backend must run on the device."""
    t = cfg.train
    if t.workers == 1:
        return
    if t.regime == "places" and t.places_per_batch % t.workers:
        raise BadInput(
            f"train.workers={t.workers} must divide train.places_per_batch={t.places_per_batch} "
            f"(every worker takes an equal part of each batch of places)"
        )
    if t.regime == "triplets" and t.batch_size < t.workers:
        raise BadInput(
            f"train.workers={t.workers} is more than train.batch_size={t.batch_size} triplets: "
            f"every worker needs at least one triplet of each batch"
        )
    if cfg.device == "cpu" and t.ddp_backend == "nccl":
        raise BadInput("train.ddp_backend=nccl runs on GPUs only, and device=cpu; use gloo (or auto)")
    if cfg.device == "cpu" and t.sync_bn:
        raise BadInput("train.sync_bn=true needs GPUs (torch's SyncBatchNorm refuses CPU tensors), and device=cpu")


def cross_check(cfg: Config) -> None:
    """Refuse combinations the paper's protocol does not allow, naming the keys involved.

    The component checks run for the families whose packages are imported (:mod:`vgray.registry`):
    first the cross-family checks those packages added, then each chosen member's own
    ``check(cfg)`` (ViT sizes, cls on a CNN, a multi-crop method's needs, ...)."""
    __import__("vgray.paths").paths.check_config_paths(cfg)  # the path keys through the one path door
    for check in registry.CONFIG_CHECKS:
        check(cfg)
    flat = None
    for family in registry.FAMILIES:
        if family.key is None or not family.filled():
            continue
        flat = flat or cfg.flat()
        member_check = family.info(flat[family.key]).get("check")
        if callable(member_check):
            member_check(cfg)
    if cfg.train.queries_per_epoch % cfg.train.cache_refresh_rate:
        raise BadInput(
            f"train.queries_per_epoch={cfg.train.queries_per_epoch} must be a multiple of "
            f"train.cache_refresh_rate={cfg.train.cache_refresh_rate}"
        )
    if cfg.data.layout == "gsv_cities":
        if cfg.train.regime != "places":
            raise BadInput(
                "data.layout=gsv_cities holds place-labelled training images only: "
                "set train.regime=places (and data.val_root, test.datasets to VG-format sets)"
            )
        if cfg.data.val_root is None or not cfg.test.datasets:
            raise BadInput(
                "data.layout=gsv_cities has no val or test split: set data.val_root and "
                "test.datasets to VG-format datasets (e.g. synthetic:tiny)"
            )
        if cfg.model.pca_dim is not None:
            raise BadInput(
                "model.pca_dim is fitted on data.root's VG-format train split, which "
                "data.layout=gsv_cities lacks; set model.pca_dim=null"
            )
    _check_workers(cfg)
    if not cfg.test.recall_values:
        raise BadInput("test.recall_values=[] must list at least one N, e.g. [1, 5, 10, 20]")
    if sorted(set(cfg.test.recall_values)) != list(cfg.test.recall_values):
        raise BadInput(f"test.recall_values={cfg.test.recall_values} must be increasing with no repeats")
    if cfg.test.memory_budget_mb is not None and cfg.test.knn.replace(" ", "") != "Flat":
        raise BadInput(
            f"test.memory_budget_mb streams the database through an exact search, which only "
            f"test.knn=Flat allows, not {cfg.test.knn!r}"
        )
    if not cfg.test.knn.strip():
        raise BadInput("test.knn must be a faiss index_factory string such as Flat, IVF1024,PQ16 or HNSW32")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.device):
        raise BadInput(f"device={cfg.device!r} is not allowed; choose auto, cpu, cuda or cuda:N")
    if not cfg.model.pretrained.strip():
        raise BadInput("model.pretrained must be none, imagenet, or a weights file")


def help_text() -> str:
    """Every key with its default and description, for ``--help-config``."""
    lines = []
    for dotted, f in all_keys().items():
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        lines.append(f"  {dotted:36s} {json.dumps(default):18s} {f.metadata.get('help', '')}")
    return "config keys (dotted; set with --set key=value, value read as YAML):\n" + "\n".join(lines)


def build_checked(cls: Type[_Section], tree: Any, prefix: str) -> _Section:
    """An instance of the dataclass ``cls`` from the mapping ``tree``, by the rules of the config's
    sections: each value coerced to its field's annotated type and checked against the field's
    metadata (``choices``, ``positive``, ``range``, ``length``, as :func:`_key` writes them), the
    missing ones at their defaults. Messages name ``prefix + key`` (``scheduler.type``); a key
    ``cls`` lacks is refused naming the nearest ones, or all. For other typed sections than the
    config's own (the sweep file's: :mod:`vgray.distributed.spec`)."""
    where = prefix.rstrip(".") or "the mapping"
    if not isinstance(tree, dict):
        raise BadInput(f"{where} must be a mapping, not {type(tree).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    for k in tree:
        if k not in names:
            near = difflib.get_close_matches(str(k), names, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(near)}?" if near else f"allowed: {', '.join(names)}"
            raise BadInput(f"{where} key '{k}' is unknown; {hint}")
    return _build(cls, tree, prefix)
