"""Pretrained sources: files in each publisher's format, placed where the cache expects them, load
into the backbones (and, for the off-the-shelf GeM networks, into GeM and the FC) and equal them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from vgray.cli import main
from vgray.config import load_config
from vgray.errors import BadInput
from vgray.models import build_model
from vgray.models.backbones import create_backbone
from vgray.models.pretrained import RECORDS, cached_path, record

RESNET_CHILDREN = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]


def _place(arch: str, source: str, payload) -> None:
    path = cached_path(record(arch, source))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)


def _randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter and BatchNorm statistic random, so that equality means the file was loaded."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
    return model


def _assert_body_equals(backbone, source_model) -> None:
    reference = source_model.state_dict()
    for key, value in backbone.body.state_dict().items():
        index, rest = key.split(".", 1)
        torch.testing.assert_close(value, reference[f"{backbone.source_names[int(index)]}.{rest}"], rtol=0, atol=0)


@pytest.mark.parametrize(
    "source, wrap",
    [
        ("imagenet", lambda sd: sd),  # torchvision: plain
        ("places", lambda sd: sd),  # the paper's: plain, 365 classes
        ("gldv2", lambda sd: sd),  # the paper's: plain, 512 classes
        # CSAIL's files come from PyTorch 0.2 (DataParallel, no BatchNorm counters yet).
        (
            "places365_csail",
            lambda sd: {
                "epoch": 90,
                "arch": "resnet18",
                "best_prec1": 53.5,
                "state_dict": {f"module.{k}": v for k, v in sd.items() if not k.endswith("num_batches_tracked")},
            },
        ),
    ],
)
def test_resnet18_sources_load_and_equal(torch_home, source, wrap):
    classes = {"imagenet": 1000, "places": 365, "gldv2": 512, "places365_csail": 365}[source]
    published = _randomised(torchvision.models.resnet18(num_classes=classes), seed=1)
    _place("resnet18", source, wrap(published.state_dict()))
    _assert_body_equals(
        create_backbone("resnet18conv5" if source == "places" else "resnet18conv4", pretrained=source), published
    )


@pytest.mark.slow
def test_paper_vgg16_places_record_loads(torch_home):
    """VGG16 from the paper's Places365 file (365-way classifier, which the backbone drops)."""
    published = torchvision.models.vgg16(num_classes=365)
    # Only the features are kept: a file with a smaller classifier keeps the test light.
    published.classifier = torch.nn.Sequential(torch.nn.Linear(25088, 365))
    _randomised(published.features, seed=2)
    state = published.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    _place("vgg16", "places", state)
    _assert_body_equals(create_backbone("vgg16", pretrained="places"), published)


@pytest.mark.slow
def test_off_the_shelf_gem_network_loads_whole(torch_home):
    """cirtorch's gl18-tl-resnet50-gem-w: features.N + pool.p + whiten, with meta (numpy Lw included)."""
    source = _randomised(torchvision.models.resnet50(), seed=3)
    features = torch.nn.Sequential(*list(source.children())[:-2])
    p = torch.tensor([2.87])
    whiten = torch.nn.Linear(2048, 2048)
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state.update({"pool.p": p, "whiten.weight": whiten.weight.detach(), "whiten.bias": whiten.bias.detach()})
    meta = {
        "architecture": "resnet50",
        "pooling": "gem",
        "local_whitening": False,
        "regional": False,
        "whitening": True,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "outputdim": 2048,
        "Lw": {"retrieval-SfM-120k": {"ss": {"m": np.zeros((2048, 1)), "P": np.eye(4)}}},
    }
    _place("resnet50", "radenovic_gldv1", {"meta": meta, "state_dict": state})

    cfg = load_config(
        overrides=[
            "model.backbone=resnet50conv5",
            "model.aggregation=gem",
            "model.fc_output_dim=2048",
            "model.l2=after_pool",
            "model.pretrained=radenovic_gldv1",
        ]
    )
    model = build_model(cfg.model)
    _assert_body_equals(model.backbone, source)
    torch.testing.assert_close(model.aggregation.p.detach(), p, rtol=0, atol=0)
    torch.testing.assert_close(model.fc.weight.detach(), whiten.weight.detach(), rtol=0, atol=0)
    torch.testing.assert_close(model.fc.bias.detach(), whiten.bias.detach(), rtol=0, atol=0)

    # Only the network it is: GeM + FC 2048 on conv5.
    with pytest.raises(BadInput, match="model.fc_output_dim=2048"):
        build_model(cfg.replace(**{"model.fc_output_dim": None}).model)


def test_missing_file_offline_says_where_to_put_it(torch_home, tiny_root, capsys):
    target = cached_path(RECORDS[("resnet18", "places")])
    code = main(
        [
            "eval",
            "--set",
            "data.root=" + str(tiny_root),
            "--set",
            "model.pretrained=places",
            "--set",
            "model.aggregation=gem",
            "--set",
            "data.resize=[32,32]",
            "--set",
            "data.num_workers=0",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and str(target) in err and "Traceback" not in err


def test_wrong_structure_and_unknown_pairs_are_bad_input(torch_home):
    # A ResNet-50 file where the ResNet-18 Places file goes: refused, naming a key.
    _place("resnet18", "places", torchvision.models.resnet50(num_classes=365).state_dict())
    with pytest.raises(BadInput, match="do not fit ResNet: layer1.0.conv1.weight has shape"):
        create_backbone("resnet18conv4", pretrained="places")
    # A source without weights for an architecture lists what there is.
    with pytest.raises(BadInput, match="no such weights for alexnet; available: none, imagenet"):
        create_backbone("alexnet", pretrained="gldv2")
    # A cirtorch file of another architecture.
    _place("resnet101", "radenovic_sfm", {"meta": {"architecture": "resnet50", "pooling": "gem"}, "state_dict": {}})
    with pytest.raises(BadInput, match="cirtorch resnet50-gem network, not the resnet101-gem"):
        create_backbone("resnet101conv5", pretrained="radenovic_sfm")


def test_records_are_data():
    for rec in RECORDS.values():
        assert rec.url.startswith("http") and rec.file and rec.licence
        assert len(rec.mean) == 3 and len(rec.std) == 3
        assert rec.sha256_prefix is None or all(c in "0123456789abcdef" for c in rec.sha256_prefix)
