"""Pretrained weights as data, apart from the architectures (as timm's pretrained configs).

A record says where a backbone's weights come from, what they were trained with (input mean and
std) and under which licence. :func:`source_state_dict` turns ``model.pretrained`` into a state dict
of the *source* architecture (the torchvision model before truncation): downloads are cached in the
torch hub folder and verified by hash where the publisher gives one (else by structure: every kept
layer present with its shape); offline, the cached file is used; with neither, it fails with one
line that says where to put the file.

Sources (the paper's Sec. "pretraining" study and its off-the-shelf landmark-retrieval models):

- ``imagenet``: torchvision's weights.
- ``places``, ``gldv2``: the paper's own ResNet-18/50/101 and VGG16 trained on Places365 and Google
  Landmarks v2 (trained with rm-wu/pretrain_vg; the files its model/network.py fetches from Google
  Drive). Plain torchvision state dicts with a 365- or 512-way classifier.
- ``dinov2``: the official DINOv2 ViT-S/B/L/G 14 files of facebookresearch/dinov2 (Apache-2.0),
  converted from its layout to timm's (:func:`dinov2_to_timm`).
- ``places365_csail``: the Places365-CNNs of MIT CSAIL (Zhou et al., TPAMI 2017), ResNet-18/50:
  ``{"state_dict": {"module.conv1.weight": ...}}``.
- ``cosplace``, ``eigenplaces``: the whole ResNet-18/50/101 conv5 and VGG16 + GeM + FC networks of
  gmberton/CosPlace and gmberton/EigenPlaces (MIT), one release file per descriptor size
  (``model.fc_output_dim``), in their GeoLocalizationNet layout (read by :mod:`vgray.models.foreign`);
  CosPlace also releases ResNet-152 conv5 (EigenPlaces does not).
- ``radenovic_gldv1``, ``radenovic_sfm``: the whole ResNet-50/101 + GeM + whitening (FC 2048) networks
  of cnnimageretrieval-pytorch (Radenović et al., TPAMI 2018) trained on Google Landmarks 2018 and
  SfM-120k, as the paper's eval.py ``--off_the_shelf`` loads them: ``{"meta": ..., "state_dict":
  {"features.N...", "pool.p", "whiten.weight", "whiten.bias"}}``. They fit
  ``resnet{50,101}conv5 + gem + fc_output_dim=2048`` only (GeM's p and the whitening are loaded too).

- ``mixvpr``, ``salad``, ``boq``: the whole networks released by their authors, trained on GSV-Cities
  (read by :mod:`vgray.models.foreign`, loaded whole; the config must be the release's, else refused
  naming the keys to set). MixVPR (amaralibey/MixVPR, no licence stated): ResNet-50 conv4 + MixVPR
  4096-d at 320 x 320, ``resnet50_MixVPR_4096_channels(1024)_rows(4).ckpt`` from Google Drive (its
  README; the 512-d and 128-d files are left out: their MixVPR sizes are not published). SALAD
  (serizba/salad, GPL-3.0): DINOv2 ViT-B/14 + SALAD 8448-d, ``dino_salad.ckpt`` (hubconf), evaluated at
  322 x 322. BoQ (amaralibey/Bag-of-Queries, MIT; hubconf ``MODEL_URLS``): ResNet-50 conv4 + BoQ
  16384-d at 384 x 384 (``resnet50_16384.pth``) and DINOv2 ViT-B/14 + BoQ 12288-d at 322 x 322
  (``dinov2_12288.pth``, with ``model.dinov2_final_norm=false``: BoQ's DINOv2 leaves the final norm out).
  All with ImageNet's mean/std.

The paper also evaluates Naver's AP-GeM networks (deep-image-retrieval); their files pickle
scikit-learn objects, which ``torch.load(weights_only=True)`` refuses to run, so they are left out.
Files are read by :mod:`vgray.checkpoint`, which also decides whether a state dict fits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Optional, Tuple, cast

import torch

from vgray.checkpoint import check_fits, read_weights_file
from vgray.errors import BadInput
from vgray.models.foreign import load_network_file

if TYPE_CHECKING:
    from vgray.models.components import Backbone

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class WeightsRecord:
    """Where a source architecture's weights come from."""

    url: str
    # torchvision's file names carry the first hex digits of the SHA-256; None where the publisher
    # gives no hash (the file is then verified by its structure when it is read).
    sha256_prefix: Optional[str]
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    licence: str = "BSD-3-Clause (torchvision); ImageNet terms of access"
    filename: Optional[str] = None  # name in the cache folder (default: the URL's last part)
    converter: str = "plain"  # how the publisher wraps the state dict (see CONVERTERS)
    whole_network: bool = False  # the file also holds GeM's p and a whitening FC (cirtorch)
    # Whole networks released one file per descriptor size (CosPlace, EigenPlaces): the sizes, and
    # ``{dim}`` in the URL stands for model.fc_output_dim. Read by vgray.models.foreign.
    dims: tuple = ()
    input_size: Optional[tuple] = None  # (H, W) the publisher trained at, where it is not "any"
    # Whole networks released once (MixVPR, SALAD, BoQ): the ``model.*`` keys the config must have,
    # (key, allowed values) with the first value the one to name; read by vgray.models.foreign.
    network: tuple = ()

    def for_dim(self, dim: int) -> "WeightsRecord":
        """The record of the file for descriptor size ``dim`` (records with ``dims``)."""
        return replace(self, url=self.url.format(dim=dim), dims=())

    @property
    def file(self) -> str:
        return self.filename or os.path.basename(self.url)


_TV = "https://download.pytorch.org/models/"
# The paper's own Places365 / GLDv2 networks: Google Drive ids from its model/network.py.
_DRIVE = "https://drive.usercontent.google.com/download?export=download&confirm=t&id="
_PAPER_LICENCE = "no licence stated by the publisher (gmberton/deep-visual-geo-localization-benchmark); {} data terms"
_CSAIL = "http://places2.csail.mit.edu/models_places365/"
_CSAIL_LICENCE = "CC BY (Places365-CNNs, MIT CSAIL: credit Zhou et al., TPAMI 2017)"
_CIR = "http://cmp.felk.cvut.cz/cnnimageretrieval/data/networks/"
_CIR_LICENCE = "MIT (cnnimageretrieval-pytorch, VRG CTU Prague)"
_TIMM_VITJX = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-vitjx/"
_VIT_LICENCE = "Apache-2.0 (google-research/vision_transformer, ported by timm); ImageNet terms of access"
_DINOV2 = "https://dl.fbaipublicfiles.com/dinov2/"
_DINOV2_LICENCE = "Apache-2.0 (facebookresearch/dinov2)"


def _paper(arch: str, source: str, drive_id: str) -> WeightsRecord:
    data = {"places": "Places365", "gldv2": "Google Landmarks v2"}[source]
    return WeightsRecord(_DRIVE + drive_id, None, licence=_PAPER_LICENCE.format(data), filename=f"{arch}_{source}.pth")


def _gmberton(repo: str, arch: str, dims: tuple) -> WeightsRecord:
    """CosPlace / EigenPlaces: one whole network (backbone + GeM + FC) per descriptor size, the
    release files of the repository's hubconf; trained at 512 x 512 with ImageNet's mean/std."""
    name = {
        "resnet18": "ResNet18",
        "resnet50": "ResNet50",
        "resnet101": "ResNet101",
        "resnet152": "ResNet152",
        "vgg16": "VGG16",
    }[arch]
    return WeightsRecord(
        f"https://github.com/gmberton/{repo}/releases/download/v1.0/{name}_{{dim}}_{repo.lower()}.pth",
        None,
        licence=f"MIT (gmberton/{repo}); SF-XL data terms",
        converter="foreign",
        whole_network=True,
        dims=dims,
        input_size=(512, 512),
    )


def _cirtorch(path: str) -> WeightsRecord:
    # The 7 hex digits in these names are not documented as a SHA-256 prefix: not used as one.
    return WeightsRecord(_CIR + path, None, licence=_CIR_LICENCE, converter="cirtorch", whole_network=True)


def _vpr(url: str, licence: str, input_size: tuple, network: tuple, filename: Optional[str] = None) -> WeightsRecord:
    return WeightsRecord(
        url,
        None,
        licence=f"{licence}; GSV-Cities data terms",
        filename=filename,
        converter="foreign",
        whole_network=True,
        input_size=input_size,
        network=network,
    )


_BOQ = "https://github.com/amaralibey/Bag-of-Queries/releases/download/v1.0/"
_BOQ_LICENCE = "MIT (amaralibey/Bag-of-Queries)"
_NO_FC = (("fc_output_dim", (None,)),)
_MIXVPR_NET = (
    ("backbone", ("resnet50conv4",)),
    ("aggregation", ("mixvpr",)),
    ("mixvpr_map_size", ([20, 20],)),
    ("mixvpr_out_channels", (1024,)),
    ("mixvpr_out_rows", (4,)),
    ("mixvpr_depth", (4,)),
    ("mixvpr_mlp_ratio", (1.0,)),
) + _NO_FC
_SALAD_NET = (
    ("backbone", ("dinov2_vitb14",)),
    ("trunc_te", (None,)),
    ("dinov2_final_norm", (True,)),
    ("aggregation", ("salad",)),
    ("salad_clusters", (64,)),
    ("salad_cluster_dim", (128,)),
    ("salad_token_dim", (256,)),
) + _NO_FC


def _boq_net(backbone: str, proj: int, extra: tuple) -> tuple:
    # boq_proj_channels null is half the backbone's channels: the released 512 and 384.
    return (
        (("backbone", (backbone,)),)
        + extra
        + (
            ("aggregation", ("boq",)),
            ("boq_proj_channels", (None, proj)),
            ("boq_queries", (64,)),
            ("boq_layers", (2,)),
            ("boq_row_dim", (32,)),
        )
        + _NO_FC
    )


# (source architecture, pretrained name) -> record.
RECORDS: Dict[tuple, WeightsRecord] = {
    ("alexnet", "imagenet"): WeightsRecord(_TV + "alexnet-owt-7be5be79.pth", "7be5be79"),
    ("vgg16", "imagenet"): WeightsRecord(_TV + "vgg16-397923af.pth", "397923af"),
    ("resnet18", "imagenet"): WeightsRecord(_TV + "resnet18-f37072fd.pth", "f37072fd"),
    ("resnet50", "imagenet"): WeightsRecord(_TV + "resnet50-0676ba61.pth", "0676ba61"),
    ("resnet101", "imagenet"): WeightsRecord(_TV + "resnet101-63fe2227.pth", "63fe2227"),
    ("resnet152", "imagenet"): WeightsRecord(_TV + "resnet152-394f9c45.pth", "394f9c45"),
    ("resnet18", "places"): _paper("resnet18", "places", "1DnEQXhmPxtBUrRc81nAvT8z17bk-GBj5"),
    ("resnet50", "places"): _paper("resnet50", "places", "1zsY4mN4jJ-AsmV3h4hjbT72CBfJsgSGC"),
    ("resnet101", "places"): _paper("resnet101", "places", "1E1ibXQcg7qkmmmyYgmwMTh7Xf1cDNQXa"),
    ("vgg16", "places"): _paper("vgg16", "places", "1UWl1uz6rZ6Nqmp1K5z3GHAIZJmDh4bDu"),
    ("resnet18", "gldv2"): _paper("resnet18", "gldv2", "1wkUeUXFXuPHuEvGTXVpuP5BMB-JJ1xke"),
    ("resnet50", "gldv2"): _paper("resnet50", "gldv2", "1UDUv6mszlXNC1lv6McLdeBNMq9-kaA70"),
    ("resnet101", "gldv2"): _paper("resnet101", "gldv2", "1apiRxMJpDlV0XmKlC5Na_Drg2jtGL-uE"),
    ("vgg16", "gldv2"): _paper("vgg16", "gldv2", "10Ov9JdO7gbyz6mB5x0v_VSAUMj91Ta4o"),
    ("resnet18", "places365_csail"): WeightsRecord(_CSAIL + "resnet18_places365.pth.tar", None, licence=_CSAIL_LICENCE),
    ("resnet50", "places365_csail"): WeightsRecord(_CSAIL + "resnet50_places365.pth.tar", None, licence=_CSAIL_LICENCE),
    ("resnet50", "radenovic_gldv1"): _cirtorch("gl18/gl18-tl-resnet50-gem-w-83fdc30.pth"),
    ("resnet101", "radenovic_gldv1"): _cirtorch("gl18/gl18-tl-resnet101-gem-w-a4d43db.pth"),
    ("resnet50", "radenovic_sfm"): _cirtorch("retrieval-SfM-120k/rSfM120k-tl-resnet50-gem-w-97bf910.pth"),
    ("resnet101", "radenovic_sfm"): _cirtorch("retrieval-SfM-120k/rSfM120k-tl-resnet101-gem-w-a155e54.pth"),
    # ViT-B/16 as the paper: ImageNet-21k weights at 224 (its google/vit-base-patch16-224-in21k), 21k
    # then ImageNet-1k fine-tuned at 384 (google/vit-base-patch16-384); Google's JAX weights as timm
    # ported them, in timm's layout (head and pre-logits dropped when loading).
    ("vit_base_patch16_224", "imagenet"): WeightsRecord(
        _TIMM_VITJX + "jx_vit_base_patch16_224_in21k-e5005f0a.pth",
        "e5005f0a",
        (0.5, 0.5, 0.5),
        (0.5, 0.5, 0.5),
        _VIT_LICENCE,
    ),
    ("vit_base_patch16_384", "imagenet"): WeightsRecord(
        _TIMM_VITJX + "jx_vit_base_p16_384-83fb41ba.pth", "83fb41ba", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), _VIT_LICENCE
    ),
    # CCT-14/7x2 fine-tuned on ImageNet at 384, the file the paper's model/cct/cct.py loads (no hash given).
    # CosPlace (Berton et al., CVPR 2022) and EigenPlaces (ICCV 2023), released per backbone and size
    # (their hubconf.py's AVAILABLE_TRAINED_MODELS; EigenPlaces has no ResNet-152).
    **{
        (arch, "cosplace"): _gmberton("CosPlace", arch, dims)
        for arch, dims in (
            ("vgg16", (64, 128, 256, 512)),
            ("resnet18", (32, 64, 128, 256, 512)),
            ("resnet50", (32, 64, 128, 256, 512, 1024, 2048)),
            ("resnet101", (32, 64, 128, 256, 512, 1024, 2048)),
            ("resnet152", (32, 64, 128, 256, 512, 1024, 2048)),
        )
    },
    **{
        (arch, "eigenplaces"): _gmberton("EigenPlaces", arch, dims)
        for arch, dims in (
            ("vgg16", (512,)),
            ("resnet18", (256, 512)),
            ("resnet50", (128, 256, 512, 1024, 2048)),
            ("resnet101", (128, 256, 512, 1024, 2048)),
        )
    },
    # MixVPR, SALAD, BoQ: whole networks their authors released (GSV-Cities), loaded whole.
    ("resnet50", "mixvpr"): _vpr(
        _DRIVE + "1vuz3PvnR7vxnDDLQrdHJaOA04SQrtk5L",
        "no licence stated by the publisher (amaralibey/MixVPR)",
        (320, 320),
        _MIXVPR_NET,
        filename="resnet50_MixVPR_4096_channels(1024)_rows(4).ckpt",
    ),
    ("vit_base_patch14_dinov2", "salad"): _vpr(
        "https://github.com/serizba/salad/releases/download/v1.0.0/dino_salad.ckpt",
        "GPL-3.0 (serizba/salad)",
        (322, 322),
        _SALAD_NET,
    ),
    ("resnet50", "boq"): _vpr(
        _BOQ + "resnet50_16384.pth", _BOQ_LICENCE, (384, 384), _boq_net("resnet50conv4", 512, ())
    ),
    ("vit_base_patch14_dinov2", "boq"): _vpr(
        _BOQ + "dinov2_12288.pth",
        _BOQ_LICENCE,
        (322, 322),
        _boq_net("dinov2_vitb14", 384, (("trunc_te", (None,)), ("dinov2_final_norm", (False,)))),
    ),
    ("cct_14_7x2_384", "imagenet"): WeightsRecord(
        "https://shi-labs.com/projects/cct/checkpoints/finetuned/cct_14_7x2_384_imagenet.pth",
        None,
        licence="Apache-2.0 (SHI-Labs/Compact-Transformers); ImageNet terms of access",
    ),
    # DINOv2 ViT-S/B/L/G patch 14: the official files of facebookresearch/dinov2's hubconf (trained at
    # 518 x 518, LVD-142M), in its layout; converted to timm's by dinov2_to_timm. No hash published.
    **{
        (f"vit_{size}_patch14_dinov2", "dinov2"): WeightsRecord(
            f"{_DINOV2}dinov2_vit{s}14/dinov2_vit{s}14_pretrain.pth", None, licence=_DINOV2_LICENCE, converter="dinov2"
        )
        for size, s in (("small", "s"), ("base", "b"), ("large", "l"), ("giant", "g"))
    },
}
NAMED_SOURCES = sorted({name for _, name in RECORDS})


def is_named_source(pretrained: str) -> bool:
    return pretrained in NAMED_SOURCES


def record(arch: str, pretrained: str) -> WeightsRecord:
    try:
        return RECORDS[(arch, pretrained)]
    except KeyError:
        releases = [rec for (_, name), rec in RECORDS.items() if name == pretrained and rec.network]
        if releases:  # a whole network released for other backbones
            raise BadInput(
                f"model.pretrained={pretrained} is a whole network released for "
                + " or ".join(_network_keys(rec) for rec in releases)
                + "; set those"
            )
        have = sorted(name for a, name in RECORDS if a == arch)
        raise BadInput(
            f"model.pretrained={pretrained}: no such weights for {arch}; "
            f"available: none, {', '.join(have)}, or a weights file"
        )


def cached_path(rec: WeightsRecord) -> Path:
    """Where a record's file lives: ``$TORCH_HOME/hub/checkpoints/<file>`` (torch hub's folder)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / rec.file


def _download(rec: WeightsRecord) -> Path:
    target = cached_path(rec)
    checkpoints = target.parent
    if target.exists():
        return target
    checkpoints.mkdir(parents=True, exist_ok=True)
    try:
        # torch hub writes to a temporary file and moves it into place after the hash check.
        torch.hub.download_url_to_file(rec.url, str(target), hash_prefix=rec.sha256_prefix, progress=False)
    except Exception as exc:  # no network, refused, or a bad hash: say where the file goes
        raise BadInput(
            f"cannot download {rec.url} ({type(exc).__name__}); put that file at {target} "
            f"or set model.pretrained to a local weights file"
        )
    return target


# -- converters: the publisher's file -> (torchvision names, network head in vgray names) ----------

Converted = Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]


def _unwrap(obj: dict) -> dict:
    """``{"state_dict": ...}`` or ``{"model": ...}`` wrappers and DataParallel's ``module.`` prefix off."""
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in obj.items()}


def _plain(obj: dict, arch: str, origin: str) -> Converted:
    return _unwrap(obj), {}


# cirtorch's ``features`` is ``list(resnet.children())[:-2]``: index -> torchvision module name.
_RESNET_CHILDREN = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]


def _cirtorch_converter(obj: dict, arch: str, origin: str) -> Converted:
    meta = obj.get("meta")
    meta = meta if isinstance(meta, dict) else {}
    if meta.get("architecture", arch) != arch or meta.get("pooling", "gem") != "gem":
        raise BadInput(
            f"{origin} is a cirtorch {meta.get('architecture')}-{meta.get('pooling')} network, "
            f"not the {arch}-gem network it should be"
        )
    backbone, head = {}, {}
    for key, value in _unwrap(obj).items():
        top, _, rest = key.partition(".")
        if top == "features":
            index, _, rest = rest.partition(".")
            if not index.isdigit() or int(index) >= len(_RESNET_CHILDREN):
                raise BadInput(f"{origin}: unexpected cirtorch key {key}")
            backbone[f"{_RESNET_CHILDREN[int(index)]}.{rest}"] = value
        elif key == "pool.p":
            head["aggregation.p"] = value.reshape(1)
        elif top == "whiten":
            head[f"fc.{rest}"] = value
        else:
            raise BadInput(f"{origin}: unexpected cirtorch key {key}")
    if set(head) != {"aggregation.p", "fc.weight", "fc.bias"}:
        raise BadInput(
            f"{origin}: a cirtorch GeM network with whitening needs pool.p, whiten.weight and "
            f"whiten.bias; found {', '.join(sorted(head)) or 'none of them'}"
        )
    return backbone, head


def dinov2_to_timm(state: dict) -> dict:
    """A DINOv2 state dict in the official layout (facebookresearch/dinov2) -> timm's names: the
    masked-modelling ``mask_token`` dropped, chunked blocks (``blocks.<chunk>.<i>.``, the training
    files' FSDP layout) flattened, ViT-g's SwiGLU ``mlp.w12``/``mlp.w3`` as timm's ``mlp.fc1``/``mlp.fc2``.
    timm's own layout passes unchanged; the positional embedding is resampled by the backbone."""
    out = {}
    for key, value in _unwrap(state).items():
        if key == "mask_token":
            continue
        parts = key.split(".")
        if len(parts) > 3 and parts[0] == "blocks" and parts[1].isdigit() and parts[2].isdigit():
            parts = ["blocks"] + parts[2:]
        if parts[0] == "blocks" and len(parts) > 3 and parts[2] == "mlp":
            parts[3] = {"w12": "fc1", "w3": "fc2"}.get(parts[3], parts[3])
        out[".".join(parts)] = value
    return out


def _dinov2_converter(obj: dict, arch: str, origin: str) -> Converted:
    return dinov2_to_timm(obj), {}


CONVERTERS: Dict[str, Callable[[dict, str, str], Converted]] = {
    "plain": _plain,
    "cirtorch": _cirtorch_converter,
    "dinov2": _dinov2_converter,
}


def _converted(arch: str, pretrained: str) -> Converted:
    rec = record(arch, pretrained)
    path = _download(rec)
    return CONVERTERS[rec.converter](read_weights_file(path), arch, str(path))


def read_pretrained_file(path: str | os.PathLike) -> dict:
    """The weights file ``model.pretrained`` names (a state dict or a vgray checkpoint) -> its dict."""
    return read_weights_file(
        path,
        missing=f"model.pretrained={path}: no such file; allowed: none, {', '.join(NAMED_SOURCES)}, or a weights file",
    )


def source_state_dict(arch: str, pretrained: str) -> Optional[dict]:
    """State dict of the source architecture (torchvision names) for a named source, None for ``none``."""
    if pretrained == "none":
        return None
    rec = record(arch, pretrained)
    if rec.dims or rec.network:  # a whole network: its backbone comes with it (load_network_head)
        return None
    return _converted(arch, pretrained)[0]


# A source's classifier head (365 Places classes, 512 GLDv2 ones, none at all for the GeM networks)
# may differ from torchvision's 1000-way one: no backbone keeps it.
_HEADS = ("fc.*", "classifier.*")


def load_source(model: torch.nn.Module, state: dict, origin: str) -> None:
    """Load ``state`` into the torchvision source ``model``: every layer but the classifier head must be
    there with its shape (the structure check of files without a published hash)."""
    own = model.state_dict()
    # Files from before PyTorch 0.4 have no BatchNorm counters: the model's own (zero) stay.
    check_fits(
        own,
        state,
        f"weights {origin} do not fit {type(model).__name__}",
        ignore=_HEADS,
        optional=("*num_batches_tracked",),
    )
    model.load_state_dict(
        {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}, strict=False
    )


def load_network_head(model: torch.nn.Module, model_cfg) -> None:
    """For whole-network sources (cirtorch's GeM + whitening), load GeM's p and the whitening into the
    aggregation and the FC of ``model`` (a GeoLocalizationNet); other sources have no head."""
    arch = cast("Backbone", model.backbone).arch
    rec = RECORDS.get((arch, model_cfg.pretrained))
    if rec is None or not rec.whole_network:
        return
    if rec.dims:
        _load_released_network(model, model_cfg, rec)
        return
    if rec.network:
        _load_release(model, model_cfg, rec)
        return
    if not (
        model_cfg.backbone.endswith("conv5") and model_cfg.aggregation == "gem" and model_cfg.fc_output_dim == 2048
    ):
        raise BadInput(
            f"model.pretrained={model_cfg.pretrained} is a whole {arch} conv5 + GeM + FC 2048 network; "
            f"set model.backbone={arch}conv5, model.aggregation=gem, model.fc_output_dim=2048"
        )
    _, head = _converted(arch, model_cfg.pretrained)
    own = model.state_dict()
    check_fits(
        {k: v for k, v in own.items() if k in head},
        head,
        f"weights {cached_path(rec)} do not fit the network's GeM and FC",
    )
    model.load_state_dict(head, strict=False)


def check_release(model_cfg, arch: str) -> None:
    """Where ``model.pretrained`` names a whole released network (CosPlace, EigenPlaces, MixVPR, SALAD,
    BoQ) for the source architecture ``arch``: BadInput naming the keys to set when ``model_cfg`` is
    not the release's (nothing downloaded). Other sources pass."""
    m = model_cfg
    rec = RECORDS.get((arch, m.pretrained))
    if rec is None or not rec.whole_network:
        return
    if rec.dims:
        want = "vgg16" if arch == "vgg16" else f"{arch}conv5"
        if not (
            m.backbone == want and m.aggregation == "gem" and m.fc_output_dim in rec.dims and m.l2 == "before_pool"
        ):
            raise BadInput(
                f"model.pretrained={m.pretrained} is a whole {want} + GeM + FC network released for "
                f"model.fc_output_dim in {list(rec.dims)}; set model.backbone={want}, "
                f"model.aggregation=gem, model.l2=before_pool and model.fc_output_dim to one of those"
            )
        return
    wrong = [key for key, allowed in rec.network if getattr(m, key) not in allowed]
    if wrong:
        size = f" (input {rec.input_size[0]}x{rec.input_size[1]})" if rec.input_size else ""
        raise BadInput(
            f"model.pretrained={m.pretrained} is a whole network released for "
            f"{_network_keys(rec)}{size}; set {_network_keys(rec, wrong)}"
        )


def _load_released_network(model: torch.nn.Module, model_cfg, rec: WeightsRecord) -> None:
    """CosPlace / EigenPlaces: the file for ``model.fc_output_dim``, loaded whole (backbone, GeM, FC)."""
    check_release(model_cfg, cast("Backbone", model.backbone).arch)
    path = _download(rec.for_dim(model_cfg.fc_output_dim))
    load_network_file(model, read_weights_file(path), str(path))


def _value(value) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _network_keys(rec: WeightsRecord, only=None) -> str:
    return ", ".join(f"model.{key}={_value(allowed[0])}" for key, allowed in rec.network if only is None or key in only)


def _load_release(model: torch.nn.Module, model_cfg, rec: WeightsRecord) -> None:
    """MixVPR, SALAD, BoQ: the released file, loaded whole when the config is the release's."""
    check_release(model_cfg, cast("Backbone", model.backbone).arch)
    path = _download(rec)
    load_network_file(model, read_weights_file(path), str(path))
