"""Foreign whole-network files through ``model.pretrained: FILE``: each written here in its publisher's
layout (keys as the publisher names them, wrapped as it wraps them), loaded, and the descriptor of a
fixed image compared with the one the layout's own arithmetic gives from the written tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from vgray.cli import main
from vgray.config import load_config
from vgray.models import build_model
from vgray.models.pretrained import cached_path, record

IMAGE = torch.Generator().manual_seed(7)
IMAGE = torch.rand(1, 3, 64, 64, generator=IMAGE)  # the fixed image (already normalised)
EPS = 1e-6


def _config(backbone, aggregation, pretrained="none", *extra):
    return load_config(
        overrides=[
            f"model.backbone={backbone}",
            f"model.aggregation={aggregation}",
            f"model.pretrained={pretrained}",
            "model.netvlad_clusters=4",
            "data.resize=[64,64]",
            *extra,
        ]
    )


def _random_state(backbone, aggregation, *extra) -> dict:
    """A vgray network of random weights (BatchNorm statistics included) -> its state dict."""
    torch.manual_seed(3)
    model = build_model(_config(backbone, aggregation, "none", *extra).model)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if t.is_floating_point():
                # Signed weights: local features that differ over the map (so that CRN's mask matters).
                u = torch.rand(t.shape, generator=g)
                # Centroids near the (unit) local features and sharp assignments, as trained ones are.
                scale = {"aggregation.centroids": 0.1, "aggregation.conv.weight": 40.0}.get(key, 0.4)
                t.copy_(u + 0.5 if "running_var" in key else (u - 0.5) * (4.0 if ".crn." in key else scale))
    return model.state_dict()


def _publisher_backbone(state: dict, arch: str, stage: int) -> nn.Module:
    """The publisher's backbone module, ``Sequential(*list(resnet.children())[:-3 or -2])`` or
    ``Sequential(*list(features.children())[:-2])``, holding the written tensors (``backbone.N…``)."""
    source = getattr(torchvision.models, arch)(weights=None)
    if arch in ("vgg16", "alexnet"):
        body = nn.Sequential(*list(source.features.children())[:-2])
    else:
        body = nn.Sequential(*list(source.children())[: -3 if stage == 4 else -2])
    body.load_state_dict({k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")})
    return body.eval()


def _gem(x, p):
    return F.avg_pool2d(x.clamp(min=EPS).pow(p), x.shape[-2:]).pow(1.0 / p)[:, :, 0, 0]


def _netvlad(x, conv, centroids, mask=None):
    """The paper's NetVLAD loop: residuals to each centroid weighted by the soft-assignment."""
    n, d = x.shape[:2]
    x = F.normalize(x, p=2, dim=1)
    soft = F.softmax(F.conv2d(x, conv).view(n, conv.shape[0], -1), dim=1)
    if mask is not None:
        soft = soft * mask.view(n, 1, -1)
    flat = x.view(n, d, -1)
    vlad = torch.stack(
        [((flat - centroids[k][None, :, None]) * soft[:, k : k + 1]).sum(-1) for k in range(conv.shape[0])], dim=1
    )
    return F.normalize(F.normalize(vlad, p=2, dim=2).view(n, -1), p=2, dim=1)


def _paper_state(vgray_state: dict, aggregation: str, l2: str, fc: bool) -> dict:
    """A vgray state dict renamed as the paper's GeoLocalizationNet names its parameters."""
    out, pool_index = {}, 1 if l2 == "before_pool" else 0
    inner = "aggregation.0." if fc else "aggregation."
    names = {
        "p": f"{pool_index}.p",
        "norm_in": "ln1",
        "norm_out": "ln2",
        "crn.filters.0": "crn.filter_3_3",
        "crn.filters.1": "crn.filter_5_5",
        "crn.filters.2": "crn.filter_7_7",
    }
    for key, value in vgray_state.items():
        if key.startswith("backbone.body."):
            out["backbone." + key[len("backbone.body.") :]] = value
        elif key.startswith("fc."):
            out["aggregation.1." + key[3:]] = value
        elif key == "aggregation.initialized":
            continue  # the paper's NetVLAD has no such buffer
        else:
            rest = key[len("aggregation.") :]
            for ours, theirs in names.items():
                if rest.startswith(ours):
                    rest = theirs + rest[len(ours) :]
            out[inner + rest] = value
    if aggregation == "crn":  # its accumulation layer: a fixed sum
        out[inner + "crn.acc_w.weight"] = torch.ones(1, 84, 1, 1)
        out[inner + "crn.acc_w.bias"] = torch.zeros(1)
    return out


def _paper_descriptor(state: dict, arch: str, stage: int, aggregation: str, l2: str, fc: bool) -> torch.Tensor:
    """The paper's forward pass, from the tensors of ``state`` (its names)."""
    x = _publisher_backbone(state, arch, stage)(IMAGE)
    a = "aggregation.0." if fc else "aggregation."
    if aggregation in ("gem", "spoc", "mac"):
        x = F.normalize(x, p=2, dim=1) if l2 == "before_pool" else x
        index = 1 if l2 == "before_pool" else 0
        x = (
            _gem(x, state[f"{a}{index}.p"])
            if aggregation == "gem"
            else x.mean((-2, -1))
            if aggregation == "spoc"
            else x.amax((-2, -1))
        )
        x = F.normalize(x, p=2, dim=1) if l2 == "after_pool" else x
    elif aggregation == "netvlad":
        x = _netvlad(x, state[a + "conv.weight"], state[a + "centroids"])
    elif aggregation == "crn":
        xn = F.normalize(x, p=2, dim=1)
        pooled = F.avg_pool2d(xn, kernel_size=3, stride=2, ceil_mode=True)
        g = torch.cat(
            [
                F.conv2d(
                    pooled, state[f"{a}crn.filter_{s}_{s}.weight"], state[f"{a}crn.filter_{s}_{s}.bias"], padding=s // 2
                )
                for s in (3, 5, 7)
            ],
            dim=1,
        ).relu()
        w = F.conv2d(g, state[a + "crn.acc_w.weight"], state[a + "crn.acc_w.bias"]).relu()
        mask = F.interpolate(w, scale_factor=2, mode="bilinear")
        x = _netvlad(x, state[a + "conv.weight"], state[a + "centroids"], mask)
    elif aggregation == "rrm":
        x = F.layer_norm(x.mean((-2, -1)), x.shape[1:2], state[a + "ln1.weight"], state[a + "ln1.bias"])
        x = x + F.linear(
            F.linear(x, state[a + "fc1.weight"], state[a + "fc1.bias"]).relu(),
            state[a + "fc2.weight"],
            state[a + "fc2.bias"],
        )
        x = F.normalize(F.layer_norm(x, x.shape[1:2], state[a + "ln2.weight"], state[a + "ln2.bias"]), p=2, dim=1)
    if fc:
        x = F.normalize(F.linear(x, state["aggregation.1.weight"], state["aggregation.1.bias"]), p=2, dim=1)
    return x


def _descriptor(cfg) -> tuple:
    model = build_model(cfg.model).eval()
    with torch.no_grad():
        return model(IMAGE), model


PAPER_CASES = [  # backbone, aggregation, l2, fc_output_dim
    ("resnet18conv4", "gem", "before_pool", None),
    ("resnet18conv4", "gem", "after_pool", 16),
    ("resnet18conv5", "gem", "before_pool", 32),
    ("resnet18conv4", "spoc", "after_pool", 16),
    ("alexnet", "mac", "none", 16),
    ("resnet18conv4", "netvlad", "before_pool", None),
    ("resnet18conv4", "netvlad", "before_pool", 16),
    ("resnet18conv4", "crn", "before_pool", None),
    ("resnet18conv4", "rrm", "before_pool", None),
]


@pytest.mark.parametrize("backbone, aggregation, l2, fc", PAPER_CASES)
def test_paper_layout_gives_the_papers_descriptor(tmp_path, backbone, aggregation, l2, fc):
    extra = [f"model.l2={l2}"] + ([f"model.fc_output_dim={fc}"] if fc else [])
    state = _paper_state(_random_state(backbone, aggregation, *extra), aggregation, l2, bool(fc))
    # train.py's checkpoint: DataParallel's prefix, numpy scalars and arrays beside the weights.
    torch.save(
        {
            "epoch_num": 3,
            "model_state_dict": {f"module.{k}": v for k, v in state.items()},
            "optimizer_state_dict": {"state": {}, "param_groups": []},
            "recalls": np.array([50.0, 60.0]),
            "best_r5": np.float64(60.0),
            "not_improved_num": 0,
        },
        tmp_path / "last_model.pth",
    )
    torch.save(state, tmp_path / "bare.pth")  # the model zoo's files: the bare state dict
    arch, stage = (backbone[:-5], int(backbone[-1])) if "conv" in backbone else (backbone, 0)
    want = _paper_descriptor(state, arch, stage, aggregation, l2, bool(fc))
    for name in ("last_model.pth", "bare.pth"):
        got, model = _descriptor(_config(backbone, aggregation, str(tmp_path / name), *extra))
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        assert not model.needs_init()  # NetVLAD/CRN: marked initialised, no k-means over trained clusters


def _gmberton_state(vgray_state: dict) -> dict:
    """CosPlace/EigenPlaces names: backbone.N…, aggregation = Sequential(L2Norm, GeM, Flatten, Linear, L2Norm)."""
    rename = {"aggregation.p": "aggregation.1.p", "fc.weight": "aggregation.3.weight", "fc.bias": "aggregation.3.bias"}
    return {rename.get(k, k.replace("backbone.body.", "backbone.")): v for k, v in vgray_state.items()}


def _gmberton_descriptor(state: dict, arch: str) -> torch.Tensor:
    x = F.normalize(_publisher_backbone(state, arch, 5)(IMAGE), p=2, dim=1)
    x = _gem(x, state["aggregation.1.p"])
    return F.normalize(F.linear(x, state["aggregation.3.weight"], state["aggregation.3.bias"]), p=2, dim=1)


@pytest.mark.parametrize("source", ["cosplace", "eigenplaces"])
def test_cosplace_eigenplaces_file_and_named_source(tmp_path, torch_home, source):
    extra = ["model.fc_output_dim=256"]
    state = _gmberton_state(_random_state("resnet18conv5", "gem", *extra))
    want = _gmberton_descriptor(state, "resnet18")
    torch.save(state, tmp_path / "ResNet18_256.pth")
    got, _ = _descriptor(_config("resnet18conv5", "gem", str(tmp_path / "ResNet18_256.pth"), *extra))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)

    # The named source: offline, the release file at the printed cache path is used.
    target = cached_path(record("resnet18", source).for_dim(256))
    assert target.name == f"ResNet18_256_{source}.pth"
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, target)
    got, _ = _descriptor(_config("resnet18conv5", "gem", source, *extra))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_named_release_refuses_a_size_or_network_it_was_not_released_for(torch_home, capsys, small_root):
    code = main(
        [
            "eval",
            "--set",
            f"data.root={small_root}",
            "--set",
            "model.backbone=resnet18conv5",
            "--set",
            "model.aggregation=gem",
            "--set",
            "model.fc_output_dim=100",
            "--set",
            "model.pretrained=cosplace",
            "--set",
            "data.resize=[64,64]",
            "--set",
            "data.num_workers=0",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "model.fc_output_dim in [32, 64, 128, 256, 512]" in err


def _eval(root, tmp_path, *sets):
    args = [
        "eval",
        "--set",
        f"data.root={root}",
        "--set",
        "data.resize=[64,64]",
        "--set",
        "data.num_workers=0",
        "--set",
        "model.netvlad_clusters=4",
        "--json",
        str(tmp_path / "e.json"),
    ]
    for s in sets:
        args += ["--set", s]
    return main(args)


def test_paper_checkpoint_evaluates_through_the_cli(tmp_path, small_root, capsys):
    state = _paper_state(_random_state("resnet18conv4", "netvlad"), "netvlad", "before_pool", False)
    torch.save(
        {"model_state_dict": {f"module.{k}": v for k, v in state.items()}, "best_r5": np.float64(1.0)},
        tmp_path / "best_model.pth",
    )
    assert (
        _eval(
            small_root,
            tmp_path,
            "model.backbone=resnet18conv4",
            "model.aggregation=netvlad",
            f"model.pretrained={tmp_path / 'best_model.pth'}",
        )
        == 0
    )
    assert (tmp_path / "e.json").is_file()


def test_a_misfit_names_what_the_file_was_made_for(tmp_path, small_root, capsys):
    state = _paper_state(_random_state("resnet18conv4", "netvlad"), "netvlad", "before_pool", False)
    torch.save({"model_state_dict": state}, tmp_path / "netvlad.pth")
    code = _eval(
        small_root,
        tmp_path,
        "model.backbone=resnet18conv4",
        "model.aggregation=gem",
        f"model.pretrained={tmp_path / 'netvlad.pth'}",
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "the paper's" in err and (
        "made for model.backbone=resnet18conv4, model.aggregation=netvlad, "
        "model.netvlad_clusters=4, model.fc_output_dim=null" in err
    )
    assert not (tmp_path / "e.json").exists()

    # GeM p at the paper's before_pool place, into a config that normalises after the pool.
    gem = _paper_state(_random_state("resnet18conv4", "gem"), "gem", "before_pool", False)
    torch.save(gem, tmp_path / "gem.pth")
    code = _eval(
        small_root,
        tmp_path,
        "model.backbone=resnet18conv4",
        "model.aggregation=gem",
        "model.l2=after_pool",
        f"model.pretrained={tmp_path / 'gem.pth'}",
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "model.l2=before_pool" in err, err

    # A ResNet-18 conv5 CosPlace network into a conv4 config.
    cos = _gmberton_state(_random_state("resnet18conv5", "gem", "model.fc_output_dim=32"))
    torch.save(cos, tmp_path / "cos.pth")
    code = _eval(
        small_root,
        tmp_path,
        "model.backbone=resnet18conv4",
        "model.aggregation=gem",
        f"model.pretrained={tmp_path / 'cos.pth'}",
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert (
        "CosPlace/EigenPlaces layout) is a network made for model.backbone=resnet18conv5, model.aggregation=gem"
    ) in err
    assert "model.fc_output_dim=32" in err


def test_unknown_layout_names_the_layouts_tried(tmp_path, small_root, capsys):
    torch.save({"encoder.stem.weight": torch.zeros(2), "decoder.proj.weight": torch.zeros(2)}, tmp_path / "odd.pth")
    code = _eval(
        small_root,
        tmp_path,
        "model.backbone=resnet18conv4",
        "model.aggregation=gem",
        f"model.pretrained={tmp_path / 'odd.pth'}",
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "fits no known layout" in err and "the paper's" in err and "CosPlace/EigenPlaces" in err
    assert "encoder.stem.weight" in err
