"""MixVPR (WACV 2023) and Conv-AP (GSV-Cities, 2022): forward and backward on tiny inputs, the
published descriptor sizes, the arithmetic against a brute-force numpy reference, and the refusals
at load time (exit 2, one line)."""

import json

import numpy as np
import pytest
import torch

from vgray.cli import main
from vgray.config import load_config
from vgray.errors import BadInput
from vgray.models import build_model
from vgray.models.aggregations.convap import ConvAP
from vgray.models.aggregations.mixvpr import MixVPR


def _config(aggregation, *extra):
    return load_config(overrides=[f"model.aggregation={aggregation}", "model.pretrained=none", *extra])


def _meta_model(cfg):
    with torch.device("meta"):  # shapes only: the published sizes without a 320x320 forward pass
        return build_model(cfg.model, image_size=cfg.data.image_size)


# -- published sizes ------------------------------------------------------------------------------


def test_mixvpr_published_settings_give_4096():
    cfg = _config("mixvpr", "model.backbone=resnet50conv4", "data.resize=[320,320]")
    assert cfg.model.mixvpr_map_size == [20, 20]  # the defaults are the published ones
    model = _meta_model(cfg)
    assert model.features_dim == 4096
    agg = model.aggregation
    assert agg.channel_proj.weight.shape == (1024, 1024) and agg.row_proj.weight.shape == (4, 400)
    assert len(agg.mix) == 4 and agg.mix[0].mix[1].weight.shape == (400, 400)


@pytest.mark.parametrize(
    "backbone,channels,dim",
    [
        ("resnet50conv4", 512, 2048),
        ("resnet50conv5", 1024, 4096),
        ("resnet50conv5", 2048, 8192),
        ("resnet50conv5", 128, 512),
    ],
)
def test_convap_published_sizes(backbone, channels, dim):
    # GSV-Cities: 2048-d [512x2x2] (the default); released on the full ResNet-50: 512 to 8192-d.
    cfg = _config(
        "convap", f"model.backbone={backbone}", "data.resize=[320,320]", f"model.convap_out_channels={channels}"
    )
    model = _meta_model(cfg)
    assert model.features_dim == dim
    assert model.aggregation.channel_pool.weight.shape[:2] == (channels, 1024 if backbone.endswith("4") else 2048)


# -- forward and backward on tiny inputs -----------------------------------------------------------


@pytest.mark.parametrize(
    "aggregation,extra,dim",
    [
        ("mixvpr", ["model.mixvpr_map_size=[4,5]", "model.mixvpr_out_channels=16", "model.mixvpr_out_rows=3"], 48),
        ("convap", ["model.convap_out_channels=8", "model.convap_pool_size=[2,3]"], 48),
    ],
)
def test_forward_backward_tiny(aggregation, extra, dim):
    torch.manual_seed(0)
    cfg = _config(aggregation, "model.backbone=resnet18conv4", "data.resize=[64,80]", *extra)
    model = build_model(cfg.model, image_size=cfg.data.image_size).train()
    out = model(torch.rand(2, 3, 64, 80))
    assert out.shape == (2, dim) == (2, model.features_dim)
    assert torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)
    (out * torch.randn_like(out)).sum().backward()
    for name, p in model.aggregation.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert model.backbone.body[6][0].conv1.weight.grad.abs().sum() > 0  # layer3 trains


def test_mixvpr_on_a_transformer_patch_grid():
    # ViT-B/16 at 224x224: a 14x14 patch grid, fixed by the input size like a CNN's map.
    cfg = _config(
        "mixvpr",
        "model.backbone=vit",
        "data.resize=[224,224]",
        "model.trunc_te=1",
        "model.mixvpr_map_size=[14,14]",
        "model.mixvpr_out_channels=8",
        "model.mixvpr_depth=1",
    )
    model = build_model(cfg.model, image_size=cfg.data.image_size)
    assert model(torch.rand(1, 3, 224, 224)).shape == (1, 32)


# -- the arithmetic against a hand computation ------------------------------------------------------


def _np(t):
    return t.detach().double().numpy()


def test_mixvpr_matches_brute_force_reference():
    torch.manual_seed(1)
    C, h, w, out_channels, out_rows = 3, 2, 3, 4, 2
    agg = MixVPR(C, map_size=(h, w), out_channels=out_channels, out_rows=out_rows, depth=2, mlp_ratio=1.5)
    with torch.no_grad():  # non-trivial LayerNorm affine and biases
        for p in agg.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    x = torch.randn(2, C, h, w)
    want = []
    for b in range(2):
        rows = [[float(x[b, c, i, j]) for i in range(h) for j in range(w)] for c in range(C)]  # C rows of h*w
        for block in agg.mix:
            ln, fc1, fc2 = block.mix[0], block.mix[1], block.mix[3]
            mixed = []
            for r in rows:
                mu = sum(r) / len(r)
                var = sum((v - mu) ** 2 for v in r) / len(r)
                z = [(v - mu) / np.sqrt(var + ln.eps) * g + be for v, g, be in zip(r, _np(ln.weight), _np(ln.bias))]
                hidden = [
                    max(0.0, sum(W[k] * z[k] for k in range(len(z))) + bb)
                    for W, bb in zip(_np(fc1.weight), _np(fc1.bias))
                ]
                mixed.append(
                    [
                        v + sum(W[k] * hidden[k] for k in range(len(hidden))) + bb
                        for v, W, bb in zip(r, _np(fc2.weight), _np(fc2.bias))
                    ]
                )
            rows = mixed
        Wc, bc = _np(agg.channel_proj.weight), _np(agg.channel_proj.bias)
        Wr, br = _np(agg.row_proj.weight), _np(agg.row_proj.bias)
        n = h * w
        proj = [[sum(Wc[o, c] * rows[c][p] for c in range(C)) + bc[o] for p in range(n)] for o in range(out_channels)]
        # (out_channels, out_rows), flattened channel-major
        out = np.array(
            [sum(Wr[q, p] * proj[o][p] for p in range(n)) + br[q] for o in range(out_channels) for q in range(out_rows)]
        )
        want.append(out / np.linalg.norm(out))
    got = agg(x).detach().numpy()
    assert got.shape == (2, out_channels * out_rows)
    np.testing.assert_allclose(got, np.array(want), rtol=1e-4, atol=1e-5)


def test_convap_matches_brute_force_reference():
    torch.manual_seed(2)
    C, out_channels = 3, 2
    agg = ConvAP(C, out_channels=out_channels, pool_size=(2, 2))
    x = torch.randn(1, C, 4, 6)  # 2x2 pooling of a 4x6 map: cells of 2x3
    W, bias, xs = _np(agg.channel_pool.weight)[:, :, 0, 0], _np(agg.channel_pool.bias), _np(x)[0]
    out = []
    for o in range(out_channels):  # channel-major: o, then the pooled rows and columns
        for ci in range(2):
            for cj in range(2):
                cell = [
                    sum(W[o, c] * xs[c, i, j] for c in range(C)) + bias[o]
                    for i in range(2 * ci, 2 * ci + 2)
                    for j in range(3 * cj, 3 * cj + 3)
                ]
                out.append(sum(cell) / len(cell))
    out = np.array(out)
    np.testing.assert_allclose(agg(x).detach().numpy()[0], out / np.linalg.norm(out), rtol=1e-5, atol=1e-6)


# -- refusals at load --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv,message",
    [
        (
            ["--set", "data.resize=[480,640]"],
            "model.mixvpr_map_size=[20, 20] but model.backbone=resnet50conv4 gives a "
            "30x40 feature map at data.image_size [480, 640]",
        ),
        (
            [
                "--set",
                "data.resize=[320,320]",
                "--set",
                "model.backbone=resnet18conv4",
                "--set",
                "model.mixvpr_map_size=[10,10]",
            ],
            "gives a 20x20 feature map",
        ),
        (["--set", "data.resize=[320,320]", "--set", "test.method=single_query"], "test.method=single_query"),
        (
            [
                "--set",
                "data.resize=[320,480]",
                "--set",
                "model.mixvpr_map_size=[20,30]",
                "--set",
                "test.method=five_crops",
            ],
            "test.method=five_crops",
        ),
        (["--set", "data.resize=[320,320]", "--set", "model.mixvpr_map_size=[20]"], "model.mixvpr_map_size"),
    ],
)
def test_mixvpr_refusals_exit_2_with_one_line(argv, message, tmp_path, capsys):
    out = tmp_path / "p.json"
    code = main(
        [
            "profile",
            "--set",
            "model.backbone=resnet50conv4",
            "--set",
            "model.aggregation=mixvpr",
            "--set",
            "model.pretrained=none",
            *argv,
            "--json",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err
    assert not out.exists()


def test_convap_refuses_bad_pool_size():
    with pytest.raises(BadInput, match="model.convap_pool_size"):
        _config("convap", "model.convap_pool_size=[2,0]")


def test_profile_mixvpr_json(tmp_path, capsys):
    out = tmp_path / "p.json"
    code = main(
        [
            "profile",
            "--set",
            "model.backbone=resnet18conv4",
            "--set",
            "model.aggregation=mixvpr",
            "--set",
            "model.pretrained=none",
            "--set",
            "data.resize=[64,80]",
            "--set",
            "model.mixvpr_map_size=[4,5]",
            "--json",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert json.loads(out.read_text())["features_dim"] == 4096
