"""The model registries: every backbone x aggregation builds, declares its sizes truthfully, gets
gradients where the paper trains, and the cost figures reproduce the paper's Table 3."""

import json

import numpy as np
import pytest
import torch

from vgray.config import load_config
from vgray.errors import BadInput
from vgray.models import build_model
from vgray.models.aggregations import AGGREGATIONS
from vgray.models.aggregations.mixvpr import local_map_size
from vgray.models.backbones import BACKBONES
from vgray.models.profile import model_cost


def _allowed(backbone, aggregation):
    """What the registries allow: the backbone's output is an input of the aggregation, and the
    components' own load-time checks accept the pair."""
    if BACKBONES.type_of(backbone).output not in AGGREGATIONS.type_of(aggregation).inputs:
        return False
    try:
        load_config(
            overrides=[
                f"model.backbone={backbone}",
                f"model.aggregation={aggregation}",
                "model.pretrained=none",
                *small_size(backbone)[1],
                *fitted(backbone, aggregation),
            ]
        )
    except BadInput:
        return False
    return True


# Aggregations whose descriptor is clusters x channels (8 clusters below); the others give channels.
VLAD_LIKE = {"netvlad", "crn"}
# Aggregations whose descriptor size is set by their own keys (the published defaults), not the channels.
OWN_DIM = {"convap": 512 * 2 * 2, "mixvpr": 1024 * 4}
OWN_DIM["salad"] = 64 * 128 + 256
# BoQ: its projection (half the backbone's channels) x 32 rows.
DIM_OF_CHANNELS = {"boq": lambda channels: channels // 2 * 32}


def model_for(backbone, aggregation, *extra):
    cfg = load_config(
        overrides=[
            f"model.backbone={backbone}",
            f"model.aggregation={aggregation}",
            "model.pretrained=none",
            "model.netvlad_clusters=8",
            *extra,
        ]
    )
    return build_model(cfg.model, image_size=cfg.data.image_size)


def small_size(backbone):
    """Tiny inputs for CNNs; transformers take only their square sizes (the smallest), one block."""
    sizes = BACKBONES.info(backbone).get("input_sizes")
    patch = BACKBONES.info(backbone).get("patch")
    if patch:  # DINOv2: sides multiples of its patch, 9 x 9 patches (more than SALAD's 64 clusters)
        return (9 * patch, 9 * patch), [f"data.resize=[{9 * patch},{9 * patch}]", "model.trunc_te=1"]
    if not sizes:
        return (64, 80), []
    h, w = min(sizes)
    return (h, w), [f"data.resize=[{h},{w}]", "model.trunc_te=1"]


def fitted(backbone, aggregation):
    """Keys that fit an aggregation sized for one feature map (MixVPR) to the tiny input: that size,
    and the backbone's map there."""
    if not AGGREGATIONS.type_of(aggregation).fixed_grid:
        return []
    (h, w), extra = small_size(backbone)
    cfg = load_config(overrides=[f"model.backbone={backbone}", f"data.resize=[{h},{w}]", *extra])
    return [f"data.resize=[{h},{w}]", f"model.mixvpr_map_size={list(local_map_size(cfg))}"]


# ResNet-152 is ResNet-101's code with more blocks (torchvision's, truncated the same way) and 2.5x its
# time on CPU: it is tried with one aggregation, the one its CosPlace releases use.
PAIRS = [
    (b, a)
    for b in BACKBONES.names()
    for a in AGGREGATIONS.names()
    if _allowed(b, a) and (not b.startswith("resnet152") or a == "gem")
]


@pytest.mark.parametrize("fc", [None, 32])
@pytest.mark.parametrize("backbone,aggregation", PAIRS)
def test_every_pair_forward_backward(backbone, aggregation, fc):
    """The registry-wide test: every backbone x every aggregation it allows, with and without FC,
    builds, declares its descriptor size truthfully, and trains (gradients everywhere it should)."""
    torch.manual_seed(0)
    size, extra = small_size(backbone)
    extra += [f"model.fc_output_dim={fc}"] if fc else []
    extra += fitted(backbone, aggregation)
    model = model_for(backbone, aggregation, *extra)
    channels = BACKBONES.info(backbone)["out_channels"]
    expected = (
        fc
        or OWN_DIM.get(aggregation)
        or DIM_OF_CHANNELS.get(aggregation, lambda c: None)(channels)
        or channels * (8 if aggregation in VLAD_LIKE else 1)
    )
    assert model.features_dim == expected
    model.train()
    x = torch.rand(2, 3, *size)
    out = model(x)
    assert out.shape == (2, expected)
    assert torch.isfinite(out).all()
    # A random projection of the descriptor: its gradient reaches every parameter, unlike
    # ||out||^2, which is constant for an L2-normalised descriptor.
    (out * torch.randn_like(out)).sum().backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    for name, p in trainable:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} got a zero gradient"


def test_freezing_follows_the_paper():
    # ResNets train from layer3 on (body indices: 6 = layer3, 7 = layer4).
    r4 = model_for("resnet18conv4", "gem").backbone
    assert [i for i, m in enumerate(r4.body) if any(p.requires_grad for p in m.parameters())] == [6]
    r5 = model_for("resnet50conv5", "gem").backbone
    assert [i for i, m in enumerate(r5.body) if any(p.requires_grad for p in m.parameters())] == [6, 7]
    # VGG16 trains its last conv block only: conv5_1..conv5_3.
    vgg = model_for("vgg16", "gem").backbone
    convs = [m for m in vgg.body if isinstance(m, torch.nn.Conv2d)]
    assert [any(p.requires_grad for p in c.parameters()) for c in convs] == [False] * 10 + [True] * 3
    alex = model_for("alexnet", "gem").backbone
    convs = [m for m in alex.body if isinstance(m, torch.nn.Conv2d)]
    assert [c.weight.requires_grad for c in convs] == [False, False, True, True, True]


def test_unknown_names_list_the_registry():
    with pytest.raises(BadInput, match="choose one of: alexnet, cct384, dinov2_vitb14, .*resnet101conv4"):
        load_config(overrides=["model.backbone=resnet34conv4"])
    with pytest.raises(BadInput, match="gem"):
        load_config(overrides=["model.aggregation=vlad"])


# The paper's Table 3 at 480x640: (features_dim, GFLOPs, size MB).
TABLE3 = {
    ("vgg16", "gem"): (512, 188.01, 56.13),
    ("resnet18conv4", "gem"): (256, 17.29, 10.63),
    ("resnet50conv4", "gem"): (1024, 40.61, 32.71),
    ("resnet101conv4", "gem"): (1024, 86.29, 105.36),
    ("vgg16", "netvlad"): (32768, 188.09, 56.38),
    ("resnet18conv4", "netvlad"): (16384, 17.27, 10.76),
    ("resnet50conv4", "netvlad"): (65536, 40.51, 33.21),
    ("resnet101conv4", "netvlad"): (65536, 86.06, 105.86),
}


@pytest.mark.parametrize("backbone,aggregation", list(TABLE3))
def test_table3_cost_within_2_percent(backbone, aggregation):
    dim, gflops, size = TABLE3[(backbone, aggregation)]
    cfg = load_config(
        overrides=[
            f"model.backbone={backbone}",
            f"model.aggregation={aggregation}",
            "model.pretrained=none",
            "data.resize=[480,640]",
        ]
    )
    with torch.device("meta"):  # shapes only: no weights initialised, no real forward pass
        model = build_model(cfg.model)
    cost = model_cost(model, cfg.data.image_size)
    assert cost["features_dim"] == dim
    assert cost["gflops"] == pytest.approx(gflops, rel=0.02)
    assert cost["model_size_mb"] == pytest.approx(size, rel=0.02)


def test_weights_files_load(tmp_path):
    """A torchvision state dict of the source architecture and a whole-network checkpoint both load."""
    import torchvision

    torch.manual_seed(1)
    source = torchvision.models.resnet18(weights=None)
    torch.save(source.state_dict(), tmp_path / "tv.pth")
    model = model_for("resnet18conv4", "gem", f"model.pretrained={tmp_path / 'tv.pth'}")
    assert torch.equal(model.backbone.body[6][0].conv1.weight, source.layer3[0].conv1.weight)
    assert torch.equal(model.backbone.body[0].weight, source.conv1.weight)

    cfg = load_config(overrides=["model.backbone=resnet18conv4", "model.aggregation=gem", "model.pretrained=none"])
    torch.save({"model": model.state_dict(), "config": cfg.to_dict()}, tmp_path / "best.pt")
    again = model_for("resnet18conv4", "gem", f"model.pretrained={tmp_path / 'best.pt'}")
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k


def test_weights_file_of_another_architecture_is_refused(tmp_path):
    model = model_for("resnet18conv4", "gem")
    cfg = load_config(overrides=["model.backbone=resnet18conv4", "model.aggregation=gem", "model.pretrained=none"])
    torch.save({"model": model.state_dict(), "config": cfg.to_dict()}, tmp_path / "best.pt")
    with pytest.raises(BadInput, match="made for backbone=resnet18conv4, aggregation=gem"):
        model_for("resnet18conv4", "netvlad", f"model.pretrained={tmp_path / 'best.pt'}")
    torch.save(model.state_dict(), tmp_path / "r18.pt")
    with pytest.raises(BadInput, match="does not fit"):
        model_for("resnet50conv4", "gem", f"model.pretrained={tmp_path / 'r18.pt'}")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(BadInput, match="cannot be read"):
        model_for("resnet18conv4", "gem", f"model.pretrained={tmp_path / 'junk.pt'}")


def test_offline_imagenet_fails_with_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    # No network here: the download fails and the message names the URL and the cache path.
    from vgray.models.pretrained import RECORDS, WeightsRecord

    monkeypatch.setitem(
        RECORDS, ("resnet18", "imagenet"), WeightsRecord("http://127.0.0.1:9/resnet18-f37072fd.pth", "f37072fd")
    )
    with pytest.raises(BadInput, match=r"put that file at .*checkpoints/resnet18-f37072fd.pth"):
        model_for("resnet18conv4", "gem", "model.pretrained=imagenet")


def test_netvlad_initialisation_from_local_features():
    torch.manual_seed(0)
    model = model_for("resnet18conv4", "netvlad")  # 8 clusters
    assert model.needs_init()
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 256)).astype(np.float32)
    feats = np.concatenate([c + 0.05 * rng.normal(size=(400, 256)) for c in centres]).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    model.aggregation.initialize(feats)
    assert not model.needs_init()
    assert bool(model.state_dict()["aggregation.initialized"])
    learned = model.aggregation.centroids.detach().numpy()
    unit = learned / np.linalg.norm(learned, axis=1, keepdims=True)
    truth = centres / np.linalg.norm(centres, axis=1, keepdims=True)
    # every true centre is found, and every centroid sits on the data
    assert (np.max(truth @ unit.T, axis=1) > 0.95).all()
    assert (np.max(unit @ truth.T, axis=1) > 0.95).all()
    # the assignment weights are alpha * unit centroids, alpha making the nearest centroid's
    # weight 100x the second's on average (the original NetVLAD initialisation)
    w = model.aggregation.conv.weight.detach().numpy()[:, :, 0, 0]
    alpha = np.linalg.norm(w, axis=1).mean()
    assert np.allclose(w, alpha * unit, atol=1e-4)
    dots = np.sort(unit @ feats.T, axis=0)[::-1]
    assert alpha * np.mean(dots[0] - dots[1]) == pytest.approx(-np.log(0.01), rel=1e-3)


def _profile_settings(aggregation):
    """A backbone whose output ``aggregation`` takes, at the smallest input it allows: a CNN at
    64x64, else ViT at 224, CCT at 384 (seqpool: only CCT's weights carry it) or DINOv2-S at 126
    (SALAD: needs a class token), with one encoder block."""
    if "feature_map" in AGGREGATIONS.type_of(aggregation).inputs:
        return ["model.backbone=resnet18conv4", "data.resize=[64,64]", *fitted("resnet18conv4", aggregation)]
    for backbone in ("vit", "cct384", "dinov2_vits14"):  # SALAD needs DINOv2's class token
        sets = [f"model.backbone={backbone}", *small_size(backbone)[1]]
        if _allowed(backbone, aggregation):
            return sets
    raise AssertionError(f"no backbone takes {aggregation}")


@pytest.mark.parametrize("aggregation", AGGREGATIONS.names())
def test_profile_works_for_every_aggregation(aggregation, tmp_path):
    """``vgray profile`` needs no weights and no checkpoint, whatever the aggregation (crn included)."""
    from vgray.cli import main

    sets = [
        f"model.aggregation={aggregation}",
        "model.pretrained=none",
        "model.netvlad_clusters=8",
        *_profile_settings(aggregation),
    ]
    argv = ["profile", "--runs", "1", "--json", str(tmp_path / "p.json")]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    figures = json.loads((tmp_path / "p.json").read_text())
    cfg = load_config(overrides=sets)
    with torch.device("meta"):
        expected = build_model(cfg.model, load_weights=False, image_size=cfg.data.image_size)
    assert figures["features_dim"] == expected.features_dim
    assert figures["params"] == sum(p.numel() for p in expected.parameters())
    assert figures["gflops"] > 0 and figures["model_size_mb"] > 0 and figures["extraction_ms"] > 0
